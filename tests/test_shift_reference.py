"""calib.shift.ReferenceStats: the calibration reference a monitor needs, checked against independent
recomputation, its state refused when edited, its inputs refused when bad."""

from __future__ import annotations

import numpy as np
import pytest

from calib.base import StateError
from calib.calibrators import TemperatureScaling
from calib.datasets import load, synthetic
from calib.shift import REGISTRY, ReferenceStats, novelty_scores


@pytest.fixture(scope="module")
def real():
    d = load("c10lt_resnet110")
    c = d.split == 0
    x, y = d.logits[c], d.labels[c]
    p = TemperatureScaling().fit(x, y).predict_proba(x)
    return x, y, p


@pytest.fixture(scope="module")
def small():
    d = synthetic(n=600, n_classes=4, temperature=2.0, seed=3)
    p = TemperatureScaling().fit(d.logits, d.labels).predict_proba(d.logits)
    return d.logits, d.labels, p


def test_registered():
    assert REGISTRY["reference_stats"] is ReferenceStats


def test_statistics_equal_an_independent_recomputation(small):
    x, y, p = small
    ref = ReferenceStats().fit(x, y, probs=p, rates={"automation": 0.75, "escalation": 0.25})
    k = x.shape[1]
    counts = [int((y == c).sum()) for c in range(k)]
    confusion = [[int(((p.argmax(1) == i) & (y == j)).sum()) for j in range(k)] for i in range(k)]
    assert ref.class_counts_.tolist() == counts
    assert ref.confusion_.tolist() == confusion
    assert ref.accuracy_ == float(np.mean(p.argmax(1) == y))
    assert ref.exact_ and np.array_equal(ref.confidence_, np.sort(p.max(1).astype(np.float64)))
    # each kept confidence carries its own row's correctness: as multisets, (confidence, correct) pairs agree
    pairs = sorted(zip(p.max(1).astype(np.float64).tolist(), (p.argmax(1) == y).tolist()))
    assert sorted(zip(ref.confidence_.tolist(), ref.confidence_correct_.tolist())) == pairs
    np.testing.assert_allclose(ref.source_prior_, np.array(counts) / len(y))
    # ATC: the share of calibration rows above the threshold is the calibration accuracy (to one row)
    above = int((p.max(1) > ref.atc_threshold_).sum())
    assert abs(above - ref.accuracy_ * len(y)) <= 1
    assert ref.rates_ == {"automation": 0.75, "escalation": 0.25}


def test_novelty_scores_against_scipy(small):
    from scipy.special import logsumexp

    x = small[0]
    np.testing.assert_allclose(novelty_scores(x, "energy"), -logsumexp(x.astype(np.float64), axis=1), rtol=1e-12)
    np.testing.assert_array_equal(novelty_scores(x, "max_logit"), -x.max(axis=1).astype(np.float64))
    ref = ReferenceStats().fit(*small[:2], probs=small[2])
    np.testing.assert_array_equal(ref.novelty_energy_, np.sort(novelty_scores(x, "energy")))


def test_large_sets_keep_a_quantile_sketch(real):
    x, y, p = real
    ref = ReferenceStats(sample_size=500).fit(x, y, probs=p)
    conf = np.sort(p.max(1).astype(np.float64))
    assert not ref.exact_ and ref.confidence_.shape == (500,)
    # inverted-CDF quantile at (i + 0.5) / 500: the sorted value at index ceil(q n) - 1, computed by hand
    q = (np.arange(500) + 0.5) / 500
    idx = np.ceil(q * len(conf)).astype(int) - 1
    np.testing.assert_array_equal(ref.confidence_, conf[idx])
    # the flag of each kept point is that of the row holding that value (ties: a row with that value)
    pm, ok = p.max(1).astype(np.float64), p.argmax(1) == y
    for v, c in zip(ref.confidence_[::50], ref.confidence_correct_[::50]):
        assert c in set(ok[pm == v].tolist())
    assert ref.n_calibration_ == len(y) and int(ref.confusion_.sum()) == len(y)


def test_state_round_trip_is_bit_for_bit(real):
    ref = ReferenceStats().fit(*real[:2], probs=real[2], rates={"automation": 0.6})
    back = ReferenceStats.from_state(ref.get_params(), *ref.get_state())
    for name in ("class_counts_", "confusion_", "confidence_", "confidence_correct_", "novelty_max_logit_",
                 "novelty_energy_"):
        assert np.array_equal(getattr(back, name), getattr(ref, name)), name
    assert (back.accuracy_, back.atc_threshold_, back.exact_, back.rates_) == \
        (ref.accuracy_, ref.atc_threshold_, ref.exact_, ref.rates_)


def _edited(ref, state_edit=None, array_edit=None):
    state, arrays = ref.get_state()
    state, arrays = dict(state), {k: np.array(v) for k, v in arrays.items()}
    if state_edit:
        state_edit(state)
    if array_edit:
        array_edit(arrays)
    return ref.get_params(), state, arrays


def _set(d, key, value):
    d[key] = value


EDITS = [
    ("counts-sum", None, lambda a: a["class_counts"].__setitem__(0, a["class_counts"][0] + 1), "class_counts"),
    ("counts-negative", None, lambda a: a["class_counts"].__setitem__(0, -1), "class_counts"),
    ("confusion-columns", None, lambda a: (a["confusion"].__setitem__((0, 0), a["confusion"][0, 0] + 1),
                                           a["confusion"].__setitem__((1, 0), a["confusion"][1, 0] - 1)), "accuracy"),
    ("confusion-shape", None, lambda a: a.__setitem__("confusion", a["confusion"][:, :3]), "confusion"),
    ("confidence-unsorted", None, lambda a: a.__setitem__("confidence", a["confidence"][::-1].copy()), "confidence"),
    ("confidence-nan", None, lambda a: a["confidence"].__setitem__(-1, np.nan), "confidence"),
    ("confidence-above-1", None, lambda a: a["confidence"].__setitem__(-1, 1.5), "confidence"),
    ("novelty-missing", None, lambda a: a.pop("novelty_energy"), "novelty_energy"),
    ("accuracy", lambda s: _set(s, "accuracy", 0.99), None, "accuracy"),
    ("exact-flag", lambda s: _set(s, "exact", False), None, "exact"),
    ("atc-range", lambda s: _set(s, "atc_threshold", 1.5), None, "atc_threshold"),
    ("rate-range", lambda s: _set(s, "rate_automation", 2.0), None, "rate_automation"),
    ("n-mismatch", lambda s: _set(s, "n_calibration", 5), None, "class_counts"),
    ("confusion-column-sums", None, lambda a: (a["confusion"].__setitem__((0, 0), a["confusion"][0, 0] + 1),
                                               a["confusion"].__setitem__((0, 1), a["confusion"][0, 1] - 1)),
     "confusion"),
    ("correct-count", None, lambda a: a["confidence_correct"].__setitem__(
        int(np.flatnonzero(a["confidence_correct"])[0]), False), "confidence_correct"),
    ("correct-missing", None, lambda a: a.pop("confidence_correct"), "confidence_correct"),
    ("correct-float", None, lambda a: a.__setitem__("confidence_correct", a["confidence_correct"].astype(float)),
     "confidence_correct"),
    ("extra-field", lambda s: _set(s, "temperature", 1.0), None, "temperature"),
    ("extra-array", None, lambda a: a.__setitem__("weights", np.ones(4)), "weights"),
]


@pytest.mark.parametrize("name,state_edit,array_edit,field", EDITS, ids=[e[0] for e in EDITS])
def test_edited_state_is_refused(small, name, state_edit, array_edit, field):
    ref = ReferenceStats().fit(*small[:2], probs=small[2], rates={"automation": 0.5})
    with pytest.raises(StateError, match=field):
        ReferenceStats.from_state(*_edited(ref, state_edit, array_edit))


@pytest.mark.parametrize("kw,exc,match", [
    ({"sample_size": 10}, ValueError, r"sample_size >= 100, got 10"),
    ({"sample_size": True}, TypeError, r"sample_size as an integer"),
])
def test_bad_parameters(kw, exc, match):
    with pytest.raises(exc, match=match):
        ReferenceStats(**kw)


def test_fit_rows_equals_fit_and_checks_its_vectors(small):
    x, y, p = small
    a = ReferenceStats(sample_size=100).fit(x, y, probs=p)
    b = ReferenceStats(sample_size=100).fit_rows(p.max(1), p.argmax(1), y, novelty_scores(x, "max_logit"),
                                                 novelty_scores(x, "energy"), x.shape[1])
    sa, aa = a.get_state()
    sb, ab = b.get_state()
    assert sa == sb and all(np.array_equal(aa[key], ab[key]) for key in aa) and aa.keys() == ab.keys()
    with pytest.raises(ValueError, match=r"novelty_energy as 600 finite numbers"):
        ReferenceStats().fit_rows(p.max(1), p.argmax(1), y, novelty_scores(x, "max_logit"), np.zeros(5), 4)
    with pytest.raises(ValueError, match=r"confidence as top-label probabilities in \[1/4, 1\]"):
        ReferenceStats().fit_rows(p.max(1) * 3, p.argmax(1), y, novelty_scores(x, "max_logit"),
                                  novelty_scores(x, "energy"), 4)
    with pytest.raises(ValueError, match=r"prediction"):
        ReferenceStats().fit_rows(p.max(1), p.argmax(1) + 4, y, novelty_scores(x, "max_logit"),
                                  novelty_scores(x, "energy"), 4)


def test_bad_inputs_are_refused(small):
    x, y, p = small
    with pytest.raises(ValueError, match=r"labels"):
        ReferenceStats().fit(x, np.full(len(y), 9))
    with pytest.raises(ValueError, match=r"probs with 600 rows \(as logits\), got 10"):
        ReferenceStats().fit(x, y, probs=p[:10])
    with pytest.raises(ValueError, match=r"probs"):
        ReferenceStats().fit(x, y, probs=p[:, :3])
    with pytest.raises(ValueError, match=r"rates\['automation'\] as a number in \[0, 1\], got 1.2"):
        ReferenceStats().fit(x, y, probs=p, rates={"automation": 1.2})
    with pytest.raises(TypeError, match=r"rates as a dict"):
        ReferenceStats().fit(x, y, probs=p, rates=[0.5])
    with pytest.raises(ValueError, match=r"logits"):
        ReferenceStats().fit(np.full((10, 3), np.nan), np.zeros(10, int))


# --- in the fitted pipeline and its artifact ------------------------------------------------------------
def _edit_manifest(path, fn):
    import json

    from calib.artifacts import _manifest_digest

    m = json.loads((path / "manifest.json").read_text())
    fn(m)
    m["manifest_sha256"] = _manifest_digest(m)
    (path / "manifest.json").write_text(json.dumps(m))


@pytest.fixture(scope="module")
def pipe(real):
    from calib.conformal import SplitConformal
    from calib.deploy import FittedPipeline
    from calib.policy import ThresholdPolicy

    x, y, _ = real
    return FittedPipeline.fit(x, y, calibrator=TemperatureScaling(), conformal=SplitConformal(alpha=0.1),
                              policy=ThresholdPolicy(threshold=0.9))


def test_fitted_pipeline_keeps_reference_statistics_of_its_calibration_rows(pipe, real):
    x, y, _ = real
    ref = pipe.reference
    p = pipe.predict_proba(x)
    independent = ReferenceStats().fit(x, y, probs=p)
    for name in ("class_counts_", "confusion_", "confidence_", "novelty_energy_"):
        assert np.array_equal(getattr(ref, name), getattr(independent, name)), name
    d = pipe.apply(x)
    assert ref.rates_ == {"automation": float(np.mean(d.actions == 0)), "escalation": float(np.mean(d.actions == 1)),
                          "fallback": float(np.mean(d.actions == 2)),
                          "silent_failure": float(np.mean((d.actions == 0) & (d.label != y)))}
    assert "reference" in pipe.components and pipe.portable


@pytest.mark.parametrize("loader", ["FittedPipeline", "runtime"])
def test_reference_round_trips_through_the_artifact_as_schema_3(pipe, tmp_path, loader):
    import json

    import calib.runtime
    from calib.deploy import FittedPipeline

    path = pipe.save(tmp_path / "art")
    assert json.loads((path / "manifest.json").read_text())["schema_version"] == 3
    back = (FittedPipeline.load if loader == "FittedPipeline" else calib.runtime.load)(path)
    for name in ("class_counts_", "confusion_", "confidence_", "confidence_correct_", "novelty_max_logit_",
                 "novelty_energy_"):
        assert np.array_equal(getattr(back.reference, name), getattr(pipe.reference, name)), name
    assert back.reference.rates_ == pipe.reference.rates_ and back.verify()["ok"]


def test_a_pipeline_without_reference_is_written_as_schema_2(pipe, tmp_path):
    import json

    from calib.deploy import FittedPipeline

    bare = FittedPipeline(pipe.calibrator, pipe.conformal, pipe.policy, reliability=pipe.reliability)
    path = bare.save(tmp_path / "art")
    assert json.loads((path / "manifest.json").read_text())["schema_version"] == 2
    assert FittedPipeline.load(path).reference is None


def test_edited_reference_in_an_artifact_is_refused(pipe, tmp_path):
    from calib.artifacts import ArtifactError
    from calib.deploy import FittedPipeline

    path = pipe.save(tmp_path / "a")
    _edit_manifest(path, lambda m: m["components"]["reference"]["state"].update(accuracy=0.5))
    with pytest.raises(ArtifactError, match=r"reference 'reference_stats'.*accuracy"):
        FittedPipeline.load(path)
    path = pipe.save(tmp_path / "b")
    _edit_manifest(path, lambda m: m.update(schema_version=2))
    with pytest.raises(ArtifactError, match=r"Unexpected component 'reference' in the schema-2 manifest"):
        FittedPipeline.load(path)


def test_reference_of_another_class_count_is_refused(pipe, small):
    from calib.deploy import FittedPipeline

    other = ReferenceStats().fit(small[0], small[1])
    with pytest.raises(ValueError, match=r"reference fitted on 10 classes \(as the calibrator\), got 4"):
        FittedPipeline(pipe.calibrator, reference=other)
    with pytest.raises(TypeError, match=r"reference as a fitted calib.shift.ReferenceStats"):
        FittedPipeline(pipe.calibrator, reference=ReferenceStats())


def test_experiment_artifacts_carry_the_reference(tmp_path):
    """fit_and_evaluate -> PipelineResult.write: the artifact an experiment saves has the reference."""
    from calib.deploy import FittedPipeline
    from calib.evaluation.pipeline import fit_and_evaluate

    d = load("c10lt_wrn28")
    cal, test = d.split_cal_test()
    res = fit_and_evaluate(cal, test, TemperatureScaling(), calibration_bootstrap=0)
    res.write(tmp_path / "run")
    ref = FittedPipeline.load(tmp_path / "run" / "artifact").reference
    assert ref is not None and ref.n_calibration_ == cal.n_samples and ref.rates_ == {}
    assert ref.class_counts_.tolist() == np.bincount(cal.labels, minlength=10).tolist()
