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
import numbers

import numpy as np

from calib._validation import as_array, check_fraction

__all__ = ["conformal_rank", "conformal_quantile", "min_calibration_size", "coverage_law",
           "expected_coverage_band", "check_alpha"]


def check_alpha(alpha, name="alpha"):
    """One alpha in (0, 1), or a non-empty list of them (returned as float or tuple of floats).

    >>> check_alpha([0.1, 0.2])
    (0.1, 0.2)
    """
    if isinstance(alpha, np.ndarray) and alpha.ndim == 0:
        alpha = alpha[()]
    if isinstance(alpha, (list, tuple, np.ndarray)):
        if len(alpha) == 0:
            raise ValueError(f"Expected {name} as a number in (0, 1) or a non-empty list of them, got [].")
        return tuple(check_fraction(a, name) for a in alpha)
    return check_fraction(alpha, name)


def _check_n(n, name="n"):
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        if not (isinstance(n, (float, np.floating)) and float(n).is_integer() and n >= 0):
            raise TypeError(f"Expected {name} as an integer >= 0, got {type(n).__name__} {n!r}.")
    if n < 0:
        raise ValueError(f"Expected {name} >= 0, got {n!r}.")
    return int(n)


def _check_scores(scores, name="scores"):
    """Scores as a 1-D float64 array without NaN (±inf allowed: a score may be infinite)."""
    s = as_array(scores, name)
    if s.dtype.kind not in "biuf":
        raise TypeError(f"Expected {name} as real numbers, got dtype {s.dtype}.")
    if s.ndim > 1:
        raise ValueError(f"Expected {name} of shape (n,), got an array of shape {s.shape}.")
    s = np.asarray(s, dtype=np.float64).ravel()
    nan = np.isnan(s)
    if nan.any():
        raise ValueError(f"Expected {name} without NaN, got {int(nan.sum())} NaN entries (first at index "
                         f"{int(np.flatnonzero(nan)[0])}); a NaN score would silently leave classes out of every set.")
    return s


def conformal_rank(n, alpha):
    """``ceil((n + 1)(1 - alpha))`` with a 1e-9 guard against round-off (e.g. 0.9 * 1000).

    >>> conformal_rank(999, 0.1)
    900
    """
    n = _check_n(n)
    alpha = check_fraction(alpha, "alpha")
    return _rank(n, alpha)


def _rank(n, alpha):
    return int(math.ceil((n + 1) * (1.0 - alpha) - 1e-9))


def min_calibration_size(alpha):
    """Smallest n with a finite conformal quantile: ``ceil((n+1)(1-alpha)) <= n``.

    >>> min_calibration_size(0.1)
    9
    """
    alpha = check_fraction(alpha, "alpha")
    if alpha < 1e-300:  # 1 / alpha overflows; no calibration set of any size reaches such a level
        raise ValueError(f"Expected alpha >= 1e-300 (a calibration set of about 1 / alpha rows), got {alpha!r}.")
    n = max(1, int(math.floor(1.0 / alpha)) - 2)
    while _rank(n, alpha) > n:  # a few steps: the answer is within 3 of 1/alpha - 1 for every alpha in (0, 1)
        n += 1
    return n


def conformal_quantile(scores, alpha, *, allow_infinite=False):
    """The ``ceil((n+1)(1-alpha))``-th smallest of ``scores``, for one alpha or an array of alphas.

    Parameters
    ----------
    scores : ndarray of shape (n,)
        No NaN (refused: a NaN would sort last and silently pick a wrong quantile); ±inf allowed.
    alpha : float or sequence of float in (0, 1)
    allow_infinite : bool, default=False
        When n is too small for alpha: False raises ValueError, True returns ``inf``.

    Returns
    -------
    float, or ndarray of shape (n_alphas,)

    >>> conformal_quantile(np.arange(1.0, 20.0), 0.1)
    18.0
    """
    s = _check_scores(scores)
    if not isinstance(allow_infinite, bool):
        raise TypeError(f"Expected allow_infinite as a bool, got {type(allow_infinite).__name__} {allow_infinite!r}.")
    scalar = np.ndim(alpha) == 0
    alphas = np.asarray(check_alpha(alpha), dtype=np.float64).reshape(-1)
    n = s.shape[0]
    ranks = np.array([_rank(n, a) for a in alphas], dtype=np.int64)
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
    if scalar:
        return float(out[0])
    return out


def coverage_law(n, alpha):
    """Beta parameters ``(a, b) = (r, n + 1 - r)`` of the coverage given the calibration set.

    Exact for tie-free scores. With ``m`` test points the number covered is BetaBinomial(m, a, b).

    >>> coverage_law(99, 0.1)
    (90, 10)
    """
    r = conformal_rank(n, alpha)
    return r, _check_n(n) + 1 - r


def expected_coverage_band(n, alpha):
    """``(1 - alpha, r / (n + 1))``: expected coverage is >= the first, and equals the second for
    tie-free scores (it is always below ``1 - alpha + 1/(n+1)``).

    >>> expected_coverage_band(99, 0.1)
    (0.9, 0.9)
    """
    r = conformal_rank(n, alpha)
    return 1.0 - float(alpha), r / (_check_n(n) + 1.0)
