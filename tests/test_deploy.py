"""calib.deploy.FittedPipeline: the explanation of each decision, the confidence band, the flat table, bad
input, and the reliability table read back from an artifact (untrusted input).

Explanations are checked on hand-constructed items whose probabilities are known: an identity calibrator
(softmax of the logits) on ``log(p)`` gives back ``p``.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

import calib.runtime
from calib.artifacts import ArtifactError, _manifest_digest
from calib.base import NotFittedError
from calib.calibrators import IdentityCalibrator, TemperatureScaling
from calib.conformal import SplitConformal
from calib.datasets import load, synthetic
from calib.deploy import Decisions, FittedPipeline
from calib.policy import (
    ConformalRoutingPolicy,
    CostPolicy,
    RiskControlPolicy,
    ThresholdPolicy,
)
from calib.policy.routing import ACTIONS, REASONS

NAMES = ["cat", "dog", "bird"]


@pytest.fixture(autouse=True)
def _no_signing_key_from_the_environment(monkeypatch):
    monkeypatch.delenv("CALIB_SIGNING_KEY", raising=False)
    monkeypatch.delenv("CALIB_SIGNING_KEY_FILE", raising=False)


@pytest.fixture(scope="module")
def cal3():
    d = synthetic(n=600, n_classes=3, temperature=1.0, seed=4)
    return d.logits.astype(np.float64), d.labels, np.random.default_rng(1).integers(0, 3, 600)


def items(*rows):
    """Logits whose identity-calibrated probabilities are ``rows``."""
    return np.log(np.asarray(rows, dtype=np.float64))


def fit_identity(cal3, **kwargs):
    x, y, fb = cal3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return FittedPipeline.fit(x, y, calibrator=IdentityCalibrator(), class_names=NAMES, fallback=fb, **kwargs)


def check(e, *, action, reason, output, names_in_message):
    assert e["action"] == action and e["reason"] == reason, e
    assert e["output"] == output and e["output_name"] == (None if output is None else NAMES[output])
    for name in names_in_message:
        assert repr(name) in e["message"] or name in e["message"], (name, e["message"])


# --- explanations ---------------------------------------------------------------------------------
def test_no_policy_answers_with_the_model_label(cal3):
    out = fit_identity(cal3).apply(items([0.1, 0.8, 0.1]))
    e = out.explain(0)
    check(e, action="answer", reason="no_policy", output=1, names_in_message=["'dog'"])
    assert e["label"] == 1 and e["class_name"] == "dog" and e["set"] is None
    assert abs(e["confidence"] - 0.8) < 1e-12 and "0.800" in e["message"]


def test_threshold_policy_explanations(cal3):
    pipe = fit_identity(cal3, policy=ThresholdPolicy(threshold=0.7, fallback_threshold=0.25, fallback="extras"))
    out = pipe.apply(items([0.9, 0.05, 0.05], [0.5, 0.3, 0.2], [0.2, 0.5, 0.3]), fallback=[2, 2, 2])
    check(out.explain(0), action="answer", reason="confident", output=0, names_in_message=["'cat'", "0.900", "0.700"])
    # 0.5 < 0.7 and the fallback's label (bird) has 0.2 < 0.25: escalated
    check(out.explain(1), action="escalate", reason="low_confidence", output=None,
          names_in_message=["'cat'", "0.500", "0.700"])
    # 0.5 < 0.7 but bird has 0.3 >= 0.25: the fallback answers bird
    check(out.explain(2), action="fallback", reason="low_confidence_fallback", output=2,
          names_in_message=["'bird'", "0.500", "0.250"])
    assert out.actions.tolist() == [0, 1, 2] and out.output.tolist() == [0, -1, 2]
    assert [REASONS[r] for r in out.reasons] == ["confident", "low_confidence", "low_confidence_fallback"]
    assert out.explain(-1) == out.explain(2)


@pytest.fixture(scope="module")
def lac_pipe():
    """LAC sets with a known threshold: every calibration item gives its label probability 0.4 (score 0.6),
    so qhat = 0.6 and a class is in the set iff its probability >= 0.4."""
    base = np.array([0.4, 0.3, 0.3])
    p = np.stack([np.roll(base, i % 3) for i in range(300)])
    y = np.arange(300) % 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return FittedPipeline.fit(np.log(p), y, calibrator=IdentityCalibrator(),
                                  conformal=SplitConformal(score="lac", alpha=0.1),
                                  policy=ConformalRoutingPolicy(empty_set="escalate", fallback="extras"),
                                  fallback=np.zeros(300, np.int64), class_names=NAMES)


def test_conformal_routing_explanations(lac_pipe):
    assert abs(lac_pipe.conformal.qhat_ - 0.6) < 1e-9
    rows = items([0.98, 0.01, 0.01], [0.45, 0.45, 0.10], [0.10, 0.45, 0.45], [0.34, 0.33, 0.33])
    out = lac_pipe.apply(rows, fallback=[1, 2, 2, 0])
    assert out.sets.tolist() == [[True, False, False], [True, True, False], [False, True, True], [False] * 3]
    e = out.explain(0)
    check(e, action="answer", reason="singleton_set", output=0, names_in_message=["'cat'", "1 class (cat)"])
    assert e["set"] == ["cat"]
    # two classes in the set, the fallback's label (bird) is not: escalated as ambiguous
    e = out.explain(1)
    check(e, action="escalate", reason="ambiguous_set", output=None, names_in_message=["2 classes (cat, dog)", "90%"])
    assert e["set"] == ["cat", "dog"]
    # the fallback's label lies in the (ambiguous) set
    check(out.explain(2), action="fallback", reason="fallback_in_set", output=2,
          names_in_message=["'bird'", "2 classes (dog, bird)"])
    # LAC empty set: no class reaches 0.4
    check(out.explain(3), action="escalate", reason="empty_set", output=None,
          names_in_message=["'cat'", "holds 0 classes"])


def cost_of(p, fb, *, wrong_answer=1.0, escalation=0.05, wrong_fallback=0.2, human_accuracy=1.0):
    """Expected cost of (answer, escalate, fallback), written out from CostModel's docstring."""
    return ((1 - max(p)) * wrong_answer, escalation + (1 - human_accuracy) * wrong_answer, (1 - p[fb]) * wrong_fallback)


def test_cost_policy_explanations(cal3):
    costs = {"wrong_answer": 1.0, "escalation": 0.05, "wrong_fallback": 0.2, "human_accuracy": 1.0}
    pipe = fit_identity(cal3, policy=CostPolicy(costs=costs, fallback="extras"))
    rows, fb = [[0.97, 0.02, 0.01], [0.5, 0.3, 0.2], [0.1, 0.85, 0.05]], [1, 1, 1]
    out = pipe.apply(items(*rows), fallback=fb)
    want = [ACTIONS[int(np.argmin(cost_of(p, f)))] for p, f in zip(rows, fb)]  # no ties in these rows
    assert want == ["answer", "escalate", "fallback"]
    check(out.explain(0), action="answer", reason="answer_cheapest", output=0,
          names_in_message=["'cat'", "answer 0.030", "escalate 0.050"])
    check(out.explain(1), action="escalate", reason="escalate_cheapest", output=None,
          names_in_message=["answer 0.500", "escalate 0.050"])
    check(out.explain(2), action="fallback", reason="fallback_cheapest", output=1,
          names_in_message=["'dog'", "answer 0.150", "escalate 0.050", "fallback 0.030"])


def test_cost_policy_escalation_message_names_the_class_and_every_cost(cal3):
    costs = {"wrong_answer": 1.0, "escalation": 0.05, "wrong_fallback": 0.2, "human_accuracy": 1.0}
    pipe = fit_identity(cal3, policy=CostPolicy(costs=costs, fallback="extras"))
    e = pipe.apply(items([0.5, 0.3, 0.2]), fallback=[1]).explain(0)
    assert e["reason"] == "escalate_cheapest"
    assert "'cat'" in e["message"] and "fallback 0.140" in e["message"], e["message"]


def test_risk_control_that_certifies_nothing_escalates_everything(cal3):
    x, y, _ = cal3
    with pytest.warns(UserWarning, match="certif"):
        pipe = FittedPipeline.fit(x, y, calibrator=IdentityCalibrator(), class_names=NAMES,
                                  policy=RiskControlPolicy(target_risk=0.001, delta=0.05, fallback="none"))
    assert pipe.policy.threshold_ == np.inf and not pipe.policy.guarantee()["certified"]
    out = pipe.apply(items([0.98, 0.01, 0.01], [0.4, 0.35, 0.25]))
    for i, name in ((0, "'cat'"), (1, "'cat'")):
        check(out.explain(i), action="escalate", reason="nothing_certified", output=None,
              names_in_message=[name, "certified no threshold", "target risk 0.001"])


def test_explain_rejects_a_bad_index(cal3):
    out = fit_identity(cal3).apply(items([0.1, 0.8, 0.1], [0.6, 0.2, 0.2]))
    for bad in (2, -3, True, 1.0, "0"):
        with pytest.raises(IndexError, match=r"item index in \[0, 2\)"):
            out.explain(bad)


# --- the band -------------------------------------------------------------------------------------
def clopper_pearson_scipy(x, n, level):
    from scipy.stats import beta

    a = 1 - level
    lo = 0.0 if x == 0 else float(beta.ppf(a / 2, x, n - x + 1))
    hi = 1.0 if x == n else float(beta.ppf(1 - a / 2, x + 1, n - x))
    return lo, hi


def test_band_is_the_clopper_pearson_interval_of_the_confidence_bin():
    cal, test = load("c10lt_resnet110").split_cal_test()
    pipe = FittedPipeline.fit(cal.logits, cal.labels, calibrator=TemperatureScaling(),
                              class_names=[f"c{j}" for j in range(10)], n_bins=10)
    p_cal = pipe.calibrator.predict_proba(cal.logits).astype(np.float64)
    conf_cal, ok = p_cal.max(axis=1), p_cal.argmax(axis=1) == cal.labels
    table = pipe.reliability
    # equal-mass bins: the interior edges are the deciles of the calibration confidences
    np.testing.assert_array_equal(table["edges"], np.quantile(conf_cal, np.arange(1, 10) / 10))
    edges = np.concatenate([[-np.inf], table["edges"], [np.inf]])

    x = test.logits[:400]
    out = pipe.apply(x)
    conf = out.confidence.astype(np.float64)
    for i in range(len(out)):
        b = int(np.sum(table["edges"] <= conf[i]))  # bin b holds edges[b - 1] <= c < edges[b]
        assert edges[b] <= conf[i] < edges[b + 1]
        members = (conf_cal >= edges[b]) & (conf_cal < edges[b + 1])
        n, hits = int(members.sum()), int(ok[members].sum())
        lo, hi = clopper_pearson_scipy(hits, n, 0.95)
        assert out.band_low[i] == pytest.approx(lo, rel=1e-9, abs=1e-12)
        assert out.band_high[i] == pytest.approx(hi, rel=1e-9, abs=1e-12)
    assert len(np.unique(out.band_low)) >= 3  # the test items fall in several bins
    e = out.explain(0)
    assert e["band"] == [out.band_low[0], out.band_high[0]]
    assert f"{out.band_low[0]:.1%}-{out.band_high[0]:.1%}" in e["message"] and "95% interval" in e["message"]


# --- the flat table -------------------------------------------------------------------------------
def test_columns_have_one_entry_per_item(lac_pipe):
    rows = items([0.98, 0.01, 0.01], [0.45, 0.45, 0.10], [0.10, 0.45, 0.45], [0.34, 0.33, 0.33], [0.2, 0.2, 0.6])
    out = lac_pipe.apply(rows, fallback=[1, 2, 2, 0, 0])
    cols = out.columns()
    assert list(cols) == ["label", "class_name", "confidence", "band_low", "band_high", "set_size", "set", "action",
                          "output", "reason"]
    assert all(len(v) == 5 for v in cols.values())
    assert cols["class_name"].tolist() == ["cat", "cat", "dog", "cat", "bird"]
    assert cols["set"].tolist() == ["cat", "cat|dog", "dog|bird", "", "bird"]
    assert cols["set_size"].tolist() == [1, 2, 2, 0, 1]
    assert cols["action"].tolist() == ["answer", "escalate", "fallback", "escalate", "answer"]
    assert cols["reason"].tolist() == ["singleton_set", "ambiguous_set", "fallback_in_set", "empty_set",
                                       "singleton_set"]
    assert cols["output"].tolist() == [0, -1, 2, -1, 2]
    assert "set" not in out.columns(sets=False) and "set_size" in out.columns(sets=False)
    assert out.rates() == {"automation_rate": 0.4, "escalation_rate": 0.4, "fallback_rate": 0.2}
    assert len(out) == 5


def test_columns_without_sets_or_policy(cal3):
    out = fit_identity(cal3).apply(items([0.1, 0.8, 0.1], [0.6, 0.2, 0.2], [0.3, 0.3, 0.4]))
    cols = out.columns()
    assert set(cols) == {"label", "class_name", "confidence", "band_low", "band_high", "action", "output", "reason"}
    assert all(len(v) == 3 for v in cols.values())
    assert cols["reason"].tolist() == ["no_policy"] * 3 and cols["output"].tolist() == [1, 0, 2]


# --- bad input ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pipe5():
    d = synthetic(n=800, n_classes=5, seed=2)
    fb = np.arange(800) % 5
    return FittedPipeline.fit(d.logits[:400], d.labels[:400], calibrator=TemperatureScaling(),
                              conformal=SplitConformal(score="lac", alpha=0.2),
                              policy=ThresholdPolicy(threshold=0.6, fallback_threshold=0.2, fallback="extras"),
                              fallback=fb[:400]), d.logits[400:], fb[400:]


def test_logits_with_the_wrong_number_of_classes(pipe5):
    pipe, x, fb = pipe5
    wide = np.concatenate([x, x[:, :1]], axis=1)
    with pytest.raises(ValueError, match=r"logits.*5 columns.*5 classes.*got 6"):
        pipe.apply(wide, fallback=fb)
    with pytest.raises(ValueError, match=r"logits.*5 columns.*got 4"):
        pipe.predict_proba(x[:, :4])
    with pytest.raises(ValueError, match=r"logits of shape \(n, 5\).*got shape \(400, 6\)"):
        next(pipe.iter_apply(wide, fallback=fb))
    with pytest.raises(ValueError, match=r"logits of shape \(n_samples, n_classes\), got a 1-D array"):
        pipe.apply(x[0])


def test_nan_logits_are_refused(pipe5):
    pipe, x, fb = pipe5
    bad = x.copy()
    bad[3, 1] = np.nan
    bad[9, 0] = np.inf
    with pytest.raises(ValueError, match=r"finite logits, got 2 NaN/inf entries \(first rows: \[3, 9\]\)"):
        pipe.apply(bad, fallback=fb)
    with pytest.raises(ValueError, match="finite logits"):
        pipe.predict_proba(bad)


def test_iter_apply_names_the_row_of_a_nan_in_the_whole_array(pipe5):
    pipe, x, fb = pipe5
    bad = x.copy()
    bad[10, 1] = np.nan
    with pytest.raises(ValueError, match=r"first rows: \[10\]"):
        list(pipe.iter_apply(bad, fallback=fb, chunk_rows=7))


def test_groups_and_fallback_of_the_wrong_length(pipe5):
    pipe, x, fb = pipe5
    with pytest.raises(ValueError, match=r"fallback as a 1-D array with one entry per row of logits \(400\), "
                                         r"got shape \(399,\)"):
        pipe.apply(x, fallback=fb[:-1])
    with pytest.raises(ValueError, match=r"groups as a 1-D array with one entry per row of logits \(400\), "
                                         r"got shape \(2, 200\)"):
        pipe.apply(x, groups=np.zeros((2, 200)), fallback=fb)
    with pytest.raises(ValueError, match=r"fallback.*\(400\)"):
        next(pipe.iter_apply(x, fallback=fb[:10]))
    with pytest.raises(ValueError, match="fallback"):  # a label outside [0, k)
        pipe.apply(x, fallback=np.full(400, 7))
    with pytest.raises(ValueError, match="per-item fallback array"):  # fallback='extras' needs it
        pipe.apply(x)


def test_unfitted_components_are_refused():
    d = synthetic(n=300, n_classes=4, seed=3)
    with pytest.raises(NotFittedError, match="TemperatureScaling is not fitted"):
        FittedPipeline(TemperatureScaling())
    ts = TemperatureScaling().fit(d.logits, d.labels)
    with pytest.raises(NotFittedError, match="SplitConformal is not fitted"):
        FittedPipeline(ts, SplitConformal(alpha=0.1))
    with pytest.raises(NotFittedError, match="ThresholdPolicy is not fitted"):
        FittedPipeline.from_parts(ts, policy=ThresholdPolicy(threshold=0.5))
    with pytest.raises(TypeError, match="fitted calibrator, got None"):
        FittedPipeline(None)
    with pytest.raises(TypeError, match=r"calibrator as an instance of a class of calib\.calibrators\.REGISTRY .*got str"):
        FittedPipeline("temperature")


def test_components_fitted_on_different_class_counts_are_refused():
    d4 = synthetic(n=300, n_classes=4, seed=3)
    d5 = synthetic(n=300, n_classes=5, seed=3)
    ts = TemperatureScaling().fit(d4.logits, d4.labels)
    p5 = TemperatureScaling().fit(d5.logits, d5.labels).predict_proba(d5.logits)
    cp5 = SplitConformal(score="lac", alpha=0.2).fit(p5, d5.labels)
    with pytest.raises(ValueError, match=r"conformal fitted on 4 classes \(as the calibrator\), got 5"):
        FittedPipeline(ts, cp5)
    pol5 = ThresholdPolicy(threshold=0.5).fit(p5, d5.labels)
    with pytest.raises(ValueError, match=r"policy fitted on 4 classes \(as the calibrator\), got 5"):
        FittedPipeline.from_parts(ts, policy=pol5)
    with pytest.raises(ValueError, match="Expected 4 class_names, got 3"):
        FittedPipeline(ts, class_names=["a", "b", "c"])


def test_conformal_routing_without_a_conformal_predictor_is_refused():
    d = synthetic(n=300, n_classes=4, seed=3)
    with pytest.raises(ValueError, match="routes on conformal prediction sets"):
        FittedPipeline.fit(d.logits, d.labels, calibrator=TemperatureScaling(),
                           policy=ConformalRoutingPolicy(fallback="none"))
    ts = TemperatureScaling().fit(d.logits, d.labels)
    p = ts.predict_proba(d.logits)
    sets = SplitConformal(score="lac", alpha=0.2).fit(p, d.labels).predict_set(p)
    cr = ConformalRoutingPolicy(fallback="none").fit(p, d.labels, sets=sets)
    with pytest.raises(ValueError, match="conformal predictor with policy 'conformal_routing'"):
        FittedPipeline.from_parts(ts, policy=cr)


def test_several_alphas_give_sets_per_alpha(tmp_path):
    d = synthetic(n=600, n_classes=4, seed=3)
    pipe = FittedPipeline.fit(d.logits[:300], d.labels[:300], calibrator=TemperatureScaling(),
                              conformal=SplitConformal(score="aps", alpha=[0.1, 0.2], seed=1),
                              policy=ThresholdPolicy(threshold=0.5, fallback="none"), class_names=list("abcd"))
    x = d.logits[300:]
    out = calib.runtime.load(pipe.save(tmp_path / "art")).apply(x)
    want = pipe.conformal.predict_set(pipe.calibrator.predict_proba(x))
    assert out.sets.shape == (300, 4, 2)
    np.testing.assert_array_equal(out.sets, want)
    cols = out.columns()
    for m, a in enumerate(("0.1", "0.2")):
        assert cols[f"set_size_{a}"].tolist() == want[:, :, m].sum(axis=1).tolist()
        assert cols[f"set_{a}"][0] == "|".join(np.array(list("abcd"))[want[0, :, m]])
    e = out.explain(0)
    assert e["sets_by_alpha"] == {a: [c for c, inside in zip("abcd", want[0, :, m]) if inside]
                                  for m, a in enumerate(("0.1", "0.2"))}
    assert e["set"] == e["sets_by_alpha"]["0.1"]


def test_a_set_routing_policy_with_several_alphas_is_refused_naming_alpha():
    d = synthetic(n=300, n_classes=4, seed=3)
    ts = TemperatureScaling().fit(d.logits, d.labels)
    p = ts.predict_proba(d.logits)
    cp = SplitConformal(score="lac", alpha=[0.1, 0.2]).fit(p, d.labels)
    cr = ConformalRoutingPolicy(fallback="none").fit(p, d.labels, sets=cp.predict_set(p)[:, :, 0])
    with pytest.raises(ValueError, match="alpha"):
        FittedPipeline.from_parts(ts, cp, cr)
    with pytest.raises(ValueError, match="alpha"):
        FittedPipeline.fit(d.logits, d.labels, calibrator=TemperatureScaling(),
                           conformal=SplitConformal(score="lac", alpha=[0.1, 0.2]),
                           policy=ConformalRoutingPolicy(fallback="none"))


# --- the reliability table read from an artifact --------------------------------------------------
def _edit_manifest(path, fn):
    m = json.loads((path / "manifest.json").read_text())
    fn(m)
    m["manifest_sha256"] = _manifest_digest(m)  # checksums anyone can recompute
    (path / "manifest.json").write_text(json.dumps(m))


def _rel(fn):
    return lambda m: fn(m["pipeline"]["reliability"])


def _swap_first_edges(t):
    t["edges"][0], t["edges"][1] = t["edges"][1], t["edges"][0]


def _set(key, i, value):
    def f(t):
        t[key][i] = value(t) if callable(value) else value
    return f


RELIABILITY_EDITS = {
    "decreasing edges": (_swap_first_edges, "edges increasing"),
    "edge above 1": (_set("edges", -1, 1.5), "edges increasing within"),
    "correct > n": (_set("correct", 0, lambda t: t["n"][0] + 1), "0 <= correct <= n"),
    "negative count": (_set("n", 1, -4), "0 <= correct <= n"),
    "fractional count": (_set("n", 2, 10.5), "counts as integers"),
    "lower > upper": (_set("lower", 0, lambda t: t["upper"][0] + 0.01), "0 <= lower <= upper <= 1"),
    "missing bin": (lambda t: t["upper"].pop(), "bins"),
    "level 1": (lambda t: t.update(level=1.0), r"level in \(0, 1\)"),
    "text": (_set("lower", 0, "low"), "numbers"),
    "extra key": (lambda t: t.update(note=1), "table with edges"),
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    d = synthetic(n=1200, n_classes=4, seed=5)
    pipe = FittedPipeline.fit(d.logits, d.labels, calibrator=TemperatureScaling(), n_bins=5)
    assert len(pipe.reliability["edges"]) == 4
    return pipe.save(tmp_path_factory.mktemp("rel") / "art")


@pytest.mark.parametrize("edit", list(RELIABILITY_EDITS))
def test_an_edited_reliability_table_is_refused_on_load(tmp_path, saved, edit):
    import shutil

    fn, message = RELIABILITY_EDITS[edit]
    path = tmp_path / "art"
    shutil.copytree(saved, path)
    FittedPipeline.load(path)  # loads before the edit
    _edit_manifest(path, _rel(fn))
    for loader in (FittedPipeline.load, calib.runtime.load):
        with pytest.raises(ArtifactError, match=rf"pipeline.*reliability.*{message}"):
            loader(path)


def test_pipeline_round_trip_keeps_the_table_the_probes_and_the_decisions(tmp_path, pipe5):
    pipe, x, fb = pipe5
    pipe.save(tmp_path / "art")
    back = calib.runtime.load(tmp_path / "art")
    for key in ("edges", "n", "correct", "lower", "upper"):
        np.testing.assert_array_equal(back.reliability[key], pipe.reliability[key])
    assert back.verify()["ok"] and back.describe() == pipe.describe()
    a, b = pipe.apply(x, fallback=fb), back.apply(x, fallback=fb)
    assert isinstance(b, Decisions)
    for field in ("probs", "sets", "actions", "output", "reasons", "band_low", "band_high"):
        np.testing.assert_array_equal(getattr(b, field), getattr(a, field))


def test_verify_recomputes_the_probe_rows_and_catches_an_edited_state(tmp_path, pipe5):
    pipe, _, _ = pipe5
    path = pipe.save(tmp_path / "art")
    report = FittedPipeline.load(path).verify()
    assert report["ok"] and report["probe_rows"] == 64 and report["max_abs_diff_probs"] == 0.0
    t = pipe.calibrator.temperature_
    _edit_manifest(path, lambda m: m["components"]["calibrator"]["state"].update(temperature=t * 1.01))
    report = calib.runtime.load(path).verify()  # the checksums were recomputed: only the probes can tell
    assert not report["ok"] and report["mismatches"]["probs"] > 0 and report["max_abs_diff_probs"] > 0


def test_a_small_calibration_set_gives_one_bin_whose_band_is_the_overall_interval(cal3):
    x, y, _ = cal3
    pipe = FittedPipeline.fit(x[:60], y[:60], calibrator=IdentityCalibrator())  # 60 // 50 = 1 bin
    assert pipe.reliability["edges"].size == 0
    p = pipe.calibrator.predict_proba(x[:60])
    hits = int((p.argmax(axis=1) == y[:60]).sum())
    lo, hi = clopper_pearson_scipy(hits, 60, 0.95)
    out = pipe.apply(x[60:80])
    np.testing.assert_allclose(out.band_low, lo, rtol=1e-9)
    np.testing.assert_allclose(out.band_high, hi, rtol=1e-9)


def test_reliability_table_with_tied_confidences_has_no_empty_bin():
    """Two clusters of tied confidences: the decile edges collapse; no bin may be left empty (its band would read
    0-100 %), and an item between the clusters gets the band of the cluster above (bins are [lo, hi))."""
    from scipy.stats import beta

    from calib.deploy import reliability_table

    conf = np.r_[np.full(500, 0.5), np.full(500, 0.9)]
    correct = np.r_[np.arange(500) < 250, np.arange(500) < 450]
    t = reliability_table(conf, correct)
    assert min(t["n"]) > 0 and sum(t["n"]) == 1000
    assert t["n"] == [500, 500] and t["correct"] == [250, 450]
    lo, hi = beta.ppf(0.025, 450, 51), beta.ppf(0.975, 451, 50)  # Clopper-Pearson of 450 / 500, written out
    assert np.isclose(t["lower"][1], lo, rtol=1e-12) and np.isclose(t["upper"][1], hi, rtol=1e-12)
    idx = np.searchsorted(t["edges"], 0.8, side="right")
    assert idx == 1


def test_group_conditional_pipeline_stores_probe_rows_for_every_group():
    from calib.conformal import MondrianConformal

    d = synthetic(n=3000, n_classes=4, seed=5)
    groups = np.array(["a", "b", "c"])[np.arange(3000) % 3]
    pipe = FittedPipeline.fit(d.logits, d.labels, calibrator=TemperatureScaling(),
                              conformal=MondrianConformal(condition="group", score="lac", alpha=0.2), groups=groups)
    assert set(pipe.probe["groups"].tolist()) == {"a", "b", "c"}
    report = pipe.verify()
    assert report["ok"] and "sets" in report["checked"] and report["probe_rows"] == 64


@pytest.mark.parametrize("kwargs, error, match", [
    ({"calibrator": "temperature"}, TypeError, r"calibrator as an instance of a class of calib\.calibrators\.REGISTRY"),
    ({"calibrator": TemperatureScaling}, TypeError, r"got the class TemperatureScaling itself; pass an instance"),
    ({"calibrator": TemperatureScaling(), "policy": "threshold"}, TypeError, r"policy as an instance .* got str 'threshold'"),
    ({"calibrator": TemperatureScaling(), "conformal": ThresholdPolicy(threshold=0.5)}, TypeError,
     r"conformal as an instance of a class of calib\.conformal\.REGISTRY"),
    ({"calibrator": TemperatureScaling(), "n_bins": 0}, ValueError, r"n_bins >= 1, got 0"),
    ({"calibrator": TemperatureScaling(), "n_bins": "10"}, TypeError, r"n_bins as an integer"),
    ({"calibrator": TemperatureScaling(), "class_names": "abcd"}, ValueError, r"class_names as a sequence of 4 strings"),
    ({"calibrator": TemperatureScaling(), "class_names": ["a", "b"]}, ValueError, r"class_names as a sequence of 4"),
])
def test_fit_refuses_bad_arguments_before_fitting_anything(kwargs, error, match):
    d = synthetic(n=400, n_classes=4, seed=1)
    with pytest.raises(error, match=match):
        FittedPipeline.fit(d.logits, d.labels, **kwargs)
    cal = kwargs.get("calibrator")
    if isinstance(cal, TemperatureScaling):
        assert not cal.is_fitted  # refused before any component was fitted


def test_constructor_refuses_a_string_of_class_names_and_an_unknown_dtype():
    d = synthetic(n=400, n_classes=4, seed=1)
    ts = TemperatureScaling().fit(d.logits, d.labels)
    with pytest.raises(TypeError, match=r"class_names as a sequence of 4 strings, got str 'abcd'"):
        FittedPipeline(ts, class_names="abcd")
    with pytest.raises(ValueError, match=r"input_dtype as one of \['float16', 'float32', 'float64'\], got 'int8'"):
        FittedPipeline(ts, input_dtype="int8")


def test_every_edit_of_the_pipeline_block_is_refused_or_loads_cleanly(tmp_path):
    """Each field of the manifest's pipeline block (and each of its list entries) replaced by null, a string, -1,
    1e308, a list, a table, True, NaN or 0, or deleted, with the manifest digest recomputed (an edit, not an
    accident): loading raises ArtifactError, or the pipeline loads and applies. Never another exception type.
    Edits that stay valid (a lower band bound set to 0, the reliability table removed) are what signatures and
    `calib verify` (which recomputes the bounds) are for."""
    import copy
    import shutil

    from calib.conformal import SplitConformal as SC

    d = synthetic(n=1500, n_classes=4, seed=0)
    fb = d.labels % 4
    pipe = FittedPipeline.fit(d.logits, d.labels, calibrator=TemperatureScaling(), conformal=SC(score="aps"),
                              policy=ConformalRoutingPolicy(empty_set="answer_top", fallback="extras"), fallback=fb,
                              class_names=list("abcd"))
    base = pipe.save(tmp_path / "base")
    m0 = json.loads((base / "manifest.json").read_text())

    def paths(o, pre):
        yield pre
        items = o.items() if isinstance(o, dict) else enumerate(o) if isinstance(o, list) else ()
        for k, v in items:
            yield from paths(v, (*pre, k))

    def parent(m, p):
        for k in p[:-1]:
            m = m[k]
        return m

    values = [None, "x", -1, 1e308, [1], {}, True, float("nan"), 0]
    cases = refused = 0
    for p in list(paths(m0["pipeline"], ("pipeline",))):
        for v in [*values, "<delete>"]:
            m = copy.deepcopy(m0)
            if v == "<delete>":
                del parent(m, p)[p[-1]]
            else:
                parent(m, p)[p[-1]] = v
            m["manifest_sha256"] = _manifest_digest(m)
            art = tmp_path / f"case{cases}"
            shutil.copytree(base, art)
            (art / "manifest.json").write_text(json.dumps(m))
            cases += 1
            try:
                loaded = calib.runtime.load(art)
            except ArtifactError:
                refused += 1
            else:
                out = loaded.apply(d.logits[:20], fallback=fb[:20])
                assert out.explain(0)["message"]
                loaded.verify()
            shutil.rmtree(art)
    assert cases > 500 and refused > 0.8 * cases, (cases, refused)


def test_from_parts_needs_probabilities_and_labels_together():
    d = synthetic(n=400, n_classes=4, seed=1)
    ts = TemperatureScaling().fit(d.logits, d.labels)
    p = ts.predict_proba(d.logits)
    with pytest.raises(ValueError, match="cal_probs and cal_labels together .* got cal_probs alone"):
        FittedPipeline.from_parts(ts, cal_probs=p)
    with pytest.raises(ValueError, match="labels of length 400"):
        FittedPipeline.from_parts(ts, cal_probs=p, cal_labels=d.labels[:10])
    assert FittedPipeline.from_parts(ts, cal_probs=p, cal_labels=d.labels).reliability is not None
