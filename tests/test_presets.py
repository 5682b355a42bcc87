"""Every preset of conf/experiment/ runs in a reduced form and completes without failed jobs (issue 16): the
preset's own sweep, shortened only by command-line overrides (docs/experiments.md, "How long the presets take"),
then experiments/aggregate.py --strict over its sweep folder (exit 0 only when every job wrote a metrics.json
whose artifact belongs to it).

Reductions (each documented in docs/experiments.md):
  calibrator_zoo    seed=0 data=synthetic data.n=2000   every calibrator of the glob, one seed, small data
  kull2019          data=synthetic data.n=2000          the four calibrators (ODIR's CV included) on small data
  model_comparison  seed=0                              the four embedded models, one seed, the real data

About 3 minutes of CPU in all (each job draws its figures); marked slow. Also: netcal's slow fits log a start line
with the expected time and progress while they run.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest

from conftest import REPO

#: preset -> the reduction overrides used in CI
REDUCED = {
    "calibrator_zoo": ["seed=0", "data=synthetic", "data.n=2000"],
    "kull2019": ["data=synthetic", "data.n=2000"],
    "model_comparison": ["seed=0"],
}


def _calibrators_of_the_zoo():
    # Hydra's glob(*,exclude=[platt,beta]) over conf/calibrator/, listed independently of Hydra
    names = {p.stem for p in (REPO / "conf" / "calibrator").glob("*.yaml")}
    return names - {"platt", "beta"}


def _expected_jobs(preset):
    if preset == "calibrator_zoo":
        return {f"calibrator={c},data.n=2000,data=synthetic" for c in _calibrators_of_the_zoo()}
    if preset == "kull2019":
        return {f"calibrator={c},data.n=2000,data=synthetic"
                for c in ("temperature", "vector_scaling", "dirichlet_odir", "matrix_scaling_odir")}
    return {f"data=builtin_c10lt_{m}" for m in ("densenet40", "resnet110", "resnet110_sd", "wrn28")}


def _env():
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, MPLBACKEND="Agg", HYDRA_FULL_ERROR="1", PYTHONPATH=pythonpath)


def test_every_preset_has_a_reduced_form():
    presets = {p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml")}
    assert presets == set(REDUCED), f"add a reduced form for {sorted(presets - set(REDUCED))}"


@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(REDUCED))
def test_preset_runs_reduced_and_aggregates_without_failed_jobs(tmp_path, preset):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, str(REPO / "experiments" / "calibrate.py"), "-m", f"experiment={preset}",
           *REDUCED[preset], f"hydra.sweep.dir={sweep}"]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{preset}: calibrate.py -m failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    jobs = {p.parent.parent for p in sweep.rglob(".hydra/overrides.yaml")}
    configs = {j.parent.name for j in jobs}
    assert configs == _expected_jobs(preset), (sorted(configs), sorted(_expected_jobs(preset)))
    assert {j.name for j in jobs} == {"seed=0"}
    missing = sorted(str(j.relative_to(sweep)) for j in jobs if not (j / "metrics.json").is_file())
    assert not missing, f"{preset}: jobs without metrics.json: {missing}"
    agg = subprocess.run([sys.executable, str(REPO / "experiments" / "aggregate.py"), str(sweep), "--strict"],
                         cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert agg.returncode == 0, f"{preset}: aggregate.py --strict failed ({agg.returncode}):\n{agg.stdout}\n{agg.stderr}"
    assert f"Aggregated {len(jobs)} runs" in agg.stdout + agg.stderr
    with open(sweep / "results.csv", newline="") as f:
        runs = {row["run"] for row in csv.DictReader(f)}
    assert runs == {str(j.relative_to(sweep)) for j in jobs}  # every job in the table


@pytest.mark.slow  # importing netcal (torch) costs 10-25 s on a loaded 2-core machine
def test_netcal_slow_fit_logs_start_progress_and_end(caplog, monkeypatch):
    import logging
    import re

    from calib.calibrators import NetcalCalibrator
    from calib.calibrators import netcal_adapter
    from calib.datasets import synthetic

    monkeypatch.setattr(netcal_adapter._FitProgress, "EVERY", 0.05)
    d = synthetic(n=1000, n_classes=3, temperature=2.0, seed=0)
    with caplog.at_level(logging.INFO, logger="calib.calibrators.netcal_adapter"):
        NetcalCalibrator(method="ENIR").fit(d.logits, d.labels)
    lines = [r.getMessage() for r in caplog.records if r.name == "calib.calibrators.netcal_adapter"]
    start = [m for m in lines if m.startswith("Fitting netcal ENIR on 1000 rows x 3 classes: expect ~")]
    end = [m for m in lines if re.fullmatch(r"netcal ENIR: fitted in [0-9.]+ s", m)]
    assert len(start) == 1 and len(end) == 1, lines
    took = float(end[0].split()[-2])
    ticks = [m for m in lines if m.startswith("netcal ENIR: fitting, ")]
    if took >= 0.2:  # the ticker logs every EVERY seconds while the fit runs
        assert ticks, lines
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="calib.calibrators.netcal_adapter"):
        NetcalCalibrator(method="HistogramBinning").fit(d.logits, d.labels)  # fast: no lines
    assert not [r for r in caplog.records if "expect ~" in r.getMessage()]
