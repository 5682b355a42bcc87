"""The ``calib`` command (calib.cli): inspect, verify, apply, export; exit codes, one-line errors, and nothing
written on any error.

Most runs call ``calib.cli.main([...])`` in this process (stdout/stderr from capsys); a few run the installed
``calib`` console script and ``python -m calib`` in a subprocess."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import calib
from calib import cli
from calib.calibrators import TemperatureScaling
from calib.conformal import SplitConformal
from calib.datasets import load
from calib.deploy import FittedPipeline
from calib.policy import ConformalRoutingPolicy, ThresholdPolicy
from calib.policy.routing import ACTIONS, REASONS

K = 10
KEY = "team-signing-key-0123456789"
METRICS = {"n_cal": 10216, "n_test": 10000,
           "uncalibrated": {"accuracy": 0.7597, "nll": 1.8363, "ece": 0.1914},
           "calibrated": {"accuracy": 0.7597, "nll": 0.7593, "ece": 0.0590},
           "conformal": {"alpha": 0.1, "coverage": 0.8635, "mean_set_size": 1.4},
           "policy": {"automation_rate": 0.5322, "escalation_rate": 0.4678, "fallback_rate": 0.0}}


@pytest.fixture(autouse=True)
def _no_key_in_env(monkeypatch):
    for var in ("CALIB_SIGNING_KEY", "CALIB_SIGNING_KEY_FILE", "CALIB_DEBUG"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def data():
    return load("c10lt_resnet110").split_cal_test()


@pytest.fixture(scope="module")
def lac(data):
    cal, _ = data
    return FittedPipeline.fit(cal.logits, cal.labels, calibrator=TemperatureScaling(),
                              conformal=SplitConformal(score="lac", alpha=0.1),
                              policy=ThresholdPolicy(threshold=0.9, fallback="none"),
                              class_names=[f"c{j}" for j in range(K)])


@pytest.fixture(scope="module")
def aps(data):
    """Randomised APS sets + per-item fallback labels: chunked output must still equal the whole batch."""
    cal, _ = data
    return FittedPipeline.fit(cal.logits, cal.labels, calibrator=TemperatureScaling(),
                              conformal=SplitConformal(score="aps", alpha=0.1),
                              policy=ConformalRoutingPolicy(fallback="auto"), fallback=(cal.labels + 1) % K)


@pytest.fixture(scope="module")
def store(tmp_path_factory, lac, aps):
    root = tmp_path_factory.mktemp("artifacts")
    lac.save(root / "lac", metrics=METRICS, data_fingerprint={"sha256": "ab" * 32, "n_samples": 10216, "n_classes": K})
    aps.save(root / "aps")
    lac.save(root / "signed", key=KEY)
    return root


@pytest.fixture
def art(store, tmp_path):
    """A private copy of an artifact (tests edit it)."""
    def copy(name="lac"):
        dst = tmp_path / f"art-{name}"
        shutil.copytree(store / name, dst)
        return dst
    return copy


@pytest.fixture(scope="module")
def new_logits(data):
    return data[1].logits[:300]


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err, cmd):
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one stderr line, got {lines}"
    assert lines[0].startswith(f"calib {cmd}: error: "), lines[0]
    return lines[0]


def folder_listing(folder):
    return sorted(p.name for p in Path(folder).iterdir())


# --- independent re-implementations of what anyone editing an artifact would do ----------------------------
def sha256_file(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def rehash(path):
    """Recompute files and manifest_sha256 (sha256 of the sorted-key JSON of the rest)."""
    m = json.loads((path / "manifest.json").read_text())
    m["files"] = {name: sha256_file(path / name) for name in m["files"]}
    body = {k: v for k, v in m.items() if k != "manifest_sha256"}
    m["manifest_sha256"] = hashlib.sha256(json.dumps(body, sort_keys=True, allow_nan=True).encode()).hexdigest()
    (path / "manifest.json").write_text(json.dumps(m, indent=2))


def edit_manifest(path, fn, *, recompute):
    m = json.loads((path / "manifest.json").read_text())
    fn(m)
    (path / "manifest.json").write_text(json.dumps(m, indent=2))
    if recompute:
        rehash(path)


def replace_member(path, member, array):
    """Rewrite arrays.npz with one member replaced (all others byte for byte)."""
    src = path / "arrays.npz"
    with zipfile.ZipFile(src) as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist()}
    import io

    buf = io.BytesIO()
    np.lib.format.write_array(buf, array, allow_pickle=False)
    members[f"{member}.npy"] = buf.getvalue()
    with zipfile.ZipFile(src, "w") as zf:
        for name, raw in members.items():
            zf.writestr(name, raw)


def read_csv(path):
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    return rows[0], {name: [r[i] for r in rows[1:]] for i, name in enumerate(rows[0])}


def assert_table_equals(cols, d, names):
    """A flat output table (strings from CSV, or typed from parquet) against Decisions, value by value."""
    n = len(d)
    assert [int(v) for v in cols["row"]] == list(range(n))
    assert [int(v) for v in cols["label"]] == d.label.tolist()
    assert list(cols["class_name"]) == [names[j] for j in d.label]
    assert np.array_equal(np.array([float(v) for v in cols["confidence"]], dtype=np.float32), d.confidence)
    assert np.array_equal(np.array([float(v) for v in cols["band_low"]]), d.band_low)
    assert np.array_equal(np.array([float(v) for v in cols["band_high"]]), d.band_high)
    assert [int(v) for v in cols["set_size"]] == d.sets.sum(axis=1).tolist()
    assert list(cols["set"]) == ["|".join(names[j] for j in np.flatnonzero(row)) for row in d.sets]
    assert list(cols["action"]) == [ACTIONS[a] for a in d.actions]
    assert [int(v) for v in cols["output"]] == d.output.tolist()
    assert list(cols["reason"]) == [REASONS[r] for r in d.reasons]


# --- basics ----------------------------------------------------------------------------------------------
def test_version_help_and_no_command(capsys):
    code, out, err = run(capsys, "--version")
    assert code == 0 and out.strip() == f"calib {calib.__version__}"
    code, out, _ = run(capsys, "--help")
    assert code == 0 and all(c in out for c in ("inspect", "verify", "apply", "export"))
    code, out, err = run(capsys)
    assert code == 2 and out == ""
    assert err.splitlines() == ["calib: error: expected a command: inspect, verify, apply, export, monitor or report (see calib --help)"]


@pytest.mark.parametrize("argv, cmd, match", [
    (["apply", "ART", "x.npy"], "apply", "the following arguments are required: --out"),
    (["apply", "ART", "x.npy", "--out", "o.csv", "--chunk-rows", "0"], "apply", "expected a positive integer, got '0'"),
    (["export", "ART", "--format", "tflite", "--out", "m.onnx"], "export", "invalid choice: 'tflite'"),
    (["inspect"], "inspect", "the following arguments are required: ARTIFACT"),
])
def test_usage_errors_are_one_line_exit_2(capsys, argv, cmd, match):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    line = one_error_line(err, cmd)
    assert match in line and line.endswith(f"(see calib {cmd} --help)")


# --- inspect ---------------------------------------------------------------------------------------------
def test_inspect_text(capsys, store, lac):
    code, out, err = run(capsys, "inspect", store / "lac")
    assert code == 0 and err == ""
    text = out
    for needle in ("signature: unsigned", "checksums of arrays.npz",
                   f"schema       3 (written by calib {calib.__version__}", "portable     yes", "input        logits float32 of shape (n, 10)",
                   "classes      10: c0, c1, c2", "calibrator   temperature", "conformal    split",
                   "policy       threshold", "threshold  0.9", "nll        1.8363 -> 0.7593",
                   "coverage 0.8635 (target 90%)", "automation 53.2%, escalation 46.8%, fallback 0.0%",
                   "calibration data sha256 " + "ab" * 32 + " (10216 items, 10 classes)", "64 rows stored"):
        assert needle in text, needle
    assert f"temperature={lac.calibrator.temperature_:.6g}" in text
    assert f"qhat       {lac.conformal.qhat_:.6g}" in text
    # one line per reliability bin, with its count
    n_lines = [line for line in text.splitlines() if line.startswith("  [")]
    assert [int(line.split()[2]) for line in n_lines] == lac.reliability["n"].tolist()


def test_inspect_json(capsys, store, lac):
    code, out, err = run(capsys, "inspect", store / "lac", "--json")
    assert code == 0 and err == ""
    info = json.loads(out)
    assert {"artifact", "verified", "schema_version", "calib_version", "created_utc", "content_id", "portable",
            "input", "class_names", "components", "reliability", "metrics", "provenance"} <= set(info)
    m = json.loads((store / "lac" / "manifest.json").read_text())
    assert info["schema_version"] == 3 and info["created_utc"] == m["created_utc"]
    assert info["verified"] == {"checksums": ["arrays.npz"], "state": ["calibrator", "conformal", "policy", "reference"],
                                "signature": "unsigned"}
    assert info["input"] == {"kind": "logits", "n_classes": K, "dtype": "float32"}
    assert info["class_names"] == [f"c{j}" for j in range(K)]
    c = info["components"]
    assert c["calibrator"]["kind"] == "temperature"
    assert c["calibrator"]["state"]["temperature"] == lac.calibrator.temperature_
    assert c["conformal"]["params"]["score"] == "lac" and c["conformal"]["qhat"] == lac.conformal.qhat_
    assert c["policy"]["kind"] == "threshold" and c["policy"]["threshold"] == 0.9
    assert [b["n"] for b in info["reliability"]["bins"]] == lac.reliability["n"].tolist()
    assert info["metrics"]["calibration"]["nll"] == {"before": 1.8363, "after": 0.7593}
    assert info["metrics"]["conformal"]["coverage"] == 0.8635
    assert info["metrics"]["policy"]["automation_rate"] == 0.5322
    assert info["provenance"]["data_fingerprint"]["sha256"] == "ab" * 32
    assert len(info["content_id"]) == 64 and int(info["content_id"], 16) >= 0


def test_inspect_signature_states(capsys, store, tmp_path):
    code, out, _ = run(capsys, "inspect", store / "signed", "--json")
    assert code == 0 and json.loads(out)["verified"]["signature"] == "signed (not verified: no key configured)"
    (tmp_path / "key").write_text(KEY + "\n")
    code, out, _ = run(capsys, "inspect", store / "signed", "--json", "--key-file", tmp_path / "key")
    assert code == 0 and json.loads(out)["verified"]["signature"] == "signed, verified"
    (tmp_path / "short").write_text("abc")
    code, out, err = run(capsys, "inspect", store / "signed", "--key-file", tmp_path / "short")
    assert code == 2 and out == ""
    assert "at least 16 bytes, got 3 bytes" in one_error_line(err, "inspect")
    code, _, err = run(capsys, "inspect", store / "signed", "--key-file", tmp_path / "absent")
    assert code == 2 and "Expected --key-file as a readable file" in one_error_line(err, "inspect")


# --- verify ----------------------------------------------------------------------------------------------
def test_verify_ok(capsys, store):
    code, out, err = run(capsys, "verify", store / "lac")
    assert code == 0 and err == ""
    assert out.startswith(f"OK {store / 'lac'}: ") and len(out.splitlines()) == 1
    assert "64 probe rows recomputed bit for bit (probs, sets, actions, reasons)" in out
    assert "reliability table of 10 bins consistent (Clopper-Pearson bounds recomputed)" in out
    code, out, err = run(capsys, "verify", store / "aps", "--json")
    rep = json.loads(out)
    assert code == 0 and rep["ok"] is True and rep["checks"]["probe"]["mismatches"] == {}
    assert rep["checks"]["state"]["components"] == {"calibrator": "temperature", "conformal": "split",
                                                    "policy": "conformal_routing", "reference": "reference_stats"}


def test_verify_detects_changed_probe_outputs(capsys, art, lac):
    """Consistent checksums, but the stored probe probabilities were changed: the recomputation catches it."""
    a = art()
    probs = lac.probe["probs"].copy()
    probs[3] = np.nextafter(probs[3], np.float32(1))  # one ulp on one row
    replace_member(a, "pipeline.probe_probs", probs)
    rehash(a)
    code, out, err = run(capsys, "verify", a)
    assert code == 1 and out == ""
    line = one_error_line(err, "verify")
    assert "probe outputs" in line and "probs on 1 of 64 rows" in line


def test_verify_detects_inconsistent_reliability_bounds(capsys, art):
    a = art()

    def widen(m):
        m["pipeline"]["reliability"]["lower"][2] -= 0.01  # still ordered and in range: only a recomputation sees it
    edit_manifest(a, widen, recompute=True)
    code, out, err = run(capsys, "verify", a, "--json")
    assert code == 1
    assert json.loads(out)["checks"]["reliability"]["ok"] is False
    assert "reliability bin 2" in one_error_line(err, "verify")


# --- bad artifacts: exit 3, one line, nothing written ----------------------------------------------------
def _tamper_param(a):
    edit_manifest(a, lambda m: m["components"]["calibrator"]["state"].update(temperature=1.0), recompute=False)


def _flip_array_byte(a):
    raw = bytearray((a / "arrays.npz").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (a / "arrays.npz").write_bytes(bytes(raw))


def _truncate(a):
    raw = (a / "arrays.npz").read_bytes()
    (a / "arrays.npz").write_bytes(raw[: len(raw) // 2])


def _newer_schema(a):
    edit_manifest(a, lambda m: m.update(schema_version=4, calib_version="9.0.0"), recompute=True)


BAD_ARTIFACTS = [
    pytest.param(_tamper_param, r"Checksum mismatch for manifest.json", id="tampered-param"),
    pytest.param(_flip_array_byte, r"Checksum mismatch for 'arrays.npz'", id="edited-arrays"),
    pytest.param(_truncate, r"Checksum mismatch for 'arrays.npz'", id="truncated-arrays"),
    pytest.param(_newer_schema, r"schema_version 4 \(written by calib '9.0.0'\).*upgrade calib", id="newer-schema"),
    pytest.param(lambda a: shutil.rmtree(a), r"it does not exist", id="missing-folder"),
]


@pytest.mark.parametrize("damage, match", BAD_ARTIFACTS)
def test_bad_artifact_refused_by_every_command(capsys, art, tmp_path, new_logits, damage, match):
    import re

    a = art()
    damage(a)
    np.save(tmp_path / "x.npy", new_logits)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    before = folder_listing(out_dir)
    for cmd, extra in (("inspect", []), ("verify", []), ("apply", [tmp_path / "x.npy", "--out", out_dir / "d.csv"])):
        code, out, err = run(capsys, cmd, a, *extra)
        assert code == 3 and out == "", (cmd, code, out)
        assert re.search(match, one_error_line(err, cmd)), err
    assert folder_listing(out_dir) == before  # nothing written, no temp files


def test_not_portable_without_its_package(capsys, tmp_path, monkeypatch):
    """A netcal-backed artifact where netcal cannot be imported: exit 3 naming 'not portable', nothing written."""
    pytest.importorskip("netcal")
    from calib.calibrators import NetcalCalibrator
    from calib.datasets import synthetic

    d = synthetic(n=1000, n_classes=4, seed=0)
    pipe = FittedPipeline.fit(d.logits, d.labels, calibrator=NetcalCalibrator(method="HistogramBinning"))
    with pytest.warns(UserWarning, match="not portable"):
        pipe.save(tmp_path / "nc")
    np.savez(tmp_path / "in.npz", logits=d.logits[:20])
    for name in [m for m in sys.modules if m == "netcal" or m.startswith("netcal.")]:
        monkeypatch.setitem(sys.modules, name, None)  # as if netcal were not installed
    code, out, err = run(capsys, "apply", tmp_path / "nc", tmp_path / "in.npz", "--out", tmp_path / "d.csv")
    assert code == 3 and out == ""
    assert "is not portable" in one_error_line(err, "apply")
    assert not (tmp_path / "d.csv").exists()


def test_signature_required_when_key_configured(capsys, store, art, tmp_path, monkeypatch, new_logits):
    np.save(tmp_path / "x.npy", new_logits)
    monkeypatch.setenv("CALIB_SIGNING_KEY", "another-key-0123456789")
    code, _, err = run(capsys, "apply", store / "signed", tmp_path / "x.npy", "--out", tmp_path / "o.csv")
    assert code == 3 and "Signature mismatch" in one_error_line(err, "apply")
    code, _, err = run(capsys, "verify", store / "lac")  # unsigned, key configured
    assert code == 3 and "is not signed, but a signing key is configured" in one_error_line(err, "verify")
    monkeypatch.setenv("CALIB_SIGNING_KEY", KEY)
    signed = art("signed")
    edit_manifest(signed, lambda m: m["components"]["policy"]["params"].update(threshold=0.5), recompute=True)
    code, _, err = run(capsys, "inspect", signed)  # checksums recomputed by the editor: the signature catches it
    assert code == 3 and "Signature mismatch" in one_error_line(err, "inspect")
    code, out, err = run(capsys, "verify", store / "signed")
    assert code == 0 and "signature: signed, verified" in out
    assert not (tmp_path / "o.csv").exists()


# --- apply -----------------------------------------------------------------------------------------------
def test_apply_csv_npz_parquet_equal_library(capsys, store, lac, tmp_path, new_logits):
    want = lac.apply(new_logits)
    names = [f"c{j}" for j in range(K)]
    np.savez(tmp_path / "new.npz", logits=new_logits)  # no labels

    code, out, err = run(capsys, "apply", store / "lac", tmp_path / "new.npz", "--out", tmp_path / "d.csv")
    assert code == 0 and err == ""
    r = want.rates()
    assert out.strip() == (f"calib apply: 300 rows -> {tmp_path / 'd.csv'} (csv): automation "
                           f"{r['automation_rate']:.1%}, escalation {r['escalation_rate']:.1%}, fallback "
                           f"{r['fallback_rate']:.1%}")
    header, cols = read_csv(tmp_path / "d.csv")
    assert header == ["row", "label", "class_name", "confidence", "band_low", "band_high", "set_size", "set",
                      "action", "output", "reason"]
    assert_table_equals(cols, want, names)

    code, _, err = run(capsys, "apply", store / "lac", tmp_path / "new.npz", "--out", tmp_path / "d.npz")
    assert code == 0 and err == ""
    with np.load(tmp_path / "d.npz", allow_pickle=False) as z:
        for name in ("probs", "label", "confidence", "band_low", "band_high", "sets", "actions", "output", "reasons"):
            got, exp = z[name], getattr(want, name)
            assert got.dtype == exp.dtype and np.array_equal(got, exp), name
        assert z["reason_names"].tolist() == list(REASONS) and z["action_names"].tolist() == list(ACTIONS)
        assert z["class_names"].tolist() == names

    pq = pytest.importorskip("pyarrow.parquet")
    code, _, err = run(capsys, "apply", store / "lac", tmp_path / "new.npz", "--out", tmp_path / "d.parquet")
    assert code == 0 and err == ""
    t = pq.read_table(tmp_path / "d.parquet").to_pydict()
    assert_table_equals(t, want, names)


def test_apply_npy_is_memmapped_and_streamed_in_chunks(capsys, store, aps, tmp_path, monkeypatch, data):
    """A .npy is opened memory-mapped and applied chunk by chunk (--chunk-rows 37); the result equals one
    in-memory apply on the whole array, randomised APS sets and per-item fallbacks included."""
    logits = data[1].logits[:500]
    fallback = (np.arange(500) * 7) % K
    np.save(tmp_path / "big.npy", logits)
    seen = []
    real = FittedPipeline.iter_apply

    def spy(self, x, **kw):
        seen.append((type(x), kw.get("chunk_rows")))
        for start, d in real(self, x, **kw):
            seen.append(start)
            yield start, d
    monkeypatch.setattr(FittedPipeline, "iter_apply", spy)
    code, _, err = run(capsys, "apply", store / "aps", tmp_path / "big.npy", "--out", tmp_path / "d.npz",
                       "--chunk-rows", 37)
    assert code == 0 and err == ""
    assert seen[0] == (np.memmap, 37) and seen[1:] == list(range(0, 500, 37))
    want = aps.apply(logits)  # fallback mode 'auto' without per-item labels: no fallback
    with np.load(tmp_path / "d.npz") as z:
        for name in ("probs", "sets", "actions", "reasons", "output", "band_low"):
            assert np.array_equal(z[name], getattr(want, name)), name

    np.savez(tmp_path / "fb.npz", logits=logits, fallback=fallback)  # the file's own per-item fallback labels
    code, _, _ = run(capsys, "apply", store / "aps", tmp_path / "fb.npz", "--out", tmp_path / "fb.npz.npz",
                     "--chunk-rows", 64)
    want = aps.apply(logits, fallback=fallback)
    assert code == 0 and (want.actions == 2).any()
    with np.load(tmp_path / "fb.npz.npz") as z:
        assert np.array_equal(z["actions"], want.actions) and np.array_equal(z["output"], want.output)


def test_apply_csv_several_alphas_matches_columns(capsys, tmp_path):
    """A committed schema-1 artifact with a Mondrian predictor at two alphas: one set_size/set column pair per
    alpha, equal to Decisions.columns() (which joins the names row by row)."""
    fixture = Path(__file__).parent / "fixtures" / "artifact_v1_pre_contract" / "mondrian_riskpolicy"
    logits = np.random.default_rng(1).standard_normal((80, 5)).astype(np.float32) * 3
    np.savez(tmp_path / "in.npz", logits=logits)
    code, _, err = run(capsys, "apply", fixture, tmp_path / "in.npz", "--out", tmp_path / "d.csv", "--chunk-rows", 30)
    assert code == 0 and err == ""
    want = FittedPipeline.load(fixture).apply(logits).columns()
    header, cols = read_csv(tmp_path / "d.csv")
    assert header == ["row", *want]
    assert "set_0.1" in header and "set_0.2" in header
    for name in ("set_0.1", "set_0.2", "action", "reason", "class_name"):
        assert cols[name] == [str(v) for v in want[name]], name
    for name in ("set_size_0.1", "set_size_0.2", "output", "label"):
        assert [int(v) for v in cols[name]] == want[name].tolist(), name


def test_apply_group_conditional_reads_groups_from_the_file(capsys, tmp_path, data):
    """A group-conditional Mondrian predictor: group ids come from the file's 'groups' or --groups-key."""
    from calib.conformal import MondrianConformal

    cal, test = data
    g_cal = np.where(cal.labels % 2 == 0, "north", "south")
    pipe = FittedPipeline.fit(cal.logits, cal.labels, calibrator=TemperatureScaling(),
                              conformal=MondrianConformal(condition="group", alpha=0.1), groups=g_cal)
    pipe.save(tmp_path / "art")
    logits = test.logits[:200]
    g = np.where(np.arange(200) % 3 == 0, "north", "south")
    want = pipe.apply(logits, groups=g)
    assert not np.array_equal(want.sets, pipe.apply(logits, groups=np.full(200, "north")).sets)  # groups matter
    np.savez(tmp_path / "a.npz", logits=logits, groups=g)
    np.savez(tmp_path / "b.npz", logits=logits, site=g)
    for src, extra in (("a.npz", []), ("b.npz", ["--groups-key", "site"])):
        code, _, err = run(capsys, "apply", tmp_path / "art", tmp_path / src, "--out", tmp_path / f"{src}.npz", *extra)
        assert code == 0 and err == ""
        with np.load(tmp_path / f"{src}.npz") as z:
            assert np.array_equal(z["sets"], want.sets)
    np.savez(tmp_path / "c.npz", logits=logits)  # no group ids: refused, nothing written
    code, _, err = run(capsys, "apply", tmp_path / "art", tmp_path / "c.npz", "--out", tmp_path / "c.csv")
    assert code == 2 and "groups" in one_error_line(err, "apply")
    assert not (tmp_path / "c.csv").exists()


def test_existing_out_refused_unless_overwrite(capsys, store, tmp_path, new_logits):
    np.save(tmp_path / "x.npy", new_logits)
    target = tmp_path / "d.csv"
    target.write_text("precious\n")
    code, out, err = run(capsys, "apply", store / "lac", tmp_path / "x.npy", "--out", target)
    assert code == 2 and out == ""
    assert "which exists (pass --overwrite to replace it)" in one_error_line(err, "apply")
    assert target.read_text() == "precious\n" and folder_listing(tmp_path) == ["d.csv", "x.npy"]
    code, _, _ = run(capsys, "apply", store / "lac", tmp_path / "x.npy", "--out", target, "--overwrite")
    assert code == 0 and target.read_text().startswith("row,label,")
    assert folder_listing(tmp_path) == ["d.csv", "x.npy"]


def _npz(t, **arrays):
    np.savez(t / "in.npz", **arrays)
    return t / "in.npz"


def _garbage(t):
    (t / "in.npz").write_bytes(b"this is not a zip at all" * 10)
    return t / "in.npz"


def _truncated_npy(t, logits):
    np.save(t / "in.npy", logits)
    raw = (t / "in.npy").read_bytes()
    (t / "in.npy").write_bytes(raw[: len(raw) // 2])
    return t / "in.npy"


BAD_LOGITS = [
    pytest.param(lambda t, x: _npz(t, logits=x[:, :5]), r"Expected logits with 10 columns in '.*in\.npz' \(the "
                 r"pipeline in .* was fitted on 10 classes\), got 5\.", id="wrong-k"),
    pytest.param(lambda t, x: _npz(t, logits=np.where(np.arange(x.size).reshape(x.shape) == 17, np.nan, x)),
                 r"In '.*in\.npz': Expected finite logits, got 1 NaN/inf entries \(first rows: \[1\]\)", id="nan"),
    pytest.param(lambda t, x: _garbage(t), r"Expected an \.npz archive .* got a file that is not a zip", id="garbage"),
    pytest.param(lambda t, x: _truncated_npy(t, x), r"Expected a complete \.npy array at '.*in\.npy', got a "
                 r"truncated or corrupt file", id="truncated-npy"),
    pytest.param(lambda t, x: t / "absent.npz", r"Expected a logits file at '.*absent\.npz', got no such file",
                 id="missing"),
    pytest.param(lambda t, x: _npz(t, logits=x, label=np.zeros(len(x), int)), r"got 'label' \(did you mean "
                 r"'labels'\?\)", id="misspelt-key"),
    pytest.param(lambda t, x: (t / "in.txt").write_text("1,2") and t / "in.txt",
                 r"Unsupported logits file extension '\.txt'", id="extension"),
]


@pytest.mark.parametrize("make, match", BAD_LOGITS)
def test_bad_logits_exit_2_one_line_nothing_written(capsys, store, tmp_path, new_logits, make, match):
    import re

    src = tmp_path / "src"
    src.mkdir()
    path = make(src, new_logits)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, out, err = run(capsys, "apply", store / "lac", path, "--out", out_dir / "d.npz")
    assert code == 2 and out == ""
    assert re.search(match, one_error_line(err, "apply")), err
    assert folder_listing(out_dir) == []


def test_failure_mid_stream_leaves_nothing(capsys, store, tmp_path, aps, data):
    """The 9th chunk fails (a fallback label out of range): the rows already written, the staging folder and
    the parent folders this run created are all removed."""
    logits = data[1].logits[:100]
    fb = np.zeros(100, dtype=np.int64)
    fb[85] = 99  # not a class
    np.savez(tmp_path / "in.npz", logits=logits, fb=fb)  # an extra under another name: not checked on load
    out = tmp_path / "new" / "deeper" / "d.csv"
    code, _, err = run(capsys, "apply", store / "aps", tmp_path / "in.npz", "--out", out, "--fallback-key", "fb",
                       "--chunk-rows", 10)
    assert code == 2
    assert "Expected fallback in [0, 9] for 10 classes, got maximum 99" in one_error_line(err, "apply")
    assert folder_listing(tmp_path) == ["in.npz"]


def test_unwritable_out_is_bad_input(capsys, store, tmp_path, new_logits):
    np.savez(tmp_path / "in.npz", logits=new_logits)
    (tmp_path / "plain").write_text("a file, not a folder")
    code, out, err = run(capsys, "apply", store / "lac", tmp_path / "in.npz", "--out", tmp_path / "plain" / "d.csv")
    assert code == 2 and out == ""
    assert "Expected --out inside a folder, got '" in one_error_line(err, "apply") and "plain' is a file" in err
    assert folder_listing(tmp_path) == ["in.npz", "plain"] and (tmp_path / "plain").read_text() == "a file, not a folder"


def test_apply_option_errors(capsys, store, tmp_path, new_logits, monkeypatch):
    np.savez(tmp_path / "in.npz", logits=new_logits)
    code, _, err = run(capsys, "apply", store / "lac", tmp_path / "in.npz", "--out", tmp_path / "d.txt")
    assert code == 2 and "Expected --out ending in .csv, .npz, .parquet, got" in one_error_line(err, "apply")
    code, _, err = run(capsys, "apply", store / "lac", tmp_path / "in.npz", "--out", tmp_path / "d.csv",
                       "--groups-key", "site")
    assert code == 2 and "Expected a per-row array 'site'" in one_error_line(err, "apply")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if pyarrow were not installed
    code, _, err = run(capsys, "apply", store / "lac", tmp_path / "in.npz", "--out", tmp_path / "d.parquet")
    assert code == 2 and "Expected pyarrow for a .parquet --out" in one_error_line(err, "apply")
    assert "pip install pyarrow" in err
    np.savez(tmp_path / "named.npz", logits=new_logits, class_names=np.array([f"k{j}" for j in range(K)]))
    code, _, err = run(capsys, "apply", store / "lac", tmp_path / "named.npz", "--out", tmp_path / "d.csv")
    assert code == 2 and "got 'k0' where the pipeline has 'c0' (column 0)" in one_error_line(err, "apply")
    assert folder_listing(tmp_path) == ["in.npz", "named.npz"]


def test_progress_bar_on_request_and_warnings_as_lines(capsys, store, tmp_path, new_logits):
    pytest.importorskip("tqdm")
    np.savez(tmp_path / "in.npz", logits=new_logits, note=np.zeros(3))  # 'note' is not per-row: a log warning
    code, _, err = run(capsys, "apply", store / "lac", tmp_path / "in.npz", "--out", tmp_path / "d.csv",
                         "--progress", "--chunk-rows", 100)
    assert code == 0 and "calib apply" in err and "rows" in err  # tqdm's bar on stderr
    assert "calib apply: warning: Ignoring 'note'" in err
    code, _, err = run(capsys, "apply", store / "lac", tmp_path / "in.npz", "--out", tmp_path / "e.csv",
                         "--no-progress")
    assert code == 0 and len(err.splitlines()) == 1 and err.startswith("calib apply: warning: Ignoring 'note'")


def test_debug_shows_the_traceback(capsys, store, tmp_path, monkeypatch):
    monkeypatch.setenv("CALIB_DEBUG", "1")
    code, _, err = run(capsys, "inspect", tmp_path / "nowhere")
    assert code == 3 and "Traceback (most recent call last)" in err
    assert err.splitlines()[-1].startswith("calib inspect: error: Expected an artifact folder")


# --- export ----------------------------------------------------------------------------------------------
def test_export_onnx(capsys, store, lac, tmp_path, new_logits):
    pytest.importorskip("calib.export_onnx")
    ort = pytest.importorskip("onnxruntime")
    code, out, err = run(capsys, "export", store / "lac", "--format", "onnx", "--out", tmp_path / "m.onnx")
    assert code == 0, err
    assert out.startswith(f"calib export: wrote {tmp_path / 'm.onnx'}: outputs probs")
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(["probs"], {"logits": np.ascontiguousarray(new_logits, dtype=np.float32)})[0]
    assert np.max(np.abs(got - lac.predict_proba(new_logits))) <= 1e-6
    meta = sess.get_modelmeta().custom_metadata_map
    m = json.loads((store / "lac" / "manifest.json").read_text())
    assert meta["calib_artifact_calib_version"] == m["calib_version"]
    code, _, err = run(capsys, "export", store / "lac", "--format", "onnx", "--out", tmp_path / "m.onnx")
    assert code == 2 and "which exists" in one_error_line(err, "export")


def test_export_refusals(capsys, store, tmp_path):
    code, _, err = run(capsys, "export", store / "lac", "--format", "torchscript", "--out", tmp_path / "m.pt")
    assert code == 2 and "TorchScript export is not supported" in one_error_line(err, "export")
    pytest.importorskip("calib.export_onnx")
    pytest.importorskip("onnxruntime")
    code, out, err = run(capsys, "export", store / "aps", "--format", "onnx", "--out", tmp_path / "m.onnx", "--strict")
    assert code == 1 and out == "" and "export refused" in one_error_line(err, "export")
    assert folder_listing(tmp_path) == []
    code, out, err = run(capsys, "export", store / "aps", "--format", "onnx", "--out", tmp_path / "m.onnx")
    assert code == 0 and "omitted sets:" in out


# --- the installed script, in a subprocess ---------------------------------------------------------------
def _script():
    exe = shutil.which("calib")
    if exe is None:
        pytest.skip("the calib console script is not installed (pip install -e .)")
    return exe


def test_console_script_exit_codes_and_one_line(store, art, tmp_path, new_logits):
    exe = _script()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALIB_")}
    np.savez(tmp_path / "in.npz", logits=new_logits[:, :4])
    r = subprocess.run([exe, "apply", str(store / "lac"), str(tmp_path / "in.npz"), "--out", str(tmp_path / "d.csv")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith("calib apply: error: Expected logits with 10 columns")
    assert not (tmp_path / "d.csv").exists()
    a = art()
    _truncate(a)
    r = subprocess.run([exe, "verify", str(a)], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 3 and len(r.stderr.splitlines()) == 1 and "Checksum mismatch" in r.stderr
    r = subprocess.run([sys.executable, "-m", "calib", "verify", str(store / "lac")], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("OK ") and r.stderr == ""


def test_inspect_into_a_closed_pipe_is_not_an_error(store):
    """`calib inspect ARTIFACT | head -1`: the reader leaves early (here `true`, which reads nothing and exits before
    calib writes); the command exits 0 without a word on stderr."""
    exe = _script()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALIB_")}
    r = subprocess.run(f"'{exe}' inspect '{store / 'lac'}' | true; exit ${{PIPESTATUS[0]}}", shell=True,
                       executable="/bin/bash", capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and r.stderr == "", r.stderr


def test_apply_inspect_verify_with_heavy_packages_blocked(store, tmp_path, new_logits):
    """The serving path of the command needs numpy alone: with torch, scipy, hydra, omegaconf, matplotlib, netcal,
    tqdm and pyarrow unimportable, apply (npy and csv in, csv and npz out), inspect and verify still work (verify
    then says it could not recompute the Clopper-Pearson bounds)."""
    np.save(tmp_path / "x.npy", new_logits)
    with open(tmp_path / "x.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([f"c{j}" for j in range(K)])
        w.writerows([[repr(float(v)) for v in row] for row in new_logits[:20]])
    code = f"""
import sys
BLOCKED = {{"torch", "scipy", "hydra", "omegaconf", "matplotlib", "netcal", "tqdm", "pyarrow"}}
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
from calib.cli import main
art, t = {str(store / "lac")!r}, {str(tmp_path)!r}
codes = [main(["apply", art, t + "/x.npy", "--out", t + "/a.csv", "--progress"]),
         main(["apply", art, t + "/x.csv", "--out", t + "/b.npz"]),
         main(["inspect", art]), main(["verify", art])]
leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
print("RESULT", codes, leaked)
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALIB_")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "RESULT [0, 0, 0, 0] []" in r.stdout, r.stdout + r.stderr
    assert "bounds not recomputed: scipy is not installed" in r.stdout
    assert r.stderr == ""
    _, cols = read_csv(tmp_path / "a.csv")
    assert len(cols["row"]) == 300
    with np.load(tmp_path / "b.npz") as z:
        assert z["probs"].shape == (20, K)
