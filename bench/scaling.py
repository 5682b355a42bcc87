"""How cost grows: time and peak RSS of TS, APS and ECE vs n and vs k, with fitted power-law exponents.

    python bench/scaling.py                  # n = 10k..1M at k = 100 and 1000; k = 10..10,000 at n = 100k
    python bench/scaling.py --quick          # small grid, smoke run (< 1 minute)
    python bench/scaling.py --ops ts ece --max-n 300000 --repeats 5

Operations, each through calib's public API, on ``n`` rows in total:

- ``ts``:  ``TemperatureScaling().fit(logits[:n/2], labels[:n/2]).predict_proba(logits[n/2:])``
- ``aps``: ``SplitConformal(score="aps", alpha=0.1, randomized=False, never_empty=False)``
  ``.fit(probs[:n/2], labels[:n/2]).predict_set(probs[n/2:])`` (non-randomised, so repeatable)
- ``ece``: ``expected_calibration_error(probs, labels)`` (15 equal-width bins) on all n rows

Every (operation, n, k) cell runs in a fresh child process (``python bench/scaling.py --child ...``), so its
memory is its own. The child makes seeded synthetic inputs in row chunks (not timed): true logits
``z = 2 N(0, 1)``, labels drawn from ``softmax(z)``, inputs ``2.5 z`` as float32 logits (ts) or their float32
softmax (aps, ece), so TS should find T close to 2.5 (its "check": mean confidence close to accuracy) and APS
should cover about 90% of the test rows. The timed region calls calib only; time is the best of ``--repeats``
runs (a cell whose run takes more than ``--long`` seconds is run once), after one untimed warm-up call on the
first 1,000 rows (lazy imports are a one-off cost, not growth); "cpu s" is the smallest process CPU time (all
threads) of the same runs, less sensitive than wall time to other work on a shared machine ("load": the
1-minute load average when the cell started).
Memory, from ``/proc/self/status``: "RSS before" is VmRSS after imports, input generation and ``malloc_trim``
(glibc: the heap freed by generation goes back to the OS, so the operation cannot reuse it unseen); the peak-RSS
mark (VmHWM) is then reset (``/proc/self/clear_refs`` = 5) and read after the warm-up and the runs, so "peak
RSS" is the child's high-water mark during the operation and "peak above inputs" = peak RSS - RSS before (the
operation's own memory: outputs, temporaries, and the few MiB of modules the warm-up imports). Without
``clear_refs`` the process-lifetime ``ru_maxrss`` is used and the table says so. A cell whose estimated peak
exceeds ``--mem-limit-gib`` is skipped with the estimate printed.

Exponents: least squares of log(time) on log(work) over the cells with ``n * k >= --fit-min`` (below that,
fixed per-call overhead dominates), work = n*k for ts and ece, n*k*log2(k) for aps (and n*k, to compare); also
the slope in n alone (fixed k) and in k alone (fixed n = 100k); then ``cpu = c1 * n + c2 * n * k`` over every
cell (a per-row and a per-entry cost).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, versions

ROOT = Path(__file__).resolve().parents[1]
OPS = ("ts", "aps", "ece")
MIB = 1 << 20


# --- child: one cell ---------------------------------------------------------------------------------
def _status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak():
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _trim_heap():
    """Give the heap memory freed by input generation back to the OS (glibc), so it is not in "RSS before" for
    the operation to reuse unseen (it hid up to ~40 MiB of the operation's own memory)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def make_inputs(op, n, k, seed=0):
    """float32 logits (ts) or probabilities (aps, ece) and int64 labels, built in row chunks of ~4M entries."""
    rng = np.random.default_rng([seed, n, k])
    x = np.empty((n, k), dtype=np.float32)
    y = np.empty(n, dtype=np.int64)
    rows = max(1, (1 << 22) // k)
    for s in range(0, n, rows):
        m = min(rows, n - s)
        z = rng.standard_normal((m, k), dtype=np.float32)
        z *= 2.0
        p = z - z.max(axis=1, keepdims=True)
        np.exp(p, out=p)
        c = np.cumsum(p, axis=1, dtype=np.float64)
        u = rng.random(m) * c[:, -1]
        y[s:s + m] = np.minimum((c < u[:, None]).sum(axis=1), k - 1)  # label ~ softmax(z)
        del c, p
        z *= 2.5  # over-confident: the fitted temperature should be about 2.5
        if op != "ts":
            z -= z.max(axis=1, keepdims=True)
            np.exp(z, out=z)
            z /= z.sum(axis=1, keepdims=True, dtype=np.float32)
        x[s:s + m] = z
    return x, y


def run_cell(op, n, k, repeats, long_s, seed=0):
    import warnings

    from calib._chunks import num_threads
    from calib.calibrators import TemperatureScaling
    from calib.conformal import SplitConformal
    from calib.metrics import expected_calibration_error

    x, y = make_inputs(op, n, k, seed)
    h = n // 2
    if op == "ts":
        def call(x, y, h=h):
            return TemperatureScaling().fit(x[:h], y[:h]).predict_proba(x[h:])
    elif op == "aps":
        def call(x, y, h=h):
            return SplitConformal(score="aps", alpha=0.1, randomized=False,
                                  never_empty=False).fit(x[:h], y[:h]).predict_set(x[h:])
    else:
        def call(x, y, h=None):
            return expected_calibration_error(x, y)

    gc.collect()
    _trim_heap()
    rss_before = _status_kib("VmRSS")
    reset = _reset_peak()
    times, cpus = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SetSizeWarning etc.: this measures cost, not sets
        # warm-up, untimed (lazy imports are a one-off cost, not growth); after the RSS mark, so its memory
        # (imports, allocator pools it leaves) counts as the operation's
        call(x[:1000], y[:1000], 500)
        for _ in range(repeats):
            t, c = time.perf_counter(), time.process_time()
            out = call(x, y)
            times.append(time.perf_counter() - t)
            cpus.append(time.process_time() - c)
            if len(times) < repeats and times[-1] <= long_s:
                del out
            else:
                break
    peak = _status_kib("VmHWM") if reset else _peak_lifetime_kib()
    # checks on the last output, outside the timed region
    if op == "ts":
        check = _ts_check(out, y, h)
    elif op == "aps":
        cover = float(out[np.arange(n - h), y[h:]].mean())
        check = f"cover={cover:.3f} size={float(out.sum(axis=1).mean()):.2f}"
    else:
        check = f"ece={out:.4f}"
    return {"op": op, "n": n, "k": k, "time": min(times), "cpu": min(cpus), "runs": len(times),
            "rss_before_kib": rss_before, "peak_kib": peak, "peak_reset": reset,
            "inputs_bytes": int(x.nbytes + y.nbytes), "check": check,
            "threads": num_threads()}


def _ts_check(probs, y, h):
    # mean top-class probability of the calibrated test rows vs their accuracy: a calibrated TS makes them close
    conf = probs.max(axis=1).mean(dtype=np.float64)
    acc = (probs.argmax(axis=1) == y[h:]).mean()
    return f"conf={conf:.3f} acc={acc:.3f}"


def _peak_lifetime_kib():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB


# --- parent: the grid --------------------------------------------------------------------------------
def estimate_peak_bytes(op, n, k):
    """Rough peak RSS of a cell: interpreter + inputs + output + chunk temporaries (used to skip, not reported)."""
    inputs = n * k * 4 + n * 8
    out = {"ts": (n - n // 2) * k * 4, "aps": (n - n // 2) * k, "ece": n * 16}[op]
    return 150 * MIB + inputs + out + 256 * MIB


def grid(quick, max_n):
    if quick:
        by_n, by_k = {10: (2_000, 8_000, 32_000), 100: (2_000, 8_000)}, (2_000, (10, 100, 400))
    else:
        ns = (10_000, 30_000, 100_000, 300_000, 1_000_000)
        by_n, by_k = {100: ns, 1000: ns}, (100_000, (10, 100, 1000, 10_000))
    by_n = {k: tuple(n for n in ns if n <= max_n) for k, ns in by_n.items()}
    n_k = by_k[0] if by_k[0] <= max_n else None
    by_k = (n_k, by_k[1] if n_k is not None else ())
    cells = sorted({(n, k) for k, ns in by_n.items() for n in ns} | {(by_k[0], k) for k in by_k[1]},
                   key=lambda c: (c[0] * c[1], c))
    return by_n, by_k, cells


def run_child(op, n, k, args):
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", op, str(n), str(k), str(args.repeats),
           str(args.long)]
    # the child imports calib from this checkout (what is measured), whatever else is installed
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))))
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env, cwd=ROOT,
                              check=False)
    except subprocess.TimeoutExpired:
        return {"op": op, "n": n, "k": k, "error": f"timed out after {args.timeout} s"}
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        return {"op": op, "n": n, "k": k, "error": f"child failed (exit {done.returncode}): {tail}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def fmt_row(r):
    if "error" in r or "skipped" in r:
        return [r["op"], f"{r['n']:,}", f"{r['k']:,}", r.get("load", "-"), "-", "-", "-", "-", "-", "-", "-", "-",
                r.get("skipped") or r["error"]]
    before, peak = r["rss_before_kib"] / 1024, r["peak_kib"] / 1024
    return [r["op"], f"{r['n']:,}", f"{r['k']:,}", r["load"], r["runs"], f"{r['time']:.4f}", f"{r['cpu']:.4f}",
            f"{r['cpu'] / (r['n'] * r['k']) * 1e9:.2f}", f"{r['inputs_bytes'] / MIB:.0f}", f"{before:.0f}",
            f"{peak:.0f}", f"{peak - before:.0f}", r["check"]]


HEADER = ["op", "n", "k", "load", "runs", "wall s", "cpu s", "cpu ns/(n*k)", "inputs MiB", "RSS before MiB",
          "peak RSS MiB", "peak above inputs MiB", "check"]


def work(op, n, k):
    return n * k * (math.log2(k) if op == "aps" else 1.0)


def slope(points):
    """Least-squares slope (and max |residual| as a time ratio) of log t on log w."""
    if len(points) < 2:
        return None
    w, t = np.log([p[0] for p in points]), np.log([p[1] for p in points])
    a, b = np.polyfit(w, t, 1)
    return float(a), float(np.exp(np.max(np.abs(t - (a * w + b)))))


def print_fits(results, by_n, by_k, fit_min):
    print(f"\nFitted exponents (least squares on log-log; cells with n*k >= {fit_min:,.0f}; residual: the largest "
          "factor between a cell's cpu time and the fitted line):")
    rows = []
    for op in OPS:
        ok = [r for r in results if r["op"] == op and "time" in r and r["n"] * r["k"] >= fit_min]
        law = "(n*k*log k)^a" if op == "aps" else "(n*k)^a"
        groups = [(f"time ~ {law}", ok, lambda r, op=op: work(op, r["n"], r["k"]), "n*k")]
        if op == "aps":  # the same cells against n*k: which law fits better shows in the residual
            groups.append(("time ~ (n*k)^a", ok, lambda r: r["n"] * r["k"], "n*k"))
        groups += [(f"time ~ n^a at k = {k:,}", [r for r in ok if r["k"] == k and r["n"] in ns], lambda r: r["n"], "n")
                   for k, ns in by_n.items()]
        if by_k[0] is not None:
            groups.append((f"time ~ k^a at n = {by_k[0]:,}", [r for r in ok if r["n"] == by_k[0] and r["k"] in by_k[1]],
                           lambda r: r["k"], "k"))
        for model, cells, x, name in groups:
            cpu, wall = slope([(x(r), r["cpu"]) for r in cells]), slope([(x(r), r["time"]) for r in cells])
            if cpu:
                span = [r["n"] * r["k"] if name == "n*k" else x(r) for r in cells]
                rows.append([op, model, f"{cpu[0]:.3f}", f"{wall[0]:.3f}", len(cells),
                             f"{name} {min(span):,.3g} .. {max(span):,.3g}", f"{cpu[1]:.2f}"])
    if rows:
        print_table(rows, ["op", "model", "a (cpu)", "a (wall)", "cells", "range", "max residual (x)"])
    else:
        print("(no cells above the threshold)")
    print("\nPer-row plus per-entry cost, every measured cell (least squares on cpu time relative to each cell):")
    for op in OPS:
        cells = [r for r in results if r["op"] == op and "time" in r]
        if len(cells) >= 2:
            a = np.array([[r["n"], r["n"] * r["k"]] for r in cells], dtype=np.float64)
            t = np.array([r["cpu"] for r in cells])
            c = np.linalg.lstsq(a / t[:, None], np.ones(len(cells)), rcond=None)[0]
            ratio = (a @ c) / t
            print(f"  {op}: cpu ~ {c[0] * 1e9:.0f} ns * n + {c[1] * 1e9:.2f} ns * n*k over {len(cells)} cells, "
                  f"max residual x{np.max(np.maximum(ratio, 1 / ratio)):.2f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small grid (n <= 32k, k <= 400), smoke run")
    ap.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS))
    ap.add_argument("--max-n", type=int, default=None, help="drop cells with more rows")
    ap.add_argument("--repeats", type=int, default=3, help="best of this many runs per cell")
    ap.add_argument("--long", type=float, default=10.0, help="a cell whose run takes longer is run once")
    ap.add_argument("--mem-limit-gib", type=float, default=8.0, help="skip a cell whose estimated peak is larger")
    ap.add_argument("--fit-min", type=float, default=None,
                    help="fit exponents over cells with n*k >= this (default 1e7; 1e5 with --quick)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per cell")
    ap.add_argument("--child", nargs=5, metavar=("OP", "N", "K", "REPEATS", "LONG"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        op, n, k, repeats, long_s = args.child
        print(json.dumps(run_cell(op, int(n), int(k), int(repeats), float(long_s))))
        return
    if args.repeats < 1:
        ap.error(f"expected --repeats >= 1, got {args.repeats}")
    fit_min = args.fit_min if args.fit_min is not None else (1e5 if args.quick else 1e7)
    by_n, by_k, cells = grid(args.quick, args.max_n or 10 ** 12)
    if not cells:
        ap.error(f"no cell of the {'quick ' if args.quick else ''}grid has n <= --max-n {args.max_n}")

    import platform

    print(f"{time.strftime('%Y-%m-%d %H:%M %Z')}; {platform.machine()}, {os.cpu_count()} cores "
          f"(load {os.getloadavg()[0]:.2f}); python bench/scaling.py "
          f"{' '.join(argv if argv is not None else sys.argv[1:])}")
    print(versions())
    print(f"n = rows in total (ts, aps: first half calibrates, second half predicted); best of {args.repeats} "
          f"(one run when a run exceeds {args.long:g} s); memory limit {args.mem_limit_gib:g} GiB")
    results = []
    t0 = time.perf_counter()
    limit = args.mem_limit_gib * (1 << 30)
    for op in args.ops:
        for n, k in cells:
            est = estimate_peak_bytes(op, n, k)
            load = f"{os.getloadavg()[0]:.1f}"  # 1-minute load average at the start: others' work on the machine
            if est > limit:
                r = {"op": op, "n": n, "k": k, "load": load,
                     "skipped": f"skipped: estimated peak {est / (1 << 30):.1f} GiB > --mem-limit-gib "
                                f"{args.mem_limit_gib:g}"}
            else:
                r = dict(run_child(op, n, k, args), load=load)
            results.append(r)
            print("  " + " | ".join(str(c) for c in fmt_row(r)), file=sys.stderr, flush=True)
    threads = {r["threads"] for r in results if "threads" in r}
    reset = all(r.get("peak_reset", True) for r in results)
    print(f"calib threads: {', '.join(map(str, sorted(threads))) or '-'}; peak RSS from "
          f"{'VmHWM reset before the runs' if reset else 'ru_maxrss (process lifetime: clear_refs refused)'}; "
          f"grid wall time {time.perf_counter() - t0:.0f} s (load at the end {os.getloadavg()[0]:.2f})\n")
    sweeps = [(f"vs n at k = {k:,}", lambda r, k=k, ns=ns: r["k"] == k and r["n"] in ns) for k, ns in by_n.items()]
    if by_k[0] is not None:
        sweeps.append((f"vs k at n = {by_k[0]:,}", lambda r: r["n"] == by_k[0] and r["k"] in by_k[1]))
    for op in args.ops:
        rows = [r for r in results if r["op"] == op]
        for title, sel in sweeps:
            part = sorted((r for r in rows if sel(r)), key=lambda r: (r["n"], r["k"]))
            if part:
                print(f"{op} {title}")
                print_table([fmt_row(r) for r in part], HEADER)
                print()
    print_fits(results, by_n, by_k, fit_min)


if __name__ == "__main__":
    main()
