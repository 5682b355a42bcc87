"""Vector and matrix scaling (Guo et al. 2017; ODIR regularisation of Kull et al. 2019).

Vector scaling: ``p = softmax(w * z + b)`` with a per-class scale ``w`` (k,) and bias ``b`` (k,).
Matrix scaling: ``p = softmax(W z + b)`` with a full ``W`` (k, k); with ``reg_lambda`` / ``reg_mu`` it is
"MS-ODIR" (off-diagonal and intercept regularisation). Both are fitted from the identity map by
Newton's method (numpy; few classes) or LBFGS (torch; many classes or a GPU); see :mod:`calib.calibrators._linear`.
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
        Solver iterations; a fit that stops there before meeting its tolerance warns
        :class:`calib.base.ConvergenceWarning`. A non-finite objective raises :class:`calib.base.FitError`.
    solver : {"auto", "newton", "lbfgs"}, default "auto"
        "newton": numpy, exact Hessian, the fast choice for few classes (k (k + 1) <= 600 parameters for a full
        W, 2 k for a diagonal one); "lbfgs": torch, for many classes or a GPU; "auto" picks Newton up to that
        size on the CPU. All reach the same optimum of a convex objective (to the solver tolerance).
    device : str, default "cpu"
        Where the torch LBFGS fit runs ("cpu", "cuda", "cuda:N"); the fitted state is numpy either way, so
        prediction and artifacts do not depend on it. A CUDA device that torch cannot see raises at fit.
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

    def __init__(self, *, reg_mu=0.0, cv_folds=None, cv_mus=None, cv_seed=15, max_iter=500, solver="auto",
                 device="cpu"):
        self._init_common(reg_lambda=0.0, reg_mu=reg_mu, cv_folds=cv_folds, cv_lambdas=None, cv_mus=cv_mus,
                          cv_seed=cv_seed, max_iter=max_iter, solver=solver, device=device)
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
                 max_iter=500, solver="auto", device="cpu"):
        self._init_common(reg_lambda=reg_lambda, reg_mu=reg_mu, cv_folds=cv_folds, cv_lambdas=cv_lambdas,
                          cv_mus=cv_mus, cv_seed=cv_seed, max_iter=max_iter, solver=solver, device=device)
