"""calib.shift.adapt.reweight_policy: routing thresholds re-chosen under label-shift weights.

Unit weights reproduce the unweighted ThresholdPolicy quantile exactly and are never less conservative than
RiskControlPolicy's binomial Learn then Test; the weighted quantile and the Hoeffding statistic S(lam) / p(lam) on a
tiny example computed by hand; validity by simulation in a two-class label-shift model whose target selective risk is
known in closed form (the reweighted policy violates at most at rate delta, the unweighted one nearly always);
real logits (c10lt_resnet110, long-tailed -> balanced); bad inputs; artifact round trip."""

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
from calib.shift.adapt import _start_size, weighted_risk_pvalues
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
        out, rep = reweight_policy(pol, p, y, np.ones(2))
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
    _, rep = reweight_policy(RiskControlPolicy(target_risk=0.2, delta=0.1), p, y, _weights_from_counts(y))
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
def _simulate(n_runs, n_cal, delta, r, seed):
    rng = np.random.default_rng(seed)
    viol_w = viol_u = certified = 0
    for _ in range(n_runs):
        p, y = _draw(rng, n_cal, P_SRC)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            out, rep = reweight_policy(RiskControlPolicy(target_risk=r, delta=delta), p, y, _weights_from_counts(y))
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


def test_real_label_shift(c10lt):
    from calib.evaluation.routing import test_risk_test

    _, pc, yc, pt, yt = c10lt
    k = pc.shape[1]
    w_true = 0.1 / (np.bincount(yc, minlength=k) / yc.size)
    r, delta = 0.1, 0.1
    pol = RiskControlPolicy(target_risk=r, delta=delta)
    plain = pol.clone().fit(pc, yc)
    out, rep = reweight_policy(pol, pc, yc, w_true)
    assert rep.certified and out.threshold_ > plain.threshold_
    # the guarantee (true weights): the test split is a sample of the target; no evidence of risk above r
    e, m = _test_risk(out, pt, yt)
    assert m > 1000 and not test_risk_test(e, m, r)["exceeds"]
    # the plain policy (no claim under shift) is flagged on these fixed data: the adaptation is needed here
    e0, m0 = _test_risk(plain, pt, yt)
    assert test_risk_test(e0, m0, r)["exceeds"]
    # EM-estimated weights: no guarantee (estimation error is not covered), so only that it runs and answers
    est = estimate_label_shift(pc, yc, pt, method="em", n_bootstrap=0)
    out_em, rep_em = reweight_policy(pol, pc, yc, est)
    assert isinstance(rep_em, WeightedThreshold) and rep_em.method == "weighted_ltt_hoeffding"
    np.testing.assert_array_equal(reweight_policy(pol, pc, yc, est.weights)[0].threshold_, out_em.threshold_)


def test_real_nothing_certified_escalates_everything(c10lt):
    _, pc, yc, pt, _ = c10lt
    w_true = 0.1 / (np.bincount(yc, minlength=10) / yc.size)
    with pytest.warns(UserWarning, match="No confidence threshold certified"):
        out, rep = reweight_policy(RiskControlPolicy(target_risk=0.02, delta=0.1), pc, yc, w_true)
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
