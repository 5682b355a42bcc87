"""The shift monitor (calib.evaluation.monitor, `calib monitor`, calibrate.py's monitor.* keys): its numbers equal
the library functions fed the calibration arrays, its alarms are tests that stay quiet without shift (a binomial
bound over resamples) and fire on the real long-tailed -> balanced shift, and bad input (k mismatch, a batch
too small, an old-schema artifact without reference statistics, an existing --out) is refused, writing nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from calib import cli
from calib.calibrators import TemperatureScaling
from calib.datasets import load
from calib.deploy import FittedPipeline
from calib.evaluation.monitor import MissingReferenceError, monitor_batch, simes_pvalue
from calib.policy import RiskControlPolicy, ThresholdPolicy
from calib.shift import (benjamini_hochberg, drift_tests, estimate_accuracy, estimate_label_shift, novelty_pvalues)
from calib.stats import binom_greater_pvalue
from conftest import REPO

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def c10lt():
    return load("c10lt_resnet110")


@pytest.fixture(scope="module")
def shifted(c10lt, tmp_path_factory):
    """Pipeline fitted on 6,000 long-tailed split-0 rows (every row kept in the reference), saved and loaded;
    the batch: 3,000 balanced split-1 rows."""
    d = c10lt
    cal = np.flatnonzero(d.split == 0)[:6000]
    bat = np.flatnonzero(d.split == 1)[:3000]
    pipe = FittedPipeline.fit(d.logits[cal], d.labels[cal], calibrator=TemperatureScaling(),
                              policy=RiskControlPolicy(target_risk=0.05))
    path = tmp_path_factory.mktemp("mon") / "artifact"
    pipe.save(path)
    served = FittedPipeline.load(path)
    assert served.reference.exact_
    return served, path, d.logits[cal], d.labels[cal], d.logits[bat], d.labels[bat]


def test_report_equals_the_library_on_the_calibration_arrays(shifted):
    pipe, _, xc, yc, xb, _ = shifted
    res = monitor_batch(pipe, xb, n_bootstrap=50, seed=3)
    r = res.report
    pc, pb = pipe.predict_proba(xc), pipe.predict_proba(xb)
    est = estimate_label_shift(pc, yc, pb, n_bootstrap=50, seed=3)
    assert r["label_shift"]["target_prior"] == est.target_prior.tolist()
    assert r["label_shift"]["prior_low"] == est.prior_low.tolist()
    tv = 0.5 * float(np.abs(est.target_prior - np.bincount(yc, minlength=10) / yc.size).sum())
    assert r["label_shift"]["total_variation"] == pytest.approx(tv, abs=1e-15)
    acc = estimate_accuracy(pc, yc, pb, n_bootstrap=0)
    assert r["accuracy"]["atc"]["estimate"] == acc.estimate
    assert r["accuracy"]["calibration_accuracy"] == float(np.mean(pc.argmax(1) == yc))
    assert [(row["test"], row["p_value"]) for row in r["drift"]] == \
        [(row["test"], row["p_value"]) for row in drift_tests(pc, pb)]
    pv = novelty_pvalues(xc, xb, score="energy")
    assert r["novelty"]["n_flagged"] == int(benjamini_hochberg(pv, 0.1).sum())
    assert r["novelty"]["global_p_value"] == simes_pvalue(pv)
    # policy: the batch's actions counted; the fit-time rates are those of the calibration rows
    dc, db = pipe.apply(xc), pipe.apply(xb)
    assert r["policy"]["target"]["automation"] == float(np.mean(db.actions == 0))
    assert r["policy"]["fit_time"]["automation"] == float(np.mean(dc.actions == 0))
    assert r["policy"]["fit_time"]["silent_failure"] == float(np.mean((dc.actions == 0) & (dc.output != yc)))
    ans = db.actions == 0
    assert r["policy"]["predicted_silent_failure_rate"] == pytest.approx(
        float(np.sum(1.0 - pb.max(1)[ans].astype(np.float64)) / xb.shape[0]), rel=1e-12)


def test_policy_actions_test_against_scipy(shifted):
    from scipy.stats import chi2_contingency

    pipe, _, xc, _, xb, _ = shifted
    r = monitor_batch(pipe, xb, n_bootstrap=0).report
    n = pipe.reference.n_calibration_
    fit = [round(r["policy"]["fit_time"][a] * n) for a in ("automation", "escalation")]
    tgt = [int(np.sum(pipe.apply(xb).actions == a)) for a in (0, 1)]
    stat, p, _, _ = chi2_contingency(np.array([fit, tgt]), correction=False)
    assert r["policy"]["actions_test"]["p_value"] == pytest.approx(p, rel=1e-9)


def test_simes_is_bh_rejecting_anything():
    rng = np.random.default_rng(0)
    for _ in range(200):
        p = rng.uniform(size=rng.integers(1, 30)) ** rng.uniform(0.5, 4)
        a = rng.uniform(0.01, 0.3)
        assert (simes_pvalue(p) <= a) == bool(benjamini_hochberg(p, a).any())


def test_alarms_fire_on_the_real_shift(shifted):
    pipe, _, _, _, xb, _ = shifted
    res = monitor_batch(pipe, xb, n_bootstrap=0)
    fired = {a["name"] for a in res.report["alarms"] if a["fired"]}
    assert res.alarm and "drift_predicted_class" in fired
    # the estimated prior is far from calibration's (true TV 0.29 between long-tailed and balanced)
    assert res.report["label_shift"]["total_variation"] > 0.2


def test_no_false_alarms_without_shift_beyond_a_binomial_bound(c10lt):
    """Exchangeable calibration and batch (random disjoint rows of the balanced split 1), 200 resamples: the
    number of runs with any alarm must not be significantly above alpha + 0.025 (one-sided exact binomial test at
    level 0.001). The drift, policy and novelty alarms are Holm-adjusted valid tests; accuracy_drop is a
    bootstrap interval rule at level 0.025."""
    d = c10lt
    rows = np.flatnonzero(d.split == 1)
    rng = np.random.default_rng(7)
    fired = 0
    runs = 200
    for r in range(runs):
        perm = rng.permutation(rows)
        cal, bat = perm[:3000], perm[3000:4000]
        pipe = FittedPipeline.fit(d.logits[cal], d.labels[cal], calibrator=TemperatureScaling(),
                                  policy=ThresholdPolicy(target_coverage=0.7))
        res = monitor_batch(pipe, d.logits[bat], n_bootstrap=50, seed=r)
        fired += res.alarm
    print(f"{fired} of {runs} runs raised an alarm")
    assert binom_greater_pvalue(fired, runs, 0.05 + 0.025) > 1e-3, fired


def test_missing_reference_is_refused(shifted):
    pipe = shifted[0]
    bare = FittedPipeline(pipe.calibrator, policy=pipe.policy)
    with pytest.raises(MissingReferenceError, match=r"without .*refit with calib >= 0.3.0.*attach_reference"):
        monitor_batch(bare, shifted[4])


def test_bad_inputs(shifted):
    pipe, _, _, _, xb, _ = shifted
    with pytest.raises(ValueError, match=r"10"):
        monitor_batch(pipe, xb[:, :4])
    with pytest.raises(ValueError, match=r"at least 20 rows .* got 5"):
        monitor_batch(pipe, xb[:5])
    bad = xb[:100].copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match=r"finite|NaN"):
        monitor_batch(pipe, bad)
    for kw, match in (({"alpha": 1.5}, "alpha"), ({"fdr": 0}, "fdr"), ({"novelty_score": "knn"}, "novelty_score"),
                      ({"label_shift": "kmm"}, "label_shift"), ({"n_bootstrap": -1}, "n_bootstrap"),
                      ({"accuracy_tolerance": 1.0}, "accuracy_tolerance")):
        with pytest.raises(ValueError, match=match):
            monitor_batch(pipe, xb, **kw)
    with pytest.raises(TypeError, match=r"FittedPipeline"):
        monitor_batch(object(), xb)


def test_write_is_all_or_nothing(shifted, tmp_path, monkeypatch):
    pipe, _, _, _, xb, _ = shifted
    res = monitor_batch(pipe, xb, n_bootstrap=0)
    out = res.write(tmp_path / "m")
    assert sorted(p.name for p in out.iterdir()) == ["confidence_drift.png", "monitor.json", "novelty_by_class.png",
                                                     "policy_rates.png", "prior_shift.png"]
    assert json.loads((out / "monitor.json").read_text())["alarm"] is True
    with pytest.raises(FileExistsError, match="exists"):
        res.write(tmp_path / "m")
    import calib.plotting

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(calib.plotting, "save_figure", boom)
    with pytest.raises(RuntimeError):
        res.write(tmp_path / "n")
    assert not (tmp_path / "n").exists() and not list(tmp_path.glob(".n.*"))
    with pytest.raises(RuntimeError):
        res.write(tmp_path / "m", overwrite=True)  # the old report stays whole
    assert (tmp_path / "m" / "monitor.json").exists()


# --- the command -------------------------------------------------------------------------------------------
def _cli(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_alarm_exit_code_and_outputs(shifted, tmp_path, capsys):
    _, path, xc, _, xb, _ = shifted
    np.save(tmp_path / "batch.npy", xb)
    code, out, err = _cli(capsys, "monitor", path, tmp_path / "batch.npy", "--out", tmp_path / "rep",
                          "--n-bootstrap", "20")
    assert code == 1 and "calib monitor: ALARM" in out and "drift_predicted_class" in out, (out, err)
    report = json.loads((tmp_path / "rep" / "monitor.json").read_text())
    assert report["alarm"] and report["n_target"] == 3000
    code, out, _ = _cli(capsys, "monitor", path, tmp_path / "batch.npy", "--json", "--n-bootstrap", "0")
    assert code == 1 and json.loads(out)["schema"] == 1
    # no shift: the calibration rows' own second half against a pipeline of the first -> exit 0
    d = load("c10lt_resnet110")
    rows = np.flatnonzero(d.split == 1)
    pipe = FittedPipeline.fit(d.logits[rows[:5000]], d.labels[rows[:5000]], calibrator=TemperatureScaling(),
                              policy=ThresholdPolicy(target_coverage=0.7))
    pipe.save(tmp_path / "calm")
    np.save(tmp_path / "calm.npy", d.logits[rows[5000:7000]])
    code, out, err = _cli(capsys, "monitor", tmp_path / "calm", tmp_path / "calm.npy", "--n-bootstrap", "20")
    assert code == 0 and "calib monitor: no alarm" in out, (out, err)


def test_cli_refuses_old_schema_artifacts_with_the_refit_message(tmp_path, capsys):
    e = np.load(FIXTURES / "artifact_v2" / "expected.npz", allow_pickle=False)
    np.save(tmp_path / "b.npy", e["logits"])
    code, out, err = _cli(capsys, "monitor", FIXTURES / "artifact_v2" / "artifact", tmp_path / "b.npy")
    assert code == cli.EXIT_ARTIFACT and out == ""
    assert "no reference statistics" in err and "schema 2" in err and "refit" in err and "attach_reference" in err


@pytest.mark.parametrize("case,argv,code,match", [
    ("k mismatch", ["--cols", "4"], 2, r"Expected logits with 10 columns .* got 4"),
    ("too small", ["--rows", "5"], 2, r"at least 20 rows .* got 5"),
    ("bad alpha", ["--alpha", "0"], 2, r"--alpha: expected a number in \(0, 1\)"),
    ("nan alpha", ["--alpha", "nan"], 2, r"--alpha: expected a number in \(0, 1\), got 'nan'"),
    ("negative bootstrap", ["--n-bootstrap", "-1"], 2, r"--n-bootstrap: expected an integer >= 0, got '-1'"),
    ("bad score", ["--novelty-score", "knn"], 2, r"--novelty-score"),
    ("missing file", ["--missing"], 2, r"got no such file"),
])
def test_cli_bad_input_writes_nothing(shifted, tmp_path, capsys, case, argv, code, match):
    _, path, _, _, xb, _ = shifted
    rows, cols = 200, 10
    extra = list(argv)
    if "--cols" in extra:
        cols = int(extra[extra.index("--cols") + 1]); extra = []
    if "--rows" in extra:
        rows = int(extra[extra.index("--rows") + 1]); extra = []
    batch = tmp_path / "b.npy"
    if "--missing" in extra:
        extra = []
    else:
        np.save(batch, xb[:rows, :cols])
    got, out, err = _cli(capsys, "monitor", path, batch, "--out", tmp_path / "rep", *extra)
    assert got == code, (out, err)
    import re
    assert re.search(match, err), err
    assert not (tmp_path / "rep").exists()


def test_cli_existing_out_is_refused(shifted, tmp_path, capsys):
    _, path, _, _, xb, _ = shifted
    np.save(tmp_path / "b.npy", xb[:200])
    (tmp_path / "rep").mkdir()
    code, _, err = _cli(capsys, "monitor", path, tmp_path / "b.npy", "--out", tmp_path / "rep")
    assert code == 2 and "--overwrite" in err


# --- Hydra ---------------------------------------------------------------------------------------------------
def _calibrate(*overrides, cwd):
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=os.pathsep.join(filter(None, [str(REPO),
                                                                                      os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, str(REPO / "experiments" / "calibrate.py"), *overrides], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_calibrate_monitor_option(tmp_path):
    run = tmp_path / "run"
    # data=builtin_shifted: the embedded file's own long-tailed -> balanced split (data=builtin resplits, issue 16)
    p = _calibrate("data=builtin_shifted", "policy=risk_control", "monitor.target=test", "monitor.n_bootstrap=20",
                   f"hydra.run.dir={run}", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    report = json.loads((run / "monitor" / "monitor.json").read_text())
    assert report["alarm"] and report["policy"]["kind"] == "risk_control"
    assert "Monitor: ALARM" in (run / "calibrate.log").read_text()
    p = _calibrate("data=builtin_shifted", "monitor.target=test", "monitor.n_bootstrap=0", "monitor.fail_on_alarm=true",
                   f"hydra.run.dir={tmp_path / 'run2'}", cwd=tmp_path)
    assert p.returncode == 1 and (tmp_path / "run2" / "monitor" / "monitor.json").exists()
    p = _calibrate("monitor.alpha=2", "monitor.target=test", f"hydra.run.dir={tmp_path / 'run3'}", cwd=tmp_path)
    assert p.returncode != 0 and "monitor.alpha" in p.stderr


def test_a_rerun_removes_the_previous_monitor_report(tmp_path):
    """One run per folder: a re-run (with or without the monitor) first removes the previous monitor/; a
    folder named monitor without monitor.json is the user's and is kept."""
    from calib.evaluation.pipeline import clear_run_folder

    (tmp_path / "monitor").mkdir()
    (tmp_path / "monitor" / "monitor.json").write_text("{}")
    (tmp_path / ".monitor.abc.tmp").mkdir()
    assert set(clear_run_folder(tmp_path)) == {"monitor/", ".monitor.abc.tmp"}
    assert not (tmp_path / "monitor").exists()
    (tmp_path / "monitor").mkdir()
    (tmp_path / "monitor" / "notes.txt").write_text("mine")
    clear_run_folder(tmp_path)
    assert (tmp_path / "monitor" / "notes.txt").exists()
