"""Two-class calibrators: Platt scaling (Platt 1999) and beta calibration (Kull et al. 2017).

Both take logits (n, 2) and return (n, 2); they reject other class counts at fit with a ValueError.
Each is a logistic regression on one or two features of the logits, fitted by scipy L-BFGS-B in
float64 with the exact gradient:

* Platt: ``P(y=1) = sigmoid(a s + c)`` with the margin ``s = z_1 - z_0``; with ``prior_correction``
  the 0/1 targets become Platt's ``(N+ + 1)/(N+ + 2)`` and ``1/(N- + 2)``.
* Beta ("abm"): ``P(y=1) = sigmoid(a ln p - b ln(1 - p) + c)`` with ``p = softmax(z)_1``, a, b >= 0
  (the log-probabilities are computed from the logits as log-softmax, so no clipping is needed).
"""

from __future__ import annotations

import numpy as np

from calib.calibrators.base import Calibrator

__all__ = ["PlattScaling", "BetaCalibration"]


def _check_binary(logits, name):
    if logits.shape[1] != 2:
        raise ValueError(f"Expected logits with 2 classes for {name}, got {logits.shape[1]} columns; "
                         "use vector_scaling or dirichlet for k > 2.")


def _log_probs(logits):
    z = logits.astype(np.float64)
    m = z.max(axis=1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))


def _logistic_fit(features, targets, bounds):
    """Minimise the mean binary cross-entropy of sigmoid(features @ theta[:-1] + theta[-1])."""
    from scipy.optimize import minimize

    X = np.column_stack([features, np.ones(features.shape[0])])

    def f(theta):
        eta = X @ theta
        loss = np.mean(np.logaddexp(0.0, eta) - targets * eta)
        g = X.T @ (0.5 * (1.0 + np.tanh(0.5 * eta)) - targets) / X.shape[0]
        return loss, g

    theta0 = np.zeros(X.shape[1])
    theta0[:-1] = 1.0
    res = minimize(f, theta0, jac=True, method="L-BFGS-B", bounds=bounds,
                   options={"maxiter": 1000, "ftol": 1e-15, "gtol": 1e-10})
    return res.x


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
        a, c = _logistic_fit(s[:, None], t, bounds=[(None, None), (None, None)])
        self.slope_, self.intercept_ = float(a), float(c)

    def _predict_proba(self, logits):
        s = logits[:, 1].astype(np.float64) - logits[:, 0]
        return _two_column(self.slope_ * s + self.intercept_)

    def _get_state(self):
        return {"slope": self.slope_, "intercept": self.intercept_}, {}

    def _set_state(self, state, arrays):
        self.slope_, self.intercept_ = float(state["slope"]), float(state["intercept"])


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
        feats = np.column_stack([lp[:, 1], -lp[:, 0]])
        a, b, c = _logistic_fit(feats, labels.astype(np.float64), bounds=[(0, None), (0, None), (None, None)])
        self.a_, self.b_, self.c_ = float(a), float(b), float(c)

    def _predict_proba(self, logits):
        lp = _log_probs(logits)
        return _two_column(self.a_ * lp[:, 1] - self.b_ * lp[:, 0] + self.c_)

    def _get_state(self):
        return {"a": self.a_, "b": self.b_, "c": self.c_}, {}

    def _set_state(self, state, arrays):
        self.a_, self.b_, self.c_ = float(state["a"]), float(state["b"]), float(state["c"])
