"""Dirichlet calibration (Kull et al. 2019): matrix scaling on log-probabilities.

``p = softmax(W log softmax(z) + b)``; ``matrix="full"`` (with ODIR ``reg_lambda``/``reg_mu`` this is
"Dir-ODIR") or ``matrix="diagonal"`` (k scales + k biases). Log-probabilities are floored at
log(float64 eps) as in the authors' code. Fitted by Newton's method in numpy (few classes) or
LBFGS in torch (many classes, or a CUDA ``device``); see :mod:`calib.calibrators._linear`.
"""

from __future__ import annotations

from calib.calibrators._linear import LinearCalibrator, log_softmax
from calib.calibrators.base import check_option
from calib.calibrators.vector_matrix import _DOC_PARAMS

__all__ = ["DirichletCalibration"]


class DirichletCalibration(LinearCalibrator):
    """Dirichlet calibration: ``softmax(W log p + b)`` with ``p = softmax(logits)``.

    Kull, Perello-Nieto, Kängsepp, Silva Filho, Song, Flach, "Beyond temperature scaling: Obtaining
    well-calibrated multiclass probabilities with Dirichlet calibration", NeurIPS 2019.

    Parameters
    ----------
    matrix : {"full", "diagonal"}, default "full"
        Full W (k, k) or a diagonal one.""" + _DOC_PARAMS + """
    Examples
    --------
    >>> from calib.datasets import synthetic
    >>> d = synthetic(n=2000, n_classes=4, temperature=2.0, seed=0)
    >>> dc = DirichletCalibration(reg_lambda=1e-3, reg_mu=1e-3).fit(d.logits, d.labels)
    >>> bool(abs(dc.predict_proba(d.logits).sum(axis=1) - 1).max() < 1e-5)
    True
    """

    kind = "dirichlet"

    def __init__(self, *, matrix="full", reg_lambda=0.0, reg_mu=0.0, cv_folds=None, cv_lambdas=None, cv_mus=None,
                 cv_seed=15, max_iter=500, solver="auto", device="cpu"):
        self.matrix = check_option(matrix, "matrix", ("full", "diagonal"))
        self._structure = matrix
        self._init_common(reg_lambda=reg_lambda, reg_mu=reg_mu, cv_folds=cv_folds, cv_lambdas=cv_lambdas,
                          cv_mus=cv_mus, cv_seed=cv_seed, max_iter=max_iter, solver=solver, device=device)

    def _features(self, logits):
        return log_softmax(logits)
