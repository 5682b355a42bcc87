"""Wall time of a preset sweep, end to end, as a user runs it.

    python bench/presets.py                                   # experiment=calibrator_zoo hydra/launcher=joblib
    python bench/presets.py experiment=kull2019               # any overrides of experiments/calibrate.py -m

Runs ``python experiments/calibrate.py -m <overrides>`` in a child process into a temporary sweep folder, then
prints the wall time, the child's CPU time (user + system, its workers included), the number of jobs, how many
wrote a metrics.json (a job that failed or was killed writes none) and the five slowest configurations.
Exits 1 when any job did not finish.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None):
    overrides = list(sys.argv[1:] if argv is None else argv) or ["experiment=calibrator_zoo", "hydra/launcher=joblib"]
    with tempfile.TemporaryDirectory(prefix="calib-preset-") as tmp:
        cmd = [sys.executable, str(ROOT / "experiments" / "calibrate.py"), "-m", *overrides,
               f"hydra.sweep.dir={tmp}/sweep"]
        print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {os.cpu_count()} cores, load "
              f"{os.getloadavg()[0]:.2f}; {' '.join(['python', 'experiments/calibrate.py', '-m', *overrides])}",
              flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wall = time.perf_counter() - t0
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        sweep = Path(tmp) / "sweep"
        jobs = sorted(p.parent.parent for p in sweep.rglob(".hydra/overrides.yaml"))
        done = [j for j in jobs if (j / "metrics.json").exists()]
        times = []
        for j in done:
            t = json.loads((j / "timings.json").read_text()) if (j / "timings.json").exists() else {}
            times.append((t.get("total_s", float("nan")), j.relative_to(sweep).as_posix()))
        print(f"wall {wall:.0f} s ({wall / 60:.1f} min); CPU {usage.ru_utime + usage.ru_stime:.0f} s; "
              f"jobs {len(jobs)}, finished {len(done)}, failed or unfinished {len(jobs) - len(done)}; "
              f"exit code {proc.returncode}")
        for seconds, name in sorted(times, reverse=True)[:5]:
            print(f"  {seconds:7.1f} s  {name}")
        if proc.returncode != 0:
            print(proc.stderr[-2000:], file=sys.stderr)
        return 0 if proc.returncode == 0 and jobs and len(done) == len(jobs) else 1


if __name__ == "__main__":
    sys.exit(main())
