"""Validity audit: repeated random calibration/test splits of one labelled set of probabilities.

The law used (exact, no approximation): with tie-free scores, a uniformly random split of N points into
n calibration and m test points makes the ranks of the scores a uniformly random permutation, so the
number of test points whose score is <= the r-th smallest calibration score (r = ceil((n+1)(1-alpha)))
is **BetaBinomial(m, r, n + 1 - r)** -- the finite-test-set version of the Beta(n + 1 - l, l) coverage
law with l = n + 1 - r. This holds conditionally on the data set, so R independent splits give R
i.i.d. draws. For Mondrian predictors the split is stratified (fixed n_s, m_s per stratum, independent
permutations inside each stratum); the covered count is then the sum of independent
BetaBinomial(m_s, r_s, n_s + 1 - r_s) (all m_s covered when r_s > n_s), whose pmf is the convolution.

Randomised scores: the law holds when the uniforms are drawn afresh for every split (independent of the
data and of the split). The audit never ties draws to rows; ``draws=`` says who draws them:

- ``"split"``: the audit draws new uniforms for all N rows on every split (its own generator) and applies
  the predictor's score and threshold rule (fast: one score pass and a partition per split);
- ``"fit"``: every split refits a clone of the predictor on the calibration rows and counts the test rows
  its ``predict_set`` covers, so the predictor's own draw policy is what is audited (fresh per fit from the
  seed and the data fingerprint by default; ``fresh_draws=False`` reuses one seed's uniforms for every fit)
  and so is ``never_empty``;
- ``"auto"`` (default): ``"fit"`` for a ``never_empty`` predictor, else ``"split"``;
- ``"seed_only"`` (negative control): the draw policy of calib <= 0.1 emulated fast: the calibration part
  gets the uniforms ``default_rng([predictor.seed, 0])`` and the test part ``default_rng([predictor.seed,
  1])`` by position, the same on every split. Averaged over seeds this is exact; conditionally on one
  seed's uniforms it is not (the covered count no longer follows the law), which the audit shows as
  z-scores over many seeds that are too spread out.

Checks per (data, predictor, alpha), with the exact pmf of the count:

- ``mean``: the exact expectation ``E = sum_s m_s r_s / (n_s + 1) / m`` lies in the finite-sample band
  ``[1 - alpha, 1 - alpha + 1/(n+1))`` (Mondrian: the test-size-weighted per-stratum bands) and the mean
  coverage over R splits is compared with E through ``z = (mean - E) / (sd / sqrt(R))`` (sd: the exact sd
  of the per-split coverage): two-sided p-value for the exact law, one-sided (lower tail) when the sets
  are ``never_empty`` (law ``"at_least"``: sets only grow, so coverage may only be larger);
- ``ks``: exact law only: the randomised probability integral transform ``F(c - 1) + V (F(c) - F(c - 1))``,
  ``V ~ U(0,1)``, of each split's covered count c is exactly U(0, 1) under the law; KS test against U(0, 1).
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np

from calib._validation import check_choice, check_fraction, check_positive_int
from calib.conformal.quantile import conformal_rank
from calib.conformal.risk_control import ConformalRiskControl, risk_control_threshold

__all__ = ["AuditRow", "audit_predictor", "coverage_count_pmf", "AUDIT_CONFIGS", "DEFAULT_CONFIGS"]

#: name -> (registry kind, constructor kwargs); every score and Mondrian mode, all with the exact law
#: (``never_empty`` off; the shipped defaults' never-empty sets are audited with ``draws="fit"``, law "at_least").
AUDIT_CONFIGS = {
    "lac": ("split", dict(score="lac")),
    "aps": ("split", dict(score="aps", randomized=False)),
    "aps_rand": ("split", dict(score="aps", randomized=True, never_empty=False)),
    "raps_rand": ("split", dict(score="raps", randomized=True, never_empty=False, k_reg=2, lam=0.01)),
    "saps_rand": ("split", dict(score="saps", randomized=True, never_empty=False, weight=0.2)),
    "topk_rand": ("split", dict(score="topk", randomized=True, never_empty=False)),
    "risk_ctrl_miscov": (ConformalRiskControl.kind, dict(loss="miscoverage", score="lac")),
    "mondrian_class_lac": ("mondrian", dict(condition="class", score="lac")),
    "mondrian_class_aps_rand": ("mondrian", dict(condition="class", score="aps", randomized=True,
                                                 never_empty=False)),
    "mondrian_group_lac": ("mondrian", dict(condition="group", score="lac")),
}

#: the library defaults (randomised, never_empty): audited with draws="fit" against the law "at_least"
#: (one-sided); ``experiments/audit_conformal.py --configs aps_default raps_default``
DEFAULT_CONFIGS = {
    "aps_default": ("split", dict(score="aps")),
    "raps_default": ("split", dict(score="raps", k_reg=2, lam=0.01)),
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
    #: "exact" (the BetaBinomial law) or "at_least" (never_empty sets: coverage stochastically >= the law)
    law: str = "exact"
    #: who drew the uniforms: "split" (the audit, fresh per split) or "fit" (the predictor's own fit per split)
    draws: str = "split"
    #: (mean - E) / (sd / sqrt(R)) with the exact sd of one split's coverage
    z: float = float("nan")
    #: p-value of the mean check: two-sided (exact law) or lower tail (at_least)
    mean_pvalue: float = float("nan")

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
                    seed=0, level=0.999, data_name="", config_name="", split_rank=None, draws="auto"):
    """Audit one (unfitted) predictor over ``n_splits`` random splits; one :class:`AuditRow` per alpha.

    ``draws``: ``"split"``, ``"fit"`` or ``"auto"`` (module docstring). ``split_rank(n, alpha)`` replaces the
    quantile rank used on the splits (not the law): a negative control, e.g. ``ceil(n (1 - alpha))`` without
    the finite-sample correction, must fail (``draws="split"`` only).
    """
    import time

    from scipy import stats

    t0 = time.perf_counter()
    n_splits = check_positive_int(n_splits, "n_splits")
    cal_fraction = check_fraction(cal_fraction, "cal_fraction")
    level = check_fraction(level, "level")
    draws = check_choice(draws, "draws", ("auto", "split", "fit", "seed_only"))
    never_empty = bool(getattr(predictor, "is_never_empty", False))
    if draws == "auto":
        draws = "fit" if never_empty else "split"
    if draws in ("split", "seed_only") and never_empty:
        raise ValueError(f"Expected draws='fit' for a never_empty predictor (its sets are only built by "
                         f"predict_set), got draws={draws!r}; or audit it with never_empty=False.")
    if draws == "fit" and split_rank is not None:
        raise ValueError("Expected split_rank=None with draws='fit' (the predictor's own fit sets the threshold), "
                         "got a split_rank.")
    p = np.asarray(probs)
    y = np.asarray(labels)
    N = y.shape[0]
    rng = np.random.default_rng([seed, 7])
    randomized = bool(getattr(predictor, "is_randomized", False))
    s_fixed = s_slope = None
    if draws in ("split", "seed_only"):
        s_fixed = predictor.label_scores(p, y, None if not randomized else np.zeros(N))
        if randomized:  # every randomised score is affine in u: s(u) = s(0) + u (s(1) - s(0)), O(N) per split
            s_slope = predictor.label_scores(p, y, np.ones(N)) - s_fixed
            u_check = np.random.default_rng([seed, 9]).random(N)
            gap = np.abs(s_fixed + u_check * s_slope - predictor.label_scores(p, y, u_check))
            if not gap.max() <= 1e-9:
                raise ValueError(f"Expected a score affine in u (APS, RAPS, SAPS, top-k) for draws='split', got a "
                                 f"deviation of {gap.max():.3g}; use draws='fit'.")
    condition = getattr(predictor, "condition", None)
    g_all = None if groups is None else np.asarray(groups)
    if condition == "class":
        strata = y
    elif condition == "group":
        if groups is None:
            raise ValueError("Expected groups for a group-conditional audit, got None.")
        strata = np.unique(g_all, return_inverse=True)[1]
    else:
        strata = None
    alphas = [float(a) for a in alphas]
    rank_of = split_rank or conformal_rank
    covered = np.empty((n_splits, len(alphas)), dtype=np.int64)
    if strata is None:
        n_cal = int(round(cal_fraction * N))
        cal_sizes, test_sizes = [n_cal], [N - n_cal]
    else:
        sizes = np.bincount(strata)
        n_s = np.round(cal_fraction * sizes).astype(np.int64)
        cal_sizes, test_sizes = n_s, sizes - n_s
        starts = np.concatenate([[0], np.cumsum(n_s)[:-1]])
    if draws == "seed_only" and s_slope is not None:
        n_c = int(np.sum(cal_sizes))
        u_cal_fixed = np.random.default_rng([predictor.seed, 0]).random(n_c)
        u_test_fixed = np.random.default_rng([predictor.seed, 1]).random(N - n_c)
    for i in range(n_splits):
        if strata is None:
            perm = rng.permutation(N)
            cmask = np.zeros(N, dtype=bool)
            cmask[perm[:n_cal]] = True
        else:
            cmask = _stratified_split(strata, cal_fraction, rng)
        if draws == "fit":
            covered[i] = _covered_by_fit(predictor, p, y, g_all, cmask, alphas)
            continue
        if s_slope is None:
            s = s_fixed
        elif draws == "seed_only":  # the same uniforms, by position, for every fit
            u = np.empty(N)
            u[np.flatnonzero(cmask)] = u_cal_fixed
            u[np.flatnonzero(~cmask)] = u_test_fixed
            s = s_fixed + u * s_slope
        else:
            s = s_fixed + rng.random(N) * s_slope  # fresh uniforms on every split
        if strata is None:
            cal, test = s[cmask], s[~cmask]
            if isinstance(predictor, ConformalRiskControl):  # audit its own threshold rule, not the quantile
                q = np.array([risk_control_threshold(cal, np.ones(n_cal), n_cal, a) for a in alphas])
            else:
                ranks = [rank_of(n_cal, a) for a in alphas]
                part = np.partition(cal, [r - 1 for r in ranks])
                q = np.array([part[r - 1] for r in ranks])
            covered[i] = (test[:, None] <= q[None, :]).sum(axis=0)
        else:
            c_str, c_s = strata[cmask], s[cmask]
            sorted_s = c_s[np.lexsort((c_s, c_str))]
            t_str, t_s = strata[~cmask], s[~cmask]
            for j, a in enumerate(alphas):
                r = np.array([rank_of(int(m), a) for m in n_s])
                q = np.full(n_s.shape, np.inf)
                ok = r <= n_s
                q[ok] = sorted_s[starts[ok] + r[ok] - 1]
                covered[i, j] = int((t_s <= q[t_str]).sum())
    m = int(np.sum(test_sizes))
    law = "at_least" if never_empty else "exact"
    rows = []
    z_crit = stats.norm.ppf(0.5 + level / 2) if law == "exact" else stats.norm.ppf(level)
    for j, a in enumerate(alphas):
        pmf = coverage_count_pmf(cal_sizes, test_sizes, a)
        cdf = np.concatenate([[0.0], np.cumsum(pmf)])
        support = np.arange(m + 1)
        mean_count = float((support * pmf).sum())
        sd_count = math.sqrt(float(((support - mean_count) ** 2 * pmf).sum()))
        c = covered[:, j]
        mean_cov = float(c.mean() / m)
        expected = mean_count / m
        se = sd_count / m / math.sqrt(n_splits)
        tol = z_crit * se
        z = (mean_cov - expected) / se if se > 0 else (0.0 if mean_cov == expected else math.copysign(np.inf, mean_cov - expected))
        if law == "exact":
            v = np.random.default_rng([seed, 8, j]).random(n_splits)
            pit = np.clip(cdf[c] + v * (cdf[c + 1] - cdf[c]), 0.0, 1.0)
            ks = float(stats.kstest(pit, "uniform").pvalue)
            p_mean = float(2 * stats.norm.sf(abs(z)))
        else:  # coverage may only be larger: a lower-tail test of the mean; KS would test exactness
            ks = float("nan")
            p_mean = float(stats.norm.cdf(z))
        n_cal_total = int(np.sum(cal_sizes))
        low, high = 1.0 - a, 1.0 - a + 1.0 / (n_cal_total + 1)
        if strata is not None:  # per-stratum band [1 - a, 1 - a + 1/(n_s + 1)], 1 for strata too small
            r_s = np.array([conformal_rank(int(n), a) for n in cal_sizes])
            top = np.where(r_s > cal_sizes, 1.0, 1.0 - a + 1.0 / (np.asarray(cal_sizes) + 1.0))
            high = float(np.sum(np.asarray(test_sizes) * top) / m)
        mean_ok = p_mean > 1.0 - level and low <= expected <= high
        ks_ok = law != "exact" or ks > 1.0 - level
        rows.append(AuditRow(data_name, config_name, a, n_cal_total, m, n_splits, mean_cov, expected, low, high,
                             tol, ks, bool(mean_ok), bool(ks_ok), time.perf_counter() - t0, law=law, draws=draws,
                             z=float(z), mean_pvalue=p_mean))
    return rows


def _covered_by_fit(predictor, p, y, groups, cmask, alphas):
    """Covered test count per alpha of a clone of ``predictor`` (with the audit's ``alphas``) fitted on the rows
    ``cmask`` (its own draws)."""
    from calib.conformal.split import SetSizeWarning

    g_cal = None if groups is None else groups[cmask]
    g_test = None if groups is None else groups[~cmask]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SetSizeWarning)  # one per split would drown the audit's output
        fitted = predictor.clone(alpha=list(alphas)).fit(p[cmask], y[cmask], groups=g_cal)
    sets = fitted.predict_set(p[~cmask], groups=g_test)  # (m, k, n_alphas) for a list of alphas
    yt = y[~cmask]
    return sets[np.arange(yt.shape[0]), yt, :].sum(axis=0)
