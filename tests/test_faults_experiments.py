"""Faults in experiments: a sweep with a failing job, a run killed half-way, a re-run into a used folder.

Nothing may be lost or stale: aggregate.py lists every failed or incomplete job (overrides, last error of its
log) and ``--strict`` fails on them; metrics.json is written last and carries the artifact_id of its artifact, so a
killed run leaves no metrics.json and no run is ever paired with another run's artifact or figures.
One real sweep (two jobs, about 10 s); the rest runs in process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from calib.datasets import synthetic
from calib.evaluation import pipeline
from calib.evaluation.pipeline import PLOT_FILES, fit_and_evaluate
from calib.evaluation.results import aggregate, find_jobs

REPO = Path(__file__).resolve().parents[1]
GOOD_JOB = "data.n=500,data.temperature=2.0,data=synthetic/seed=0"
BAD_JOB = "data.n=500,data.temperature=-1.0,data=synthetic/seed=0"


def run_cli(script, *args, timeout=300):
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "MPLBACKEND": "Agg", "HYDRA_FULL_ERROR": "0", "PYTHONPATH": pythonpath}
    proc = subprocess.run([sys.executable, f"experiments/{script}", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def sweep_with_a_failure(tmp_path_factory):
    """A real two-job sweep whose first job fails (temperature -1 is refused by calib.datasets.synthetic)."""
    out = tmp_path_factory.mktemp("faults") / "sweep"
    rc, stdout, stderr = run_cli("calibrate.py", "-m", "data=synthetic", "data.n=500", "data.temperature=-1.0,2.0",
                                 f"hydra.sweep.dir={out}")
    assert rc != 0, "Hydra exits non-zero when a job of the sweep failed"
    assert (out / GOOD_JOB / "metrics.json").is_file(), stdout + stderr
    assert not (out / BAD_JOB / "metrics.json").exists() and (out / BAD_JOB / ".hydra").is_dir()
    return out


def test_aggregate_reports_the_failed_job_and_strict_fails(sweep_with_a_failure, tmp_path):
    sweep = sweep_with_a_failure
    # The failed job's log names the root cause on an ERROR line.
    log_text = (sweep / BAD_JOB / "calibrate.log").read_text()
    assert "[ERROR] - Run failed: ValueError: Expected temperature > 0 (finite), got -1.0." in log_text

    rc, stdout, stderr = run_cli("aggregate.py", str(sweep), "--out", str(tmp_path / "lenient"), "--no-figure")
    assert rc == 0, stdout + stderr
    for text in (stdout, (tmp_path / "lenient" / "summary.md").read_text()):
        assert "1 of 2 jobs failed or are incomplete" in text
        assert "## Failed or incomplete jobs (1 of 2" in text
        assert BAD_JOB in text and "data=synthetic data.n=500 data.temperature=-1.0" in text
        assert "Run failed: ValueError: Expected temperature > 0 (finite), got -1.0." in text
    assert "1 of 2 jobs failed" in stderr and f"FAILED {BAD_JOB}" in stderr
    rows = (tmp_path / "lenient" / "results.csv").read_text()
    assert GOOD_JOB in rows and BAD_JOB not in rows  # the tables hold the complete run only

    rc, stdout, stderr = run_cli("aggregate.py", str(sweep), "--out", str(tmp_path / "strict"), "--no-figure",
                                 "--strict")
    assert rc == 1 and BAD_JOB in stdout and "1 of 2 jobs failed" in stderr


def test_aggregate_missing_sweep_folder_exits_2(tmp_path):
    rc, _, stderr = run_cli("aggregate.py", str(tmp_path / "no_such_sweep"))
    assert rc == 2
    assert f"Expected a sweep folder at '{tmp_path / 'no_such_sweep'}', got no such folder." in stderr
    with pytest.raises(FileNotFoundError, match="Expected a sweep folder at .*, got no such folder"):
        aggregate(tmp_path / "no_such_sweep")


def test_mismatched_artifact_id_is_reported_not_aggregated(sweep_with_a_failure, tmp_path):
    sweep = tmp_path / "sweep"
    shutil.copytree(sweep_with_a_failure, sweep)
    # Another job's metrics.json beside this job's artifact: a pairing of two different runs.
    stale = sweep / "calibrator=identity/seed=0"
    shutil.copytree(sweep / GOOD_JOB, stale)
    metrics = json.loads((stale / "metrics.json").read_text())
    metrics["artifact_id"] = "0" * 64
    (stale / "metrics.json").write_text(json.dumps(metrics))
    runs, failed = find_jobs(sweep)
    assert [r.relative_to(sweep).as_posix() for r in runs] == [GOOD_JOB]
    reasons = {job["run"]: job["reason"] for job in failed}
    assert set(reasons) == {BAD_JOB, "calibrator=identity/seed=0"}
    assert "outputs of two different runs" in reasons["calibrator=identity/seed=0"]
    result = aggregate(sweep, tmp_path / "out", figure=False)
    assert result["n_runs"] == 1 and result["n_failed"] == 2
    assert "## Failed or incomplete jobs (2 of 3" in result["summary"]


def test_all_jobs_failed_is_an_error_listing_them(sweep_with_a_failure, tmp_path):
    sweep = tmp_path / "sweep"
    shutil.copytree(sweep_with_a_failure / BAD_JOB, sweep / BAD_JOB)
    with pytest.raises(ValueError, match=r"Expected at least one complete run under .*, got none: all 1 job folders "
                                         r"failed .*Expected temperature > 0"):
        aggregate(sweep, figure=False)
    rc, _, stderr = run_cli("aggregate.py", str(sweep), "--no-figure")
    assert rc == 2 and "Expected temperature > 0" in stderr


# --- in process: killed runs and re-runs -----------------------------------------------------------------

@pytest.fixture(scope="module")
def parts():
    data = synthetic(n=600, n_classes=3, seed=0)
    return data.split_cal_test()


def _result(parts, conformal=False):
    from calib.calibrators import TemperatureScaling
    from calib.conformal import SplitConformal

    cal, test = parts
    return fit_and_evaluate(cal, test, TemperatureScaling(),
                            conformal=SplitConformal(score="lac", alpha=0.1) if conformal else None)


def _job_folder(path):
    (path / ".hydra").mkdir(parents=True, exist_ok=True)
    (path / ".hydra" / "overrides.yaml").write_text("- calibrator=temperature\n")
    return path


def test_artifact_id_pairs_metrics_and_artifact(parts, tmp_path):
    from calib.artifacts import content_id

    result = _result(parts)
    result.write(tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    manifest = json.loads((tmp_path / "artifact" / "manifest.json").read_text())
    # an independent digest of the manifest's content fields (not its time stamp or metrics)
    import hashlib
    body = {k: manifest[k] for k in ("format", "schema_version", "n_classes", "class_names", "components",
                                     "data_fingerprint", "files", "pipeline")}
    expected = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    assert metrics["artifact_id"] == expected == content_id(tmp_path / "artifact")
    assert result.metrics["artifact_id"] == metrics["artifact_id"]
    result.write(tmp_path)  # a second write of the same fit: same bytes (the id is deterministic)
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics


def test_run_killed_before_metrics_json_leaves_no_stale_pairing(parts, tmp_path, monkeypatch):
    run_dir = _job_folder(tmp_path / "job")
    _result(parts).write(run_dir)
    assert find_jobs(tmp_path)[0] == [run_dir]

    import calib._atomic

    real = calib._atomic.write_json_atomic

    def killed(path, obj):
        if Path(path).name == "metrics.json":
            raise KeyboardInterrupt("killed between artifact/ and metrics.json")
        return real(path, obj)

    monkeypatch.setattr(calib._atomic, "write_json_atomic", killed)
    with pytest.raises(KeyboardInterrupt):
        _result(parts).write(run_dir)
    assert not (run_dir / "metrics.json").exists()  # the old one went first; the new one never came
    runs, failed = find_jobs(tmp_path)
    assert runs == [] and failed[0]["run"] == "job" and "no metrics.json" in failed[0]["reason"]


def test_run_killed_before_the_artifact_leaves_nothing_of_the_old_run(parts, tmp_path, monkeypatch):
    _result(parts, conformal=True).write(tmp_path)
    import calib.plotting

    def crash(*args, **kwargs):
        raise RuntimeError("killed while drawing")

    monkeypatch.setattr(calib.plotting, "save_figure", crash)
    with pytest.raises(RuntimeError):
        _result(parts).write(tmp_path)
    left = {p.name for p in tmp_path.iterdir()}
    assert left.isdisjoint({"metrics.json", "artifact", *PLOT_FILES}), left


def test_rerun_into_a_used_folder_leaves_no_old_plots(parts, tmp_path):
    _result(parts, conformal=True).write(tmp_path)
    assert (tmp_path / "conformal_coverage.png").is_file()
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "my_plot.png").write_bytes(b"png")
    (tmp_path / ".metrics.json.abc.tmp").write_text("{")  # left by a killed atomic write
    _result(parts).write(tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {"metrics.json", "reliability.png", "artifact", "notes.txt", "my_plot.png"}
    assert "conformal" not in json.loads((tmp_path / "metrics.json").read_text())


def test_every_stage_figure_is_known_to_the_cleaner(parts):
    from calib.calibrators import TemperatureScaling
    from calib.conformal import SplitConformal
    from calib.policy import RiskControlPolicy

    cal, test = parts
    result = fit_and_evaluate(cal, test, TemperatureScaling(), conformal=SplitConformal(score="lac", alpha=0.1),
                              policy=RiskControlPolicy(target_risk=0.2, delta=0.1), n_bootstrap=50)
    assert set(result.plots) and set(result.plots) <= set(PLOT_FILES)


def test_calibrate_run_that_fails_clears_the_previous_outputs(tmp_path):
    """A re-run of experiments/calibrate.py into a used folder that fails before writing anything leaves none of
    the previous run's outputs beside its new .hydra/ config."""
    import importlib.util

    from hydra import compose, initialize_config_dir

    spec = importlib.util.spec_from_file_location("_exp_calibrate_faults", REPO / "experiments" / "calibrate.py")
    calibrate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(calibrate)
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        good = compose("config", overrides=["data=synthetic", "data.n=600", "data.n_classes=3"])
        bad = compose("config", overrides=["data=npz", f"data.path={tmp_path / 'missing.npz'}"])
    calibrate.run(good, tmp_path)
    assert {"metrics.json", "timings.json", "reliability.png", "artifact"} <= {p.name for p in tmp_path.iterdir()}
    timings = json.loads((tmp_path / "timings.json").read_text())
    assert timings["artifact_id"] == json.loads((tmp_path / "metrics.json").read_text())["artifact_id"]
    with pytest.raises(Exception, match="Expected a logits file at .*missing.npz', got no such file"):
        calibrate.run(bad, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == set()


def test_clear_run_folder_keeps_a_user_artifact_folder(tmp_path):
    (tmp_path / "artifact").mkdir()
    (tmp_path / "artifact" / "mine.txt").write_text("not a calib artifact")
    assert pipeline.clear_run_folder(tmp_path) == []
    assert (tmp_path / "artifact" / "mine.txt").is_file()
    np.testing.assert_equal(sorted(p.name for p in tmp_path.iterdir()), ["artifact"])


def test_kill_9_of_calibrate_at_random_points_never_pairs_two_runs(tmp_path):
    """SIGKILL experiments/calibrate.py at random moments while it re-runs, with another config, into a folder
    holding a complete run: afterwards either there is no metrics.json, or it names the artifact beside it."""
    import random
    import time

    from calib.artifacts import content_id, load_pipeline

    run_dir = tmp_path / "run"
    common = ["data=synthetic", "data.n=3000", f"hydra.run.dir={run_dir}"]
    rc, _, err = run_cli("calibrate.py", *common, "calibrator=identity")
    assert rc == 0, err
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": pythonpath}
    rng, outcomes = random.Random(0), []
    for calibrator in ("temperature", "ensemble_temperature", "temperature", "isotonic", "temperature"):
        proc = subprocess.Popen([sys.executable, "experiments/calibrate.py", *common, f"calibrator={calibrator}",
                                 "conformal=lac"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(1.0, 6.0))
        proc.kill()
        proc.wait()
        metrics_path = run_dir / "metrics.json"
        if metrics_path.exists():
            metrics = json.loads(metrics_path.read_text())
            assert metrics["artifact_id"] == content_id(run_dir / "artifact")  # whole, and the same run's
            assert load_pipeline(run_dir / "artifact")["calibrator"].kind in (calibrator, "identity")
            outcomes.append("complete" if "conformal" in metrics else "old")
        else:
            outcomes.append("none")
    assert "none" in outcomes, outcomes  # at least one kill landed mid-run (the check above was not vacuous)
