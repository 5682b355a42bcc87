"""calib.shift.adapt.reweight_policy: routing thresholds re-chosen under label-shift weights.

Unit weights reproduce the unweighted ThresholdPolicy quantile exactly and (Hoeffding) are never less conservative than
RiskControlPolicy's binomial Learn then Test; the weighted quantile and the Hoeffding statistic S(lam) / p(lam) on a
tiny example computed by hand; validity by simulation in a two-class label-shift model whose target selective risk is
known in closed form (the reweighted policy violates at most at rate delta, the unweighted one nearly always);
real logits (c10lt_resnet110, long-tailed -> balanced); bad inputs; artifact round trip. The three tests of
H0 "R_q > r" (bound="bernstein", the default; "hoeffding"; "per_class_binomial"): validity by simulation for each,
Bernstein's inequality at the exact boundary of H0, the per-threshold statistics against hand computations with
scipy.stats.beta, and the Bernstein and per-class rules against brute-force loop implementations."""

import dataclasses
import json
import math
import warnings
from fractions import Fraction

import numpy as np
import pytest

from calib.policy import (
    ConformalRoutingPolicy,
    CostPolicy,
    RiskControlPolicy,
    ThresholdPolicy,
)
from calib.policy.routing import ANSWER, ESCALATE
from calib.selective import confidence_domain
from calib.shift import (
    LabelShiftEstimate,
    WeightedThreshold,
    estimate_label_shift,
    reweight_policy,
)
from calib.shift.adapt import (
    BOUNDS,
    DEFAULT_BOUND,
    _start_size,
    bernstein_deviation,
    per_class_risk_bounds,
    weighted_risk_bernstein,
    weighted_risk_pvalues,
)
from calib.stats import binom_greater_pvalue

# ---------------------------------------------------------------------------------------------------------------
# A two-class label-shift model with a closed-form selective risk
# ---------------------------------------------------------------------------------------------------------------
# Given the class y, the confidence c (the max probability) is Uniform(0.5, 1) and the model errs with probability
# 2 kappa_y (1 - c). Then P(answered | y) = 2 (1 - lam) and P(answered & wrong | y) = 2 kappa_y (1 - lam)^2 for
# lam in [0.5, 1], so under a prior q the selective risk is R_q(lam) = (1 - lam) sum_y q_y kappa_y / sum_y q_y
# (lam clipped to [0.5, 1]; nothing answered for lam > 1: no risk).
KAPPA = np.array([0.05, 0.6])
P_SRC = np.array([0.8, 0.2])  # calibration prior: mostly the easy class
Q_TGT = np.array([0.2, 0.8])  # target prior: mostly the hard class


def _draw(rng, n, prior):
    y = rng.choice(2, size=n, p=prior)
    c = rng.uniform(0.5, 1.0, n)
    wrong = rng.random(n) < 2.0 * KAPPA[y] * (1.0 - c)
    pred = np.where(wrong, 1 - y, y)
    probs = np.empty((n, 2))
    probs[np.arange(n), pred] = c
    probs[np.arange(n), 1 - pred] = 1.0 - c
    return probs, y


def true_risk(lam, prior):
    if lam > 1.0:
        return 0.0
    return (1.0 - min(max(lam, 0.5), 1.0)) * float(prior @ KAPPA) / float(prior.sum())


def test_true_risk_formula_matches_a_large_sample():
    # the closed form checked against 10^6 rows drawn from the model (binomial noise ~ 5e-4)
    rng = np.random.default_rng(11)
    p, y = _draw(rng, 1_000_000, Q_TGT)
    ans = p.max(1) >= 0.7
    emp = (p.argmax(1)[ans] != y[ans]).mean()
    n_ans, err = int(ans.sum()), int((p.argmax(1)[ans] != y[ans]).sum())
    assert binom_greater_pvalue(err, n_ans, true_risk(0.7, Q_TGT)) > 1e-3
    assert binom_greater_pvalue(n_ans - err, n_ans, 1 - true_risk(0.7, Q_TGT)) > 1e-3
    assert abs(emp - 0.3 * 0.49) < 0.01


def _weights_from_counts(y):
    """True weights q / p^ relative to the calibration class frequencies (what LabelShiftEstimate reports)."""
    freq = np.bincount(y, minlength=2) / y.size
    return Q_TGT / freq


# ---------------------------------------------------------------------------------------------------------------
# Unit weights
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("coverage", [0.05, 0.3, 0.5, 0.77, 0.9, 0.999])
def test_unit_weights_reproduce_threshold_policy_exactly(seed, coverage):
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(5, 0.7), size=700)
    p = np.round(p, 2)  # ties among confidences
    p /= p.sum(1, keepdims=True)
    y = rng.integers(0, 5, 700)
    for conf in ("max_prob", "margin", "neg_entropy"):
        pol = ThresholdPolicy(target_coverage=coverage, confidence=conf)
        plain = pol.clone().fit(p, y)
        out, rep = reweight_policy(pol, p, y, np.ones(5))
        assert out.threshold_ == plain.threshold_
        assert rep.original_threshold == plain.threshold_ and rep.method == "weighted_quantile"
        np.testing.assert_array_equal(out.route(p).actions, plain.route(p).actions)
        # any common scale: only ratios matter
        assert reweight_policy(pol, p, y, np.full(5, 7.3))[0].threshold_ == plain.threshold_


def test_unit_weights_hoeffding_more_conservative_than_binomial_ltt():
    rng = np.random.default_rng(5)
    p, y = _draw(rng, 4000, P_SRC)
    for family in ("multi_start", "fixed_sequence"):
        pol = RiskControlPolicy(target_risk=0.1, delta=0.1, family=family)
        binom = pol.clone().fit(p, y)
        out, rep = reweight_policy(pol, p, y, np.ones(2), bound="hoeffding")
        assert binom.guarantee_.certified and rep.certified  # both certify: the comparison is not trivial
        assert out.threshold_ >= binom.threshold_
        assert rep.original_threshold == binom.threshold_
        assert any("Hoeffding vs binomial" in note for note in rep.notes)


# ---------------------------------------------------------------------------------------------------------------
# Hand-computed examples
# ---------------------------------------------------------------------------------------------------------------
def test_weighted_quantile_by_hand():
    # confidences 0.9, 0.8, 0.7, 0.6 of classes 0, 0, 1, 1; weights (1, 3): row weights 1, 1, 3, 3 (total 8),
    # cumulative weight from the top 1, 2, 5, 8 -> shares 1/8, 2/8, 5/8, 8/8
    p = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6]])
    y = np.array([0, 0, 1, 1])
    cases = {0.1: (0.9, 0.125), 0.125: (0.9, 0.125), 0.2: (0.8, 0.25), 0.5: (0.7, 0.625), 0.7: (0.6, 1.0)}
    for cov, (t, share) in cases.items():
        out, rep = reweight_policy(ThresholdPolicy(target_coverage=cov), p, y, [1.0, 3.0])
        assert out.threshold_ == t and rep.weighted_coverage == share, cov
    # unweighted, coverage 0.5 takes the 2nd largest confidence: 0.8
    assert reweight_policy(ThresholdPolicy(target_coverage=0.5), p, y, [1.0, 3.0])[1].original_threshold == 0.8
    # weighted selective risk at 0.7: the answered rows are all right here
    assert reweight_policy(ThresholdPolicy(target_coverage=0.5), p, y, [1.0, 3.0])[1].weighted_selective_risk == 0.0


def _brute_force_quantile(conf, row_w, cov):
    """Highest distinct confidence t with sum_{s_i >= t} w_i / sum_i w_i >= cov, in exact rational arithmetic."""
    ws = [Fraction(float(v)) for v in row_w]
    total = sum(ws)
    for t in sorted({float(v) for v in conf}, reverse=True):
        if sum(wi for v, wi in zip(conf, ws) if v >= t) / total >= Fraction(cov):
            return t
    raise AssertionError("unreachable: the lowest confidence answers everything")


@pytest.mark.parametrize("seed", range(6))
def test_weighted_quantile_matches_brute_force(seed):
    rng = np.random.default_rng(100 + seed)
    k, n = 4, 80
    p = np.round(rng.dirichlet(np.full(k, 0.6), size=n), 1)  # rounded: many ties
    p[np.arange(n), rng.integers(0, k, n)] += 1.0 - p.sum(1)  # rows sum to 1 again
    p = np.clip(p, 0, None)
    p /= p.sum(1, keepdims=True)
    y = rng.integers(0, k, n)
    w = rng.gamma(1.0, 1.0, k)
    w[seed % k] = 0.0  # one class of weight 0
    conf = p.max(1)
    for cov in (0.1, 0.33, 0.5, 0.8, 0.95):
        out, _ = reweight_policy(ThresholdPolicy(target_coverage=cov), p, y, w)
        assert out.threshold_ == _brute_force_quantile(conf, w[y], cov), cov


def test_hoeffding_statistic_by_hand():
    # rows (conf, wrong, class): (0.9, 0, 0), (0.8, 0, 1), (0.8, 1, 0), (0.6, 0, 1); weights (1, 3)
    # c = (1, 3, 1, 3) / 8, sum c^2 = 20 / 64; r = 0.25, losses on answered rows: -0.25 (right), 0.75 (wrong)
    # lam = 0.9: S = -0.25/8 = -1/32; lam = 0.8: S = (-0.25 - 0.75 + 0.75) / 8 = -1/32; lam = 0.6: S = -1/32 - 0.75/8
    # = -1/8. p = exp(-2 S^2 / (20/64)): exp(-0.00625), exp(-0.00625), exp(-0.1)
    conf = np.array([0.9, 0.8, 0.8, 0.6])
    wrong = np.array([0.0, 0.0, 1.0, 0.0])
    row_w = np.array([1.0, 3.0, 1.0, 3.0])
    grid, s, pv = weighted_risk_pvalues(conf, wrong, row_w, 0.25)
    assert grid.tolist() == [0.9, 0.8, 0.6]
    np.testing.assert_allclose(s, [-1 / 32, -1 / 32, -1 / 8], rtol=1e-15, atol=1e-15)
    np.testing.assert_allclose(pv, [math.exp(-0.00625), math.exp(-0.00625), math.exp(-0.1)], rtol=1e-14)
    # a positive S gives p = 1: one wrong row of weight 3 at the top, r = 0.25: S = 3 * 0.75 / 8 > 0
    _, s2, pv2 = weighted_risk_pvalues(np.array([0.9, 0.5]), np.array([1.0, 0.0]), np.array([3.0, 1.0]), 0.25)
    assert s2[0] == 3 * 0.75 / 4 and pv2[0] == 1.0


def test_label_free_start_by_hand():
    # smallest m with 2 (r/2)^2 m^2 / (m + (n - m) rho^2) >= log(1 / level); r = 0.2, level = 0.1 (log 10 = 2.302585)
    # rho = 1, n = 10000: 2e-6 m^2 >= 2.302585 -> m = 1073 (1072^2 * 2e-6 = 2.29837, 1073^2 * 2e-6 = 2.30266)
    # rho = 0: 0.02 m >= 2.302585 -> m = 116 (115.13 rounded up); rho = 1, n = 100: needs m >= 1073 > n -> n + 1
    assert _start_size(0.2, 0.1, 10000, 1.0) == 1073
    assert _start_size(0.2, 0.1, 10000, 0.0) == 116
    assert _start_size(0.2, 0.1, 100, 1.0) == 101


def test_report_is_json_serialisable():
    from calib._json import to_json

    p, y = _draw(np.random.default_rng(12), 6000, P_SRC)
    _, rep = reweight_policy(RiskControlPolicy(target_risk=0.2, delta=0.1), p, y, _weights_from_counts(y),
                             bound="hoeffding")
    d = rep.to_dict()
    assert set(d) == {f.name for f in dataclasses.fields(WeightedThreshold)}
    assert json.loads(json.dumps(to_json(d)))["method"] == "weighted_ltt_hoeffding" and 0 < d["risk_pvalue"] <= 0.1 / 4
    assert "if the weights are the true q/p" in d["statement"]


def test_hoeffding_pvalue_is_valid_for_a_known_mean():
    # Independent check of the p-value's validity (not of its code): with E S = 0 exactly (the boundary of H0),
    # P(p <= a) <= a. Rows: two classes of weights 1 and 4, losses 1{wrong} - r with P(wrong | y) = r for both.
    rng = np.random.default_rng(3)
    r, n, reps = 0.3, 60, 20000
    y = np.repeat([0, 1], n // 2)
    row_w = np.array([1.0, 4.0])[y]
    c = row_w / row_w.sum()
    wrong = rng.random((reps, n)) < r
    s = ((wrong - r) * c).sum(1)
    pv = np.exp(-2 * np.minimum(s, 0) ** 2 / (c @ c))
    for a in (0.05, 0.1, 0.2):
        k = int((pv <= a).sum())
        assert binom_greater_pvalue(k, reps, a) > 1e-3, (a, k / reps)


# ---------------------------------------------------------------------------------------------------------------
# Validity by simulation
# ---------------------------------------------------------------------------------------------------------------
def _simulate(n_runs, n_cal, delta, r, seed, bound="hoeffding"):
    rng = np.random.default_rng(seed)
    viol_w = viol_u = certified = 0
    for _ in range(n_runs):
        p, y = _draw(rng, n_cal, P_SRC)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            out, rep = reweight_policy(RiskControlPolicy(target_risk=r, delta=delta), p, y, _weights_from_counts(y),
                                       bound=bound)
            plain = RiskControlPolicy(target_risk=r, delta=delta).fit(p, y)
        certified += rep.certified
        viol_w += true_risk(out.threshold_, Q_TGT) > r
        viol_u += true_risk(plain.threshold_, Q_TGT) > r
    return viol_w, viol_u, certified


def test_validity_by_simulation():
    # 200 calibration draws of 6000 rows with the source prior (0.8, 0.2); the target prior (0.2, 0.8) makes the
    # unweighted risk R_p(0.5) = 0.08 < r = 0.2 while R_q(0.5) = 0.245 > r: the unweighted fit answers everything.
    # (~6 s.) The weights are the true q / p^ of each draw (relative to its class frequencies, as the guarantee
    # reads them). Hoeffding is conservative, so the reweighted policy rarely comes near the boundary lam = 0.592.
    n_runs, delta, r = 200, 0.1, 0.2
    viol_w, viol_u, certified = _simulate(n_runs, 6000, delta, r, seed=2024)
    assert certified >= n_runs // 2  # the reweighted policy does answer items in most runs (not vacuous)
    # share of runs whose true target risk exceeds r: not significantly above delta (exact binomial test, 1 %)
    assert binom_greater_pvalue(viol_w, n_runs, delta) > 0.01, viol_w
    # the unweighted policy violates far more often than delta allows
    assert binom_greater_pvalue(viol_u, n_runs, delta) < 1e-6, viol_u


@pytest.mark.slow
def test_validity_by_simulation_many_runs_smaller_n():
    # 1000 draws of 4000 rows (fewer rows: fewer certified, the walk stops at other places); ~20 s
    n_runs, delta, r = 1000, 0.1, 0.2
    viol_w, viol_u, certified = _simulate(n_runs, 4000, delta, r, seed=7)
    assert certified >= n_runs // 4
    assert binom_greater_pvalue(viol_w, n_runs, delta) > 0.01, viol_w
    assert binom_greater_pvalue(viol_u, n_runs, delta) < 1e-6, viol_u


# ---------------------------------------------------------------------------------------------------------------
# bound="per_class_binomial": per-class Clopper-Pearson bounds, Bonferroni over the classes
# ---------------------------------------------------------------------------------------------------------------
def test_default_bound_is_bernstein():
    # the bench (python bench/shift_policy.py) certifies the most with Bernstein on the c10lt models
    assert DEFAULT_BOUND == "bernstein" and set(BOUNDS) == {"bernstein", "hoeffding", "per_class_binomial"}
    p, y = _draw(np.random.default_rng(12), 6000, P_SRC)
    pol = RiskControlPolicy(target_risk=0.2, delta=0.1)
    out, rep = reweight_policy(pol, p, y, _weights_from_counts(y))
    out_b, rep_b = reweight_policy(pol, p, y, _weights_from_counts(y), bound="bernstein")
    assert rep.method == rep_b.method == "weighted_ltt_bernstein" and out.threshold_ == out_b.threshold_
    assert rep.certified and rep.risk_pvalue is None and rep.risk_upper_bound is None
    assert "Bernstein" in rep.statement and any("Bernstein vs binomial" in note for note in rep.notes)


def test_bernstein_validity_by_simulation():
    # as test_validity_by_simulation, with the default Bernstein test: 200 draws of 6000 rows, true weights (~12 s)
    n_runs, delta, r = 200, 0.1, 0.2
    viol_w, viol_u, certified = _simulate(n_runs, 6000, delta, r, seed=2026, bound="bernstein")
    assert certified >= n_runs // 2
    assert binom_greater_pvalue(viol_w, n_runs, delta) > 0.01, viol_w
    assert binom_greater_pvalue(viol_u, n_runs, delta) < 1e-6, viol_u


@pytest.mark.slow
def test_bernstein_validity_by_simulation_r01():
    # r = 0.1 (boundary lam = 0.796), where Hoeffding certified in 0 of 100 draws at n = 6000: 500 draws; ~30 s
    n_runs, delta, r = 500, 0.1, 0.1
    viol_w, viol_u, certified = _simulate(n_runs, 6000, delta, r, seed=98, bound="bernstein")
    assert certified >= n_runs // 5  # not vacuous: it certifies in 180 of the 500 draws
    assert binom_greater_pvalue(viol_w, n_runs, delta) > 0.01, viol_w
    assert binom_greater_pvalue(viol_u, n_runs, delta) < 1e-6, viol_u


def test_bernstein_inequality_at_the_boundary():
    # Independent check of the inequality the test rests on (not of its code): two classes of n_y = (30, 120) rows,
    # q = (1/2, 1/2) (class weights 4 : 1), per row answered & wrong w.p. a_y, answered & right w.p. b_y - a_y;
    # r = sum q a / sum q b, so E S = 0 exactly (the boundary of H0). With the *true* variance V,
    # P(S <= -t(V)) <= level; and the full test (variance bounds from the data) rejects at most at rate alpha.
    rng = np.random.default_rng(17)
    n_y, a, b = np.array([30, 120]), np.array([0.3, 0.05]), np.array([0.6, 0.5])
    q = np.array([0.5, 0.5])
    r = float(q @ a / (q @ b))
    y = np.repeat([0, 1], n_y)
    c = (q / n_y)[y]
    reps = 20000
    u = rng.random((reps, y.size))
    wrong = u < a[y]
    answered = u < b[y]
    s = (c * (wrong - r * answered)).sum(1)
    var_l = (1 - r) ** 2 * a + r * r * (b - a) - (a - r * b) ** 2  # Var(l | y), l in {1 - r, -r, 0}
    v_true = float((q * q / n_y) @ var_l)
    for level in (0.05, 0.1, 0.2):
        hits = int((s <= -_bernstein_t(v_true, c.max(), level)).sum())
        assert binom_greater_pvalue(hits, reps, level) > 1e-3, (level, hits / reps)
    # the full test through weighted_risk_bernstein (answered rows at confidence 0.9, the others 0.1): 2000 draws
    alpha, rejected = 0.2, 0
    for i in range(2000):
        conf = np.where(answered[i], 0.9, 0.1)
        grid, s_i, t_i = weighted_risk_bernstein(conf, wrong[i].astype(float), y, np.array([4.0, 1.0]), r, alpha)
        j = grid.tolist().index(0.9)
        assert s_i[j] == pytest.approx(s[i], abs=1e-12)
        rejected += bool(s_i[j] <= -t_i[j])
    assert binom_greater_pvalue(rejected, 2000, alpha) > 1e-3, rejected


def test_bernstein_statistic_by_hand():
    # the 10 rows of test_per_class_bounds_by_hand, weights (1, 2): q = (3/7, 4/7), c = q_y / n_y = (1/14, 1/7);
    # r = 0.3, alpha = 0.2: variance bounds at 0.2 / (4 * 2) = 0.025 each, Bernstein at 0.1, M = 1/7.
    #   lam = 0.8: answered 0.95 (c0 right), 0.9 (c1 right), 0.85 (c0 right), 0.8 (c0 wrong):
    #              S = (-0.3 - 0.6 - 0.3 + 0.7) / 14 = -1/28; class 0: e = 1, m = 3; class 1: e = 0, m = 1
    #   lam = 0.5: everything; class 0: 2 wrong of 6 -> 2 * 0.7 - 4 * 0.3 = 0.2, times 1/14; class 1: 1 wrong of
    #              4 -> 0.7 - 0.9 = -0.2, times 1/7: S = 0.2/14 - 0.4/14 = -1/70; class 0: e = 2, m = 6; class 1: 1, 4
    conf = np.round(np.arange(0.95, 0.49, -0.05), 2)
    y = np.array([0, 1, 0, 0, 1, 0, 1, 0, 1, 0])
    wrong = np.zeros(10)
    wrong[[3, 6, 9]] = 1.0
    grid, s, t = weighted_risk_bernstein(conf, wrong, y, np.array([1.0, 2.0]), 0.3, 0.2)
    q0, q1, av, r = 3 / 7, 4 / 7, 0.025, 0.3
    hand = {0.8: (-1 / 28, (3, 1), (1, 0)), 0.5: (-1 / 70, (6, 2), (4, 1))}
    for lam, (s_exp, (m0, e0), (m1, e1)) in hand.items():
        j = grid.tolist().index(lam)
        v = (q0 ** 2 / 6 * _var_bound(_cp_upper(e0, 6, av), _cp_upper(m0, 6, av), r)
             + q1 ** 2 / 4 * _var_bound(_cp_upper(e1, 4, av), _cp_upper(m1, 4, av), r))
        assert s[j] == pytest.approx(s_exp, abs=1e-15)
        assert t[j] == pytest.approx(_bernstein_t(v, 1 / 7, 0.1), rel=1e-12)
        assert not s[j] <= -t[j]  # ten rows: t is ~0.3 or more, |S| < 0.04: nothing rejected
    # all 6 of class 0 answered: the upper bound of b_0 is 1 (CP upper after n of n), so the 1/4 cap is what binds
    assert _var_bound(_cp_upper(2, 6, av), 1.0, r) == 0.25
    # bernstein_deviation by closed form: t = M L / 3 + sqrt((M L / 3)^2 + 2 V L), L = log(1 / level)
    lg = math.log(10)
    assert float(bernstein_deviation(0.01, 0.0, 0.1)) == pytest.approx(math.sqrt(0.02 * lg), rel=1e-14)
    assert float(bernstein_deviation(0.0, 0.3, 0.1)) == pytest.approx(0.2 * lg, rel=1e-14)


@pytest.mark.slow
def test_per_class_validity_by_simulation():
    # as test_validity_by_simulation, with the per-class binomial test: 200 draws of 6000 rows, true weights. The
    # per-class test certifies closer to the boundary (lam = 0.592 for r = 0.2) than Hoeffding does. (~17 s)
    n_runs, delta, r = 200, 0.1, 0.2
    viol_w, viol_u, certified = _simulate(n_runs, 6000, delta, r, seed=2025, bound="per_class_binomial")
    assert certified >= n_runs // 2
    assert binom_greater_pvalue(viol_w, n_runs, delta) > 0.01, viol_w
    assert binom_greater_pvalue(viol_u, n_runs, delta) < 1e-6, viol_u


@pytest.mark.slow
def test_per_class_validity_by_simulation_r01():
    # r = 0.1 (boundary lam = 1 - 0.1 / 0.49 = 0.796), where Hoeffding certifies nothing at n = 6000 and the
    # per-class test does: 500 draws; ~40 s
    n_runs, delta, r = 500, 0.1, 0.1
    viol_w, viol_u, certified = _simulate(n_runs, 6000, delta, r, seed=99, bound="per_class_binomial")
    assert certified >= n_runs // 5  # not vacuous: it certifies in 131 of the 500 draws
    assert binom_greater_pvalue(viol_w, n_runs, delta) > 0.01, viol_w
    assert binom_greater_pvalue(viol_u, n_runs, delta) < 1e-6, viol_u


def _cp_upper(k, n, a):
    """One-sided (1 - a) Clopper-Pearson upper bound, from scipy.stats.beta directly (independent of calib)."""
    from scipy.stats import beta

    return 1.0 if k >= n else float(beta.ppf(1.0 - a, k + 1, n - k))


def _cp_lower(k, n, a):
    from scipy.stats import beta

    return 0.0 if k <= 0 else float(beta.ppf(a, k, n - k + 1))


def test_per_class_bounds_by_hand():
    # 10 rows (conf, class, wrong), confidences 0.95 .. 0.5 by 0.05:
    #   classes 0 1 0 0 1 0 1 0 1 0, wrong at 0.8 (class 0), 0.65 (class 1) and 0.5 (class 0)
    # n_0 = 6, n_1 = 4; weights (1, 2): q = (6, 8) / 14 = (3/7, 4/7); alpha = 0.05 per bound.
    # Counts read off the list (answered = conf >= lam):
    #   lam = 0.95: class 0 m = 1 e = 0, class 1 m = 0 e = 0
    #   lam = 0.8:  class 0 m = 3 e = 1 (0.95, 0.85, 0.8), class 1 m = 1 e = 0 (0.9)
    #   lam = 0.6:  class 0 m = 5 e = 1, class 1 m = 3 e = 1 (0.9, 0.75, 0.65)
    #   lam = 0.5:  class 0 m = 6 e = 2, class 1 m = 4 e = 1
    conf = np.round(np.arange(0.95, 0.49, -0.05), 2)
    y = np.array([0, 1, 0, 0, 1, 0, 1, 0, 1, 0])
    wrong = np.zeros(10)
    wrong[[3, 6, 9]] = 1.0
    grid, up, lo = per_class_risk_bounds(conf, wrong, y, np.array([1.0, 2.0]), 0.05)
    assert grid.tolist() == conf.tolist()
    q0, q1, a = 3 / 7, 4 / 7, 0.05
    hand = {0.95: ((1, 0), (0, 0)), 0.8: ((3, 1), (1, 0)), 0.6: ((5, 1), (3, 1)), 0.5: ((6, 2), (4, 1))}
    for lam, ((m0, e0), (m1, e1)) in hand.items():
        j = grid.tolist().index(lam)
        u_exp = q0 * _cp_upper(e0, 6, a) + q1 * _cp_upper(e1, 4, a)
        l_exp = q0 * _cp_lower(m0, 6, a) + q1 * _cp_lower(m1, 4, a)
        np.testing.assert_allclose([up[j], lo[j]], [u_exp, l_exp], rtol=1e-12, err_msg=str(lam))
    # two values by closed form: 0 errors of n -> upper 1 - a^(1/n); n answered of n -> lower a^(1/n);
    # at lam = 0.95 class 1 has answered nothing: lower 0
    np.testing.assert_allclose(up[0], q0 * (1 - 0.05 ** (1 / 6)) + q1 * (1 - 0.05 ** (1 / 4)), rtol=1e-12)
    np.testing.assert_allclose(lo[0], q0 * _cp_lower(1, 6, a), rtol=1e-12)
    np.testing.assert_allclose(lo[-1], q0 * 0.05 ** (1 / 6) + q1 * 0.05 ** (1 / 4), rtol=1e-12)
    # decisions: reject H0 "R_q(lam) > r" iff upper <= r lower. At alpha = 0.05 the ratio upper / lower is 1.398 at
    # lam = 0.5 (scipy values: 0.7417 / 0.5303): ten rows certify no r < 1 there. At alpha = 0.2 (scipy, above
    # formulas): lam = 0.5: 0.5837 / 0.7099 = 0.822, lam = 0.6: 0.5139 / 0.4861 = 1.057, so r = 0.9 is rejected
    # (certified) at lam = 0.5 only and r = 0.8 nowhere among the two
    _, up2, lo2 = per_class_risk_bounds(conf, wrong, y, np.array([1.0, 2.0]), 0.2)
    for lam, ((m0, e0), (m1, e1)) in hand.items():
        j = grid.tolist().index(lam)
        u_exp = q0 * _cp_upper(e0, 6, 0.2) + q1 * _cp_upper(e1, 4, 0.2)
        l_exp = q0 * _cp_lower(m0, 6, 0.2) + q1 * _cp_lower(m1, 4, 0.2)
        for r in (0.5, 0.8, 0.9):
            assert (up2[j] <= r * lo2[j]) == (u_exp <= r * l_exp), (lam, r)
    assert 1.39 < up[-1] / lo[-1] < 1.40
    assert 0.82 < up2[-1] / lo2[-1] < 0.823 and 1.057 < up2[-3] / lo2[-3] < 1.058  # grid[-3] = 0.6
    assert up2[-1] <= 0.9 * lo2[-1] and not up2[-3] <= 0.9 * lo2[-3] and not up2[-1] <= 0.8 * lo2[-1]


def _bernstein_t(v, m_range, level):
    lg = math.log(1 / level)
    return m_range * lg / 3 + math.sqrt((m_range * lg / 3) ** 2 + 2 * v * lg)


def _var_bound(a_up, b_up, r):
    return min((min(a_up, b_up) * (1 - 2 * r) if r <= 0.5 else 0.0) + r * r * b_up, 0.25)


def _brute_force_ltt(conf, wrong, y, w, r, delta, b, family, bound):
    """The per-class binomial / Bernstein Learn-then-Test rules, written out with Python loops and scipy.stats.beta:
    returns the threshold (+inf: nothing certified for a risk target, -inf: a budget alone not certified)."""
    from scipy.stats import beta

    conf, y, wrong = [float(v) for v in conf], [int(v) for v in y], [bool(v) for v in wrong]
    n, k = len(conf), len(w)
    n_y = [y.count(c) for c in range(k)]
    tot = sum(w[c] * n_y[c] for c in range(k))
    q = [w[c] * n_y[c] / tot for c in range(k)]
    cls = [c for c in range(k) if q[c] > 0]
    n_cls = len(cls)
    grid = sorted(set(conf), reverse=True)
    g = len(grid)
    n_seq = {"multi_start": 4, "fixed_sequence": 1}[family]
    level = delta / 2 if (r is not None and b is not None) else delta

    def counts(lam, c):
        m = sum(1 for i in range(n) if y[i] == c and conf[i] >= lam)
        e = sum(1 for i in range(n) if y[i] == c and conf[i] >= lam and wrong[i])
        return m, e

    c_row = [q[y[i]] / n_y[y[i]] for i in range(n)]
    m_range = max(c_row)
    ok = [True] * g
    if b is not None:
        a = level / n_cls
        if bound == "per_class_binomial":
            rej = [sum(q[c] * _cp_upper(n_y[c] - counts(lam, c)[0], n_y[c], a) for c in cls) <= b for lam in grid]
        else:  # Hoeffding, losses 1{escalated} - b
            sum_sq = sum(v * v for v in c_row)
            rej = []
            for lam in grid:
                s_b = sum(c_row[i] * ((conf[i] < lam) - b) for i in range(n))
                rej.append(math.exp(-2 * min(s_b, 0.0) ** 2 / sum_sq) <= level)
        ok_b = [False] * g
        for j in reversed(range(g)):  # walk up from the lowest threshold
            if not rej[j]:
                break
            ok_b[j] = True
        ok = [u and v for u, v in zip(ok, ok_b)]
    if r is not None:
        lvl = level / n_seq
        a = lvl / (2 * n_cls) if bound == "per_class_binomial" else lvl / (4 * n_cls)
        rej = []
        for lam in grid:
            cnt = {c: counts(lam, c) for c in cls}
            if bound == "per_class_binomial":
                up = sum(q[c] * _cp_upper(cnt[c][1], n_y[c], a) for c in cls)
                lo = sum(q[c] * _cp_lower(cnt[c][0], n_y[c], a) for c in cls)
                rej.append(up <= r * lo)
            else:
                s = sum(c_row[i] * ((wrong[i] - r) if conf[i] >= lam else 0.0) for i in range(n))
                v = sum(q[c] ** 2 / n_y[c]
                        * _var_bound(_cp_upper(cnt[c][1], n_y[c], a), _cp_upper(cnt[c][0], n_y[c], a), r)
                        for c in cls)
                rej.append(s <= -_bernstein_t(v, m_range, lvl / 2))
        m_min = n + 1  # label-free start, by a linear scan over m
        for m in range(1, n + 1):
            hyp = {c: (m * n_y[c] / n, r / 2 * m * n_y[c] / n) for c in cls}  # (answered, wrong), real-valued
            if bound == "per_class_binomial":
                up = sum(q[c] * beta.ppf(1 - a, hyp[c][1] + 1, n_y[c] - hyp[c][1]) for c in cls)
                lo = sum(q[c] * beta.ppf(a, hyp[c][0], n_y[c] - hyp[c][0] + 1) for c in cls)
                hit = up <= r * lo
            else:
                v = 0.0
                for c in cls:
                    a_up = beta.ppf(1 - a, hyp[c][1] + 1, n_y[c] - hyp[c][1])
                    b_up = beta.ppf(1 - a, hyp[c][0] + 1, n_y[c] - hyp[c][0]) if hyp[c][0] < n_y[c] else 1.0
                    v += q[c] ** 2 / n_y[c] * _var_bound(a_up, b_up, r)
                hit = r / 2 * m / n >= _bernstein_t(v, m_range, lvl / 2)
            if hit:
                m_min = m
                break
        n_ans = [sum(1 for v in conf if v >= lam) for lam in grid]
        first = next((j for j in range(g) if n_ans[j] >= m_min), g)
        starts = sorted({int(v) for v in np.linspace(first, g, n_seq + 1)[:-1]}) if first < g else []
        ok_r = [False] * g
        for s in starts:
            for j in range(s, g):
                if not rej[j]:
                    break
                ok_r[j] = True
        ok = [u and v for u, v in zip(ok, ok_r)]
    idx = [j for j in range(g) if ok[j]]
    if not idx:
        return math.inf if r is not None else -math.inf
    return grid[idx[-1]] if r is not None else grid[idx[0]]


def _draw_k3(rng, n):
    """Three classes, confidence Uniform(0.34, 1) rounded to 2 decimals (ties), errors likelier at low confidence
    and in the rarer classes."""
    kappa = np.array([0.2, 0.5, 0.8])
    y = rng.choice(3, size=n, p=[0.5, 0.3, 0.2])
    c = np.round(rng.uniform(0.34, 1.0, n), 2)
    wrong = rng.random(n) < np.minimum(1.0, kappa[y] * 2.0 * (1.0 - c))
    pred = np.where(wrong, (y + 1 + rng.integers(0, 2, n)) % 3, y)
    probs = np.repeat(((1.0 - c) / 2)[:, None], 3, axis=1)
    probs[np.arange(n), pred] = c
    return probs, y


@pytest.mark.parametrize("bound", ["per_class_binomial", "bernstein"])
@pytest.mark.parametrize("seed", range(4))
def test_matches_brute_force(seed, bound):
    rng = np.random.default_rng(300 + seed)
    p, y = _draw_k3(rng, 200)
    assert (p.max(1) > (1 - p.max(1)) / 2).all()  # the predicted class is the unique argmax
    conf, wrong = p.max(1), p.argmax(1) != y
    w = rng.gamma(2.0, 1.0, 3)
    if seed == 3:
        w[2] = 0.0  # a class the target lacks: K = 2
    n_cert = n_mid = 0
    cases = [(0.3, 0.3, None, "fixed_sequence"), (0.3, 0.5, None, "fixed_sequence"), (0.4, 0.5, None, "fixed_sequence"),
             (0.4, 0.3, None, "multi_start"), (0.3, 0.5, None, "multi_start"), (0.2, 0.3, None, "multi_start"),
             (None, 0.2, 0.5, "multi_start"), (0.4, 0.5, 0.6, "fixed_sequence")]
    lo, hi = confidence_domain("max_prob", 3)
    for r, delta, b, family in cases:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            out, rep = reweight_policy(RiskControlPolicy(target_risk=r, delta=delta, max_escalation=b, family=family),
                                       p, y, w, bound=bound)
        expected = _brute_force_ltt(conf, wrong, y, w, r, delta, b, family, bound)
        if expected == math.inf:
            assert rep.certified is False and out.threshold_ > hi, (r, delta, b, family)
        elif expected == -math.inf:
            assert rep.certified is False and out.threshold_ < lo, (r, delta, b, family)
        else:
            assert rep.certified and out.threshold_ == expected, (r, delta, b, family, out.threshold_, expected)
            n_cert += 1
            n_mid += r is not None and expected > conf.min()  # the walk stopped inside the grid
    assert n_cert >= 2 and n_mid >= 1, (n_cert, n_mid)  # not only "nothing certified" / "everything answered"


def test_per_class_report():
    from calib._json import to_json

    p, y = _draw(np.random.default_rng(12), 6000, P_SRC)
    w = _weights_from_counts(y)
    out, rep = reweight_policy(RiskControlPolicy(target_risk=0.2, delta=0.1), p, y, w, bound="per_class_binomial")
    d = json.loads(json.dumps(to_json(rep.to_dict())))
    assert d["method"] == "weighted_ltt_per_class_binomial" and d["certified"] and d["risk_pvalue"] is None
    assert "per-class Clopper-Pearson" in d["statement"]
    assert any("Per-class binomial vs binomial" in note for note in rep.notes)
    # the reported bound is sum q U / sum q L at the threshold, at the level of a multi-start walk (0.1 / 4) over
    # 2K = 4 bounds: recomputed here from per_class_risk_bounds and compared with r
    grid, up, lo = per_class_risk_bounds(p.max(1), p.argmax(1) != y, y, w, 0.1 / 4 / 4)
    j = grid.tolist().index(out.threshold_)
    assert d["risk_upper_bound"] == pytest.approx(up[j] / lo[j], rel=1e-12) and d["risk_upper_bound"] <= 0.2
    # the point estimate of the target risk lies below its upper bound
    assert rep.weighted_selective_risk < rep.risk_upper_bound
    # Hoeffding reports a p-value and no bound
    _, rep_h = reweight_policy(RiskControlPolicy(target_risk=0.2, delta=0.1), p, y, w, bound="hoeffding")
    assert rep_h.risk_upper_bound is None and rep_h.risk_pvalue is not None


def test_per_class_budget():
    p, y = _draw(np.random.default_rng(4), 3000, P_SRC)
    w = _weights_from_counts(y)
    kw = {"bound": "per_class_binomial"}
    _, rep = reweight_policy(RiskControlPolicy(target_risk=None, max_escalation=0.3, delta=0.1), p, y, w, **kw)
    assert rep.certified and 1 - rep.weighted_coverage <= 0.3 and rep.risk_upper_bound is None
    _, rep2 = reweight_policy(RiskControlPolicy(target_risk=0.2, max_escalation=0.6, delta=0.1), p, y, w, **kw)
    assert rep2.certified and 1 - rep2.weighted_coverage <= 0.6 and rep2.weighted_selective_risk <= 0.2


def test_unknown_bound(small):
    p, y = small
    for bad in ("exact", None, "Hoeffding"):
        with pytest.raises(ValueError, match=r"Unknown bound .*\['bernstein', 'hoeffding', 'per_class_binomial'\]"):
            reweight_policy(RiskControlPolicy(target_risk=0.2), p, y, [1.0, 1.0], bound=bad)
    with pytest.raises(ValueError, match="Unknown bound"):  # checked for every policy kind
        reweight_policy(ThresholdPolicy(target_coverage=0.5), p, y, [1.0, 1.0], bound="exact")


# ---------------------------------------------------------------------------------------------------------------
# Real logits: c10lt_resnet110, long-tailed split 0 -> balanced split 1
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def c10lt():
    import calib.datasets
    from calib.calibrators import TemperatureScaling

    try:
        d = calib.datasets.load("c10lt_resnet110")
    except (OSError, KeyError, ValueError) as exc:  # embedded, so this should not happen
        pytest.skip(f"c10lt_resnet110 could not be loaded by calib.datasets: {exc}")
    cal, test = d.split == 0, d.split == 1
    ts = TemperatureScaling().fit(d.logits[cal], d.labels[cal])
    probs = ts.predict_proba(d.logits)
    return ts, probs[cal], d.labels[cal], probs[test], d.labels[test]


def _test_risk(policy, pt, yt):
    a = policy.route(pt).actions == ANSWER
    return int((pt.argmax(1)[a] != yt[a]).sum()), int(a.sum())


@pytest.mark.parametrize("bound", ["bernstein", "hoeffding"])  # the per-class test certifies nothing at r = 0.1 here
def test_real_label_shift(c10lt, bound):
    from calib.evaluation.routing import test_risk_test

    _, pc, yc, pt, yt = c10lt
    k = pc.shape[1]
    w_true = 0.1 / (np.bincount(yc, minlength=k) / yc.size)
    r, delta = 0.1, 0.1
    pol = RiskControlPolicy(target_risk=r, delta=delta)
    plain = pol.clone().fit(pc, yc)
    out, rep = reweight_policy(pol, pc, yc, w_true, bound=bound)
    assert rep.certified and out.threshold_ > plain.threshold_
    # the guarantee (true weights): the test split is a sample of the target; no evidence of risk above r
    e, m = _test_risk(out, pt, yt)
    assert m > 1000 and not test_risk_test(e, m, r)["exceeds"]
    # the plain policy (no claim under shift) is flagged on these fixed data: the adaptation is needed here
    e0, m0 = _test_risk(plain, pt, yt)
    assert test_risk_test(e0, m0, r)["exceeds"]
    # EM-estimated weights: no guarantee (estimation error is not covered), so only that it runs and answers
    est = estimate_label_shift(pc, yc, pt, method="em", n_bootstrap=0)
    out_em, rep_em = reweight_policy(pol, pc, yc, est, bound=bound)
    assert isinstance(rep_em, WeightedThreshold) and rep_em.method == f"weighted_ltt_{bound}"
    np.testing.assert_array_equal(reweight_policy(pol, pc, yc, est.weights, bound=bound)[0].threshold_,
                                  out_em.threshold_)


@pytest.mark.parametrize("bound", BOUNDS)
def test_real_nothing_certified_escalates_everything(c10lt, bound):
    _, pc, yc, pt, _ = c10lt
    w_true = 0.1 / (np.bincount(yc, minlength=10) / yc.size)
    with pytest.warns(UserWarning, match="No confidence threshold certified"):
        out, rep = reweight_policy(RiskControlPolicy(target_risk=0.02, delta=0.1), pc, yc, w_true, bound=bound)
    assert rep.certified is False and rep.weighted_coverage == 0.0 and rep.weighted_selective_risk is None
    assert out.threshold_ > confidence_domain("max_prob", 10)[1]
    assert (out.route(pt).actions == ESCALATE).all()


# ---------------------------------------------------------------------------------------------------------------
# Other paths
# ---------------------------------------------------------------------------------------------------------------
def test_fixed_threshold_is_unchanged_and_noted():
    p, y = _draw(np.random.default_rng(0), 500, P_SRC)
    out, rep = reweight_policy(ThresholdPolicy(threshold=0.8), p, y, [0.25, 4.0])
    assert out.threshold_ == 0.8 and rep.method == "fixed" and rep.original_threshold == 0.8
    assert any("fixed threshold kept" in n for n in rep.notes) and "unchanged" in rep.statement


def test_carries_over_confidence_fallback_and_costs():
    p, y = _draw(np.random.default_rng(1), 6000, P_SRC)
    pol = RiskControlPolicy(target_risk=0.2, delta=0.1, confidence="margin", fallback_threshold=0.3,
                            fallback="majority", costs={"escalation": 0.2})
    out, rep = reweight_policy(pol, p, y, [0.25, 4.0])
    assert rep.certified
    assert isinstance(out, ThresholdPolicy) and out.threshold == out.threshold_ == rep.threshold
    assert out.confidence == "margin" and out.fallback_threshold == 0.3 and out.fallback == "majority"
    assert out.costs == pol.costs
    # the target prior (0.2, 0.8) has class 1 as its majority, the calibration labels class 0
    assert out.majority_class_ == 1 and any("majority class of the target prior" in n for n in rep.notes)


def test_budget_alone_and_with_risk():
    p, y = _draw(np.random.default_rng(4), 3000, P_SRC)
    w = _weights_from_counts(y)
    _, rep = reweight_policy(RiskControlPolicy(target_risk=None, max_escalation=0.3, delta=0.1), p, y, w)
    assert rep.certified and rep.target_risk is None
    assert 1 - rep.weighted_coverage <= 0.3
    _, rep2 = reweight_policy(RiskControlPolicy(target_risk=0.2, max_escalation=0.6, delta=0.1), p, y, w)
    assert rep2.certified and 1 - rep2.weighted_coverage <= 0.6 and rep2.weighted_selective_risk <= 0.2


def test_fitted_policy_gives_its_threshold_as_original():
    p, y = _draw(np.random.default_rng(6), 1000, P_SRC)
    fitted = ThresholdPolicy(target_coverage=0.6).fit(p[:500], y[:500])
    _, rep = reweight_policy(fitted, p[500:], y[500:], [1.0, 1.0])
    assert rep.original_threshold == fitted.threshold_


# ---------------------------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small():
    return _draw(np.random.default_rng(9), 300, P_SRC)


@pytest.mark.parametrize("weights, exc, match", [
    ([1.0, 2.0, 3.0], ValueError, r"weights of shape \(2,\)"),
    ([[1.0, 2.0]], ValueError, r"weights of shape \(2,\)"),
    ([1.0, -0.5], ValueError, "weights >= 0"),
    ([1.0, np.nan], ValueError, "weights finite"),
    ([1.0, np.inf], ValueError, "weights finite"),
    ([0.0, 0.0], ValueError, "at least one positive"),
    (["a", "b"], TypeError, "weights as real numbers"),
    ("uniform", TypeError, "LabelShiftEstimate"),
    (None, TypeError, "LabelShiftEstimate"),
    ({"0": 1.0}, TypeError, "LabelShiftEstimate"),
])
def test_bad_weights(small, weights, exc, match):
    p, y = small
    with pytest.raises(exc, match=match):
        reweight_policy(ThresholdPolicy(target_coverage=0.5), p, y, weights)


def test_bad_policy_kinds(small):
    p, y = small
    with pytest.raises(ValueError, match="conformal_routing.*LabelShiftConformal"):
        reweight_policy(ConformalRoutingPolicy(), p, y, [1.0, 1.0])
    with pytest.raises(ValueError, match="'cost'.*adjust_probs"):
        reweight_policy(CostPolicy(), p, y, [1.0, 1.0])
    with pytest.raises(TypeError, match="routing policy"):
        reweight_policy("risk_control", p, y, [1.0, 1.0])


def test_k_mismatch(small):
    p, y = small
    with pytest.raises(ValueError, match=r"weights of shape \(2,\)"):
        reweight_policy(ThresholdPolicy(target_coverage=0.5), p, y, np.ones(3))
    est = estimate_label_shift(*_draw(np.random.default_rng(1), 300, P_SRC), _draw(np.random.default_rng(2), 300,
                                                                                  Q_TGT)[0], n_bootstrap=0)
    assert isinstance(est, LabelShiftEstimate)
    p3 = np.hstack([p * 0.9, np.full((p.shape[0], 1), 0.1)])
    with pytest.raises(ValueError, match="estimate for 2 classes"):
        reweight_policy(ThresholdPolicy(target_coverage=0.5), p3, y, est)
    fitted3 = ThresholdPolicy(target_coverage=0.5).fit(p3, y)
    with pytest.raises(ValueError, match="fitted on 3 classes"):
        reweight_policy(fitted3, p, y, [1.0, 1.0])
    with pytest.raises(ValueError, match="cal_labels"):
        reweight_policy(ThresholdPolicy(target_coverage=0.5), p, y[:-1], [1.0, 1.0])


def test_positive_weight_on_a_class_absent_from_calibration(small):
    p, y = small
    p3 = np.hstack([p * 0.9, np.full((p.shape[0], 1), 0.1)])
    with pytest.raises(ValueError, match=r"absent from cal_labels"):
        reweight_policy(ThresholdPolicy(target_coverage=0.5), p3, y, [1.0, 1.0, 0.5])
    # weight 0 there is fine (the target has none of it)
    reweight_policy(ThresholdPolicy(target_coverage=0.5), p3, y, [1.0, 1.0, 0.0])


# ---------------------------------------------------------------------------------------------------------------
# Artifacts
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("target_risk", [0.2, 0.001])  # certified / nothing certified (escalate-all threshold)
def test_artifact_round_trip_bit_for_bit(tmp_path, target_risk):
    from calib.artifacts import load_pipeline, save_artifact
    from calib.calibrators import TemperatureScaling

    rng = np.random.default_rng(8)
    p, y = _draw(rng, 6000, P_SRC)
    logits = np.log(np.clip(p, 1e-12, None)).astype(np.float32)
    ts = TemperatureScaling().fit(logits, y)
    pc = ts.predict_proba(logits)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        out, rep = reweight_policy(RiskControlPolicy(target_risk=target_risk, delta=0.1, fallback="majority"), pc, y,
                                   _weights_from_counts(y))
    assert rep.certified is (target_risk == 0.2)
    path = save_artifact(ts, tmp_path / "a", policy=out)
    loaded = load_pipeline(path)["policy"]
    assert type(loaded) is ThresholdPolicy and loaded.get_params() == out.get_params()
    s1, a1 = out.get_state()
    s2, a2 = loaded.get_state()
    assert s1 == s2 and all(np.array_equal(a1[k], a2[k]) for k in a1)
    pt = ts.predict_proba(np.log(np.clip(_draw(rng, 2000, Q_TGT)[0], 1e-12, None)).astype(np.float32))
    d1, d2 = out.route(pt), loaded.route(pt)
    np.testing.assert_array_equal(d1.actions, d2.actions)
    np.testing.assert_array_equal(d1.output, d2.output)
    again = ThresholdPolicy.from_state(out.get_params(), *out.get_state())
    assert again.threshold_ == out.threshold_ and again.majority_class_ == out.majority_class_ == 1
