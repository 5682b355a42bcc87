"""calib.policy: Learn-then-Test thresholds, routing rules, cost model, product metrics, artifacts, stage."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from calib.calibrators import TemperatureScaling
from calib.calibrators.base import softmax
from calib.policy import (REGISTRY, ConformalRoutingPolicy, CostModel, CostPolicy, RiskControlPolicy,
                          ThresholdPolicy, ltt_threshold)
from calib.policy.product_metrics import product_metrics
from calib.policy.report import policy_stage
from calib.policy.slices import holm_adjust, silent_failure_slices


# --------------------------------------------------------------------------------------------------
# Learn then Test: validity against a population whose selective risk is known in closed form
# --------------------------------------------------------------------------------------------------
def _population(rng, n):
    """Confidence c ~ U(0, 1) and P(error | c) = 0.3 (1 - c)^2, so R(lam) = 0.1 (1 - lam)^2."""
    c = rng.random(n)
    correct = rng.random(n) >= 0.3 * (1 - c) ** 2
    return c, correct


def test_ltt_population_risk_exceeds_target_at_most_delta_of_the_time():
    from scipy.stats import binom

    r, delta, trials = 0.05, 0.1, 300
    lam_star = 1 - np.sqrt(r / 0.1)  # R(lam) <= r  <=>  lam >= lam_star
    rng = np.random.default_rng(0)
    lam = np.empty(trials)
    certified = np.empty(trials, bool)
    for t in range(trials):
        c, h = _population(rng, 2000)
        g = ltt_threshold(c, h, target_risk=r, delta=delta)
        lam[t], certified[t] = g.threshold, g.certified
    violations = int(np.sum(lam < lam_star))
    # violations ~ at most Binomial(trials, delta): bound at its 99.9% quantile
    assert violations <= binom.ppf(0.999, trials, delta)
    # ... and the guarantee is not vacuous: always certified, coverage close to the oracle's 1 - lam_star
    assert certified.all()
    assert np.median(1 - lam) > 0.85 * (1 - lam_star)


def test_ltt_budget_mode_bounds_escalation_rate():
    from scipy.stats import binom

    b, delta, trials = 0.2, 0.1, 300
    rng = np.random.default_rng(1)
    over = 0
    for _ in range(trials):
        c, h = _population(rng, 1000)
        g = ltt_threshold(c, h, max_escalation=b, delta=delta)
        over += g.threshold > b  # population escalation rate P(c < lam) = lam
    assert over <= binom.ppf(0.999, trials, delta)


def test_ltt_not_certified_warns_and_escalates_everything():
    p = np.array([[0.6, 0.4]] * 30)
    y = np.array([0] * 20 + [1] * 10)
    pol = RiskControlPolicy(target_risk=0.01, delta=0.1)
    with pytest.warns(UserWarning, match="No confidence threshold certified"):
        pol.fit(p, y)
    g = pol.guarantee()
    assert g["certified"] is False and g["threshold"] is None
    assert (pol.route(p).actions == 1).all()


def test_ltt_risk_and_budget_incompatible_is_not_certified():
    rng = np.random.default_rng(2)
    c, h = _population(rng, 3000)
    with pytest.warns(UserWarning, match="within escalation budget"):
        g = ltt_threshold(c, h, target_risk=0.005, max_escalation=0.05, delta=0.1)
    assert not g.certified and g.threshold == np.inf


def test_ltt_pvalue_matches_scipy_binomtest_at_chosen_threshold():
    from scipy.stats import binomtest

    rng = np.random.default_rng(3)
    c, h = _population(rng, 2000)
    g = ltt_threshold(c, h, target_risk=0.05, delta=0.1, n_starts=1)
    ans = c >= g.threshold
    p = binomtest(int((~h[ans]).sum()), int(ans.sum()), 0.05, alternative="less").pvalue
    assert p <= 0.1
    assert g.n_answered == ans.sum()


# --------------------------------------------------------------------------------------------------
# Routing rules
# --------------------------------------------------------------------------------------------------
P3 = np.array([[0.9, 0.05, 0.05], [0.5, 0.4, 0.1], [0.4, 0.35, 0.25], [0.2, 0.2, 0.6]])
Y3 = np.array([0, 1, 2, 2])


def test_threshold_policy_with_fallback_rule():
    fb = np.array([1, 1, 2, 0])
    pol = ThresholdPolicy(threshold=0.55, fallback_threshold=0.3).fit(P3, Y3, fallback=fb)
    d = pol.route(P3, fallback=fb)
    # item0 answered (0.9); item1: p[fb=1]=0.4 >= 0.3 -> fallback; item2: p[2]=0.25 -> escalate; item3 answered
    assert d.actions.tolist() == [0, 2, 1, 0]
    assert d.output.tolist() == [0, 1, -1, 2]


def test_threshold_policy_target_coverage():
    pol = ThresholdPolicy(target_coverage=0.5).fit(P3, Y3)
    assert pol.threshold_ == pytest.approx(0.6)
    assert pol.route(P3).actions.tolist() == [0, 1, 1, 0]


def test_conformal_routing_rule():
    sets = np.array([[True, False, False], [True, True, False], [True, True, True], [False, False, False]])
    pol = ConformalRoutingPolicy(fallback=2).fit(P3, Y3, sets=sets)
    # singleton -> answer; fallback label 2 in set -> fallback; else (incl. empty set) escalate
    assert pol.route(P3, sets=sets).actions.tolist() == [0, 1, 2, 1]


def test_cost_policy_is_brute_force_argmin():
    rng = np.random.default_rng(4)
    p = softmax(rng.normal(size=(400, 4)) * 2)
    fb = rng.integers(0, 4, 400)
    cm = dict(wrong_answer=1.0, escalation=0.15, wrong_fallback=0.6, human_accuracy=0.95)
    d = CostPolicy(costs=cm).fit(p, rng.integers(0, 4, 400), fallback=fb).route(p, fallback=fb)
    for i in range(400):  # plain loop as an independent oracle
        costs = [(1 - p[i].max()) * 1.0, 0.15 + 0.05 * 1.0, (1 - p[i, fb[i]]) * 0.6]
        assert costs[d.actions[i]] == pytest.approx(min(costs))


def test_cost_policy_reduces_to_chow_rule_without_fallback():
    # Chow (1970): answer iff 1 - max p <= escalation cost, i.e. max p >= 1 - c
    rng = np.random.default_rng(5)
    p = softmax(rng.normal(size=(300, 3)) * 2)
    d = CostPolicy(fallback="none", costs={"escalation": 0.2, "human_accuracy": 1.0}).fit(p, np.zeros(300, int)).route(p)
    np.testing.assert_array_equal(d.actions == 0, p.max(1) >= 0.8)


# --------------------------------------------------------------------------------------------------
# Product metrics: the worked example of docs/routing.md, and the bootstrap
# --------------------------------------------------------------------------------------------------
def worked_example():
    """10 items of docs/routing.md: 5 answered right, 1 answered wrong, 2 escalated, 2 fallbacks."""
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    pred = np.array([0, 1, 2, 0, 1, 0, 1, 1, 0, 2])
    actions = np.array([0, 0, 0, 0, 0, 0, 1, 1, 2, 2])
    fallback = np.array([0, 0, 0, 0, 0, 0, 0, 0, 2, 1])
    costs = dict(wrong_answer=1.0, escalation=0.2, wrong_fallback=0.5, human_accuracy=0.9, human_time=60.0,
                 model_time=0.0, fallback_time=1.0)
    return actions, pred, labels, fallback, costs


def test_worked_example_numbers_of_the_docs():
    actions, pred, labels, fallback, costs = worked_example()
    m = product_metrics(actions, pred, labels, fallback, costs=costs)
    expected = {
        "automation_rate": 6 / 10, "escalation_rate": 2 / 10, "fallback_rate": 2 / 10,
        "selective_risk": 1 / 6, "selective_accuracy": 5 / 6, "silent_failure_rate": 1 / 10,
        "recovery_rate": 3 / 4,                                     # errors 6,7,9,10; 7,9,10 intercepted
        "task_completion_rate": (5 + 0.9 * 2 + 1) / 10,              # 0.78
        "expected_cost": (1 * 1.0 + 2 * (0.2 + 0.1 * 1.0) + 1 * 0.5) / 10,  # 0.21
        "expected_time": (2 * 60.0 + 2 * 1.0) / 10,                  # 12.2 s
        "time_to_correct_output": 12.2 / 0.78,
        "model_accuracy": 6 / 10,
    }
    for key, value in expected.items():
        assert m[key] == pytest.approx(value, abs=1e-12), key
    assert set(m["ci"]) >= {"automation_rate", "escalation_rate", "silent_failure_rate", "task_completion_rate"}


def test_bootstrap_ci_agrees_with_scipy_bootstrap():
    from scipy.stats import bootstrap

    rng = np.random.default_rng(6)
    n = 2000
    labels = rng.integers(0, 3, n)
    pred = np.where(rng.random(n) < 0.85, labels, (labels + 1) % 3)
    actions = rng.choice(3, n, p=[0.7, 0.2, 0.1])
    fallback = np.where(rng.random(n) < 0.5, labels, (labels + 2) % 3)
    B = 4000
    m = product_metrics(actions, pred, labels, fallback, n_resamples=B, seed=0)
    silent = (actions == 0) & (pred != labels)
    ref = bootstrap((silent.astype(float),), np.mean, n_resamples=B, method="percentile",
                    random_state=np.random.default_rng(1)).confidence_interval
    se = np.sqrt(silent.mean() * (1 - silent.mean()) / n)
    # Monte Carlo error of a 2.5% bootstrap quantile with B draws ~ sqrt(q (1-q) / B) / phi(z_q) * se = 0.054 se
    # per method; the difference of two independent estimates is within 5 of those sds (0.4 se).
    assert abs(m["ci"]["silent_failure_rate"][0] - ref.low) < 0.4 * se
    assert abs(m["ci"]["silent_failure_rate"][1] - ref.high) < 0.4 * se
    # a ratio metric: selective risk, against scipy with the paired statistic
    def sel_risk(a, e):
        return np.sum(e * a) / np.sum(a)
    answered = (actions == 0).astype(float)
    wrong = (pred != labels).astype(float)
    ref2 = bootstrap((answered, wrong), sel_risk, paired=True, vectorized=False, n_resamples=1000,
                     method="percentile", random_state=np.random.default_rng(2)).confidence_interval
    r = m["selective_risk"]
    se2 = np.sqrt(r * (1 - r) / answered.sum())
    assert abs(m["ci"]["selective_risk"][0] - ref2.low) < 0.5 * se2
    assert abs(m["ci"]["selective_risk"][1] - ref2.high) < 0.5 * se2


def test_bootstrap_is_seeded():
    actions, pred, labels, fallback, costs = worked_example()
    a = product_metrics(actions, pred, labels, fallback, costs=costs, seed=3)
    b = product_metrics(actions, pred, labels, fallback, costs=costs, seed=3)
    assert a["ci"] == b["ci"]


# --------------------------------------------------------------------------------------------------
# Bad input: each a clear error
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    ({"target_risk": 1.5}, r"target_risk in \(0, 1\), got 1.5"),
    ({"target_risk": 0.0}, r"target_risk in \(0, 1\)"),
    ({"delta": 1.0}, r"delta in \(0, 1\), got 1.0"),
    ({"delta": -0.1}, r"delta in \(0, 1\)"),
    ({"max_escalation": 2.0}, r"max_escalation in \(0, 1\)"),
    ({"confidence": "x"}, r"Unknown confidence 'x'; valid options"),
    ({"costs": {"escalation": -1.0}}, r"costs.escalation >= 0"),
    ({"costs": {"wrong_answer": -0.5}}, r"costs.wrong_answer >= 0"),
    ({"costs": {"human_accuracy": 1.2}}, r"costs.human_accuracy in \[0, 1\], got 1.2"),
    ({"costs": {"human_accuracy": -0.1}}, r"costs.human_accuracy in \[0, 1\]"),
    ({"costs": {"speed": 1.0}}, r"Unknown cost fields \['speed'\]"),
    ({"fallback": "maybe"}, r"Unknown fallback 'maybe'; valid options"),
    ({"fallback": -1}, r"fallback class index >= 0"),
])
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RiskControlPolicy(**kwargs)


def test_bad_fallback_arrays():
    pol = ThresholdPolicy(threshold=0.5, fallback_threshold=0.1).fit(P3, Y3)
    with pytest.raises(ValueError, match="Expected fallback of length 4"):
        pol.route(P3, fallback=np.array([0, 1]))
    with pytest.raises(ValueError, match=r"Expected fallback in \[0, 2\] for 3 classes, got maximum 7"):
        pol.route(P3, fallback=np.array([0, 1, 7, 0]))
    with pytest.raises(ValueError, match="fallback class index in"):
        ThresholdPolicy(threshold=0.5, fallback=5).fit(P3, Y3)
    with pytest.raises(ValueError, match="for fallback='extras', got none"):
        ThresholdPolicy(threshold=0.5, fallback="extras").fit(P3, Y3)


def test_policy_needing_sets_without_conformal_is_a_clear_error():
    with pytest.raises(ValueError, match="no conformal predictor is configured"):
        policy_stage(ConformalRoutingPolicy(), P3, Y3, P3, Y3, conformal=None)
    with pytest.raises(ValueError, match="no conformal predictor is configured"):
        ConformalRoutingPolicy().fit(P3, Y3)


def test_route_before_fit_and_bad_probs():
    with pytest.raises(ValueError, match="not fitted yet"):
        CostPolicy().route(P3)
    pol = CostPolicy().fit(P3, Y3)
    with pytest.raises(ValueError, match="3 classes"):
        pol.route(np.array([[0.5, 0.5]]))
    with pytest.raises(ValueError, match="summing to 1"):
        pol.route(P3 * 2 / 2.5)


def test_hydra_options_instantiate_and_bad_yaml_fails_at_instantiate():
    from hydra import compose, initialize_config_dir

    from calib._hydra import instantiate
    from calib.config import register_configs

    register_configs()
    REPO = Path(__file__).resolve().parents[1]

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        for option, cls in (("threshold", ThresholdPolicy), ("risk_control", RiskControlPolicy),
                            ("conformal_routing", ConformalRoutingPolicy), ("cost", CostPolicy)):
            cfg = compose(config_name="config", overrides=[f"policy={option}"])
            assert type(instantiate(cfg.policy)) is cls
        assert not compose(config_name="config", overrides=["policy=none"]).get("policy")
        for override, match in (("policy.delta=1.5", "delta in"), ("policy.target_risk=0", "target_risk in"),
                                ("policy.costs.human_accuracy=2", "human_accuracy in"),
                                ("policy.costs.escalation=-1", "escalation >= 0")):
            cfg = compose(config_name="config", overrides=["policy=risk_control", override])
            with pytest.raises(Exception, match=match):
                instantiate(cfg.policy)


# --------------------------------------------------------------------------------------------------
# Artifact contract: every registry entry rebuilt bit-identically
# --------------------------------------------------------------------------------------------------
class _StandInConformal:
    """Minimal stand-in with the conformal contract: a fixed LAC-style threshold on probabilities."""

    def __init__(self, qhat):
        self.qhat = qhat

    def predict_set(self, probs, groups=None):
        return probs >= 1 - self.qhat


def _fit_all(data):
    cal, test = data.split_cal_test(cal_fraction=0.5, seed=0)
    ts = TemperatureScaling().fit(cal.logits, cal.labels)
    pc, pt = ts.predict_proba(cal.logits), ts.predict_proba(test.logits)
    sc, st = _StandInConformal(0.9).predict_set(pc), _StandInConformal(0.9).predict_set(pt)
    fb_c = np.zeros(cal.n_samples, np.int64)
    fb_t = (test.labels + (np.arange(test.n_samples) % 3 == 0)) % data.n_classes
    policies = {
        "threshold": ThresholdPolicy(target_coverage=0.8, fallback_threshold=0.2),
        "risk_control": RiskControlPolicy(target_risk=0.25, delta=0.1, max_escalation=0.8, fallback_threshold=0.3),
        "conformal_routing": ConformalRoutingPolicy(fallback="majority"),
        "cost": CostPolicy(costs={"escalation": 0.3}),
    }
    assert set(policies) == set(REGISTRY)
    for pol in policies.values():
        pol.fit(pc, cal.labels, sets=sc if pol.needs_sets else None, fallback=fb_c)
    return ts, policies, pt, st, fb_t


def test_artifact_roundtrip_routes_bit_identically(synthetic_data, tmp_path):
    from calib.artifacts import load_pipeline, save_artifact

    ts, policies, pt, st, fb_t = _fit_all(synthetic_data)
    for kind, pol in policies.items():
        path = save_artifact(ts, tmp_path / kind, policy=pol)
        loaded = load_pipeline(path)["policy"]
        assert type(loaded) is type(pol) and loaded.get_params() == pol.get_params()
        sets = st if pol.needs_sets else None
        a, b = pol.route(pt, sets=sets, fallback=fb_t), loaded.route(pt, sets=sets, fallback=fb_t)
        np.testing.assert_array_equal(a.actions, b.actions)
        np.testing.assert_array_equal(a.output, b.output)
        assert len(set(a.actions.tolist())) >= 2, kind  # the comparison is not trivial
        s1, arr1 = pol.get_state()
        s2, arr2 = loaded.get_state()
        assert s1 == s2 and all(np.array_equal(arr1[k], arr2[k]) for k in arr1)


# --------------------------------------------------------------------------------------------------
# The stage called by calib.pipeline
# --------------------------------------------------------------------------------------------------
def _conformal_or_standin(pc, yc):
    try:
        from calib.conformal import SplitConformal

        return SplitConformal(score="lac", alpha=0.1).fit(pc, yc), "real"
    except ImportError:
        return _StandInConformal(0.9), "stand-in"


def test_policy_stage_sections_and_plot_data(synthetic_data):
    cal, test = synthetic_data.split_cal_test(cal_fraction=0.5, seed=0)
    ts = TemperatureScaling().fit(cal.logits, cal.labels)
    pc, pt = ts.predict_proba(cal.logits), ts.predict_proba(test.logits)
    fb = {"fallback": (test.labels * 0)}
    sections, plot_data = policy_stage(RiskControlPolicy(target_risk=0.25, delta=0.1, fallback_threshold=0.3), pc,
                                  cal.labels, pt, test.labels, cal_extras={"fallback": cal.labels * 0},
                                  test_extras=fb)
    pol = sections["policy"]
    for key in ("automation_rate", "escalation_rate", "fallback_rate", "selective_risk", "silent_failure_rate",
                "recovery_rate", "task_completion_rate", "expected_cost"):
        assert key in pol and key in pol["ci"]
        lo, hi = pol["ci"][key]
        assert lo <= pol[key] <= hi
    assert set(pol["guarantee"]) >= {"target_risk", "delta", "threshold", "risk_upper_bound", "certified"}
    assert pol["guarantee"]["certified"] is True and pol["fallback_rate"] > 0
    assert set(sections["selective"]) >= {"aurc", "eaurc"}
    assert set(plot_data) == {"risk_coverage.png", "completion_frontier.png", "silent_failure_slices.png"}
    rc = plot_data["risk_coverage.png"].data
    assert rc.coverage.shape == rc.risk.shape and rc.coverage.ndim == 1 and rc.target_risk == 0.25
    fr = plot_data["completion_frontier.png"].data
    assert fr.escalation_rate.shape == fr.completion_rate.shape == (test.labels.size + 1,)
    sl = plot_data["silent_failure_slices.png"].data
    assert len(sl.names) == sl.rates.shape[0] == sl.flagged.shape[0] <= 20
    conformal, _ = _conformal_or_standin(pc, cal.labels)
    sections, _ = policy_stage(ConformalRoutingPolicy(fallback="none"), pc, cal.labels, pt, test.labels,
                               conformal=conformal)
    assert sections["policy"]["fallback_rate"] == 0.0
    assert 0 < sections["policy"]["automation_rate"] < 1


def test_pipeline_with_policy_writes_artifact(synthetic_data, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from calib.artifacts import load_pipeline
    from calib.pipeline import fit_and_evaluate

    cal, test = synthetic_data.split_cal_test(cal_fraction=0.5, seed=0)
    res = fit_and_evaluate(cal, test, TemperatureScaling(), policy=CostPolicy())
    assert set(res.plots) == {"risk_coverage.png", "completion_frontier.png", "silent_failure_slices.png"}
    res.write(tmp_path)
    for name in ("reliability.png", *res.plots):
        assert (tmp_path / name).is_file()
    assert load_pipeline(tmp_path / "artifact")["policy"].kind == "cost"
    assert "ci" in res.metrics["policy"] and "aurc" in res.metrics["selective"]


# --------------------------------------------------------------------------------------------------
# Slice finder
# --------------------------------------------------------------------------------------------------
def test_slices_pvalues_and_holm_against_scipy():
    from scipy.stats import binomtest

    rng = np.random.default_rng(7)
    n = 3000
    y = rng.integers(0, 5, n)
    p = softmax(rng.normal(size=(n, 5)) + 3 * np.eye(5)[y])
    pred = p.argmax(1)
    # class 3 answered always; others answered only when right -> class 3 carries the silent failures
    actions = np.where((pred == y) | (y == 3), 0, 1)
    groups = np.where(np.arange(n) % 2 == 0, "a", "b")
    rows = silent_failure_slices(p, y, actions, target=0.02, groups=groups)
    assert len(rows) == 7
    for r in rows:
        mask = (y == int(r["slice"])) if r["slice_type"] == "class" else (groups == r["slice"])
        k = int(((actions == 0) & (pred != y))[mask].sum())
        assert r["silent_failures"] == k and r["n"] == mask.sum()
        assert r["p_value"] == pytest.approx(binomtest(k, int(mask.sum()), 0.02, alternative="greater").pvalue,
                                             rel=1e-9)
    assert rows[0]["slice_type"] == "class" and rows[0]["slice"] == "3" and rows[0]["flagged"]
    assert not any(r["flagged"] for r in rows if r["slice_type"] == "class" and r["slice"] != "3")
    harms = [r["excess_silent_failures"] for r in rows]
    assert harms == sorted(harms, reverse=True)
    # Holm by hand
    pv = np.array([0.01, 0.02, 0.5, 0.004])
    np.testing.assert_allclose(holm_adjust(pv), [0.03, 0.04, 0.5, 0.016])


def test_guarantee_reported_in_cost_model_units():
    cm = CostModel(wrong_answer=2.0, escalation=0.5, human_accuracy=0.75)
    assert cm.escalation_cost == pytest.approx(0.5 + 0.25 * 2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CostModel(human_accuracy=1)
