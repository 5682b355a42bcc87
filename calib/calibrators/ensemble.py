"""Ensemble temperature scaling (Zhang, Kailkhura, Han, "Mix-n-Match: Ensemble and Compositional
Methods for Uncertainty Calibration in Deep Learning", ICML 2020).

``p = w_0 softmax(z / T) + w_1 softmax(z) + w_2 / k`` with T the NLL-optimal temperature
(:class:`~calib.calibrators.temperature.TemperatureScaling`) and weights w on the probability simplex
minimising the calibration NLL (a convex problem in w; solved by scipy SLSQP in float64).
"""

from __future__ import annotations

import warnings

import numpy as np

from calib.base import ConvergenceWarning, FitError, state_array
from calib.calibrators.base import Calibrator, softmax, state_error
from calib.calibrators.temperature import (
    TemperatureScaling,
    softmax_scaled,
    state_temperature,
)

_MAX_ITER = 200  # SLSQP iterations of the weight fit

__all__ = ["EnsembleTemperatureScaling"]


class EnsembleTemperatureScaling(Calibrator):
    """Mixture of temperature-scaled, original and uniform probabilities (Zhang et al. 2020, ICML).

    Parameters
    ----------
    log_t_bounds : (float, float), default (-4.6, 4.6)
        Passed to the temperature fit (validated as by :class:`TemperatureScaling`).

    Fitting raises :class:`calib.base.FitError` where temperature scaling does, and warns
    :class:`calib.base.ConvergenceWarning` if the weight fit stops at its iteration limit.

    Attributes
    ----------
    temperature_ : float
    weights_ : ndarray (3,)
        Mixture weights of (temperature-scaled, original, uniform), non-negative, summing to 1.

    Examples
    --------
    >>> from calib.datasets import synthetic
    >>> d = synthetic(n=2000, n_classes=4, temperature=2.0, seed=0)
    >>> ets = EnsembleTemperatureScaling().fit(d.logits, d.labels)
    >>> bool(abs(ets.weights_.sum() - 1) < 1e-9 and (ets.weights_ >= 0).all())
    True
    """

    kind = "ensemble_temperature"

    def __init__(self, *, log_t_bounds=(-4.6, 4.6)):
        self.log_t_bounds = TemperatureScaling(log_t_bounds=log_t_bounds).log_t_bounds

    def _fit(self, logits, labels):
        from scipy.optimize import minimize

        ts = TemperatureScaling(log_t_bounds=self.log_t_bounds)
        ts._fit(logits, labels)  # raises FitError on non-finite objectives and optima outside the bounds
        self.temperature_ = float(ts.temperature_)
        n, k = logits.shape
        rows = np.arange(n)
        comps = np.stack([
            softmax_scaled(logits, 1.0 / self.temperature_)[rows, labels].astype(np.float64),
            softmax(logits)[rows, labels].astype(np.float64),
            np.full(n, 1.0 / k),
        ], axis=1)

        def nll(w):
            with np.errstate(divide="ignore"):  # a label of probability 0 under w: NLL inf, judged below
                return -np.mean(np.log(comps @ w))

        def grad(w):
            with np.errstate(divide="ignore", invalid="ignore"):
                return -(comps / (comps @ w)[:, None]).mean(axis=0)

        ts_only = np.array([1.0, 0.0, 0.0])
        # Start from plain temperature scaling unless a calibration label has probability 0 there (float32
        # underflow): then from the centre of the simplex, where the uniform component keeps every row > 0.
        start = ts_only if np.isfinite(nll(ts_only)) else np.full(3, 1.0 / 3.0)
        res = minimize(nll, start, jac=grad, method="SLSQP", bounds=[(0.0, 1.0)] * 3,
                       constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones(3)}],
                       options={"ftol": 1e-12, "maxiter": _MAX_ITER})
        w = np.clip(res.x, 0.0, None)
        total = w.sum()
        if not (np.isfinite(w).all() and total > 0 and np.isfinite(nll(w / total))):
            raise FitError(
                f"Expected a finite NLL of the ensemble weights, got weights {res.x.tolist()} and NLL {res.fun!r} "
                f"(SLSQP: {res.message}); likely cause: calibration labels whose probability underflows to 0 "
                "under every component (extreme logits): pass float64 logits or clip them."
            )
        w /= total
        if res.status == 9:  # iteration limit
            g = grad(w)
            kkt = float(g[w > 1e-12].max() - g.min())  # 0 at the optimum on the simplex
            warnings.warn(
                f"EnsembleTemperatureScaling: the weight fit stopped at its iteration limit ({_MAX_ITER}) before "
                f"meeting its tolerance: optimality residual {kkt:.3g} (0 at the optimum), NLL {nll(w):.6g}.",
                ConvergenceWarning, stacklevel=3,
            )
        if nll(w) > nll(ts_only):  # never worse than plain temperature scaling
            w = ts_only
        self.weights_ = w

    def _predict_proba(self, logits):
        w = self.weights_.astype(np.float32) if logits.dtype == np.float32 else self.weights_
        out = softmax_scaled(logits, 1.0 / self.temperature_)
        out *= w[0]
        out += w[1] * softmax(logits)
        out += w[2] / logits.shape[1]
        return out

    def _get_state(self):
        return {"temperature": self.temperature_}, {"weights": self.weights_}

    def _set_state(self, state, arrays):
        cls = type(self)
        self.temperature_ = state_temperature(state, self.log_t_bounds, cls)
        w = state_array(arrays, "weights", shape=(3,), minimum=0.0, maximum=1.0, owner=cls)
        if abs(w.sum() - 1.0) > 1e-9:
            raise state_error(cls, "weights", "summing to 1 (mixture weights on the simplex)",
                              f"a sum of {w.sum()!r}")
        self.weights_ = w
