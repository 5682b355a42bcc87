"""Model comparison at matched operating points (issue #12 item 6): fixed escalation budgets and fixed target
risks, paired differences with procedure-level intervals, checked against hand-written references."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from calib.evaluation.compare import compare_models, matched_comparison, matched_markdown
from calib.policy.costs import CostModel
from calib.policy.guarantees import ltt_threshold


def _synthetic_model(rng, n, acc_logit):
    """Continuous confidences (no ties) and correctness drawn from P(right | conf) = sigmoid(acc_logit + 4 conf)."""
    conf = rng.uniform(0.3, 1.0, n)
    correct = rng.uniform(size=n) < 1.0 / (1.0 + np.exp(-(acc_logit + 6.0 * (conf - 0.5))))
    return conf, correct


def _models(n_cal=1500, n_test=2000, gap=1.5, seed=0):
    rng = np.random.default_rng(seed)
    good = _synthetic_model(rng, n_cal, 2.0) + _synthetic_model(rng, n_test, 2.0)
    bad = _synthetic_model(rng, n_cal, 2.0 - gap) + _synthetic_model(rng, n_test, 2.0 - gap)
    return ("good", *good), ("bad", *bad)


def _hand_budget(model, b, seed, n_resamples, h):
    """Task completion at budget b per resample, by sorting the resampled items (an independent computation)."""
    _, _, _, conf, correct = model
    n = conf.size
    m = int(round(b * n))
    out = np.empty(n_resamples)
    for r in range(n_resamples):
        idx = np.random.default_rng([seed, r]).integers(0, n, n)  # the documented draw
        c, ok = conf[idx], correct[idx]
        answered = np.argsort(c)[m:]  # escalate the m least confident resampled items
        out[r] = (ok[answered].sum() + h * m) / n
    return out


def test_identical_models_are_not_distinguishable_with_difference_exactly_zero():
    (name, *arrays), _ = _models()
    res = matched_comparison([("a", *arrays), ("b", *arrays)], budgets=(0.05, 0.3), target_risks=(0.1,),
                             n_resamples=60, seed=3)
    for block in res["budgets"] + res["targets"]:
        (d,) = block["differences"]
        for key in ("task_completion_rate", "automation_rate", "selective_risk", "expected_cost"):
            assert d[key]["difference"] == 0.0 and d[key]["ci"] == [0.0, 0.0]
            assert d[key]["distinguishable"] is False
    md = matched_markdown(res)
    # budgets: three metrics each (automation is "matched" by construction); the target: all four
    assert md.count(" n.d. |") == 2 * 3 + 4 and md.count("| matched |") == 2


def test_clearly_different_models_are_distinguishable_and_automation_is_matched():
    good, bad = _models(gap=1.5)
    res = matched_comparison([good, bad], budgets=(0.05, 0.10, 0.30), target_risks=(), n_resamples=200, seed=0)
    n = res["n_test"]
    for block in res["budgets"]:
        m = int(round(block["escalation_budget"] * n))
        for name in ("good", "bad"):
            assert block["models"][name]["automation_rate"] == (n - m) / n  # exactly the budget, every model
        (d,) = block["differences"]
        assert d["task_completion_rate"]["distinguishable"] and d["task_completion_rate"]["ci"][0] > 0
        assert d["automation_rate"]["difference"] == 0.0 and not d["automation_rate"]["distinguishable"]
        assert d["selective_risk"]["ci"][1] < 0


def test_paired_interval_equals_a_hand_written_paired_bootstrap_with_the_same_indices():
    good, bad = _models(gap=0.3, seed=1)
    h = CostModel().human_accuracy
    B, seed, level = 150, 7, 0.95
    res = matched_comparison([good, bad], budgets=(0.1, 0.3), target_risks=(), n_resamples=B, seed=seed)
    for block in res["budgets"]:
        b = block["escalation_budget"]
        ga, gb = _hand_budget(good, b, seed, B, h), _hand_budget(bad, b, seed, B, h)
        d = ga - gb
        want = [np.quantile(d, (1 - level) / 2), np.quantile(d, 1 - (1 - level) / 2)]
        got = block["differences"][0]["task_completion_rate"]
        np.testing.assert_allclose(got["ci"], want, rtol=0, atol=1e-12)
        np.testing.assert_allclose(block["models"]["good"]["ci"]["task_completion_rate"],
                                   [np.quantile(ga, 0.025), np.quantile(ga, 0.975)], rtol=0, atol=1e-12)
        # point estimate: the whole test set, m least confident escalated
        n, m = good[3].size, int(round(b * good[3].size))
        pa = (good[4][np.argsort(good[3])[m:]].sum() + h * m) / n
        pb = (bad[4][np.argsort(bad[3])[m:]].sum() + h * m) / n
        assert got["difference"] == pytest.approx(pa - pb, abs=1e-12)


def test_target_risk_interval_refits_the_threshold_on_each_resample():
    good, bad = _models(gap=0.5, seed=2)
    B, seed, r, delta = 25, 5, 0.1, 0.1
    res = matched_comparison([good, bad], budgets=(), target_risks=(r,), delta=delta, family="fixed_sequence",
                             n_resamples=B, seed=seed)
    block = res["targets"][0]
    auto = {}
    for name, cc, hc, ct, ht in (good, bad):
        vals = []
        for b in range(B):
            rng = np.random.default_rng([seed, b])
            t_idx = rng.integers(0, ct.size, ct.size)
            c_idx = rng.integers(0, cc.size, cc.size)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                thr = ltt_threshold(cc[c_idx], hc[c_idx], target_risk=r, delta=delta, n_starts=1).threshold
            vals.append(np.mean(ct[t_idx] >= thr))
        auto[name] = np.array(vals)
        g = ltt_threshold(cc, hc, target_risk=r, delta=delta, n_starts=1)
        assert block["models"][name]["threshold"] == g.threshold
        assert block["models"][name]["automation_rate"] == np.mean(ct >= g.threshold)
    d = auto["good"] - auto["bad"]
    np.testing.assert_allclose(block["differences"][0]["automation_rate"]["ci"],
                               [np.quantile(d, 0.025), np.quantile(d, 0.975)], rtol=0, atol=1e-12)


def test_mcnemar_exact_test_agrees_on_discordant_pairs_at_a_fixed_budget():
    # Independent check of the verdicts with an exact test at the point operating points (McNemar: the items
    # one model answers wrong and the other does not, exact binomial on the discordant pairs). The bootstrap
    # also redoes the threshold, so near the boundary the two may differ; where the exact test is clear
    # (p < 0.01 or p > 0.1) they must agree.
    from scipy.stats import binomtest

    clear = 0
    for gap in (0.0, 0.3, 1.5):
        for seed in range(4, 8):
            good, bad = _models(gap=gap, seed=seed)
            res = matched_comparison([good, bad], budgets=(0.1,), target_risks=(), n_resamples=300, seed=0)
            n, m = good[3].size, int(round(0.1 * good[3].size))
            fail = []
            for _, _, _, conf, correct in (good, bad):
                answered = np.zeros(n, bool)
                answered[np.argsort(conf, kind="stable")[m:]] = True
                fail.append(answered & ~correct)
            only_a, only_b = int((fail[0] & ~fail[1]).sum()), int((fail[1] & ~fail[0]).sum())
            p = binomtest(only_a, only_a + only_b, 0.5).pvalue
            verdict = res["budgets"][0]["differences"][0]["task_completion_rate"]["distinguishable"]
            if p < 0.01 or p > 0.1:
                clear += 1
                assert verdict == (p < 0.01), (gap, seed, p, verdict)
            if gap == 1.5:
                assert p < 1e-20 and verdict
    assert clear >= 8


def test_compare_models_reports_matched_points_on_shared_test_items():
    from calib.calibrators import TemperatureScaling
    from calib.datasets import synthetic
    from calib.io import LogitsData
    from calib.policy import RiskControlPolicy

    a = synthetic(n=4000, n_classes=5, temperature=2.0, seed=3)
    same = LogitsData(logits=a.logits.copy(), labels=a.labels, split=a.split)
    res = compare_models([("a", a), ("a_copy", same)], TemperatureScaling, {}, budgets=(0.1,), target_risks=(0.2,),
                         paired_resamples=40, n_resamples=20)
    m = res["matched"]
    assert m["models"] == ["a", "a_copy"]
    for block in m["budgets"] + m["targets"]:
        assert not block["differences"][0]["task_completion_rate"]["distinguishable"]
        assert block["differences"][0]["task_completion_rate"]["difference"] == 0.0
    cal, _ = a.split_cal_test()
    ts = TemperatureScaling().fit(cal.logits, cal.labels)
    pol = RiskControlPolicy(target_risk=0.2, delta=0.1, fallback="none").fit(ts.predict_proba(cal.logits), cal.labels)
    assert pol.guarantee_.certified and m["targets"][0]["models"]["a"]["threshold"] == pol.threshold_


def test_matched_comparison_bad_input():
    good, bad = _models()
    with pytest.raises(ValueError, match="Unknown reference model 'c'"):
        matched_comparison([good, bad], reference="c", n_resamples=2)
    with pytest.raises(ValueError, match="budgets"):
        matched_comparison([good, bad], budgets=(1.5,), n_resamples=2)
    with pytest.raises(ValueError, match="family"):
        matched_comparison([good, bad], family="bonferroni", n_resamples=2)
    with pytest.raises(ValueError, match="distinct model names"):
        matched_comparison([good, good], n_resamples=2)
    with pytest.raises(ValueError, match="same n_test"):
        matched_comparison([good, ("short", good[1], good[2], good[3][:10], good[4][:10])], n_resamples=2)
    with pytest.raises(TypeError, match="Expected models as"):
        matched_comparison([("x", 1)], n_resamples=2)
    with pytest.raises(ValueError, match="matched_comparison"):
        matched_markdown({"rows": []})


def test_compare_png_draws_the_matched_points(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from calib.calibrators import TemperatureScaling
    from calib.datasets import synthetic
    from calib.plotting import save_figure
    from calib.plotting.routing import plot_matched_comparison, prepare_matched_comparison

    a = synthetic(n=3000, n_classes=4, temperature=2.0, seed=1)
    b = synthetic(n=3000, n_classes=4, temperature=1.0, seed=1)
    res = compare_models([("m_a", a), ("m_b", b)], TemperatureScaling, {}, budgets=(0.05, 0.3), target_risks=(),
                         paired_resamples=30, n_resamples=10)
    data = prepare_matched_comparison(res)
    assert data.labels == ("a", "b") and data.completion.shape == (2, 2) and len(data.diff_labels) == 2
    save_figure(plot_matched_comparison(res), tmp_path / "compare.png")
    assert (tmp_path / "compare.png").stat().st_size > 10_000
    with pytest.raises(ValueError, match="matched operating points"):
        prepare_matched_comparison({"rows": [], "matched": None})
