"""Out of core: the CLI pipeline and ``calib apply`` on a memory-mapped float16 logits file, with their peak RSS.

    python bench/out_of_core.py                     # 1,000,000 x 1000 float16 (2 GB on disk), the issue-14 check
    python bench/out_of_core.py --rows 50000        # a quick run
    python bench/out_of_core.py --rows 200000 --classes 1000 --keep --dir /tmp/ooc

1. Writes ``logits.npy`` (float16), ``labels.npy`` and ``split.npy`` (half calibration, half test) batch by batch
   with :class:`calib.io.LogitsWriter` into a temporary folder (removed at the end unless ``--keep``). The
   logits are synthetic and over-confident (a true class drawn first, its logit raised, everything scaled by
   ``--scale``), so temperature scaling has work to do.
2. Runs ``experiments/calibrate.py data=npz data.path=<logits.npy> data.mmap=true`` in a child process:
   temperature scaling, APS conformal sets, the risk-control policy, every metric, the figures and the artifact
   (``eval.calibration_bootstrap=0``: that interval is not computed out of core). ``--conformal lac
   --policy threshold`` runs the other pair.
3. Runs ``calib apply <artifact> <logits.npy> --out <decisions.npz>`` in a child process (the .npz holds the
   probabilities and sets of every row: 5 bytes x k per row on disk).

Each child's peak resident set is read with ``os.wait4`` (``ru_maxrss`` of that child alone, KiB on Linux) after it
exits, and must be at most ``--max-rss-gib`` (default 1 GiB); the wall time of each step is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_file(folder, n, k, *, scale=3.0, seed=0, batch=20_000):
    """logits.npy (float16), labels.npy, split.npy in ``folder``; returns the logits path."""
    from calib.io import LogitsWriter

    rng = np.random.default_rng(seed)
    path = Path(folder) / "logits.npy"
    with LogitsWriter(path, k, dtype="float16", overwrite=True) as w:
        for start in range(0, n, batch):
            b = min(batch, n - start)
            y = rng.integers(0, k, size=b)
            z = rng.standard_normal((b, k), dtype=np.float32)
            # the true class is raised by a random margin: sometimes above the rest (correct), sometimes not
            z[np.arange(b), y] += (1.0 + rng.gamma(4.0, 1.0, size=b)).astype(np.float32)
            z *= np.float32(scale)
            w.write(z, y, split=(np.arange(start, start + b) % 2).astype(np.int8))
    return path


def run_child(cmd, env):
    """Run ``cmd``; return (wall seconds, peak RSS in bytes of that child, return code, stderr tail)."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = []
    for line in proc.stdout:  # read as it comes (a full pipe would block the child)
        out.append(line.decode(errors="replace"))
        if len(out) > 400:
            del out[:200]
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t
    return wall, usage.ru_maxrss * 1024, proc.returncode, "".join(out[-40:])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--scale", type=float, default=3.0)
    ap.add_argument("--conformal", default="aps", choices=("aps", "lac"))
    ap.add_argument("--policy", default="risk_control", choices=("risk_control", "threshold"))
    ap.add_argument("--chunk-rows", type=int, default=None, help="rows per chunk (default: about 8 MiB of float32)")
    ap.add_argument("--max-rss-gib", type=float, default=1.0)
    ap.add_argument("--dir", default=None, help="folder for the generated files (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the generated files and outputs")
    ap.add_argument("--skip-apply", action="store_true")
    args = ap.parse_args(argv)

    folder = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="calib-ooc-"))
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": str(ROOT)}
    limit = args.max_rss_gib * 2 ** 30
    ok = True
    try:
        t = time.perf_counter()
        path = make_file(folder, args.rows, args.classes, scale=args.scale)
        size = path.stat().st_size
        print(f"generated {args.rows:,} x {args.classes} float16 logits ({size / 2 ** 30:.2f} GiB) + labels.npy + "
              f"split.npy with LogitsWriter in {time.perf_counter() - t:.1f} s: {path}", flush=True)
        run_dir = folder / "run"
        cmd = [sys.executable, "experiments/calibrate.py", "data=npz", f"data.path={path}", "data.mmap=true",
               f"conformal={args.conformal}", f"policy={args.policy}", "eval.calibration_bootstrap=0",
               f"hydra.run.dir={run_dir}"]
        if args.chunk_rows:
            cmd.append(f"+data.chunk_rows={args.chunk_rows}")
        wall, rss, code, tail = run_child(cmd, env)
        print(f"calibrate.py (temperature + {args.conformal} + {args.policy}, metrics, plots, artifact): "
              f"wall {wall:.1f} s, peak RSS {rss / 2 ** 20:.0f} MiB (limit {limit / 2 ** 20:.0f} MiB), exit {code}",
              flush=True)
        if code != 0:
            print(tail)
            raise SystemExit(f"calibrate.py failed (exit {code})")
        m = json.loads((run_dir / "metrics.json").read_text())
        print(f"  T = {m['calibrator']['temperature']:.4f}; test ECE {m['uncalibrated']['ece']:.4f} -> "
              f"{m['calibrated']['ece']:.4f}, NLL {m['uncalibrated']['nll']:.4f} -> {m['calibrated']['nll']:.4f}, "
              f"accuracy {m['calibrated']['accuracy']:.4f}")
        c = m["conformal"]
        print(f"  {c['score']} alpha={c['alpha']}: coverage {c['coverage']:.4f}, mean set size {c['mean_set_size']:.2f}; "
              f"policy {m['policy']['kind']}: automation {m['policy']['automation_rate']:.4f}, selective risk "
              f"{m['policy']['selective_risk']}")
        print(f"  files: {sorted(p.name for p in run_dir.iterdir() if not p.name.startswith('.'))}")
        ok &= rss <= limit
        if not args.skip_apply:
            out = folder / "decisions.npz"
            cmd = [sys.executable, "-m", "calib", "apply", str(run_dir / "artifact"), str(path), "--out", str(out),
                   "--overwrite", "--no-progress"]
            if args.chunk_rows:
                cmd += ["--chunk-rows", str(args.chunk_rows)]
            wall, rss, code, tail = run_child(cmd, env)
            print(f"calib apply (streamed, .npz out {out.stat().st_size / 2 ** 30 if out.exists() else 0:.2f} GiB): "
                  f"wall {wall:.1f} s, peak RSS {rss / 2 ** 20:.0f} MiB (limit {limit / 2 ** 20:.0f} MiB), exit {code}",
                  flush=True)
            if code != 0:
                print(tail)
                raise SystemExit(f"calib apply failed (exit {code})")
            ok &= rss <= limit
            if not args.keep:
                out.unlink()
        assert ok, f"peak RSS above {args.max_rss_gib} GiB"
        print(f"OK: every child's peak RSS <= {args.max_rss_gib:g} GiB")
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            print(f"kept {folder}")


if __name__ == "__main__":
    main()
