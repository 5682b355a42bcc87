"""Temperature scaling (Guo et al., 2017, "On Calibration of Modern Neural Networks", ICML).

``p = softmax(z / T)`` with one scalar T > 0 chosen to minimise the negative log-likelihood (NLL) of the
calibration labels. Written in the inverse temperature b = 1/T the NLL

    L(b) = mean_i [ logsumexp(b z_i) - b z_{i, y_i} ]

is convex: L'(b) = mean_i (E_{p_b}[z_i] - z_{i,y_i}) and L''(b) = mean_i Var_{p_b}[z_i] >= 0. We find
the root of L' with safeguarded Halley steps (cubic convergence, bracketing by the sign of L') started
from the optimum of a strided subsample, so the full data is typically read two or three times. Each
read is a chunked pass over rows computed in the input's precision (float32 stays float32) with
per-row sums reduced in float64, so memory beyond the input is O(chunk x k).
"""

from __future__ import annotations

import math

import numpy as np

from calib.calibrators.base import Calibrator, _chunk_rows, softmax

__all__ = ["TemperatureScaling", "fit_inverse_temperature", "nll_derivatives"]


class TemperatureScaling(Calibrator):
    """Scale logits by one NLL-optimal temperature.

    Parameters
    ----------
    log_t_bounds : (float, float), default (-4.6, 4.6)
        Search interval for log T (default: T in [0.01, 100]). Fitting raises ``ValueError`` when the
        NLL optimum lies outside it (for example on separable or label-independent data).

    Attributes
    ----------
    temperature_ : float
        The fitted divisor T; calibrated probabilities are ``softmax(logits / temperature_)``.
    fit_info_ : dict
        ``n_samples``, ``nll_after`` (calibration NLL at the optimum) and ``n_passes`` (full reads of
        the data by the solver).

    Examples
    --------
    >>> from calib.datasets import synthetic
    >>> data = synthetic(n=2000, n_classes=5, temperature=2.0, seed=0)
    >>> ts = TemperatureScaling().fit(data.logits, data.labels)
    >>> bool(1.8 < ts.temperature_ < 2.2)
    True
    """

    kind = "temperature"

    def __init__(self, *, log_t_bounds=(-4.6, 4.6)):
        try:
            lo, hi = (float(v) for v in log_t_bounds)
        except (TypeError, ValueError):
            raise TypeError(
                f"Expected log_t_bounds as two numbers (low, high), got {log_t_bounds!r}."
            ) from None
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(
                f"Expected log_t_bounds as finite (low, high) with low < high, got {log_t_bounds!r}."
            )
        self.log_t_bounds = (lo, hi)

    def _fit(self, logits, labels):
        beta, info = fit_inverse_temperature(logits, labels, log_t_bounds=self.log_t_bounds)
        self.temperature_ = 1.0 / beta
        self.fit_info_ = info

    def _predict_proba(self, logits):
        return softmax(logits, beta=1.0 / self.temperature_)

    def _get_state(self):
        return {"temperature": self.temperature_}, {}

    def _set_state(self, state, arrays):
        self.temperature_ = float(state["temperature"])


def softmax_scaled(logits, beta):
    """``softmax(beta * logits)`` in the input's precision (alias of ``softmax(logits, beta=beta)``)."""
    return softmax(logits, beta=beta)


def nll_derivatives(logits, labels, beta, *, order=3, chunk_rows=None):
    """NLL of ``softmax(beta * logits)`` and its first ``order`` derivatives in beta (means over rows).

    Returns ``(nll, d1, d2, d3)`` (entries past ``order`` are NaN). One chunked pass over the rows: per
    row the centred logits ``d = z - max(z)`` give ``S_j = sum_c exp(beta d_c) d_c^j`` in the input's
    precision; the moments are combined and averaged in float64.
    """
    x = np.asarray(logits)
    y = np.asarray(labels)
    n, k = x.shape
    rows = chunk_rows or _chunk_rows(k)
    work_d = np.empty((min(rows, n), k), dtype=x.dtype)
    work_e = np.empty_like(work_d)
    work_w = np.empty_like(work_d)
    b = x.dtype.type(beta)
    totals = np.zeros(4)
    for start in range(0, n, rows):
        chunk = x[start:start + rows]
        m = chunk.shape[0]
        d, e, w = work_d[:m], work_e[:m], work_w[:m]
        np.subtract(chunk, chunk.max(axis=1, keepdims=True), out=d)
        dy = np.take_along_axis(d, y[start:start + m, None], axis=1)[:, 0].astype(np.float64)
        np.multiply(d, b, out=e)
        np.exp(e, out=e)
        # Row sums S_j = sum_c e d^j by einsum (SIMD, no temporaries); per-row values then go to float64.
        s0 = np.einsum("ij->i", e).astype(np.float64)
        totals[0] += np.sum(np.log(s0) - beta * dy)
        if order >= 1:
            np.multiply(e, d, out=w)
            mu = np.einsum("ij->i", w).astype(np.float64) / s0
            totals[1] += np.sum(mu - dy)
        if order >= 2:
            m2 = np.einsum("ij,ij->i", w, d).astype(np.float64) / s0
            totals[2] += np.sum(m2 - mu * mu)
        if order >= 3:
            w *= d
            m3 = np.einsum("ij,ij->i", w, d).astype(np.float64) / s0
            totals[3] += np.sum(m3 - 3.0 * mu * m2 + 2.0 * mu ** 3)
    out = totals / n
    out[order + 1:] = np.nan
    return tuple(float(v) for v in out)


def fit_inverse_temperature(logits, labels, *, log_t_bounds=(-4.6, 4.6), tol=None, max_iter=100):
    """Return ``(beta, info)``: the NLL-minimising inverse temperature and fit diagnostics.

    Safeguarded Halley iteration on L'(beta) inside the bracket implied by ``log_t_bounds``; raises
    ``ValueError`` if the optimum lies outside the bracket. ``tol`` (relative step size at which to stop)
    defaults to 16 machine epsilons of the input's dtype.
    """
    x = np.asarray(logits)
    y = np.asarray(labels)
    n = x.shape[0]
    if tol is None:
        tol = 16 * float(np.finfo(x.dtype).eps)
    beta_lo, beta_hi = math.exp(-log_t_bounds[1]), math.exp(-log_t_bounds[0])
    beta = 1.0
    # A strided subsample gets close cheaply; the full data then needs one or two Halley steps.
    sub = 4096
    if n > 4 * sub:
        idx = np.linspace(0, n - 1, sub).round().astype(np.int64)
        try:
            beta, _ = _halley(x[idx], y[idx], 1.0, beta_lo, beta_hi, tol=1e-4, max_iter=max_iter)
        except ValueError:
            beta = 1.0
    beta, info = _halley(x, y, beta, beta_lo, beta_hi, tol=tol, max_iter=max_iter)
    info["n_samples"] = int(n)
    return beta, info


def _halley(x, y, beta, lo, hi, *, tol, max_iter):
    beta = min(max(beta, lo), hi)
    lo_seen = hi_seen = False  # whether L' has been evaluated at a point that bounds the root
    for it in range(1, max_iter + 1):
        nll, g, h, t = nll_derivatives(x, y, beta)
        if g > 0:
            hi, hi_seen = beta, True
        elif g < 0:
            lo, lo_seen = beta, True
        else:
            return beta, {"nll_after": nll, "n_passes": it, "converged": True}
        if h > 0:
            denom = 1.0 - g * t / (2.0 * h * h)
            step = -g / h / denom if denom > 0.5 else -g / h  # fall back to Newton far from the root
        else:
            step = math.nan
        new = beta + step
        if not (lo < new < hi):
            # Leave the bracket: first probe an unexplored bound, then bisect in log space.
            if g < 0 and not hi_seen:
                new = hi
            elif g > 0 and not lo_seen:
                new = lo
            else:
                new = math.sqrt(lo * hi)
            if new == beta:
                _raise_on_bound(beta, g)
        if abs(new - beta) <= tol * beta:
            # Second-order Taylor estimate: exact up to O(step^3), far below tol.
            d = new - beta
            return new, {"nll_after": nll + g * d + 0.5 * h * d * d, "n_passes": it, "converged": True}
        if (hi - lo) <= tol * lo and lo_seen and hi_seen:
            return new, {"nll_after": nll, "n_passes": it, "converged": True}
        beta = new
    raise RuntimeError(f"Temperature scaling did not converge in {max_iter} iterations (last beta {beta}).")


def _raise_on_bound(beta, g):
    side = "below" if g < 0 else "above"
    t = 1.0 / beta
    raise ValueError(
        f"Expected the NLL-optimal temperature inside log_t_bounds, got an optimum {side} T = {t:.4g} "
        "(the NLL keeps decreasing towards the bound: separable or label-independent calibration data?). "
        "Widen log_t_bounds if this is intended."
    )
