"""calib: held-out logits in, calibrated probabilities and trust decisions out.

``import calib`` is light: it imports numpy only. torch, scipy, netcal, matplotlib and hydra are
imported inside the functions that need them. The layers and what each may import:
``docs/architecture.md``.
"""

__version__ = "0.3.0"

from calib import _moved  # noqa: E402

_moved.install()  # old import paths of moved modules keep working

from calib.io import LogitsData, load_logits, stratified_split  # noqa: E402

__all__ = ["__version__", "LogitsData", "load_logits", "stratified_split"]
