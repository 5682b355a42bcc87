"""Every command of README.md and docs/*.md runs on a plain clone: no ../shared beside it.

``test_every_documented_command_is_listed`` (fast) parses the ```bash blocks of README.md and docs/*.md and checks
that every ``python ...`` / ``calib ...`` command in them is in :data:`COMMANDS`: either run (as written, or as the
short variant stated there) or skipped with the reason. A new documented command fails this test until it is
listed, so none is forgotten; a listed command no longer documented fails it too.

``test_documented_command`` (slow: about 4-5 minutes on one core) copies the repository (``git ls-files`` plus the
untracked files git does not ignore) into a temporary folder with no ``../shared`` beside it and no
``CALIB_SHARED_DATA``, and runs every listed command in order, with the copy as the working directory and on
``PYTHONPATH``. Each must exit with its documented status and write non-empty results (the files it names, or a
table on stdout).

Short variants (what differs from the documented command, and why):

====================================  ===========================================================================
documented                            run as
====================================  ===========================================================================
``calibrate.py ...`` (every run)      + ``eval.n_bootstrap=100 eval.calibration_bootstrap=0`` (fewer resamples) and,
                                      when the command names no run folder, ``hydra.run.dir=outputs/doc/<n>``
``calibrate.py data=npz               after writing ``my_logits.npz`` from the embedded set (the user's own file)
data.path=my_logits.npz ...``
``python - <<'PY'`` (LogitsWriter)    2 batches instead of 20 (4,000 rows); a heredoc is listed by its first line
                                      and the first file it names
``calibrate.py -m ... seed=0,1,2``    ``seed=0,1 data.n=2000`` into ``multirun/calibrate/doc`` (4 jobs, not 6); the
                                      report sweep likewise into ``multirun/report``
``aggregate.py multirun/calibrate/    ``multirun/calibrate/doc`` (the sweep just run)
<timestamp>``
``audit_conformal.py``                ``--quick --n-splits 20 --configs lac aps_rand``
``audit_policy.py`` (and ``--event    ``--data netcal_cifar10_wrn16_4 --n-splits 20`` (one embedded set, 20
population ...``)                     splits); ``--quick`` as written
``compare.py ...``                    + ``n_resamples=100 paired_resamples=20 hydra.run.dir=outputs/doc/compare*``
``shift_report.py ...``               + ``--data c10lt_wrn28 --out-dir outputs/doc/shift*`` (one of the 4 models)
``calibrate.py data=cifar10_resnet56``  as written; documented to fail (opt-in data absent): exit 1 and the message
``calibrate.py hydra.run.dir=         with ``CALIB_SIGNING_KEY`` set (the doc's key file lives in /etc)
runs/signed`` / ``calib verify``
====================================  ===========================================================================
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHORT = "eval.n_bootstrap=100 eval.calibration_bootstrap=0"
SIGNING = "CALIB_SIGNING_KEY=doc-test-signing-key-0123456789"
OPT_IN = "needs opt-in data that calib does not redistribute (../shared/data; calib.datasets.OPT_IN)"
PRESET = ("a full preset sweep (tens of jobs, minutes); the presets run in a reduced form in their own CI test")
BENCH = "a benchmark (minutes; tests/test_bench*.py run the quick forms)"
MY_LOGITS = ("python -c \"import numpy as np, calib.datasets as d; x = d.load('c10lt_resnet110'); "
             "np.savez('my_logits.npz', logits=x.logits, labels=x.labels, split=x.split)\"")


@dataclass(frozen=True)
class Run:
    """Run ``cmd`` (default: the documented command); expect an exit status in ``rc``; ``files`` (globs relative
    to the copy) must exist and be non-empty; ``stdout`` (a regex) must match the output."""

    cmd: str | None = None
    rc: tuple = (0,)
    files: tuple = ()
    stdout: str | None = None


@dataclass(frozen=True)
class Skip:
    reason: str


@dataclass
class _Ids:
    n: int = 0
    seen: set = field(default_factory=set)


def _cal(doc, *, out=None, extra="", prefix=""):
    """A calibrate.py run: the documented command + fewer resamples (+ a run folder when it names none)."""
    run_dir = re.search(r"hydra\.run\.dir=(\S+)", doc)
    folder = run_dir.group(1).rstrip("/") if run_dir else out
    cmd = f"{prefix}{doc} {SHORT}{extra}" + ("" if run_dir else f" hydra.run.dir={folder}")
    return Run(cmd, files=(f"{folder}/metrics.json",))


CAL = "python experiments/calibrate.py"
# documented command (whitespace collapsed, comments dropped) -> Run or Skip, in the order they run.
COMMANDS = {
    CAL: _cal(CAL, out="outputs/doc/default"),
    "python -m pytest": Skip("the test suite itself (CI runs it)"),
    f"{CAL} data=npz data.path=my_logits.npz calibrator=temperature hydra.run.dir=out/":
        Run(f"{MY_LOGITS} && {CAL} data=npz data.path=my_logits.npz calibrator=temperature hydra.run.dir=out/ {SHORT}",
            files=("out/metrics.json",)),
    f"{CAL} data=npz data.path=my_logits.npz calibrator=identity":
        _cal(f"{CAL} data=npz data.path=my_logits.npz calibrator=identity", out="outputs/doc/identity"),
    "python - <<'PY' big/logits.npy": Run(None, files=("big/logits.npy", "big/labels.npy", "big/split.npy")),
    "python - <<'PY' my_scores.npz": Run(None, files=("my_scores.npz",)),
    f"{CAL} data=npz data.path=my_scores.npz data.logits_key=scores data.labels_key=y hydra.run.dir=outputs/my_scores":
        _cal(f"{CAL} data=npz data.path=my_scores.npz data.logits_key=scores data.labels_key=y "
             "hydra.run.dir=outputs/my_scores"),
    f"{CAL} data=npz data.path=big/logits.npy data.mmap=true conformal=aps policy=risk_control "
    "eval.calibration_bootstrap=0 hydra.run.dir=outputs/big":
        Run(f"{CAL} data=npz data.path=big/logits.npy data.mmap=true conformal=aps policy=risk_control "
            "eval.calibration_bootstrap=0 hydra.run.dir=outputs/big eval.n_bootstrap=100",
            files=("outputs/big/metrics.json",)),
    "calib apply outputs/big/artifact big/logits.npy --out big/decisions.npz": Run(files=("big/decisions.npz",)),
    f"{CAL} calibrator=isotonic": _cal(f"{CAL} calibrator=isotonic", out="outputs/doc/isotonic"),
    f"{CAL} -m 'calibrator=glob(*,exclude=[platt,beta,*_odir])' data=netcal_cifar100_densenet_bc100,c10_vgg16_kumar "
    "hydra.sweep.dir=multirun/zoo": Skip("a sweep of every calibrator on two sets (minutes, the netcal BBQ/ENIR fits "
                                         "alone ~1 min); the calibrator_zoo preset runs reduced in tests/test_presets.py"),
    f"{CAL} -m 'calibrator=glob(*,exclude=[platt,beta,*_odir])' data=kull_densenet40,kull_convnet,c10lt_resnet110,"
    "cifar100_resnet56 hydra.sweep.dir=multirun/zoo": Skip(OPT_IN),
    "python experiments/aggregate.py multirun/zoo --pivot calibrator,data": Skip("aggregates the sweeps above (not run "
                                                                              "here); tests/test_presets.py aggregates"),
    f"{CAL} conformal=aps": _cal(f"{CAL} conformal=aps", out="outputs/doc/aps"),
    "python experiments/audit_conformal.py":
        Run("python experiments/audit_conformal.py --quick --n-splits 20 --configs lac aps_rand",
            stdout=r"netcal_cifar10_wrn16_4 .* yes"),
    f"{CAL} data=builtin_shifted conformal=lac policy=risk_control policy.target_risk=0.02":
        _cal(f"{CAL} data=builtin_shifted conformal=lac policy=risk_control policy.target_risk=0.02",
             out="outputs/doc/shifted"),
    f"{CAL} policy=risk_control policy.target_risk=0.02 policy.delta=0.1":
        _cal(f"{CAL} policy=risk_control policy.target_risk=0.02 policy.delta=0.1", out="outputs/doc/rc002"),
    f"{CAL} conformal=lac policy=conformal_routing":
        _cal(f"{CAL} conformal=lac policy=conformal_routing", out="outputs/doc/lac_routing"),
    f"{CAL} policy=cost policy.costs.escalation=0.1 policy.costs.human_accuracy=0.95":
        _cal(f"{CAL} policy=cost policy.costs.escalation=0.1 policy.costs.human_accuracy=0.95", out="outputs/doc/cost"),
    f"{CAL} conformal=aps conformal.randomized=false conformal.never_empty=false policy=conformal_routing":
        _cal(f"{CAL} conformal=aps conformal.randomized=false conformal.never_empty=false policy=conformal_routing",
             out="outputs/doc/aps_det"),
    f"{CAL} conformal=aps conformal.randomized=false conformal.never_empty=false policy=conformal_routing "
    "policy.empty_set=escalate":
        _cal(f"{CAL} conformal=aps conformal.randomized=false conformal.never_empty=false policy=conformal_routing "
             "policy.empty_set=escalate", out="outputs/doc/aps_det_escalate"),
    "python experiments/audit_policy.py":
        Run("python experiments/audit_policy.py --data netcal_cifar10_wrn16_4 --n-splits 20",
            stdout=r"netcal_cifar10_wrn16_4 .* yes"),
    "python experiments/audit_policy.py --quick": Run(stdout=r"netcal_cifar10_wrn16_4 .* yes"),
    "python experiments/audit_policy.py --event population --family fixed_sequence":
        Run("python experiments/audit_policy.py --event population --family fixed_sequence "
            "--data netcal_cifar10_wrn16_4 --n-splits 20", stdout=r"netcal_cifar10_wrn16_4 .* yes"),
    "python experiments/compare.py":
        Run("python experiments/compare.py n_resamples=100 paired_resamples=20 hydra.run.dir=outputs/doc/compare",
            files=("outputs/doc/compare/compare.md", "outputs/doc/compare/compare.png"), stdout=r"\| c10lt_wrn28 "),
    "python experiments/compare.py budgets=[0.1] target_risks=[0.02,0.05] reference=c10lt_wrn28":
        Run("python experiments/compare.py budgets=[0.1] target_risks=[0.02,0.05] reference=c10lt_wrn28 "
            "n_resamples=100 paired_resamples=20 hydra.run.dir=outputs/doc/compare_ref",
            files=("outputs/doc/compare_ref/compare.md",), stdout=r"\| c10lt_wrn28 "),
    "python experiments/compare.py \"builtin=[netcal_cifar100_wrn16_4,netcal_cifar100_densenet_bc100]\" part=null "
    "target_risks=[0.1]":
        Run("python experiments/compare.py \"builtin=[netcal_cifar100_wrn16_4,netcal_cifar100_densenet_bc100]\" part=null "
            "target_risks=[0.1] n_resamples=100 paired_resamples=20 hydra.run.dir=outputs/doc/compare_netcal",
            files=("outputs/doc/compare_netcal/compare.md",), stdout=r"\| netcal_cifar100_wrn16_4 "),
    "python experiments/shift_report.py":
        Run("python experiments/shift_report.py --data c10lt_wrn28 --out-dir outputs/doc/shift",
            files=("outputs/doc/shift/shift_report.md", "outputs/doc/shift/shift_report.png"), stdout=r"\| c10lt_wrn28 "),
    "python experiments/shift_report.py --target-risk 0.05 --delta 0.1":
        Run("python experiments/shift_report.py --target-risk 0.05 --delta 0.1 --data c10lt_wrn28 "
            "--out-dir outputs/doc/shift_r", files=("outputs/doc/shift_r/shift_report.md",), stdout=r"\| c10lt_wrn28 "),
    f"{CAL} data=synthetic calibrator=temperature seed=1":
        _cal(f"{CAL} data=synthetic calibrator=temperature seed=1", out="outputs/doc/synthetic"),
    f"{CAL} data=synthetic data.temperature=3 seed=1 hydra.run.dir=outputs/ts_synth":
        _cal(f"{CAL} data=synthetic data.temperature=3 seed=1 hydra.run.dir=outputs/ts_synth"),
    f"{CAL} -m calibrator=identity,temperature seed=0,1,2 data=synthetic":
        Run(f"{CAL} -m calibrator=identity,temperature seed=0,1 data=synthetic data.n=2000 {SHORT} "
            "hydra.sweep.dir=multirun/calibrate/doc", files=("multirun/calibrate/doc/*/seed=1/metrics.json",)),
    "python experiments/aggregate.py multirun/calibrate/<timestamp>":
        Run("python experiments/aggregate.py multirun/calibrate/doc",
            files=("multirun/calibrate/doc/results.csv", "multirun/calibrate/doc/summary.md",
                   "multirun/calibrate/doc/summary.png")),
    f"{CAL} -m experiment=kull2019": Skip(OPT_IN),
    f"{CAL} -m experiment=kull2019 calibrator=temperature": Skip(OPT_IN),
    "python experiments/aggregate.py multirun/kull2019/<timestamp>": Skip(f"aggregates the kull2019 sweep: {OPT_IN}"),
    "python experiments/aggregate.py multirun/kull2019/2026-01-01_12-00-00": Skip(f"aggregates a kull2019 sweep: {OPT_IN}"),
    "python experiments/aggregate.py SWEEP_DIR --out reports/zoo --published":
        Skip(f"a placeholder folder; --published compares with the kull2019 tables: {OPT_IN}"),
    f"{CAL} -m experiment=calibrator_zoo hydra/launcher=joblib": Skip(PRESET),
    f"{CAL} -m experiment=calibrator_zoo": Skip(PRESET),
    f"{CAL} -m experiment=calibrator_zoo hydra/launcher=joblib hydra.launcher.n_jobs=4": Skip(PRESET),
    f"{CAL} -m experiment=calibrator_zoo hydra/launcher=submitit_local": Skip(PRESET),
    f"{CAL} -m experiment=model_comparison hydra/launcher=joblib hydra.launcher.n_jobs=4": Skip(PRESET),
    f"{CAL} -m experiment=model_comparison hydra/launcher=slurm hydra.launcher.partition=cpu":
        Skip("needs a SLURM cluster"),
    f"{CAL} -m experiment=model_comparison hydra/launcher=slurm hydra.launcher.partition=cpu "
    "hydra.launcher.timeout_min=30 hydra.launcher.cpus_per_task=2 hydra.launcher.array_parallelism=32 "
    "'hydra.launcher.setup=[\"source ~/venvs/calib/bin/activate\"]'": Skip("needs a SLURM cluster"),
    f"{CAL} conformal=lac policy=risk_control hydra.run.dir=runs/ts_lac":
        _cal(f"{CAL} conformal=lac policy=risk_control hydra.run.dir=runs/ts_lac"),
    f"{CAL} conformal=lac policy=risk_control policy.target_risk=0.02 hydra.run.dir=runs/report":
        Run(f"{CAL} conformal=lac policy=risk_control policy.target_risk=0.02 hydra.run.dir=runs/report {SHORT}",
            files=("runs/report/metrics.json", "runs/report/report.html")),
    "calib report runs/report --out runs/report/page.html": Run(files=("runs/report/page.html",),
                                                                 stdout=r"run report"),
    f"{CAL} -m data=synthetic calibrator=temperature,isotonic seed=0,1,2 hydra.sweep.dir=multirun/report":
        Run(f"{CAL} -m data=synthetic data.n=2000 calibrator=temperature,isotonic seed=0,1 {SHORT} "
            "hydra.sweep.dir=multirun/report", files=("multirun/report/*/seed=1/report.html",)),
    "python experiments/aggregate.py multirun/report": Run(files=("multirun/report/report.html",
                                                                  "multirun/report/summary.md")),
    "calib report multirun/report": Run(stdout=r"sweep report"),
    "calib inspect runs/ts_lac/artifact": Run(stdout=r"calibrator\s+temperature"),
    "calib apply runs/ts_lac/artifact calib/data/c10lt_resnet110.npz --out decisions.csv":
        Run(files=("decisions.csv",), stdout=r"20216 rows"),
    "calib verify runs/ts_lac/artifact": Run(stdout=r"^OK "),
    "calib export runs/ts_lac/artifact --format onnx --out model.onnx": Run(files=("model.onnx",)),
    f"{CAL} conformal=lac policy=threshold hydra.run.dir=runs/ts_lac":
        _cal(f"{CAL} conformal=lac policy=threshold hydra.run.dir=runs/ts_lac"),
    f"{CAL} hydra.run.dir=runs/signed": _cal(f"{CAL} hydra.run.dir=runs/signed", prefix=f"{SIGNING} "),
    "calib verify runs/signed/artifact": Run(f"{SIGNING} calib verify runs/signed/artifact", stdout=r"^OK .*signature"),
    f"{CAL} data=builtin_shifted policy=risk_control hydra.run.dir=runs/rc":
        _cal(f"{CAL} data=builtin_shifted policy=risk_control hydra.run.dir=runs/rc"),
    "python -c \"import numpy as np, calib.datasets as d; x = d.load('c10lt_resnet110'); np.save('serving.npy', "
    "x.logits[x.split == 1])\"": Run(files=("serving.npy",)),
    "calib monitor runs/rc/artifact serving.npy --out monitor": Run(rc=(1,), files=("monitor/*",),
                                                                    stdout=r"calib monitor: ALARM"),
    f"{CAL} data=builtin_shifted policy=risk_control monitor.target=test":
        _cal(f"{CAL} data=builtin_shifted policy=risk_control monitor.target=test", out="outputs/doc/monitor_test"),
    f"{CAL} monitor.target=serving.npy monitor.fail_on_alarm=true":
        Run(f"{CAL} monitor.target=serving.npy monitor.fail_on_alarm=true {SHORT} hydra.run.dir=outputs/doc/monitor_fail",
            rc=(0, 1), files=("outputs/doc/monitor_fail/metrics.json", "outputs/doc/monitor_fail/monitor/*")),
    f"{CAL} data=cifar10_resnet56": Run(rc=(1,), stdout=r"not part of calib .*chenyaofo/pytorch-cifar-models"),
    f"{CAL} calibrator=matrix_scaling calibrator.solver=lbfgs calibrator.device=cuda": Skip("needs a CUDA device"),
    "python bench/bench_temperature.py": Skip(BENCH),
    "python bench/bench_calibrators.py": Skip(BENCH),
    "python bench/bench_conformal.py": Skip(BENCH),
    "python bench/odir.py": Skip(f"{BENCH}; {OPT_IN}"),
    "python bench/scaling.py": Skip(BENCH),
    "python bench/scaling.py --quick": Skip("tests/test_bench_scaling.py runs it"),
    "python bench/scaling.py --ops ts ece --max-n 300000 --repeats 5": Skip(BENCH),
    "python -c \"import calib.datasets as d; print(*(f'{k:32} {v}' for k, v in d.available().items()), sep='\\n')\"":
        Run(stdout=r"netcal_cifar100_densenet_bc100 .*Apache-2.0"),
}


def _strip_comment(line):
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def documented():
    """{normalised command: (file, full text)} of every python/calib command in the ```bash blocks."""
    found = {}
    for path in DOCS:
        if not path.is_file():
            continue
        for block in re.findall(r"```(?:bash|sh|shell)\n(.*?)```", path.read_text(), re.DOTALL):
            lines = block.splitlines()
            i = 0
            while i < len(lines):
                line = lines[i]
                heredoc = re.search(r"<<-?'?(\w+)'?", line)
                if heredoc and line.lstrip().startswith("python"):
                    end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == heredoc.group(1))
                    # key: the first line and the first file the script names (two heredocs differ by what they write)
                    body = "\n".join(lines[i:end + 1])
                    target = re.search(r"[\"']([\w./-]+\.(?:npz|npy|csv|pt))[\"']", body)
                    key = " ".join(_strip_comment(line).split()) + (f" {target.group(1)}" if target else "")
                    found.setdefault(key, (path.name, body))
                    i = end + 1
                    continue
                while line.rstrip().endswith("\\") and i + 1 < len(lines):
                    i += 1
                    line = line.rstrip()[:-1] + " " + lines[i].strip()
                i += 1
                for part in _strip_comment(line).split("&&"):
                    cmd = " ".join(part.split())
                    if cmd.startswith(("python ", "calib ")):
                        found.setdefault(cmd, (path.name, cmd))
    return found


def test_every_documented_command_is_listed():
    docs = documented()
    assert docs, "no ```bash command found in README.md and docs/*.md"
    missing = {cmd: where for cmd, (where, _) in docs.items() if cmd not in COMMANDS}
    assert not missing, ("documented commands neither run nor skipped in tests/test_docs_commands.py COMMANDS "
                         f"(add each with a short variant or a reason): {missing}")
    stale = sorted(set(COMMANDS) - set(docs))
    assert not stale, f"COMMANDS lists commands no longer documented (remove them): {stale}"
    for cmd, entry in COMMANDS.items():
        assert isinstance(entry, (Run, Skip)), cmd
        if isinstance(entry, Skip):
            assert entry.reason.strip(), f"{cmd}: a skip needs a reason"
        else:
            assert entry.files or entry.stdout, f"{cmd}: a run must check its results (files or stdout)"


# --- running them ------------------------------------------------------------------------------------------------
def _copy_repo(dest):
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, names):
        src = REPO / name
        if src.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)


@pytest.fixture(scope="module")
def plain_clone(tmp_path_factory):
    """Run every listed command in a copy of the repository with no ../shared: {command: (rc, output)}."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs a git checkout (git ls-files) to copy the repository")
    root = tmp_path_factory.mktemp("plain")
    clone = root / "calib"
    _copy_repo(clone)
    assert not (root / "shared").exists()
    bin_dir = root / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    (bin_dir / "calib").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m calib "$@"\n')
    (bin_dir / "calib").chmod(0o755)
    env = {k: v for k, v in os.environ.items()
           if k not in ("CALIB_SHARED_DATA", "CALIB_SIGNING_KEY", "CALIB_SIGNING_KEY_FILE", "PYTHONPATH")}
    env.update(PYTHONPATH=str(clone), MPLBACKEND="Agg", PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
               CALIB_NUM_THREADS="1", HYDRA_FULL_ERROR="0")
    docs = documented()
    results = {}
    for cmd, entry in COMMANDS.items():
        if not isinstance(entry, Run):
            continue
        text = entry.cmd or (docs[cmd][1] if cmd in docs else cmd)
        if cmd.startswith("python - <<"):
            text = text.replace("range(20)", "range(2)")
        proc = subprocess.run(["bash", "-c", text], cwd=clone, env=env, capture_output=True, text=True, timeout=600,
                              check=False)
        results[cmd] = (proc.returncode, proc.stdout + proc.stderr, clone)
    return results


RUNS = [cmd for cmd, entry in COMMANDS.items() if isinstance(entry, Run)]


@pytest.mark.slow
@pytest.mark.parametrize("cmd", RUNS, ids=[f"{i:02d}" for i in range(len(RUNS))])
def test_documented_command(plain_clone, cmd):
    entry = COMMANDS[cmd]
    rc, output, clone = plain_clone[cmd]
    tail = output[-3000:]
    assert rc in entry.rc, f"{cmd!r} (run as {entry.cmd or cmd!r}) exited {rc}, expected {entry.rc}:\n{tail}"
    for pattern in entry.files:
        hits = [p for p in clone.glob(pattern) if p.is_file() and p.stat().st_size > 0]
        assert hits, f"{cmd!r} wrote no non-empty {pattern}:\n{tail}"
    if entry.stdout:
        assert re.search(entry.stdout, output, re.MULTILINE), f"{cmd!r}: output does not match {entry.stdout!r}:\n{tail}"
