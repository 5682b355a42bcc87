"""The finite-sample conformal quantile and the exact law of split-conformal coverage.

Rule (Vovk et al., 2005; Angelopoulos & Bates, 2023): with n calibration scores and level alpha,
``qhat`` is the ``r = ceil((n + 1)(1 - alpha))``-th smallest score. Then for an exchangeable test point
``P(s_test <= qhat) >= 1 - alpha``, and with continuous (tie-free) scores the coverage conditional on
the calibration set is ``Beta(r, n + 1 - r)`` (i.e. ``Beta(n + 1 - l, l)`` with ``l = n + 1 - r``), so
the expected coverage is exactly ``r / (n + 1)`` in ``[1 - alpha, 1 - alpha + 1/(n+1))``.

When ``r > n`` (``n < 1/alpha - 1``) no finite threshold is valid: :func:`conformal_quantile` raises
``ValueError`` unless ``allow_infinite=True``, which returns ``inf`` (every class in every set, the only
valid answer).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["conformal_rank", "conformal_quantile", "min_calibration_size", "coverage_law",
           "expected_coverage_band"]


def conformal_rank(n, alpha):
    """``ceil((n + 1)(1 - alpha))`` with a 1e-9 guard against round-off (e.g. 0.9 * 1000).

    >>> conformal_rank(999, 0.1)
    900
    """
    return int(math.ceil((n + 1) * (1.0 - float(alpha)) - 1e-9))


def min_calibration_size(alpha):
    """Smallest n with a finite conformal quantile: ``ceil((n+1)(1-alpha)) <= n``.

    >>> min_calibration_size(0.1)
    9
    """
    n = max(1, int(math.floor(1.0 / float(alpha))) - 2)
    while conformal_rank(n, alpha) > n:
        n += 1
    return n


def conformal_quantile(scores, alpha, *, allow_infinite=False):
    """The ``ceil((n+1)(1-alpha))``-th smallest of ``scores``, for one alpha or an array of alphas.

    Parameters
    ----------
    scores : ndarray of shape (n,)
    alpha : float or sequence of float in (0, 1)
    allow_infinite : bool, default=False
        When n is too small for alpha: False raises ValueError, True returns ``inf``.

    Returns
    -------
    float, or ndarray of shape (n_alphas,)

    >>> conformal_quantile(np.arange(1.0, 20.0), 0.1)
    18.0
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    n = s.shape[0]
    alphas = np.atleast_1d(np.asarray(alpha, dtype=np.float64))
    ranks = np.array([conformal_rank(n, a) for a in alphas], dtype=np.int64)
    too_big = ranks > n
    if too_big.any() and not allow_infinite:
        a = float(alphas[too_big][0])
        raise ValueError(
            f"Expected at least {min_calibration_size(a)} calibration scores for alpha={a:g} "
            f"(ceil((n+1)(1-alpha)) <= n), got n={n}; lower the coverage target, add calibration data, "
            "or pass allow_infinite=True to return all-classes sets."
        )
    out = np.full(alphas.shape, np.inf)
    ok = ~too_big
    if ok.any():
        kth = np.unique(ranks[ok] - 1)
        part = np.partition(s, kth)
        out[ok] = part[ranks[ok] - 1]
    if np.ndim(alpha) == 0:
        return float(out[0])
    return out


def coverage_law(n, alpha):
    """Beta parameters ``(a, b) = (r, n + 1 - r)`` of the coverage given the calibration set.

    Exact for tie-free scores. With ``m`` test points the number covered is BetaBinomial(m, a, b).

    >>> coverage_law(99, 0.1)
    (90, 10)
    """
    r = conformal_rank(n, alpha)
    return r, n + 1 - r


def expected_coverage_band(n, alpha):
    """``(1 - alpha, r / (n + 1))``: expected coverage is >= the first, and equals the second for
    tie-free scores (it is always below ``1 - alpha + 1/(n+1)``).

    >>> expected_coverage_band(99, 0.1)
    (0.9, 0.9)
    """
    r = conformal_rank(n, alpha)
    return 1.0 - float(alpha), r / (n + 1.0)
