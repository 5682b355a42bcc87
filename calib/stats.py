"""Exact tests and intervals that every "violates / exceeds / broken" flag of calib is built on.

A flag in ``metrics.json``, a plot or a report is never a point estimate compared with a target: it is a
test with a p-value, and where several classes or slices are tested at once, Holm-adjusted (Holm 1979,
"A simple sequentially rejective multiple test procedure"). The raw gap stays in the output as a number.

- :func:`binom_greater_pvalue` — H0: rate <= p0 against "more than p0" (e.g. a selective risk above its
  target): ``P(Binomial(n, p0) >= k)``.
- :func:`binom_less_pvalue` — H0: rate >= p0 against "less than p0" (e.g. a coverage below ``1 - alpha``):
  ``P(Binomial(n, p0) <= k)``.
- :func:`betabinom_less_pvalue` — the same with a Beta-binomial law (split-conformal coverage counts on
  ``m`` test items given ``n`` calibration items have the law ``BetaBinomial(m, r, n + 1 - r)``, exactly,
  for tie-free scores; Vovk 2012, Angelopoulos & Bates 2023).
- :func:`holm_adjust` — Holm step-down adjusted p-values.
- :func:`clopper_pearson` — exact two-sided binomial confidence interval.

Numpy at module level; scipy (its binomial and Beta laws) inside the functions.
"""

from __future__ import annotations

import numpy as np

from calib._validation import as_array, check_fraction

__all__ = ["binom_greater_pvalue", "binom_less_pvalue", "betabinom_less_pvalue", "holm_adjust", "clopper_pearson"]


def _counts(k, n, name_k="k", name_n="n"):
    """Non-negative integer counts ``k <= n`` (arrays broadcast), as int64 arrays."""
    k_arr, n_arr = as_array(k, name_k), as_array(n, name_n)
    for name, a in ((name_k, k_arr), (name_n, n_arr)):
        if a.dtype.kind not in "iuf" or (a.dtype.kind == "f" and not np.all(np.isfinite(a) & (a == np.round(a)))):
            raise TypeError(f"Expected {name} as whole counts, got dtype {a.dtype}"
                            + (" with non-integer values" if a.dtype.kind == "f" else "") + ".")
    k_arr, n_arr = np.broadcast_arrays(k_arr.astype(np.int64), n_arr.astype(np.int64))
    if (n_arr < 0).any() or (k_arr < 0).any() or (k_arr > n_arr).any():
        raise ValueError(f"Expected counts 0 <= {name_k} <= {name_n}, got {name_k}={k_arr.ravel()[:5].tolist()}, "
                         f"{name_n}={n_arr.ravel()[:5].tolist()}.")
    return k_arr, n_arr


def _out(p, scalar):
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    return float(p) if scalar else p


def binom_greater_pvalue(k, n, p0):
    """One-sided exact p-value of H0: rate <= ``p0`` after ``k`` events in ``n`` trials: ``P(Bin(n, p0) >= k)``.

    ``n = 0`` gives 1 (no evidence). Scalars in, float out; arrays broadcast.

    >>> round(binom_greater_pvalue(3, 10, 0.1), 4)
    0.0702
    >>> binom_greater_pvalue(0, 0, 0.1)
    1.0
    """
    from scipy.stats import binom

    p0 = check_fraction(p0, "p0")
    scalar = np.ndim(k) == 0 and np.ndim(n) == 0
    k, n = _counts(k, n)
    return _out(np.where(n > 0, binom.sf(k - 1, n, p0), 1.0), scalar)


def binom_less_pvalue(k, n, p0):
    """One-sided exact p-value of H0: rate >= ``p0`` after ``k`` successes in ``n`` trials: ``P(Bin(n, p0) <= k)``.

    >>> round(binom_less_pvalue(80, 100, 0.9), 4)
    0.002
    """
    from scipy.stats import binom

    p0 = check_fraction(p0, "p0")
    scalar = np.ndim(k) == 0 and np.ndim(n) == 0
    k, n = _counts(k, n)
    return _out(np.where(n > 0, binom.cdf(k, n, p0), 1.0), scalar)


def betabinom_less_pvalue(k, m, a, b):
    """``P(BetaBinomial(m, a, b) <= k)``: the exact p-value of a split-conformal coverage count ``k`` of ``m``
    test items being that low, when the conformal rank is ``a = r`` and ``b = n + 1 - r`` (``a, b > 0``).

    >>> round(betabinom_less_pvalue(85, 100, 90, 10), 3)
    0.144
    """
    from scipy.stats import betabinom

    scalar = all(np.ndim(v) == 0 for v in (k, m, a, b))
    k, m = _counts(k, m, "k", "m")
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if not (np.all(np.isfinite(a) & (a > 0)) and np.all(np.isfinite(b) & (b > 0))):
        raise ValueError(f"Expected Beta-binomial shapes a, b > 0, got a={a.ravel()[:5].tolist()}, "
                         f"b={b.ravel()[:5].tolist()}.")
    return _out(np.where(m > 0, betabinom.cdf(k, np.maximum(m, 1), a, b), 1.0), scalar)


def holm_adjust(pvalues):
    """Holm step-down adjusted p-values (monotone, capped at 1).

    >>> holm_adjust(np.array([0.01, 0.04, 0.03])).round(3).tolist()
    [0.03, 0.06, 0.06]
    """
    p = as_array(pvalues, "pvalues")
    if p.dtype.kind not in "biuf" or p.dtype.kind == "b":
        raise TypeError(f"Expected pvalues as real numbers in [0, 1], got dtype {p.dtype}.")
    if p.ndim != 1:
        raise ValueError(f"Expected pvalues of shape (m,), got shape {p.shape}.")
    p = np.asarray(p, dtype=np.float64)
    bad = ~((p >= 0) & (p <= 1))  # NaN fails both
    if bad.any():
        raise ValueError(f"Expected pvalues in [0, 1], got {int(bad.sum())} entries outside it or NaN "
                         f"(e.g. {float(p[bad][0])!r}).")
    m = p.size
    order = np.argsort(p, kind="stable")
    adj = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out = np.empty(m)
    out[order] = np.minimum(adj, 1.0)
    return out


def clopper_pearson(k, n, level=0.95):
    """Exact two-sided ``level`` interval ``(lo, hi)`` of a binomial rate after ``k`` events in ``n`` trials;
    ``(0.0, 1.0)`` when ``n = 0``.

    >>> [round(x, 4) for x in clopper_pearson(5, 100)]
    [0.0164, 0.1128]
    """
    from scipy.stats import beta

    level = check_fraction(level, "level")
    k, n = (int(v) for v in _counts(k, n))
    if n == 0:
        return 0.0, 1.0
    tail = (1.0 - level) / 2.0
    lo = 0.0 if k == 0 else float(beta.ppf(tail, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1.0 - tail, k + 1, n - k))
    return lo, hi
