"""Every "violates / exceeds / broken" flag is a test (issue #12): exact p-values cross-checked against scipy,
flags at no more than the nominal rate when the null holds (bounds from the binomial law of the flag count,
fixed seeds), and a real under-coverage flagged."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from scipy import stats

from calib.evaluation import set_metrics as sm
from conftest import shared_npz

ALPHA = 0.1


def _rank(n, alpha):  # the split-conformal rank, written out here (not calib's)
    return math.ceil((n + 1) * (1 - alpha) - 1e-9)


def _sets_from_hits(hits, labels, k):
    """Sets (n, k) whose only information is whether each row's label is in its set."""
    s = np.zeros((labels.size, k), dtype=bool)
    s[np.arange(labels.size), labels] = hits
    s[np.arange(labels.size), (labels + 1) % k] = True  # a second class, never the label: sizes vary
    return s


# --- p-values equal scipy's -------------------------------------------------------------------------------------------
def test_class_pvalues_equal_scipy_binomtest_and_betabinom():
    rng = np.random.default_rng(0)
    k = 6
    m = np.array([30, 45, 60, 20, 80, 50])
    labels = np.repeat(np.arange(k), m)
    covered = np.array([20, 44, 50, 20, 60, 47])
    hits = np.concatenate([np.arange(mi) < ci for mi, ci in zip(m, covered)])
    perm = rng.permutation(labels.size)
    sets = _sets_from_hits(hits[perm], labels[perm], k)
    n_cal = np.array([40, 19, 8, 100, 59, 49])  # class 2: 8 rows, too few for alpha = 0.1 (full sets' law)

    p_bin, _ = sm.class_coverage_pvalues(sets, labels[perm], ALPHA)
    p_bb, adj_bb = sm.class_coverage_pvalues(sets, labels[perm], ALPHA, calibration_sizes=n_cal)
    for c in range(k):
        want = stats.binomtest(int(covered[c]), int(m[c]), 1 - ALPHA, alternative="less").pvalue
        assert p_bin[c] == pytest.approx(want, rel=1e-10, abs=1e-300)
        r = _rank(int(n_cal[c]), ALPHA)
        want_bb = (stats.betabinom.cdf(covered[c], m[c], r, n_cal[c] + 1 - r) if r <= n_cal[c] else want)
        assert p_bb[c] == pytest.approx(want_bb, rel=1e-10, abs=1e-300)
    # Holm, written out: sorted p times (m - i), running max, capped at 1
    order = np.argsort(p_bb)
    holm = np.minimum(np.maximum.accumulate((k - np.arange(k)) * p_bb[order]), 1.0)
    np.testing.assert_allclose(adj_bb[order], holm, rtol=1e-12)

    block = sm.class_coverage_test(sets, labels[perm], ALPHA, calibration_sizes=n_cal)
    json.dumps(block, allow_nan=False)
    assert block["law"].startswith("beta_binomial") and block["correction"] == "holm" and block["level"] == 0.05
    assert block["n_tested"] == k and block["n_p_below_level"] == int((p_bb <= 0.05).sum())
    assert block["flagged"] == [c for c in np.argsort(p_bb, kind="stable") if adj_bb[c] <= 0.05]
    assert block["flagged"] == [0, 4]  # 20/30 and 60/80 covered: far below 0.9
    row = block["smallest_p"][0]
    assert (row["class"], row["n"], row["covered"]) == (0, 30, 20)


def test_marginal_pvalue_equals_the_beta_binomial_law_and_its_convolution():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 500)
    hits = rng.random(500) < 0.86
    sets = _sets_from_hits(hits, labels, 4)
    k_cov = int(hits.sum())
    r = _rank(999, ALPHA)
    t = sm.marginal_coverage_test(sets, labels, ALPHA, n_calibration=999)
    assert t["law"] == "beta_binomial" and t["covered"] == k_cov and t["n"] == 500
    assert t["p_value"] == pytest.approx(stats.betabinom.cdf(k_cov, 500, r, 1000 - r), rel=1e-10)
    assert t["rejected"] == (t["p_value"] <= 0.05)
    t = sm.marginal_coverage_test(sets, labels, ALPHA)
    assert t["law"] == "binomial"
    assert t["p_value"] == pytest.approx(stats.binomtest(k_cov, 500, 0.9, alternative="less").pvalue, rel=1e-10)
    # Mondrian: the covered count is a sum of independent Beta-binomials, one per stratum (a stratum of 5 rows is
    # too small for alpha = 0.1: full sets, all its test rows covered)
    n_cal = np.array([30, 50, 5, 80])
    hits[labels == 2] = True
    sets = _sets_from_hits(hits, labels, 4)
    pmf = np.ones(1)
    for n, m in zip(n_cal, np.bincount(labels, minlength=4)):
        rr = _rank(int(n), ALPHA)
        part = (stats.betabinom.pmf(np.arange(m + 1), m, rr, n + 1 - rr) if rr <= n
                else np.r_[np.zeros(m), 1.0])
        pmf = np.convolve(pmf, part)
    t = sm.marginal_coverage_test(sets, labels, ALPHA, strata=labels, calibration_sizes=n_cal)
    assert t["law"] == "beta_binomial_convolution"
    assert t["p_value"] == pytest.approx(pmf[:int(hits.sum()) + 1].sum(), rel=1e-9)


def test_group_test_uses_each_groups_calibration_size():
    labels = np.zeros(100, dtype=int)
    groups = np.array(["a", "b"])[np.arange(100) % 2]
    hits = np.ones(100, dtype=bool)
    hits[:20:2] = False  # group a: 40 of 50 covered; group b: 50 of 50
    sets = _sets_from_hits(hits, labels, 3)
    block = sm.group_coverage_test(sets, labels, groups, ALPHA, calibration_sizes={"a": 99, "b": 40})
    r = _rank(99, ALPHA)
    row = block["smallest_p"][0]
    assert row["group"] == "a" and row["p_value"] == pytest.approx(stats.betabinom.cdf(40, 50, r, 100 - r), rel=1e-10)
    with pytest.raises(ValueError, match="calibration_sizes for every test group"):
        sm.group_coverage_test(sets, labels, groups, ALPHA, calibration_sizes={"a": 99})


# --- flags at the nominal rate when the null holds ------------------------------------------------------------------
def _flag_rate_of_exact_law(n, m, level=0.05):
    """P(p <= level) when the covered count has its exact law BetaBinomial(m, r, n + 1 - r)."""
    r = _rank(n, ALPHA)
    ks = np.arange(m + 1)
    pv = stats.betabinom.cdf(ks, m, r, n + 1 - r)
    return float(stats.betabinom.pmf(ks, m, r, n + 1 - r)[pv <= level].sum())


def test_class_valid_sets_are_flagged_at_the_nominal_rate_and_a_bad_class_is_flagged():
    """A class-conditional procedure written out here (uniform scores, per-class r-th smallest calibration score):
    each class's coverage is valid by construction, so unadjusted p <= 0.05 happens at the exact rate of its law,
    Holm flags a run at most 5 % of the time, and the old point-estimate list is long."""
    rng = np.random.default_rng(12)
    k, n, m, reps = 20, 49, 49, 300
    r = _rank(n, ALPHA)
    labels = np.repeat(np.arange(k), m)
    n_p, runs_flagged, below = 0, 0, 0
    for _ in range(reps):
        thr = np.sort(rng.random((k, n)), axis=1)[:, r - 1]
        hits = rng.random(k * m) <= thr[labels]
        sets = _sets_from_hits(hits, labels, k)
        block = sm.class_coverage_test(sets, labels, ALPHA, calibration_sizes=np.full(k, n))
        n_p += block["n_p_below_level"]
        runs_flagged += bool(block["flagged"])
        below += int((sm.class_conditional_coverage(sets, labels) < 1 - ALPHA).sum())
    tests = k * reps
    rho = _flag_rate_of_exact_law(n, m)
    assert 0.02 < rho <= 0.05  # a discrete law: the exact test's size is a little below the level
    # the count of p <= 0.05 is Binomial(tests, rho): two-sided 99.9 % band
    assert stats.binom.ppf(0.0005, tests, rho) <= n_p <= stats.binom.ppf(0.9995, tests, rho)
    # family-wise error <= 0.05 per run: runs with a Holm flag stochastically below Binomial(reps, 0.05)
    assert runs_flagged <= stats.binom.ppf(0.999, reps, 0.05)
    # the old list (observed coverage < 1 - alpha) holds far more than any level-0.05 test could
    assert below > stats.binom.ppf(0.999, tests, 0.05)

    # one class covered at 0.6 instead of 0.9 among valid ones: flagged, with the smallest p
    thr = np.sort(rng.random((k, n)), axis=1)[:, r - 1]
    hits = rng.random(k * m) <= thr[labels]
    bad = labels == 3
    hits[bad] = rng.random(int(bad.sum())) < 0.6
    block = sm.class_coverage_test(_sets_from_hits(hits, labels, k), labels, ALPHA, calibration_sizes=np.full(k, n))
    assert 3 in block["flagged"] and block["smallest_p"][0]["class"] == 3
    assert block["smallest_p"][0]["p_holm"] <= 0.05


def test_split_conformal_marginal_test_rejects_at_most_the_nominal_rate():
    """Split conformal written out (uniform scores): the marginal p-value is exact, so rejections over many
    independent runs follow Binomial(runs, rho) with rho the exact size of the level-0.05 test."""
    rng = np.random.default_rng(3)
    n, m, reps = 199, 300, 400
    r = _rank(n, ALPHA)
    labels = np.zeros(m, dtype=int)
    rejected = 0
    for _ in range(reps):
        thr = np.sort(rng.random(n))[r - 1]
        sets = _sets_from_hits(rng.random(m) <= thr, labels, 2)
        rejected += sm.marginal_coverage_test(sets, labels, ALPHA, n_calibration=n)["rejected"]
    ks = np.arange(m + 1)
    rho = float(stats.betabinom.pmf(ks, m, r, n + 1 - r)[stats.betabinom.cdf(ks, m, r, n + 1 - r) <= 0.05].sum())
    assert stats.binom.ppf(0.0005, reps, rho) <= rejected <= stats.binom.ppf(0.9995, reps, rho)


def test_conformal_stage_reports_tests_with_the_predictors_law():
    """End to end through the stage: Mondrian class sets get the per-class Beta-binomial law, split sets the
    marginal one; no 'violating_classes' verdict is left."""
    from calib.conformal import MondrianConformal, SplitConformal
    from calib.evaluation.conformal import conformal_stage

    rng = np.random.default_rng(5)
    p = rng.dirichlet(np.ones(5) * 0.5, size=4000)
    y = np.array([rng.choice(5, p=row) for row in p])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sec, figs = conformal_stage(MondrianConformal(condition="class", score="lac", alpha=ALPHA), p[:2000], y[:2000],
                                    p[2000:], y[2000:])
        split, _ = conformal_stage(SplitConformal(score="lac", alpha=ALPHA), p[:2000], y[:2000], p[2000:], y[2000:],
                                   plots=False)
    json.dumps(sec, allow_nan=False)
    assert "violating_classes" not in sec and "violating_classes" not in split
    ct = sec["class_coverage_test"]
    assert ct["law"] == "beta_binomial" and ct["n_tested"] == 5
    assert sec["coverage_test"]["law"] == "beta_binomial_convolution"
    # the smallest class p-value is the Beta-binomial cdf of that class's count given its calibration size
    row = ct["smallest_p"][0]
    n_c = int(np.sum(y[:2000] == row["class"]))
    rr = _rank(n_c, ALPHA)
    assert row["p_value"] == pytest.approx(stats.betabinom.cdf(row["covered"], row["n"], rr, n_c + 1 - rr), rel=1e-10)
    assert split["class_coverage_test"]["law"] == "binomial"
    t = split["coverage_test"]
    rr = _rank(2000, ALPHA)
    assert t["law"] == "beta_binomial" and t["n_calibration"] == 2000
    assert t["p_value"] == pytest.approx(stats.betabinom.cdf(t["covered"], 2000, rr, 2001 - rr), rel=1e-10)
    # the plot marks the classes the Holm tests flag, with their ids
    cc = figs["class_coverage.png"].data
    assert sorted(cc.classes.tolist()) == list(range(5)) and (np.diff(cc.coverage) >= 0).all()
    assert sorted(cc.classes[cc.flagged].tolist()) == sorted(ct["flagged"])


def test_plot_marks_flagged_classes_not_points_below_target():
    import matplotlib

    matplotlib.use("Agg")
    from calib.plotting import conformal as C

    labels = np.repeat(np.arange(3), 100)
    hits = np.ones(300, dtype=bool)
    hits[:40] = False     # class 0: 0.60, flagged
    hits[100:112] = False  # class 1: 0.88, below 0.9 but not significantly
    data = C.prepare_class_coverage(_sets_from_hits(hits, labels, 3), labels, ALPHA)
    assert data.classes.tolist() == [0, 1, 2] and data.flagged.tolist() == [True, False, False]
    want = stats.binomtest(60, 100, 0.9, alternative="less").pvalue * 3  # Holm: smallest of 3
    assert data.p_holm[0] == pytest.approx(want, rel=1e-10)
    ax = C.plot_class_coverage(data)
    assert [t.get_text() for t in ax.get_xticklabels() if t.get_color() == "tab:red"] == ["0"]  # flagged, in red
    matplotlib.pyplot.close(ax.figure)


# --- policy and slices ----------------------------------------------------------------------------------------------
def test_test_risk_flag_is_the_exact_binomial_test():
    from calib.evaluation.routing import test_risk_test

    t = test_risk_test(76, 1500, 0.05)  # the 0.0507 against 0.05
    assert t["p_value"] == pytest.approx(stats.binomtest(76, 1500, 0.05, alternative="greater").pvalue, rel=1e-10)
    assert 0.4 < t["p_value"] < 0.5 and not t["exceeds"] and t["level"] == 0.05
    t = test_risk_test(100, 1500, 0.05)
    assert t["exceeds"] and t["p_value"] == pytest.approx(
        stats.binomtest(100, 1500, 0.05, alternative="greater").pvalue, rel=1e-10)
    assert test_risk_test(0, 0, 0.05)["p_value"] == 1.0
    # at a risk exactly on target the flag fires at most 5 % of the time
    rng = np.random.default_rng(7)
    errors = rng.binomial(400, 0.05, size=2000)
    fired = sum(test_risk_test(int(e), 400, 0.05)["exceeds"] for e in errors)
    assert fired <= stats.binom.ppf(0.999, 2000, 0.05)


def test_policy_stage_reports_the_risk_test_of_its_answered_items():
    from calib.evaluation.routing import policy_stage
    from calib.policy import RiskControlPolicy

    rng = np.random.default_rng(9)
    p = rng.dirichlet(np.ones(4) * 0.3, size=6000)
    y = np.array([rng.choice(4, p=row) for row in p])
    pol = RiskControlPolicy(target_risk=0.1, delta=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sec, _ = policy_stage(pol, p[:3000], y[:3000], p[3000:], y[3000:], n_resamples=20)
    t = sec["policy"]["test_risk_test"]
    assert "test_risk_exceeds_target" not in sec["policy"]
    dec = pol.route(p[3000:])
    answered = dec.actions == 0
    n_err = int((answered & (dec.prediction != y[3000:])).sum())
    assert (t["n_answered"], t["n_errors"]) == (int(answered.sum()), n_err)
    assert t["p_value"] == pytest.approx(
        stats.binomtest(n_err, int(answered.sum()), 0.1, alternative="greater").pvalue, rel=1e-10)
    assert sec["policy"]["selective_risk"] == pytest.approx(n_err / answered.sum())


def test_slice_pvalues_equal_scipy():
    from calib.evaluation.slices import silent_failure_slices

    rng = np.random.default_rng(4)
    p = rng.dirichlet(np.ones(3), size=600)
    y = rng.integers(0, 3, 600)
    rows = silent_failure_slices(p, y, np.zeros(600, dtype=int), target=0.3)
    for row in rows:
        want = stats.binomtest(row["silent_failures"], row["n"], 0.3, alternative="greater").pvalue
        assert row["p_value"] == pytest.approx(want, rel=1e-10)


# --- shift report: conformal coverage next to the risk guarantee ------------------------------------------------------
def test_shift_report_tests_conformal_coverage_under_label_shift():
    from calib import load_logits
    from calib.calibrators import TemperatureScaling
    from calib.evaluation.shift_report import shift_report
    from calib.policy import RiskControlPolicy

    data = load_logits(shared_npz("c10lt_sctl/resnet110.npz"))
    cal, test = data.split_cal_test()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        rep = shift_report(cal.logits, cal.labels, test.logits, test.labels, calibrator=TemperatureScaling(),
                           policy=RiskControlPolicy(target_risk=0.05, delta=0.1), n_resamples=50)
        half = test.n_samples // 2
        ctl = shift_report(test.logits[:half], test.labels[:half], test.logits[half:], test.labels[half:],
                           calibrator=TemperatureScaling(), policy=RiskControlPolicy(target_risk=0.05, delta=0.1),
                           n_resamples=50)
    c = rep["conformal"]
    json.dumps(c, allow_nan=False)
    assert c["score"] == "lac" and c["alpha"] == 0.1 and c["n_calibration"] == cal.n_samples
    t = c["coverage_test"]
    r = _rank(cal.n_samples, 0.1)
    assert t["p_value"] == pytest.approx(stats.betabinom.cdf(t["covered"], t["n"], r, cal.n_samples + 1 - r),
                                         rel=1e-8, abs=1e-300)
    assert c["coverage"] < 0.88 and t["rejected"]  # long-tailed calibration -> balanced test: coverage broke
    assert 9 in c["class_coverage_test"]["flagged"]  # the rarest calibration class
    assert not ctl["conformal"]["coverage_test"]["rejected"]  # exchangeable halves: no evidence


@pytest.mark.parametrize("rel", ["cifar_netcal/cifar100_densenet_bc100.npz", "cifar_netcal/cifar100_wrn16_4.npz"])
def test_mondrian_class_on_cifar100_flags_what_chance_allows(rel):
    """Must-show of issue #12 on real 100-class logits. Class-conditional sets are valid per class, so each class's
    exact p-value is super-uniform and, given the labels, independent across classes: the number with p <= 0.05 is
    stochastically below Binomial(k, 0.05) (checked against its 0.999 quantile), and Holm keeps the family-wise
    error at 0.05 (zero flags: a level-0.05 test of "the procedure is valid per class"). The old point-estimate
    list ("coverage below 1 - alpha") is recomputed beside it: it holds a third of the classes."""
    from calib.calibrators import TemperatureScaling
    from calib.conformal import MondrianConformal
    from calib.evaluation.conformal import coverage_law_kwargs
    from conftest import load_shared

    alpha, level = 0.1, 0.05
    data = load_shared(rel)
    cal, test = data.split_cal_test()
    ts = TemperatureScaling().fit(cal.logits, cal.labels)
    pc, pt = ts.predict_proba(cal.logits), ts.predict_proba(test.logits)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        pred = MondrianConformal(condition="class", score="lac", alpha=alpha).fit(pc, cal.labels)
    sets = pred.predict_set(pt)
    block = sm.set_metrics(sets, test.labels, alpha, **coverage_law_kwargs(pred))
    t = block["class_coverage_test"]
    assert t["law"] == "beta_binomial" and t["n_tested"] == 100 and t["level"] == level
    bound = int(stats.binom.ppf(0.999, t["n_tested"], level))
    assert t["n_p_below_level"] <= bound, (t["n_p_below_level"], bound)
    assert t["flagged"] == []
    # the old verdict, by hand: classes whose observed coverage is below 1 - alpha
    hits = sets[np.arange(test.labels.size), test.labels]
    cov = np.bincount(test.labels, weights=hits, minlength=100) / np.bincount(test.labels, minlength=100)
    assert int((cov < 1 - alpha).sum()) >= 25  # a third of the classes: what chance gives with ~50 items a class
