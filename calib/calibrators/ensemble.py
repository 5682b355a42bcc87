"""Ensemble temperature scaling (Zhang, Kailkhura, Han, "Mix-n-Match: Ensemble and Compositional
Methods for Uncertainty Calibration in Deep Learning", ICML 2020).

``p = w_0 softmax(z / T) + w_1 softmax(z) + w_2 / k`` with T the NLL-optimal temperature
(:class:`~calib.calibrators.temperature.TemperatureScaling`) and weights w on the probability simplex
minimising the calibration NLL (a convex problem in w; solved by scipy SLSQP in float64).
"""

from __future__ import annotations

import numpy as np

from calib.calibrators.base import Calibrator, softmax
from calib.calibrators.temperature import TemperatureScaling, softmax_scaled

__all__ = ["EnsembleTemperatureScaling"]


class EnsembleTemperatureScaling(Calibrator):
    """Mixture of temperature-scaled, original and uniform probabilities (Zhang et al. 2020, ICML).

    Parameters
    ----------
    log_t_bounds : (float, float), default (-4.6, 4.6)
        Passed to the temperature fit.

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
        ts._fit(logits, labels)
        self.temperature_ = float(ts.temperature_)
        n, k = logits.shape
        rows = np.arange(n)
        comps = np.stack([
            softmax_scaled(logits, 1.0 / self.temperature_)[rows, labels].astype(np.float64),
            softmax(logits)[rows, labels].astype(np.float64),
            np.full(n, 1.0 / k),
        ], axis=1)

        def nll(w):
            return -np.mean(np.log(comps @ w))

        def grad(w):
            return -(comps / (comps @ w)[:, None]).mean(axis=0)

        res = minimize(nll, np.array([1.0, 0.0, 0.0]), jac=grad, method="SLSQP", bounds=[(0.0, 1.0)] * 3,
                       constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones(3)}],
                       options={"ftol": 1e-12, "maxiter": 200})
        w = np.clip(res.x, 0.0, None)
        w /= w.sum()
        if nll(w) > nll(np.array([1.0, 0.0, 0.0])):  # never worse than plain temperature scaling
            w = np.array([1.0, 0.0, 0.0])
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
        self.temperature_ = float(state["temperature"])
        self.weights_ = np.asarray(arrays["weights"], dtype=np.float64)
