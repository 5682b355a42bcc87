"""calib: held-out logits in, calibrated probabilities and trust decisions out.

``import calib`` is light: it imports numpy only. torch, scipy, netcal, matplotlib and hydra are
imported inside the functions that need them.
"""

__version__ = "0.1.0"

from calib.io import LogitsData, load_logits, stratified_split  # noqa: E402

__all__ = ["__version__", "LogitsData", "load_logits", "stratified_split"]
