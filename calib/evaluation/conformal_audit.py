"""Validity audit: repeated random calibration/test splits of one labelled set of probabilities.

The law used (exact, no approximation): with tie-free scores, a uniformly random split of N points into
n calibration and m test points makes the ranks of the scores a uniformly random permutation, so the
number of test points whose score is <= the r-th smallest calibration score (r = ceil((n+1)(1-alpha)))
is **BetaBinomial(m, r, n + 1 - r)** -- the finite-test-set version of the Beta(n + 1 - l, l) coverage
law with l = n + 1 - r. This holds conditionally on the data set, so R independent splits give R
i.i.d. draws. For Mondrian predictors the split is stratified (fixed n_s, m_s per stratum, independent
permutations inside each stratum); the covered count is then the sum of independent
BetaBinomial(m_s, r_s, n_s + 1 - r_s) (all m_s covered when r_s > n_s), whose pmf is the convolution.

Checks per (data, predictor, alpha):

- ``mean``: the exact expectation ``E = sum_s m_s r_s / (n_s + 1) / m`` lies in the finite-sample band
  ``[1 - alpha, 1 - alpha + 1/(n+1))`` (Mondrian: the test-size-weighted per-stratum bands) and the mean
  coverage over R splits is within ``z * sd / sqrt(R)`` of E (``z`` for a two-sided ``level``);
- ``ks``: the randomised probability integral transform ``F(c - 1) + V (F(c) - F(c - 1))``, ``V ~ U(0,1)``,
  of each split's covered count c is exactly U(0, 1) under the law; KS test against U(0, 1).

Scores are computed once per data set (randomised scores draw one ``u`` per point, independent of the
data), so a split only costs a permutation and a partition.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from calib._validation import check_fraction, check_positive_int
from calib.conformal.quantile import conformal_rank
from calib.conformal.risk_control import ConformalRiskControl, risk_control_threshold

__all__ = ["AuditRow", "audit_predictor", "coverage_count_pmf", "AUDIT_CONFIGS"]

#: name -> (registry kind, constructor kwargs); every score and Mondrian mode.
AUDIT_CONFIGS = {
    "lac": ("split", dict(score="lac")),
    "aps": ("split", dict(score="aps")),
    "aps_rand": ("split", dict(score="aps", randomized=True)),
    "raps_rand": ("split", dict(score="raps", randomized=True, k_reg=2, lam=0.01)),
    "saps_rand": ("split", dict(score="saps", randomized=True, weight=0.2)),
    "topk_rand": ("split", dict(score="topk", randomized=True)),
    "risk_ctrl_miscov": (ConformalRiskControl.kind, dict(loss="miscoverage", score="lac")),
    "mondrian_class_lac": ("mondrian", dict(condition="class", score="lac")),
    "mondrian_class_aps_rand": ("mondrian", dict(condition="class", score="aps", randomized=True)),
    "mondrian_group_lac": ("mondrian", dict(condition="group", score="lac")),
}


@dataclasses.dataclass
class AuditRow:
    data: str
    config: str
    alpha: float
    n_cal: int
    n_test: int
    n_splits: int
    mean_coverage: float
    expected: float
    band_low: float
    band_high: float
    tolerance: float
    ks_pvalue: float
    mean_ok: bool
    ks_ok: bool
    seconds: float

    @property
    def ok(self):
        return self.mean_ok and self.ks_ok


def coverage_count_pmf(cal_sizes, test_sizes, alpha):
    """pmf (m + 1,) of the covered test count: convolution over strata of BetaBinomial(m_s, r_s, n_s+1-r_s).

    >>> coverage_count_pmf([9], [1], 0.1).round(6).tolist()
    [0.1, 0.9]
    """
    from scipy import stats

    alpha = check_fraction(alpha, "alpha")
    cal_sizes, test_sizes = np.atleast_1d(cal_sizes), np.atleast_1d(test_sizes)
    if cal_sizes.shape != test_sizes.shape or cal_sizes.ndim != 1:
        raise ValueError(f"Expected cal_sizes and test_sizes of the same length (one per stratum), got shapes "
                         f"{cal_sizes.shape} and {test_sizes.shape}.")
    for name, sizes, lo in (("cal_sizes", cal_sizes, 1), ("test_sizes", test_sizes, 0)):
        if sizes.dtype.kind not in "iu" or (sizes.size and sizes.min() < lo):
            raise ValueError(f"Expected {name} as integers >= {lo}, got {sizes.tolist()[:5]}.")
    pmf = np.ones(1)
    for n_s, m_s in zip(cal_sizes, test_sizes):
        n_s, m_s = int(n_s), int(m_s)
        r = conformal_rank(n_s, alpha)
        if r > n_s:
            part = np.zeros(m_s + 1)
            part[m_s] = 1.0
        else:
            part = stats.betabinom(m_s, r, n_s + 1 - r).pmf(np.arange(m_s + 1))
        pmf = np.convolve(pmf, part)
    return pmf


def _stratified_split(strata, cal_fraction, rng):
    """Boolean cal mask with round(cal_fraction * N_s) rows of every stratum."""
    keys = rng.random(strata.shape[0])
    order = np.lexsort((keys, strata))
    sizes = np.bincount(strata)
    n_cal = np.round(cal_fraction * sizes).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    pos = np.arange(strata.shape[0]) - np.repeat(starts, sizes)
    mask = np.zeros(strata.shape[0], dtype=bool)
    mask[order[pos < np.repeat(n_cal, sizes)]] = True
    return mask


def audit_predictor(predictor, probs, labels, *, alphas=(0.1,), n_splits=500, cal_fraction=0.5, groups=None,
                    seed=0, level=0.999, data_name="", config_name="", split_rank=None):
    """Audit one (unfitted) predictor over ``n_splits`` random splits; one :class:`AuditRow` per alpha.

    ``split_rank(n, alpha)`` replaces the quantile rank used on the splits (not the law): a negative
    control, e.g. ``ceil(n (1 - alpha))`` without the finite-sample correction, must fail.
    """
    import time

    from scipy import stats

    t0 = time.perf_counter()
    n_splits = check_positive_int(n_splits, "n_splits")
    cal_fraction = check_fraction(cal_fraction, "cal_fraction")
    level = check_fraction(level, "level")
    p = np.asarray(probs)
    y = np.asarray(labels)
    N = y.shape[0]
    rng = np.random.default_rng([seed, 7])
    u = rng.random(N) if predictor.randomized else None
    s = predictor.label_scores(p, y, u)
    condition = getattr(predictor, "condition", None)
    if condition == "class":
        strata = y
    elif condition == "group":
        if groups is None:
            raise ValueError("Expected groups for a group-conditional audit, got None.")
        strata = np.unique(np.asarray(groups), return_inverse=True)[1]
    else:
        strata = None
    alphas = [float(a) for a in alphas]
    rank_of = split_rank or conformal_rank
    covered = np.empty((n_splits, len(alphas)), dtype=np.int64)
    if strata is None:
        n_cal = int(round(cal_fraction * N))
        for i in range(n_splits):
            perm = rng.permutation(N)
            cal, test = s[perm[:n_cal]], s[perm[n_cal:]]
            if isinstance(predictor, ConformalRiskControl):  # audit its own threshold rule, not the quantile
                q = np.array([risk_control_threshold(cal, np.ones(n_cal), n_cal, a) for a in alphas])
            else:
                ranks = [rank_of(n_cal, a) for a in alphas]
                part = np.partition(cal, [r - 1 for r in ranks])
                q = np.array([part[r - 1] for r in ranks])
            covered[i] = (test[:, None] <= q[None, :]).sum(axis=0)
        cal_sizes, test_sizes = [n_cal], [N - n_cal]
    else:
        sizes = np.bincount(strata)
        n_s = np.round(cal_fraction * sizes).astype(np.int64)
        cal_sizes, test_sizes = n_s, sizes - n_s
        for i in range(n_splits):
            cmask = _stratified_split(strata, cal_fraction, rng)
            c_str, c_s = strata[cmask], s[cmask]
            order = np.lexsort((c_s, c_str))
            sorted_s = c_s[order]
            starts = np.concatenate([[0], np.cumsum(n_s)[:-1]])
            t_str, t_s = strata[~cmask], s[~cmask]
            for j, a in enumerate(alphas):
                r = np.array([rank_of(int(m), a) for m in n_s])
                q = np.full(n_s.shape, np.inf)
                ok = r <= n_s
                q[ok] = sorted_s[starts[ok] + r[ok] - 1]
                covered[i, j] = int((t_s <= q[t_str]).sum())
    m = int(np.sum(test_sizes))
    rows = []
    z = stats.norm.ppf(0.5 + level / 2)
    for j, a in enumerate(alphas):
        pmf = coverage_count_pmf(cal_sizes, test_sizes, a)
        cdf = np.concatenate([[0.0], np.cumsum(pmf)])
        support = np.arange(m + 1)
        mean_count = float((support * pmf).sum())
        sd_count = math.sqrt(float(((support - mean_count) ** 2 * pmf).sum()))
        c = covered[:, j]
        v = np.random.default_rng([seed, 8, j]).random(n_splits)
        pit = np.clip(cdf[c] + v * (cdf[c + 1] - cdf[c]), 0.0, 1.0)
        ks = float(stats.kstest(pit, "uniform").pvalue)
        mean_cov = float(c.mean() / m)
        expected = mean_count / m
        tol = z * sd_count / m / math.sqrt(n_splits)
        n_cal_total = int(np.sum(cal_sizes))
        low, high = 1.0 - a, 1.0 - a + 1.0 / (n_cal_total + 1)
        if strata is not None:  # per-stratum band [1 - a, 1 - a + 1/(n_s + 1)], 1 for strata too small
            r_s = np.array([conformal_rank(int(n), a) for n in cal_sizes])
            top = np.where(r_s > cal_sizes, 1.0, 1.0 - a + 1.0 / (np.asarray(cal_sizes) + 1.0))
            high = float(np.sum(np.asarray(test_sizes) * top) / m)
        mean_ok = abs(mean_cov - expected) <= tol and low <= expected <= high
        rows.append(AuditRow(data_name, config_name, a, n_cal_total, m, n_splits, mean_cov, expected, low, high,
                             tol, ks, bool(mean_ok), bool(ks > 1.0 - level), time.perf_counter() - t0))
    return rows
