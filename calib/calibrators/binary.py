"""Two-class calibrators: Platt scaling (Platt 1999) and beta calibration (Kull et al. 2017).

Both take logits (n, 2) and return (n, 2); they reject other class counts at fit with a ValueError.
Each is a logistic regression on one or two features of the logits, fitted by scipy L-BFGS-B in
float64 with the exact gradient:

* Platt: ``P(y=1) = sigmoid(a s + c)`` with the margin ``s = z_1 - z_0``; with ``prior_correction``
  the 0/1 targets become Platt's ``(N+ + 1)/(N+ + 2)`` and ``1/(N- + 2)``.
* Beta ("abm"): ``P(y=1) = sigmoid(a ln p - b ln(1 - p) + c)`` with ``p = softmax(z)_1``, a, b >= 0
  (the log-probabilities are computed from the logits as log-softmax, so no clipping is needed).

A fit whose loss or gradient is not finite, or that L-BFGS-B abandons far from the optimum (a few logits near
the float limits), raises :class:`calib.base.FitError` instead of returning about the start; the iteration
limit warns :class:`calib.base.ConvergenceWarning`; labels separated by a threshold on the margin (no finite
unregularised optimum) warn ``UserWarning``. Stored state must have ``n_classes == 2`` (and a, b >= 0 for beta).
"""

from __future__ import annotations

import warnings

import numpy as np

from calib.base import ConvergenceWarning, FitError, state_scalar
from calib.calibrators.base import Calibrator, state_error

__all__ = ["PlattScaling", "BetaCalibration"]


def _check_binary_state(obj):
    if obj.n_classes_ != 2:
        raise state_error(type(obj), "n_classes", "= 2 (a two-class calibrator)", repr(obj.n_classes_))


def _check_binary(logits, name):
    if logits.shape[1] != 2:
        raise ValueError(f"Expected logits with 2 classes for {name}, got {logits.shape[1]} columns; "
                         "use vector_scaling or dirichlet for k > 2.")


def _log_probs(logits):
    z = logits.astype(np.float64)
    m = z.max(axis=1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))


_MAX_ITER = 1000  # L-BFGS-B iterations of the logistic fits


def _logistic_fit(features, targets, bounds, *, name="logistic fit"):
    """Minimise the mean binary cross-entropy of sigmoid(features @ theta[:-1] + theta[-1]).

    Raises :class:`calib.base.FitError` when the loss or gradient is not finite, or when L-BFGS-B stops before
    its limit far from the optimum (the projected gradient still large: it would return about the start);
    warns :class:`calib.base.ConvergenceWarning` at the iteration limit.
    """
    from scipy.optimize import minimize

    X = np.column_stack([features, np.ones(features.shape[0])])
    scale = max(1.0, float(np.abs(X).max()))
    # A gradient entry scales with its feature: a converged fit ends near 1e-9 of the typical |feature|, a stalled
    # one (a few extreme rows wrecking L-BFGS-B's curvature model) far above 1e-4 of it.
    stall = 1e-4 * np.maximum(1.0, np.median(np.abs(X), axis=0))

    def f(theta):
        with np.errstate(over="ignore", invalid="ignore"):
            eta = X @ theta
            loss = np.mean(np.logaddexp(0.0, eta) - targets * eta)
            g = X.T @ (0.5 * (1.0 + np.tanh(0.5 * eta)) - targets) / X.shape[0]
        return loss, g

    theta0 = np.zeros(X.shape[1])
    theta0[:-1] = 1.0
    loss0, g0 = f(theta0)
    if not (np.isfinite(loss0) and np.isfinite(g0).all()):
        raise _non_finite(name, "at the start", loss0, scale)
    res = minimize(f, theta0, jac=True, method="L-BFGS-B", bounds=bounds,
                   options={"maxiter": _MAX_ITER, "ftol": 1e-15, "gtol": 1e-10})
    loss, g = f(res.x)
    if not (np.isfinite(res.x).all() and np.isfinite(loss) and np.isfinite(g).all()):
        raise _non_finite(name, f"after {res.nit} iterations", loss, scale)
    # projected gradient: a coordinate held at its lower bound 0 by a positive gradient is optimal there
    lower = np.array([-np.inf if lo is None else lo for lo, _ in bounds])
    pg = np.where((res.x <= lower) & (g > 0), 0.0, g)
    miss = float(np.abs(pg).max())
    stalled = bool((np.abs(pg) > stall).any())
    if res.nit >= _MAX_ITER:
        warnings.warn(f"{name}: L-BFGS-B stopped at its iteration limit ({_MAX_ITER}) before meeting its tolerance: "
                      f"largest projected gradient entry {miss:.3g} (tolerance 1e-10).", ConvergenceWarning,
                      stacklevel=4)
    elif stalled:
        raise FitError(
            f"Expected {name} to reach the optimum, got a stop after {res.nit} iterations ({res.message}) with a "
            f"projected gradient entry of {miss:.3g}, far from 0; likely cause: logits as large as {scale:.3g} "
            "(features of that scale leave no usable step size). Clip or rescale the logits."
        )
    return res.x


def _non_finite(name, where, loss, scale):
    return FitError(f"Expected a finite loss and gradient in the {name}, got loss {loss!r} {where}; likely cause: "
                    f"logits as large as {scale:.3g} overflow float64. Clip or rescale the logits.")


def _warn_if_separable(s, labels, name, *, increasing_only=False, hint=""):
    """Warn when the labels are separated by a threshold on the margin ``s``: the unpenalised logistic
    MLE then does not exist (the slope grows without bound), and the fit returns a near-step function."""
    pos, neg = s[labels == 1], s[labels == 0]
    if not pos.size or not neg.size:
        return
    up = neg.max() < pos.min()
    down = (not increasing_only) and pos.max() < neg.min()
    if up or down:
        warnings.warn(
            f"{name}: the calibration labels are separated by a threshold on the logit margin z_1 - z_0, so the "
            "unregularised fit is ill-posed (its parameters grow until they stop at the tolerance, giving 0/1 "
            f"probabilities).{hint}", UserWarning, stacklevel=4)


def _two_column(eta):
    p1 = 0.5 * (1.0 + np.tanh(0.5 * eta))
    return np.column_stack([1.0 - p1, p1]).astype(np.float32)


class PlattScaling(Calibrator):
    """Logistic regression on the logit margin ``z_1 - z_0`` (two classes only).

    Platt, "Probabilistic outputs for support vector machines and comparisons to regularized
    likelihood methods", Advances in Large Margin Classifiers, 1999.

    Parameters
    ----------
    prior_correction : bool, default False
        Use Platt's smoothed targets instead of 0/1.

    Attributes
    ----------
    slope_, intercept_ : float
        ``P(y=1) = sigmoid(slope_ * (z_1 - z_0) + intercept_)``.

    Examples
    --------
    >>> import numpy as np
    >>> z = np.array([[0.0, 2.0], [0.0, -2.0], [0.0, 1.0], [0.0, -1.0]]); y = np.array([1, 0, 0, 1])
    >>> PlattScaling().fit(z, y).predict_proba(z).shape
    (4, 2)
    """

    kind = "platt"

    def __init__(self, *, prior_correction=False):
        if not isinstance(prior_correction, bool):
            raise TypeError(f"Expected prior_correction as a bool, got {type(prior_correction).__name__} "
                            f"{prior_correction!r}.")
        self.prior_correction = prior_correction

    def _fit(self, logits, labels):
        _check_binary(logits, "PlattScaling")
        s = logits[:, 1].astype(np.float64) - logits[:, 0]
        t = labels.astype(np.float64)
        if self.prior_correction:
            n_pos = t.sum()
            n_neg = t.size - n_pos
            t = np.where(t == 1, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
        if not self.prior_correction:
            _warn_if_separable(s, labels, "PlattScaling", hint=" Use prior_correction=True (Platt's smoothed "
                               "targets keep the fit finite).")
        a, c = _logistic_fit(s[:, None], t, bounds=[(None, None), (None, None)], name="PlattScaling fit")
        self.slope_, self.intercept_ = float(a), float(c)

    def _predict_proba(self, logits):
        s = logits[:, 1].astype(np.float64) - logits[:, 0]
        return _two_column(self.slope_ * s + self.intercept_)

    def _get_state(self):
        return {"slope": self.slope_, "intercept": self.intercept_}, {}

    def _set_state(self, state, arrays):
        _check_binary_state(self)
        self.slope_ = state_scalar(state, "slope", float, owner=type(self))
        self.intercept_ = state_scalar(state, "intercept", float, owner=type(self))


class BetaCalibration(Calibrator):
    """Beta calibration, the "abm" family (two classes only).

    Kull, Silva Filho, Flach, "Beta calibration: a well-founded and easily implemented improvement on
    logistic calibration for binary classifiers", AISTATS 2017.

    Attributes
    ----------
    a_, b_, c_ : float
        ``P(y=1) = sigmoid(a_ ln p - b_ ln(1 - p) + c_)``, a_, b_ >= 0.

    Examples
    --------
    >>> import numpy as np
    >>> z = np.array([[0.0, 2.0], [0.0, -2.0], [0.0, 1.0], [0.0, -1.0]]); y = np.array([1, 0, 0, 1])
    >>> bc = BetaCalibration().fit(z, y)
    >>> bool(bc.a_ >= 0 and bc.b_ >= 0)
    True
    """

    kind = "beta"

    def __init__(self):
        pass

    def _fit(self, logits, labels):
        _check_binary(logits, "BetaCalibration")
        lp = _log_probs(logits)
        _warn_if_separable(lp[:, 1] - lp[:, 0], labels, "BetaCalibration", increasing_only=True)
        feats = np.column_stack([lp[:, 1], -lp[:, 0]])
        a, b, c = _logistic_fit(feats, labels.astype(np.float64), bounds=[(0, None), (0, None), (None, None)],
                                name="BetaCalibration fit")
        self.a_, self.b_, self.c_ = float(a), float(b), float(c)

    def _predict_proba(self, logits):
        lp = _log_probs(logits)
        return _two_column(self.a_ * lp[:, 1] - self.b_ * lp[:, 0] + self.c_)

    def _get_state(self):
        return {"a": self.a_, "b": self.b_, "c": self.c_}, {}

    def _set_state(self, state, arrays):
        _check_binary_state(self)
        cls = type(self)
        self.a_ = state_scalar(state, "a", float, minimum=0.0, owner=cls)  # the fit bounds a, b >= 0
        self.b_ = state_scalar(state, "b", float, minimum=0.0, owner=cls)
        self.c_ = state_scalar(state, "c", float, owner=cls)
