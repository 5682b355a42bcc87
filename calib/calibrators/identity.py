"""The no-op baseline: ``softmax(logits)``."""

from __future__ import annotations

from calib.calibrators.base import Calibrator, softmax

__all__ = ["IdentityCalibrator"]


class IdentityCalibrator(Calibrator):
    """Uncalibrated probabilities, ``softmax(logits)``: the baseline every calibrator is judged against.

    >>> import numpy as np
    >>> IdentityCalibrator().fit(np.zeros((2, 2)), [0, 1]).predict_proba(np.zeros((1, 2))).tolist()
    [[0.5, 0.5]]
    """

    kind = "identity"

    def __init__(self):
        pass

    def _fit(self, logits, labels):
        pass

    def _predict_proba(self, logits):
        return softmax(logits)
