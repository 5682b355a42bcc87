"""Learn-then-Test families (issue #12 item 5), the guarantee statement, and conformal_routing's empty-set rule."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from calib.policy import ConformalRoutingPolicy, RiskControlPolicy, ltt_threshold
from calib.policy.guarantees import FAMILIES

from conftest import REPO

PRE_CONTRACT = Path(__file__).parent / "fixtures" / "artifact_v1_pre_contract"


def _real():
    """Calibrated test-part probabilities of an embedded model, split in two halves."""
    from calib import datasets
    from calib.calibrators import TemperatureScaling

    d = datasets.load("c10lt_wrn28")
    d = d.subset(d.split == 1)
    cal, test = d.split_cal_test(resplit=True, seed=0)
    ts = TemperatureScaling().fit(cal.logits, cal.labels)
    return ts.predict_proba(cal.logits), cal.labels, ts.predict_proba(test.logits), test.labels


def _reference_fixed_sequence(conf, correct, r, delta):
    """One fixed sequence, written out: distinct confidences from the highest down, start at the first threshold
    answering >= n_min items (n_min: smallest n rejecting floor(r n / 2) errors at level delta), reject while
    P(Binomial(n(lam), r) <= e(lam)) <= delta, return the last rejected threshold (inf when none)."""
    from scipy.stats import binom

    grid = np.unique(conf)[::-1]
    n = conf.size
    n_min = next((m for m in range(1, n + 1) if binom.cdf(np.floor(r * m / 2), m, r) <= delta), n + 1)
    last = np.inf
    started = False
    for lam in grid:
        ans = conf >= lam
        n_ans = int(ans.sum())
        if not started:
            if n_ans < n_min:
                continue
            started = True
        if binom.cdf(int((~correct[ans]).sum()), n_ans, r) <= delta:
            last = float(lam)
        else:
            break
    return last


@pytest.mark.parametrize("r", [0.02, 0.05, 0.1])
def test_fixed_sequence_equals_a_written_out_reference_on_real_logits(r):
    pc, yc, _, _ = _real()
    conf, correct = pc.max(axis=1), pc.argmax(axis=1) == yc
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        g = ltt_threshold(conf, correct, target_risk=r, delta=0.1, family="fixed_sequence")
    assert g.threshold == _reference_fixed_sequence(conf, correct, r, 0.1)


def test_families_map_to_the_number_of_sequences_and_multi_start_is_the_old_default():
    rng = np.random.default_rng(0)
    conf = rng.uniform(size=3000)
    correct = rng.uniform(size=3000) < 0.6 + 0.4 * conf
    a = ltt_threshold(conf, correct, target_risk=0.1, delta=0.1)
    assert a == ltt_threshold(conf, correct, target_risk=0.1, delta=0.1, n_starts=4)
    assert a == ltt_threshold(conf, correct, target_risk=0.1, delta=0.1, family="multi_start")
    b = ltt_threshold(conf, correct, target_risk=0.1, delta=0.1, family="fixed_sequence")
    assert b == ltt_threshold(conf, correct, target_risk=0.1, delta=0.1, n_starts=1)
    assert FAMILIES == {"multi_start": 4, "fixed_sequence": 1}
    with pytest.raises(ValueError, match="n_starts=1 .* family='fixed_sequence'"):
        ltt_threshold(conf, correct, target_risk=0.1, family="fixed_sequence", n_starts=4)
    with pytest.raises(ValueError, match="family"):
        ltt_threshold(conf, correct, target_risk=0.1, family="holm")


def test_policy_stores_the_family_and_states_the_guarantee():
    pc, yc, pt, _ = _real()
    with pytest.raises(ValueError, match="family"):
        RiskControlPolicy(family="bonferroni")
    for family in FAMILIES:
        pol = RiskControlPolicy(target_risk=0.05, delta=0.1, family=family).fit(pc, yc)
        assert pol.get_params()["family"] == family
        g = pol.guarantee()
        assert g["family"] == family and g["n_starts"] == FAMILIES[family] and g["certified"]
        st = g["statement"]
        assert "P(R(threshold) > 0.05) <= 0.1 over the draw of the calibration set" in st
        assert "population selective risk" in st and "Not a bound on the rate measured on a finite test set" in st
        again = RiskControlPolicy.from_state(pol.get_params(), *pol.get_state())
        assert again.family == family and again.threshold_ == pol.threshold_
    # params written before the choice existed (no "family") load as multi_start, the family they used
    params = pol.get_params()
    params.pop("family")
    old = RiskControlPolicy.from_state(params, *RiskControlPolicy(target_risk=0.05).fit(pc, yc).get_state())
    assert old.family == "multi_start"


def test_old_artifact_of_a_risk_control_policy_loads_as_multi_start():
    from calib.artifacts import load_pipeline

    policy = load_pipeline(PRE_CONTRACT / "mondrian_riskpolicy")["policy"]
    assert policy.kind == "risk_control" and policy.family == "multi_start"
    assert policy.guarantee()["n_starts"] == 4


def test_audit_takes_the_family_and_runs_both_on_the_same_splits():
    from calib import datasets
    from calib.evaluation.policy_audit import audit_guarantee

    d = datasets.load("c10lt_wrn28")
    rows = audit_guarantee(d.logits, d.labels, targets=((0.05, 0.1),), n_splits=4, calibrator="identity",
                           family=("multi_start", "fixed_sequence"))
    assert [r.family for r in rows] == ["multi_start", "fixed_sequence"]
    with pytest.raises(ValueError, match="family"):
        audit_guarantee(d.logits, d.labels, n_splits=1, family="other")
    with pytest.raises(ValueError, match="event"):
        audit_guarantee(d.logits, d.labels, n_splits=1, event="test")


def test_population_audit_measures_the_risk_over_the_whole_set():
    # with an identity calibrator and one split, the reported risk is the error rate over the whole data set of
    # the items at or above the LTT threshold fitted on the i.i.d. calibration draw (recomputed here)
    from calib import datasets
    from calib.calibrators.base import softmax
    from calib.evaluation.policy_audit import audit_guarantee

    d = datasets.load("c10lt_wrn28")
    (row,) = audit_guarantee(d.logits, d.labels, targets=((0.1, 0.1),), n_splits=1, seed=3, calibrator="identity",
                             family="fixed_sequence", event="population")
    p = softmax(d.logits)
    conf, right = p.max(axis=1), p.argmax(axis=1) == d.labels
    n_cal = int(round(0.5 * d.labels.size))
    idx = np.random.default_rng(3).integers(0, d.labels.size, n_cal)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        thr = ltt_threshold(conf[idx], right[idx], target_risk=0.1, delta=0.1, family="fixed_sequence").threshold
    ans = conf >= thr
    assert row.mean_test_risk == pytest.approx(float((~right[ans]).mean()), abs=1e-12)
    assert row.mean_coverage == pytest.approx(float(ans.mean()), abs=1e-12)


@pytest.mark.slow
def test_both_families_keep_the_guarantee_over_random_splits():
    # The guarantee itself: the embedded set is the population, 400 calibration sets drawn from it i.i.d. (with
    # replacement), temperature scaling and the threshold fitted on each, R = the selective risk over the whole
    # set. Violations (R > r) must stay within the 99% quantile of Binomial(400, delta) for each family.
    from calib import datasets
    from calib.evaluation.policy_audit import audit_guarantee, binomial_slack

    d = datasets.load("c10lt_resnet110")
    rows = audit_guarantee(d.logits, d.labels, targets=((0.05, 0.1), (0.1, 0.1)), n_splits=400, seed=1,
                           family=("multi_start", "fixed_sequence"), event="population")
    assert len(rows) == 4
    for r in rows:
        assert r.allowed == binomial_slack(400, 0.1, 0.99) and r.event == "population"
        assert r.violations <= r.allowed, r
        assert r.not_certified == 0


def test_families_command_prints_both_answered_shares(capsys):
    import sys

    sys.path.insert(0, str(REPO / "experiments"))
    try:
        import audit_policy
    finally:
        sys.path.remove(str(REPO / "experiments"))
    from calib import datasets

    with datasets.resources.as_file(datasets.builtin_path("c10lt_wrn28")) as path:
        code = audit_policy.main(["--families", "--n-splits", "3", "--calibrator", "identity", "--data", str(path)])
    out = capsys.readouterr().out
    assert code == 0 and "multi_start %" in out and "fixed_seq %" in out and "c10lt_wrn28" in out


# --- conformal_routing: what an empty set means --------------------------------------------------------------
def test_every_conformal_score_has_an_empty_set_rule():
    from calib.conformal.scores import SCORES
    from calib.policy.routing import RANK_SCORES, THRESHOLD_SCORES

    assert set(RANK_SCORES) | set(THRESHOLD_SCORES) == set(SCORES)
    assert not set(RANK_SCORES) & set(THRESHOLD_SCORES)


def test_empty_set_rules_route_empty_sets_as_stated():
    p = np.array([[0.9, 0.05, 0.05], [0.5, 0.3, 0.2], [0.4, 0.35, 0.25], [0.999, 0.0005, 0.0005]])
    sets = np.array([[True, False, False], [True, True, False], [False, False, False], [False, False, False]])
    y = np.array([0, 1, 0, 0])
    fb = np.array([1, 1, 1, 2])
    esc = ConformalRoutingPolicy(fallback="extras").fit(p, y, sets=sets, fallback=fb)
    top = ConformalRoutingPolicy(fallback="extras", empty_set="answer_top").fit(p, y, sets=sets, fallback=fb)
    assert esc.route(p, sets=sets, fallback=fb).actions.tolist() == [0, 2, 1, 1]
    d = top.route(p, sets=sets, fallback=fb)
    assert d.actions.tolist() == [0, 2, 0, 0] and d.output.tolist() == [0, 1, 0, 0]
    for score, rule in (("aps", "answer_top"), ("raps", "answer_top"), ("saps", "answer_top"),
                        ("topk", "answer_top"), ("lac", "escalate")):
        assert ConformalRoutingPolicy(empty_set="auto", set_score=score).empty_set_rule == rule
    auto = ConformalRoutingPolicy(empty_set="auto")  # composes without a conformal predictor ...
    with pytest.raises(ValueError, match="set_score .* empty_set='auto'"):
        auto.fit(p, y, sets=sets)  # ... but cannot route without knowing the score
    with pytest.raises(ValueError, match="empty_set"):
        ConformalRoutingPolicy(empty_set="answer")
    with pytest.raises(ValueError, match="set_score"):
        ConformalRoutingPolicy(empty_set="auto", set_score="lac_typo")
    again = ConformalRoutingPolicy.from_state(top.get_params(), *top.get_state())
    assert again.empty_set == "answer_top"
    assert np.array_equal(again.route(p, sets=sets, fallback=fb).actions, d.actions)


def test_old_conformal_routing_artifact_escalates_empty_sets_as_before():
    from calib.artifacts import load_pipeline

    policy = load_pipeline(PRE_CONTRACT / "split_inf_conformal_routing")["policy"]
    assert policy.empty_set == "escalate" and policy.set_score is None


@pytest.mark.parametrize("conformal,rule", [("aps", "answer_top"), ("raps", "answer_top"), ("lac", "escalate"),
                                            ("mondrian_class", "escalate")])
def test_shipped_config_picks_the_rule_of_the_configured_score(conformal, rule):
    from hydra import compose, initialize_config_dir

    from calib._hydra import instantiate
    from calib.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"conformal={conformal}", "policy=conformal_routing"])
    policy = instantiate(cfg.policy)
    assert policy.empty_set == "auto" and policy.set_score == cfg.conformal.score
    assert policy.empty_set_rule == rule


def test_empty_aps_sets_on_real_logits_are_confident_right_items_and_get_answered():
    from calib.conformal import SplitConformal
    from calib.stats import binom_greater_pvalue

    pc, yc, pt, yt = _real()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cp = SplitConformal(score="aps", alpha=0.1, randomized=False, never_empty=False).fit(pc, yc)
        sc, st = cp.predict_set(pc), cp.predict_set(pt)
    empty = st.sum(axis=1) == 0
    right = pt.argmax(axis=1) == yt
    assert empty.sum() >= 100  # non-randomised APS leaves the most confident items with an empty set
    # the empty-set items are more often right than the items overall (exact one-sided binomial test)
    assert binom_greater_pvalue(int(right[empty].sum()), int(empty.sum()), float(right.mean())) < 1e-10
    pol = ConformalRoutingPolicy(empty_set="auto", set_score="aps", fallback="none").fit(pc, yc, sets=sc)
    actions = pol.route(pt, sets=st).actions
    assert (actions[empty] == 0).all()
    old = ConformalRoutingPolicy(fallback="none").fit(pc, yc, sets=sc).route(pt, sets=st).actions
    assert (old[empty] == 1).all()  # the old rule escalated every one of them
