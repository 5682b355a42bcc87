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
import numbers
import warnings

import numpy as np

from calib.base import ConvergenceWarning, FitError, state_scalar
from calib.calibrators.base import Calibrator, _chunk_rows, softmax, state_error

__all__ = ["TemperatureScaling", "fit_inverse_temperature", "fit_inverse_temperature_chunked", "nll_derivatives",
           "check_log_t_bounds", "subsample_index", "LOG_T_LIMIT"]


class TemperatureScaling(Calibrator):
    """Scale logits by one NLL-optimal temperature.

    Parameters
    ----------
    log_t_bounds : (float, float), default (-4.6, 4.6)
        Search interval for log T (default: T in [0.01, 100]), a pair of numbers inside
        [-80, 80] (:data:`LOG_T_LIMIT`). Fitting raises :class:`calib.base.FitError` (a ``ValueError``)
        when the NLL optimum lies outside it (for example on separable or label-independent data), or when
        the NLL is not finite (logits whose range overflows their dtype: pass float64 logits).

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
        self.log_t_bounds = check_log_t_bounds(log_t_bounds)

    def _fit(self, logits, labels):
        beta, info = fit_inverse_temperature(logits, labels, log_t_bounds=self.log_t_bounds)
        self.temperature_ = 1.0 / beta
        self.fit_info_ = info

    def _predict_proba(self, logits):
        return softmax(logits, beta=1.0 / self.temperature_)

    #: :meth:`fit_chunked` exists (the out-of-core pipeline, :mod:`calib.evaluation.streaming`)
    supports_chunked_fit = True

    def fit_chunked(self, blocks, n, n_classes, dtype, *, subsample=None):
        """Fit on ``n`` calibration rows delivered block by block (:func:`fit_inverse_temperature_chunked`);
        the same temperature as :meth:`fit` on those rows, bit for bit. Returns ``self``."""
        beta, info = fit_inverse_temperature_chunked(blocks, n, dtype, subsample=subsample,
                                                     log_t_bounds=self.log_t_bounds)
        self.temperature_ = 1.0 / beta
        self.fit_info_ = info
        self.n_classes_ = int(n_classes)
        return self

    def _get_state(self):
        return {"temperature": self.temperature_}, {}

    def _set_state(self, state, arrays):
        self.temperature_ = state_temperature(state, self.log_t_bounds, type(self))


#: bounds of log T accepted in ``log_t_bounds``: T = exp(+-80) is about 5.5e34 / 1.8e-35, and 1/T must stay a
#: normal float32 number, since float32 logits are scaled in float32 (exp(88.7) overflows float32).
LOG_T_LIMIT = 80.0


def check_log_t_bounds(value, name="log_t_bounds"):
    """``(low, high)`` as two finite floats with ``-LOG_T_LIMIT <= low < high <= LOG_T_LIMIT``.

    A string is refused even when it holds digits (``"12"`` would otherwise read as (1, 2)), and so are
    bools, sequences of another length and numbers too large for a float.
    """
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or not hasattr(value, "__iter__") \
            or getattr(value, "ndim", 1) != 1:
        raise TypeError(f"Expected {name} as a pair of numbers (low, high), got {type(value).__name__} {value!r}.")
    items = list(value)
    if len(items) != 2 or not all(isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))
                                  for v in items):
        raise TypeError(f"Expected {name} as a pair of numbers (low, high), got {value!r}.")
    try:
        lo, hi = (float(v) for v in items)
    except OverflowError:
        raise ValueError(f"Expected {name} within [-{LOG_T_LIMIT:g}, {LOG_T_LIMIT:g}], got {value!r:.80} "
                         "(too large for a float).") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"Expected {name} as finite (low, high) with low < high, got {value!r}.")
    if lo < -LOG_T_LIMIT or hi > LOG_T_LIMIT:
        raise ValueError(
            f"Expected {name} within [-{LOG_T_LIMIT:g}, {LOG_T_LIMIT:g}] (T between exp(-{LOG_T_LIMIT:g}) and "
            f"exp({LOG_T_LIMIT:g}); beyond, 1/T overflows float32), got {value!r}."
        )
    return lo, hi


def state_temperature(state, log_t_bounds, owner, key="temperature"):
    """Pop a fitted temperature from ``state``: finite, > 0 and inside ``exp(log_t_bounds)`` (where every fit
    puts it; a relative 1e-9 of slack covers the rounding of ``1 / beta``)."""
    lo, hi = math.exp(log_t_bounds[0]), math.exp(log_t_bounds[1])
    t = state_scalar(state, key, float, minimum=0.0, exclusive=True, owner=owner)
    if not (lo * (1 - 1e-9) <= t <= hi * (1 + 1e-9)):
        raise state_error(owner, key, f"inside exp(log_t_bounds) = [{lo:.6g}, {hi:.6g}] (where every fit puts it)",
                          repr(t))
    return t


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
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # non-finite totals are the caller's to judge
        _accumulate(x, y, b, beta, order, rows, n, work_d, work_e, work_w, totals)
    out = totals / n
    out[order + 1:] = np.nan
    return tuple(float(v) for v in out)


def _accumulate(x, y, b, beta, order, rows, n, work_d, work_e, work_w, totals):
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


def fit_inverse_temperature(logits, labels, *, log_t_bounds=(-4.6, 4.6), tol=None, max_iter=100):
    """Return ``(beta, info)``: the NLL-minimising inverse temperature and fit diagnostics.

    Safeguarded Halley iteration on L'(beta) inside the bracket implied by ``log_t_bounds``. Raises
    :class:`calib.base.FitError` (a ``ValueError``) if the optimum lies outside the bracket or if the NLL or
    its derivatives are not finite (then no answer is returned, least of all the start value), and warns
    :class:`calib.base.ConvergenceWarning` when ``max_iter`` iterations end before the tolerance is met
    (``info["converged"]`` is then False). ``tol`` (relative step size at which to stop) defaults to 16
    machine epsilons of the input's dtype.
    """
    x = np.asarray(logits)
    y = np.asarray(labels)
    n = x.shape[0]
    log_t_bounds = check_log_t_bounds(log_t_bounds)
    if isinstance(max_iter, bool) or not isinstance(max_iter, numbers.Integral):
        raise TypeError(f"Expected max_iter as an integer >= 1, got {type(max_iter).__name__} {max_iter!r}.")
    if max_iter < 1:
        raise ValueError(f"Expected max_iter >= 1, got {max_iter!r}.")
    if tol is None:
        tol = 16 * float(np.finfo(x.dtype).eps)
    elif isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not (0 < tol < 1):
        raise ValueError(f"Expected tol as a number in (0, 1), got {tol!r}.")
    beta_lo, beta_hi = math.exp(-log_t_bounds[1]), math.exp(-log_t_bounds[0])
    beta = 1.0
    # A strided subsample gets close cheaply; the full data then needs one or two Halley steps.
    idx = subsample_index(n)
    if idx is not None:
        try:
            beta, _ = _halley(x[idx], y[idx], 1.0, beta_lo, beta_hi, tol=1e-4, max_iter=max_iter)
        except ValueError:  # the full data decides (and raises with its own diagnosis)
            beta = 1.0
    beta, info = _halley(x, y, beta, beta_lo, beta_hi, tol=tol, max_iter=max_iter)
    return _finish_fit(beta, info, n, tol, max_iter)


#: rows of the strided subsample that starts the temperature fit (used when n > 4 * SUBSAMPLE_ROWS)
SUBSAMPLE_ROWS = 4096


def subsample_index(n):
    """Rows (int64, increasing) of the strided subsample that starts a fit on ``n`` rows, or None (small n)."""
    if n > 4 * SUBSAMPLE_ROWS:
        return np.linspace(0, n - 1, SUBSAMPLE_ROWS).round().astype(np.int64)
    return None


def _finish_fit(beta, info, n, tol, max_iter):
    info["n_samples"] = int(n)
    if not info["converged"]:
        warnings.warn(
            f"Temperature scaling stopped at max_iter={max_iter} before meeting its tolerance: the last step "
            f"changed 1/T by a relative {info['last_step']:.3g} (tolerance {tol:.3g}) and the NLL gradient is "
            f"{info['gradient']:.3g} at T = {1.0 / beta:.6g}.",
            ConvergenceWarning, stacklevel=3,
        )
    return beta, info


def fit_inverse_temperature_chunked(blocks, n, dtype, *, subsample=None, log_t_bounds=(-4.6, 4.6), tol=None,
                                    max_iter=100):
    """:func:`fit_inverse_temperature` on data that do not fit in memory: the same solver, the same answer.

    ``blocks()`` returns a fresh iterator of ``(logits, labels)`` blocks of the ``n`` calibration rows in order,
    each of exactly ``_chunk_rows(k)`` rows but the last (the chunks :func:`nll_derivatives` cuts), with logits of
    ``dtype`` (float32 or float64); ``subsample`` is ``(logits, labels)`` of the rows :func:`subsample_index(n)`
    (None when that is None). The NLL and its derivatives are then summed block by block in exactly the order of
    the in-memory pass, so the fitted temperature is bit for bit the in-memory one (tests/test_out_of_core.py).
    """
    dtype = np.dtype(dtype)
    log_t_bounds = check_log_t_bounds(log_t_bounds)
    if tol is None:
        tol = 16 * float(np.finfo(dtype).eps)
    beta_lo, beta_hi = math.exp(-log_t_bounds[1]), math.exp(-log_t_bounds[0])

    def derivs(beta):
        totals = np.zeros(4)
        b = dtype.type(beta)
        work = None
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            for xb, yb in blocks():
                m, k = xb.shape
                if work is None or work[0].shape[0] < m:
                    work = [np.empty((m, k), dtype=dtype) for _ in range(3)]
                _accumulate(xb, yb, b, beta, 3, m, m, work[0], work[1], work[2], totals)
        out = totals / n
        return tuple(float(v) for v in out)

    beta = 1.0
    if subsample is not None:
        try:
            beta, _ = _halley(subsample[0], subsample[1], 1.0, beta_lo, beta_hi, tol=1e-4, max_iter=max_iter)
        except ValueError:
            beta = 1.0
    beta, info = _halley(None, None, beta, beta_lo, beta_hi, tol=tol, max_iter=max_iter, derivs=derivs)
    return _finish_fit(beta, info, n, tol, max_iter)


def _halley(x, y, beta, lo, hi, *, tol, max_iter, derivs=None):
    beta = min(max(beta, lo), hi)
    lo_seen = hi_seen = False  # whether L' has been evaluated at a point that bounds the root
    for it in range(1, max_iter + 1):
        nll, g, h, t = nll_derivatives(x, y, beta) if derivs is None else derivs(beta)
        if not (math.isfinite(nll) and math.isfinite(g) and math.isfinite(h)):
            # NaN compares false both ways: without this check a NaN gradient read as "g == 0", converged
            if x is None:
                raise FitError(f"Expected a finite NLL and derivatives in the temperature fit, got NLL {nll!r}, "
                               f"gradient {g!r}, curvature {h!r} at T = {1.0 / beta:.6g}; likely cause: logits whose "
                               "range overflows their dtype (pass float64 logits, or clip or drop those rows).")
            raise _non_finite_error(x, beta, nll, g, h)
        if g > 0:
            hi, hi_seen = beta, True
        elif g < 0:
            lo, lo_seen = beta, True
        else:
            return beta, {"nll_after": nll, "n_passes": it, "converged": True}
        if h > 0:
            denom = 1.0 - g * t / (2.0 * h * h) if math.isfinite(t) else 1.0
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
                if lo_seen and hi_seen:  # the bracket around the root has shrunk to adjacent floats: converged
                    return beta, {"nll_after": nll, "n_passes": it, "converged": True}
                _raise_on_bound(beta, g)
        if abs(new - beta) <= tol * beta:
            # Second-order Taylor estimate: exact up to O(step^3), far below tol.
            d = new - beta
            return new, {"nll_after": nll + g * d + 0.5 * h * d * d, "n_passes": it, "converged": True}
        if (hi - lo) <= tol * lo and lo_seen and hi_seen:
            return new, {"nll_after": nll, "n_passes": it, "converged": True}
        last_step = abs(new - beta) / beta
        beta = new
    return beta, {"nll_after": nll, "n_passes": max_iter, "converged": False, "last_step": last_step, "gradient": g}


def _non_finite_error(x, beta, nll, g, h):
    """A :class:`FitError` naming the likely cause of a non-finite NLL or derivative."""
    rows = _chunk_rows(x.shape[1])
    over = []
    with np.errstate(over="ignore", invalid="ignore"):
        for start in range(0, x.shape[0], rows):
            chunk = x[start:start + rows]
            span = chunk.max(axis=1) - chunk.min(axis=1)  # in the input's dtype, as the fit computes it
            over.extend((start + np.flatnonzero(~np.isfinite(span))).tolist())
    if over:
        cause = (f"{len(over)} rows whose logit range (max - min) overflows {x.dtype} (first rows: {over[:5]}); "
                 "pass float64 logits, or clip or drop those rows")
    else:
        cause = (f"logits as large as {float(np.abs(x).max()):.3g} overflow {x.dtype} arithmetic at T = "
                 f"{1.0 / beta:.4g}; pass float64 logits or narrow log_t_bounds")
    return FitError(
        f"Expected a finite NLL and derivatives in the temperature fit, got NLL {nll!r}, gradient {g!r}, "
        f"curvature {h!r} at T = {1.0 / beta:.6g}; likely cause: {cause}."
    )


def _raise_on_bound(beta, g):
    side = "below" if g < 0 else "above"
    t = 1.0 / beta
    raise FitError(
        f"Expected the NLL-optimal temperature inside log_t_bounds, got an optimum {side} T = {t:.4g} "
        "(the NLL keeps decreasing towards the bound: separable or label-independent calibration data?). "
        "Widen log_t_bounds if this is intended."
    )
