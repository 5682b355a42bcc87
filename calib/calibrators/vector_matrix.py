"""Vector and matrix scaling (Guo et al. 2017; ODIR regularisation of Kull et al. 2019).

Vector scaling: ``p = softmax(w * z + b)`` with a per-class scale ``w`` (k,) and bias ``b`` (k,).
Matrix scaling: ``p = softmax(W z + b)`` with a full ``W`` (k, k); with ``reg_lambda`` / ``reg_mu`` it is
"MS-ODIR" (off-diagonal and intercept regularisation). Both are fitted by LBFGS in torch from the
identity map; see :mod:`calib.calibrators._linear`.
"""

from __future__ import annotations

from calib.calibrators._linear import LinearCalibrator

__all__ = ["VectorScaling", "MatrixScaling"]

_DOC_PARAMS = """
    reg_lambda : float, default 0.0
        Weight of the sum of squared off-diagonal entries of W (ODIR's lambda; unused by vector scaling),
        in [0, 1e12]. An unregularised full W with more parameters than calibration rows warns (ill-posed).
    reg_mu : float, default 0.0
        Weight of the sum of squared intercepts (ODIR's mu), in [0, 1e12].
    cv_folds : int or None, default None
        When set, choose (reg_lambda, reg_mu) on the calibration split by shuffled k-fold CV (lowest
        mean validation NLL), then refit on all rows; ``reg_lambda`` / ``reg_mu`` are then ignored.
        More folds than calibration rows raise ``ValueError`` at fit.
    cv_lambdas, cv_mus : list of float or None
        The CV grid; None gives Kull et al.'s grid (lambda in {1, 0.25, 0.5} x 10^(-5..6), mu in 10^(-5..6)).
    cv_seed : int, default 15
        Fold shuffling seed in [0, 2**32 - 1] (15 and 5 folds reproduce Kull et al.'s folds).
    max_iter : int, default 500
        LBFGS iterations; a fit that stops there before meeting its tolerance warns
        :class:`calib.base.ConvergenceWarning`. A non-finite objective raises :class:`calib.base.FitError`.
"""


class VectorScaling(LinearCalibrator):
    """Per-class scale and bias on the logits: ``softmax(w * z + b)``.

    Guo, Pleiss, Sun, Weinberger, "On Calibration of Modern Neural Networks", ICML 2017.

    Parameters
    ----------""" + _DOC_PARAMS + """
    Attributes
    ----------
    weights_ : ndarray (k, k)
        Diagonal matrix ``diag(w)``.
    bias_ : ndarray (k,)
    selected_reg_ : (float, float)
        The (lambda, mu) used for the final fit.

    Examples
    --------
    >>> from calib.datasets import synthetic
    >>> d = synthetic(n=2000, n_classes=4, temperature=2.0, seed=0)
    >>> vs = VectorScaling().fit(d.logits, d.labels)
    >>> bool(0.35 < vs.weights_.diagonal().mean() < 0.65)
    True
    """

    kind = "vector_scaling"
    _structure = "diagonal"

    def __init__(self, *, reg_mu=0.0, cv_folds=None, cv_mus=None, cv_seed=15, max_iter=500):
        self._init_common(reg_lambda=0.0, reg_mu=reg_mu, cv_folds=cv_folds, cv_lambdas=None, cv_mus=cv_mus,
                          cv_seed=cv_seed, max_iter=max_iter)
        del self.reg_lambda, self.cv_lambdas

    reg_lambda = 0.0
    cv_lambdas = None


class MatrixScaling(LinearCalibrator):
    """Full affine map of the logits: ``softmax(W z + b)``; MS-ODIR with ``reg_lambda``/``reg_mu``.

    Guo et al., ICML 2017 (matrix scaling); Kull, Perello-Nieto, Kängsepp, Silva Filho, Song, Flach,
    "Beyond temperature scaling: Obtaining well-calibrated multiclass probabilities with Dirichlet
    calibration", NeurIPS 2019 (ODIR).

    Parameters
    ----------""" + _DOC_PARAMS + """
    Examples
    --------
    >>> from calib.datasets import synthetic
    >>> d = synthetic(n=2000, n_classes=4, temperature=2.0, seed=0)
    >>> ms = MatrixScaling(reg_lambda=1e-3, reg_mu=1e-3).fit(d.logits, d.labels)
    >>> ms.predict_proba(d.logits).shape
    (2000, 4)
    """

    kind = "matrix_scaling"
    _structure = "full"

    def __init__(self, *, reg_lambda=0.0, reg_mu=0.0, cv_folds=None, cv_lambdas=None, cv_mus=None, cv_seed=15,
                 max_iter=500):
        self._init_common(reg_lambda=reg_lambda, reg_mu=reg_mu, cv_folds=cv_folds, cv_lambdas=cv_lambdas,
                          cv_mus=cv_mus, cv_seed=cv_seed, max_iter=max_iter)
