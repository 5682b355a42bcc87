"""calib: held-out logits in, calibrated probabilities and trust decisions out.

``import calib`` is light: it imports numpy only. torch, scipy, netcal, matplotlib and hydra are
imported inside the functions that need them. The layers and what each may import:
``docs/architecture.md``.
"""

__version__ = "0.3.0"

from calib import _moved  # noqa: E402

_moved.install()  # old import paths of moved modules keep working

from calib.io import LogitsData, load_logits, stratified_split  # noqa: E402

#: Submodules reachable as attributes after a bare ``import calib`` (``calib.datasets.load(...)``). Each is
#: imported on first access (PEP 562), so ``import calib`` itself stays numpy-only.
SUBMODULES = (
    "artifacts", "base", "calibrators", "cli", "config", "conformal", "datasets", "deploy", "evaluation",
    "export_onnx", "io", "metrics", "plotting", "policy", "runtime", "selective", "shift", "stats",
)

__all__ = ["__version__", "LogitsData", "load_logits", "stratified_split"]


def __getattr__(name):
    if name in SUBMODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")  # also sets the attribute: one import
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(SUBMODULES))
