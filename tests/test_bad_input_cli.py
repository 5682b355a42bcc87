"""The experiment path (experiments/calibrate.py, composed exactly as the command line composes it) given
bad values and bad files: each refused with the error type and a message naming what was wrong, nothing
written; and the inputs that must work (float16, Fortran order, memory-mapped) give the plain result."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from conftest import REPO

SCRIPT = REPO / "experiments" / "calibrate.py"


@pytest.fixture(scope="module")
def calibrate():
    spec = importlib.util.spec_from_file_location("calibrate_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _compose(overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def _data(tmp_path, n=120, k=3, seed=0, **edits):
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=(n, k)) * 2).astype(np.float32)
    labels = np.argmax(logits + rng.gumbel(size=logits.shape), axis=1)
    arrays = {"logits": logits, "labels": labels, **edits}
    path = tmp_path / "d.npz"
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def _run(calibrate, tmp_path, overrides):
    out = tmp_path / "run"
    cfg = _compose(overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metrics = calibrate.run(cfg, out)
    return metrics, out


BAD_VALUES = [
    (["conformal=aps", "conformal.alpha=1.5"], ValueError, r"alpha .*\(0, 1\)"),
    (["conformal=aps", "conformal.alpha=0"], ValueError, r"alpha .*\(0, 1\)"),
    (["conformal=lac", "conformal.alpha=-0.1"], ValueError, r"alpha .*\(0, 1\)"),
    (["conformal=lac", "conformal.alpha=nan"], ValueError, r"alpha"),
    (["conformal=raps", "conformal.k_reg=-1"], ValueError, r"k_reg"),
    (["conformal=raps", "conformal.lam=-1"], ValueError, r"lam"),
    (["policy=risk_control", "policy.target_risk=1.5"], ValueError, r"target_risk"),
    (["policy=risk_control", "policy.delta=0"], ValueError, r"delta"),
    (["policy=risk_control", "policy.delta=2"], ValueError, r"delta"),
    (["policy=risk_control", "policy.max_escalation=-0.2"], ValueError, r"max_escalation"),
    (["calibrator=temperature", "calibrator.log_t_bounds=12"], TypeError, r"log_t_bounds"),
    (["calibrator=temperature", "calibrator.log_t_bounds=[2,1]"], ValueError, r"log_t_bounds"),
    (["calibrator=temperature", "calibrator.log_t_bounds=[-1e400,1]"], ValueError, r"log_t_bounds"),
    (["calibrator=histogram_binning", "calibrator.n_bins=0"], ValueError, r"n_bins"),
    (["calibrator=platt"], ValueError, r"(binary|2 classes)"),
    (["calibrator=beta"], ValueError, r"(binary|2 classes)"),
    (["eval.n_bins=0"], ValueError, r"n_bins"),
    (["eval.n_bootstrap=-1"], ValueError, r"n_bootstrap"),
    (["split.cal_fraction=0"], ValueError, r"cal_fraction"),
    (["split.cal_fraction=1.5"], ValueError, r"cal_fraction"),
]


@pytest.mark.parametrize("overrides,err,match", BAD_VALUES, ids=[" ".join(o) for o, _, _ in BAD_VALUES])
def test_bad_values_are_refused_before_anything_is_written(calibrate, tmp_path, overrides, err, match):
    path = _data(tmp_path)
    with pytest.raises(err, match=match):
        _run(calibrate, tmp_path, ["data=npz", f"data.path={path}", *overrides])
    assert not (tmp_path / "run" / "metrics.json").exists()
    assert not (tmp_path / "run" / "artifact").exists()


def _truncated(tmp_path):
    path = _data(tmp_path)
    path.write_bytes(path.read_bytes()[:100])
    return path


BAD_FILES = [
    ("missing", lambda t: t / "nowhere.npz", FileNotFoundError, r"nowhere\.npz"),
    ("truncated", _truncated, ValueError, r"d\.npz"),
    ("nan", lambda t: _data(t, logits=np.full((120, 3), np.nan, np.float32)), ValueError, r"finite logits"),
    ("inf", lambda t: _data(t, logits=np.full((120, 3), np.inf, np.float32)), ValueError, r"finite logits"),
    ("1-D", lambda t: _data(t, logits=np.zeros(120, np.float32)), ValueError, r"np\.stack"),
    ("3-D", lambda t: _data(t, logits=np.zeros((120, 3, 1), np.float32)), ValueError, r"shape"),
    ("one-class", lambda t: _data(t, logits=np.zeros((120, 1), np.float32)), ValueError, r"at least 2 classes"),
    ("bool", lambda t: _data(t, logits=np.zeros((120, 3), bool)), TypeError, r"dtype bool"),
    ("complex", lambda t: _data(t, logits=np.zeros((120, 3), complex)), TypeError, r"dtype complex"),
    ("label-range", lambda t: _data(t, labels=np.full(120, 5)), ValueError, r"labels in \[0, 2\]"),
    ("label-negative", lambda t: _data(t, labels=np.full(120, -1)), ValueError, r"labels >= 0"),
    ("label-frac", lambda t: _data(t, labels=np.full(120, 0.5)), ValueError, r"fractional part"),
    ("label-huge", lambda t: _data(t, labels=np.full(120, 1e20)), ValueError, r"1e\+?20|100000000000000000000"),
    ("label-length", lambda t: _data(t, labels=np.zeros(119, int)), ValueError, r"length 120.*119|119.*120"),
    ("split-length", lambda t: _data(t, split=np.zeros(7, int)), ValueError, r"split"),
    ("split-values", lambda t: _data(t, split=np.full(120, 2)), ValueError, r"split"),
    ("no-logits", lambda t: _data(t, logits=None), ValueError, r"logits"),
]


@pytest.mark.parametrize("case,make,err,match", BAD_FILES, ids=[c for c, *_ in BAD_FILES])
def test_bad_data_files_are_refused_naming_the_problem(calibrate, tmp_path, case, make, err, match):
    path = make(tmp_path)
    with pytest.raises(err, match=match):
        _run(calibrate, tmp_path, ["data=npz", f"data.path={path}"])
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_probabilities_passed_as_logits_are_named(calibrate, tmp_path):
    rng = np.random.default_rng(0)
    z = rng.normal(size=(120, 3)) * 2
    p = (np.exp(z) / np.exp(z).sum(1, keepdims=True)).astype(np.float32)
    path = _data(tmp_path, logits=p)
    cfg = _compose(["data=npz", f"data.path={path}"])
    with pytest.warns(UserWarning, match="look like probabilities"):
        calibrate.run(cfg, tmp_path / "run")


def test_the_command_line_exits_non_zero_with_the_message(tmp_path):
    path = _data(tmp_path)
    env = dict(os.environ, MPLBACKEND="Agg")
    proc = subprocess.run([sys.executable, str(SCRIPT), "data=npz", f"data.path={path}", "conformal=aps",
                           "conformal.alpha=1.5", f"hydra.run.dir={tmp_path / 'run'}"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode != 0
    assert "alpha" in proc.stderr and "(0, 1)" in proc.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()


# --- inputs that must work ------------------------------------------------------------------------------

def _metrics_for(calibrate, tmp_path, name, logits, labels, extra=()):
    path = tmp_path / f"{name}.npz"
    np.savez(path, logits=logits, labels=labels)
    metrics, _ = _run(calibrate, tmp_path / name, ["data=npz", f"data.path={path}", "conformal=lac", *extra])
    return metrics


def test_float16_fortran_int_labels_and_memmap_give_the_plain_result(calibrate, tmp_path):
    rng = np.random.default_rng(1)
    logits = (rng.normal(size=(200, 4)) * 2).astype(np.float16).astype(np.float32)  # exactly representable
    labels = np.argmax(logits + rng.gumbel(size=logits.shape), axis=1)
    plain = _metrics_for(calibrate, tmp_path, "plain", logits, labels)
    variants = {
        "float16": (logits.astype(np.float16), labels),
        "fortran": (np.asfortranarray(logits), labels),
        "float-labels": (logits, labels.astype(np.float64)),
        "int32-labels": (logits, labels.astype(np.int32)),
    }
    for name, (x, y) in variants.items():
        got = _metrics_for(calibrate, tmp_path, name, x, y)
        assert got["calibrated"] == plain["calibrated"], name
        assert got["conformal"] == plain["conformal"], name
    npy = tmp_path / "mm.npy"
    np.save(npy, logits)
    np.save(tmp_path / "mm_labels.npy", labels)
    metrics, _ = _run(calibrate, tmp_path / "mm", ["data=npz", f"data.path={npy}", "data.mmap=true",
                                                     f"+data.labels_path={tmp_path / 'mm_labels.npy'}",
                                                     "conformal=lac"])
    assert metrics["calibrated"] == plain["calibrated"]
    assert json.dumps(metrics["conformal"], sort_keys=True) == json.dumps(plain["conformal"], sort_keys=True)
