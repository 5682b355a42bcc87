"""Artifact v1: exact round trip, integrity checks, atomic writes, no pickle."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from calib import artifacts
from calib.artifacts import ArtifactError, load_artifact, load_pipeline, read_manifest, save_artifact
from calib.calibrators import IdentityCalibrator, NotFittedError, TemperatureScaling


@pytest.fixture(scope="module")
def fitted(synthetic_data):
    return TemperatureScaling().fit(synthetic_data.logits, synthetic_data.labels)


def test_round_trip_is_exact(tmp_path, fitted, synthetic_data):
    fp = artifacts.data_fingerprint(synthetic_data.logits, synthetic_data.labels)
    path = save_artifact(fitted, tmp_path / "art", metrics={"nll": 0.5}, data_fingerprint=fp,
                         class_names=[f"c{i}" for i in range(10)], config_yaml="seed: 0\n")
    loaded = load_artifact(path)
    assert type(loaded) is TemperatureScaling
    assert loaded.temperature_ == fitted.temperature_  # bit-for-bit, through JSON
    assert loaded.get_params() == fitted.get_params()
    x = synthetic_data.logits
    assert np.array_equal(loaded.predict_proba(x), fitted.predict_proba(x))
    m = read_manifest(path)
    assert m["format"] == "calib.artifact" and m["schema_version"] == 2
    assert m["components"]["calibrator"]["kind"] == "temperature"
    assert m["components"]["calibrator"]["state"]["temperature"] == fitted.temperature_
    assert m["n_classes"] == 10 and m["class_names"][3] == "c3"
    assert m["data_fingerprint"] == fp and m["metrics"] == {"nll": 0.5}
    assert set(m["files"]) == {"arrays.npz", "config.yaml"}
    assert m["calib_version"] and m["created_utc"]
    with np.load(path / "arrays.npz", allow_pickle=False) as npz:  # plain arrays only
        assert npz.files == []


def test_identity_round_trip(tmp_path, synthetic_data):
    ident = IdentityCalibrator().fit(synthetic_data.logits, synthetic_data.labels)
    loaded = load_artifact(save_artifact(ident, tmp_path / "id"))
    assert np.array_equal(loaded.predict_proba(synthetic_data.logits), ident.predict_proba(synthetic_data.logits))


def test_refuses_to_overwrite_unless_asked(tmp_path, fitted):
    path = save_artifact(fitted, tmp_path / "art")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_artifact(fitted, path)
    with pytest.warns(UserWarning, match="never occur"):
        ident = IdentityCalibrator().fit(np.zeros((2, 10)), [0, 1])
    save_artifact(ident, path, overwrite=True)
    assert type(load_artifact(path)) is IdentityCalibrator
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]  # no temp folders left behind


def test_failed_write_leaves_nothing(tmp_path, fitted, monkeypatch):
    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(artifacts, "_write_npz", boom)
    with pytest.raises(OSError, match="disk full"):
        save_artifact(fitted, tmp_path / "art")
    assert list(tmp_path.iterdir()) == []


def test_unfitted_or_unregistered_is_refused(tmp_path):
    with pytest.raises(NotFittedError):
        save_artifact(TemperatureScaling(), tmp_path / "a")

    class Rogue(TemperatureScaling):
        pass

    with pytest.raises(TypeError, match="registered in calib.calibrators.REGISTRY"):
        save_artifact(Rogue(), tmp_path / "b")
    assert list(tmp_path.iterdir()) == []


def _edit_manifest(path, fn, *, rehash=True):
    m = json.loads((path / "manifest.json").read_text())
    fn(m)
    if rehash:
        m["manifest_sha256"] = artifacts._manifest_digest(m)
    (path / "manifest.json").write_text(json.dumps(m))


def test_tampered_arrays_are_detected(tmp_path, fitted):
    path = save_artifact(fitted, tmp_path / "art")
    with open(path / "arrays.npz", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ArtifactError, match="Checksum mismatch for 'arrays.npz'"):
        load_artifact(path)


def test_tampered_manifest_is_detected(tmp_path, fitted):
    path = save_artifact(fitted, tmp_path / "art")
    _edit_manifest(path, lambda m: m["components"]["calibrator"]["state"].update(temperature=1.0), rehash=False)
    with pytest.raises(ArtifactError, match="Checksum mismatch for manifest.json"):
        load_artifact(path)


def test_corrupted_manifest(tmp_path, fitted):
    path = save_artifact(fitted, tmp_path / "art")
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="Corrupted manifest.json"):
        load_artifact(path)


def test_unknown_schema_version_format_and_kind(tmp_path, fitted):
    path = save_artifact(fitted, tmp_path / "art")
    _edit_manifest(path, lambda m: m.update(schema_version=4, calib_version="9.1.0"))
    with pytest.raises(ArtifactError, match=r"Unsupported artifact schema_version 4 \(written by calib '9.1.0'\) .*"
                                            r"this calib \S+ reads schema versions \[1, 2, 3\]; upgrade calib"):
        load_artifact(path)
    _edit_manifest(path, lambda m: m.update(schema_version=1, format="netcal.pickle"))
    with pytest.raises(ArtifactError, match="Expected format 'calib.artifact'"):
        load_artifact(path)
    _edit_manifest(path, lambda m: (m.update(format="calib.artifact"),
                                    m["components"]["calibrator"].update(kind="os.system")))
    with pytest.raises(ArtifactError, match="Unsupported calibrator kind 'os.system'; known kinds"):
        load_artifact(path)


def test_missing_folder_or_file_and_path_traversal(tmp_path, fitted):
    with pytest.raises(ArtifactError, match="without one"):
        load_artifact(tmp_path / "nowhere")
    path = save_artifact(fitted, tmp_path / "art")
    os.unlink(path / "arrays.npz")
    with pytest.raises(ArtifactError, match="missing"):
        load_artifact(path)
    path = save_artifact(fitted, tmp_path / "art2")
    (tmp_path / "secret").write_text("x")
    _edit_manifest(path, lambda m: m["files"].update({"../secret": "0" * 64}))
    with pytest.raises(ArtifactError, match="outside the artifact folder"):
        load_artifact(path)


def test_artifact_bytes_are_deterministic_except_timestamp(tmp_path, fitted):
    a = save_artifact(fitted, tmp_path / "a")
    b = save_artifact(fitted, tmp_path / "b")
    assert (a / "arrays.npz").read_bytes() == (b / "arrays.npz").read_bytes()
    ma, mb = (json.loads((p / "manifest.json").read_text()) for p in (a, b))
    for m in (ma, mb):
        m.pop("created_utc"), m.pop("manifest_sha256")
    assert ma == mb


FIXTURE_V1 = Path(__file__).parent / "fixtures" / "artifact_v1"


def test_schema_v1_fixture_loads_forever():
    """A committed schema-v1 artifact (temperature + LAC conformal): every future calib must load it and
    apply it exactly as written; the expected outputs come from scipy's softmax, not from calib."""
    from scipy.special import softmax as scipy_softmax

    from calib.artifacts import load_pipeline

    pipe = load_pipeline(FIXTURE_V1)
    assert read_manifest(FIXTURE_V1)["class_names"] == ["a", "b", "c", "d"]
    t, qhat = 1.5392529929428311, 0.8634919226169586  # as written in the fixture's manifest.json
    x = np.array([[2.0, 1.0, 0.0, -1.0], [0.0, 0.0, 0.0, 0.0], [5.0, -3.0, 4.5, 1.0]])
    expected = scipy_softmax(x / t, axis=1)
    np.testing.assert_allclose(pipe["calibrator"].predict_proba(x), expected, rtol=1e-12)
    sets = pipe["conformal"].predict_set(expected)
    assert np.array_equal(sets, expected >= 1 - qhat)  # LAC: class j is in the set iff 1 - p_j <= qhat


PRE_CONTRACT = Path(__file__).parent / "fixtures" / "artifact_v1_pre_contract"


@pytest.mark.parametrize("name", ["mondrian_riskpolicy", "crc_threshold", "split_inf_conformal_routing"])
def test_artifacts_of_the_old_state_layout_load_and_apply_unchanged(name):
    # sets and actions as the code that wrote these artifacts produced them (an independent oracle)
    expected = np.load(PRE_CONTRACT / "expected.npz", allow_pickle=False)
    parts = load_pipeline(PRE_CONTRACT / name)
    probs = parts["calibrator"].predict_proba(expected["test_logits"])
    np.testing.assert_array_equal(probs, expected[f"{name}.probs"])
    sets = parts["conformal"].predict_set(probs, groups=expected["test_groups"])
    np.testing.assert_array_equal(sets, expected[f"{name}.sets"])
    first = sets[:, :, 0] if sets.ndim == 3 else sets
    actions = parts["policy"].route(probs, sets=first).actions
    np.testing.assert_array_equal(actions, expected[f"{name}.actions"])


def test_old_kind_and_parameter_names_map_to_the_new_ones():
    from calib.conformal import ConformalRiskControl
    from calib.policy import ThresholdPolicy

    parts = load_pipeline(PRE_CONTRACT / "crc_threshold")
    assert type(parts["conformal"]) is ConformalRiskControl and parts["conformal"].kind == "conformal_risk_control"
    assert type(parts["policy"]) is ThresholdPolicy and parts["policy"].confidence == "neg_entropy"
    inf = load_pipeline(PRE_CONTRACT / "split_inf_conformal_routing")["conformal"]
    assert inf.qhat_ == np.inf  # the string "inf" of the old JSON state


def test_new_artifacts_store_thresholds_as_arrays_with_their_infinities(tmp_path):
    from calib.conformal import ConformalRiskControl, SplitConformal

    p = np.full((20, 3), 1 / 3)
    y = np.arange(20) % 3
    ts = IdentityCalibrator().fit(np.log(p), y)
    multi = np.zeros((20, 3), bool)
    multi[:2, 0] = True  # 18 rows without a positive label: empty sets already control the FNR at 0.5
    for cp, target, want in ((SplitConformal(alpha=0.01, allow_infinite=True), y, np.inf),
                             (ConformalRiskControl(loss="fnr", alpha=0.5), multi, -np.inf)):
        cp.fit(p, target)
        assert cp.qhat_ == want
        path = save_artifact(ts, tmp_path / cp.kind, conformal=cp)
        manifest = read_manifest(path)
        assert "qhat" not in manifest["components"]["conformal"]["state"]
        assert manifest["components"]["conformal"]["arrays"] == {"thresholds": {"dtype": "<f8", "shape": [1]}}
        assert load_pipeline(path)["conformal"].qhat_ == want
