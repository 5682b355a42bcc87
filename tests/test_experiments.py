"""End-to-end tests of experiments/calibrate.py (Hydra CLI, launchers) and experiments/aggregate.py.

Each Hydra process costs a few seconds; the sweeps use data=synthetic with small n.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CALIB_SHARED_DATA", REPO.parent / "shared" / "data"))
SWEEP = ["data=synthetic", "data.n=2000", "calibrator=identity,temperature", "seed=0,1"]
BLOCK_METRICS = ("uncalibrated", "calibrated")


def _module(name):
    spec = importlib.util.spec_from_file_location(f"_exp_{name}", REPO / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_cli(script, *args, timeout=300):
    # The scripts must import this checkout's calib, whatever `pip install -e` points at.
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "MPLBACKEND": "Agg", "HYDRA_FULL_ERROR": "0", "PYTHONPATH": pythonpath}
    proc = subprocess.run([sys.executable, f"experiments/{script}", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


def _sweep(tmp_path_factory, launcher, *extra):
    out = tmp_path_factory.mktemp(launcher) / "sweep"
    rc, log = run_cli("calibrate.py", "-m", f"hydra/launcher={launcher}", f"hydra.sweep.dir={out}", *extra, *SWEEP)
    assert rc == 0, log
    return out, log


@pytest.fixture(scope="module")
def joblib_sweep(tmp_path_factory):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    return _sweep(tmp_path_factory, "joblib", "hydra.launcher.n_jobs=2")


@pytest.fixture(scope="module")
def submitit_sweep(tmp_path_factory):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    return _sweep(tmp_path_factory, "submitit_local")


def _run_dirs(sweep_dir):
    return sorted(p.parent for p in sweep_dir.rglob("metrics.json") if (p.parent / ".hydra").is_dir())


def _check_sweep_folders(sweep_dir):
    runs = _run_dirs(sweep_dir)
    names = sorted(r.relative_to(sweep_dir).as_posix() for r in runs)
    expected = sorted(f"calibrator={c},data.n=2000,data=synthetic/seed={s}"
                      for c in ("identity", "temperature") for s in (0, 1))
    assert names == expected  # one folder per (overrides, seed): two seeds never share one
    return runs


def _n_interval_rows(section):
    """Rows of results.csv for an interval section of metrics.json: its numeric scalars (level, n_resamples,
    seed) and both ends of every [lo, hi] interval in its blocks (names lists are not numbers)."""
    if not section:
        return 0
    scalars = sum(isinstance(v, (int, float)) and not isinstance(v, bool) for v in section.values())
    ends = sum(len(iv) for v in section.values() if isinstance(v, dict) for iv in v.values() if iv is not None)
    return scalars + ends


def _check_aggregate(sweep_dir):
    aggregate = _module("aggregate")
    result = aggregate.aggregate(sweep_dir)
    assert result["n_runs"] == 4
    for name in ("results.csv", "summary.md", "summary.png"):
        assert (sweep_dir / name).is_file()
    with open(sweep_dir / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["run", "data", "data.n", "calibrator", "seed", "split", "metric", "value"]
    by_key = {(r["run"], r["split"], r["metric"]): r for r in rows}
    assert len(by_key) == len(rows), "one row per run x split x metric"
    n_checked = 0
    for run_dir in _run_dirs(sweep_dir):
        metrics = json.loads((run_dir / "metrics.json").read_text())
        overrides = dict(o.split("=", 1) for o in
                         (run_dir / ".hydra" / "overrides.yaml").read_text().replace("- ", "").split())
        run = run_dir.relative_to(sweep_dir).as_posix()
        for split in BLOCK_METRICS:
            for metric, value in metrics[split].items():
                row = by_key[(run, split, metric)]
                assert float(row["value"]) == value
                assert (row["calibrator"], row["seed"], row["data.n"]) == (
                    overrides["calibrator"], overrides["seed"], overrides["data.n"])
                n_checked += 1
        if metrics["calibrator"]["kind"] == "temperature":
            assert float(by_key[(run, "calibrator", "temperature")]["value"]) == metrics["calibrator"]["temperature"]
        run_rows = [r for r in rows if r["run"] == run]
        assert len(run_rows) == sum(len(metrics[s]) for s in BLOCK_METRICS) + len(
            [v for v in metrics["calibrator"].values() if isinstance(v, float)]) + 3 + _n_interval_rows(
            metrics.get("calibration_ci"))  # n_cal, n_test, n_classes; calibration_ci: scalars + interval ends
    assert n_checked == 4 * 2 * len(metrics["calibrated"])
    # Summary: mean ± sample std over the two seeds, recomputed here from the metrics.json files.
    summary = (sweep_dir / "summary.md").read_text()
    for calibrator in ("identity", "temperature"):
        nll = [json.loads((sweep_dir / f"calibrator={calibrator},data.n=2000,data=synthetic" / f"seed={s}" /
                           "metrics.json").read_text())["calibrated"]["nll"] for s in (0, 1)]
        assert f"{statistics.mean(nll):.4f} ± {statistics.stdev(nll):.4f}" in summary
    return rows


def test_joblib_sweep_then_aggregate(joblib_sweep):
    sweep_dir, log = joblib_sweep
    runs = _check_sweep_folders(sweep_dir)
    assert "Sweep of 4 jobs" in log
    for run_dir in runs:
        lines = (run_dir / "calibrate.log").read_text().strip().splitlines()
        assert any("[job " in line and "/4] start" in line for line in lines)
        assert any("[1/4] Components" in line for line in lines) and any("[4/4] Wrote" in line for line in lines)
        assert lines[-1].endswith(str(run_dir))  # the final line names the output folder
        assert (run_dir / "timings.json").is_file() and (run_dir / "artifact").is_dir()
    _check_aggregate(sweep_dir)


def test_submitit_local_sweep_then_aggregate_reproduces_joblib(submitit_sweep, joblib_sweep):
    sweep_dir, _ = submitit_sweep
    runs = _check_sweep_folders(sweep_dir)
    _check_aggregate(sweep_dir)
    # Same config and seed, other launcher and processes: byte-identical metrics.json.
    for run_dir in runs:
        twin = joblib_sweep[0] / run_dir.relative_to(sweep_dir)
        assert (run_dir / "metrics.json").read_bytes() == (twin / "metrics.json").read_bytes()


def test_same_config_and_seed_give_byte_identical_metrics(tmp_path):
    from hydra import compose, initialize_config_dir

    calibrate = _module("calibrate")  # registers the schema and resolvers
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfgs = {seed: compose("config", overrides=["data=synthetic", "data.n=3000", f"seed={seed}"])
                for seed in (5, 6)}
    outputs = {}
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        calibrate.run(cfgs[seed], tmp_path / name)
        outputs[name] = (tmp_path / name / "metrics.json").read_bytes()
        assert (tmp_path / name / "timings.json").is_file()
    assert outputs["a"] == outputs["b"]
    assert outputs["a"] != outputs["c"]  # the seed reaches the data
    assert "_s" not in json.loads(outputs["a"])  # no timings in metrics.json
    from calib.artifacts import content_id

    for name in "abc":  # each metrics.json names the artifact beside it
        assert json.loads(outputs[name])["artifact_id"] == content_id(tmp_path / name / "artifact")


def test_cli_rejects_unknown_options_and_keys():
    rc, log = run_cli("calibrate.py", "calibrator=nonexistent")
    assert rc != 0 and "Available options in 'calibrator'" in log
    for option in sorted(p.stem for p in (REPO / "conf" / "calibrator").glob("*.yaml")):
        assert f"\t{option}" in log
    rc, log = run_cli("calibrate.py", "sede=1")
    assert rc != 0 and "Unknown config key 'sede'" in log and "did you mean 'seed'" in log
    assert "valid root keys: ['calibrator', 'conformal', 'data', 'eval', 'experiment', 'hydra'" in log
    rc, log = run_cli("calibrate.py", "seed=abc")
    assert rc != 0 and "could not be converted to Integer" in log and "full_key: seed" in log


def test_aggregate_cli_fails_clearly_on_an_empty_folder(tmp_path):
    rc, log = run_cli("aggregate.py", str(tmp_path))
    assert rc == 2 and "found none" in log


KULL_CALIBRATORS = ("temperature", "vector_scaling", "dirichlet_odir", "matrix_scaling_odir")


def _kull_sweep(tmp_path, calibrators, *extra, timeout=300, odir_overrides=()):
    """Run the preset for ``calibrators`` into one sweep folder (the ODIR ones with ``odir_overrides``, as a
    second sweep into the same folder) and return the published-comparison rows of aggregate.py."""
    for name in ("c10_densenet40_kangsepp", "c10_convnet_kull"):
        if not (SHARED_DATA / name / "logits.npz").is_file():
            pytest.skip(f"real logits {name} not available: {SHARED_DATA} is absent (set CALIB_SHARED_DATA)")
    sweep_dir = tmp_path / "kull2019"
    odir = [c for c in calibrators if c.endswith("_odir")] if odir_overrides else []
    for group, more in (([c for c in calibrators if c not in odir], ()), (odir, odir_overrides)):
        if group:
            rc, log = run_cli("calibrate.py", "-m", "experiment=kull2019", f"hydra.sweep.dir={sweep_dir}",
                              f"calibrator={','.join(group)}", *extra, *more, timeout=timeout)
            assert rc == 0, log
    rc, out = run_cli("aggregate.py", str(sweep_dir))
    assert rc == 0, out
    assert "Ours vs published" in out and (sweep_dir / "published.md").is_file()
    rows = {}
    for line in (sweep_dir / "published.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 7 and cells[0].startswith("kull_"):
            rows[tuple(cells[:3])] = (float(cells[3]), float(cells[4]), float(cells[5]))
    return rows


def test_kull2019_sweep_prints_ours_beside_published(tmp_path):
    # The preset's sweep with options that exist in every checkout (identity has no published row).
    rows = _kull_sweep(tmp_path, ["identity", "temperature"])
    for dataset in ("kull_densenet40", "kull_convnet"):
        for method in ("Uncalibrated", "TempS"):
            for metric in ("nll", "ece", "classwise_ece_sum", "error_pct"):
                ours, published, delta = rows[(dataset, method, metric)]
                assert delta == pytest.approx(ours - published, abs=2e-6)  # printed with 6 decimals
                # Published values are rounded to 6 decimals (error % to 2); our TS optimum is exact while
                # theirs is BFGS (T agrees to 1e-4, README), which moves these metrics by < 1e-5.
                assert abs(delta) <= (0.005 if metric == "error_pct" else 1e-5), (dataset, method, metric)


@pytest.mark.slow
def test_kull2019_full_table(tmp_path):
    """The whole preset through the CLI, the ODIR rows' 5-fold CV on a 4 x 3 sub-grid that holds every pair
    the full-grid CV selects (tests/test_calibrators_kull.py runs the full grid, 2160 fits per CV, once)."""
    present = [c for c in KULL_CALIBRATORS if (REPO / "conf" / "calibrator" / f"{c}.yaml").is_file()]
    grid = ("++calibrator.cv_lambdas=[10.0,50.0,500000.0,1000000.0]", "++calibrator.cv_mus=[0.0001,0.01,1000.0]")
    rows = _kull_sweep(tmp_path, present, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", timeout=1800,
                       odir_overrides=grid)
    methods = {"temperature": "TempS", "vector_scaling": "VecS", "dirichlet_odir": "Dir-ODIR",
               "matrix_scaling_odir": "MS-ODIR"}
    for calibrator in present:
        for dataset in ("kull_densenet40", "kull_convnet"):
            for metric in ("nll", "classwise_ece_sum"):
                ours, published, delta = rows[(dataset, methods[calibrator], metric)]
                assert delta == pytest.approx(ours - published, abs=2e-6)
    # How close each calibrator gets to the paper is for the calibrator tests (the READMEs expect about
    # three decimals of log-loss for the CV-tuned ODIR rows); this test checks the table is complete.


def test_metric_sections_flatten_every_numeric_leaf():
    aggregate = _module("aggregate")
    metrics = {
        "n_cal": 10, "data_fingerprint": {"sha256": "ab", "n_samples": 3},
        "calibrated": {"nll": 0.5, "accuracy": 1},
        "calibrator": {"kind": "temperature", "temperature": 2.5},
        "conformal": {"kind": "split", "alpha": 0.1, "flag": True, "class_coverage": [0.8, 1.0],
                      "size_stratified_coverage": {"1": {"count": 3, "coverage": 0.5}}},
        "policy": {"ci": {"risk": [0.1, 0.2]}, "per_class": list(range(50)), "note": None},
    }
    assert aggregate.metric_sections(metrics) == {
        "info": {"n_cal": 10.0},
        "calibrated": {"nll": 0.5, "accuracy": 1.0},
        "calibrator": {"temperature": 2.5},
        "conformal": {"alpha": 0.1, "class_coverage[0]": 0.8, "class_coverage[1]": 1.0,
                      "size_stratified_coverage.1.count": 3.0, "size_stratified_coverage.1.coverage": 0.5},
        "policy": {"ci.risk[0]": 0.1, "ci.risk[1]": 0.2},
    }
