"""Serving speed of calib.runtime: import + load of an artifact, and apply throughput vs the library path
and one float32 softmax pass over the same logits, in one process.

    python bench/runtime.py            # 1,000,000 x 10 and 100,000 x 1,000 float32 logits
    python bench/runtime.py --quick    # 100,000 x 10 and 10,000 x 1,000, one repeat

The pipeline is temperature scaling + LAC (alpha 0.1) + a threshold policy, fitted on 20,000 rows of the
same synthetic distribution. "runtime apply" is ``calib.runtime.load(path).apply(x)``: probabilities, label,
confidence and band, sets, actions, outputs and reasons, in row chunks, input checks included. "library
path" calls the fitted components on the whole batch (``predict_proba`` -> ``predict_set`` -> ``route``).
"softmax pass" is one float32 ``exp(x - max) / sum`` over the array (numpy, no checks): the floor.
Target (issue 13): runtime apply within 3x the softmax pass. Import + load is timed in a fresh interpreter
(best of --repeat), which also reports whether any of torch, scipy, hydra, omegaconf, matplotlib, netcal
was imported.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import best_of, print_table, synthetic_logits, versions  # noqa: E402

HEAVY = ("torch", "scipy", "hydra", "omegaconf", "matplotlib", "netcal")

_LOAD = r"""
import json, sys, time
t = time.perf_counter()
import numpy
t_numpy = time.perf_counter() - t
import calib.runtime
t_import = time.perf_counter() - t
pipe = calib.runtime.load(sys.argv[1])
t_total = time.perf_counter() - t
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(%r))
print(json.dumps({"numpy_s": t_numpy, "import_s": t_import, "total_s": t_total, "heavy": heavy}))
""" % (HEAVY,)


def softmax_pass(x):
    e = x - x.max(axis=1, keepdims=True)
    np.exp(e, out=e)
    e /= e.sum(axis=1, keepdims=True)
    return e


def fit_pipeline(k, path):
    from calib.calibrators import TemperatureScaling
    from calib.conformal import SplitConformal
    from calib.deploy import FittedPipeline
    from calib.policy import ThresholdPolicy

    x, y = synthetic_logits(20_000, k, seed=1)
    pipe = FittedPipeline.fit(x, y, calibrator=TemperatureScaling(), conformal=SplitConformal(score="lac", alpha=0.1),
                              policy=ThresholdPolicy(target_coverage=0.8, fallback="none"))
    pipe.save(path)
    return pipe


def load_times(path, repeat):
    runs = []
    for _ in range(repeat):
        done = subprocess.run([sys.executable, "-c", _LOAD, str(path)], capture_output=True, text=True, check=True)
        runs.append(json.loads(done.stdout))
    best = min(runs, key=lambda r: r["total_s"])
    return best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="100,000 x 10 and 10,000 x 1,000, one repeat")
    args = ap.parse_args(argv)
    print(versions())
    shapes = [(1_000_000, 10), (100_000, 1_000)]
    if args.quick:
        shapes, args.repeat = [(100_000, 10), (10_000, 1_000)], 1

    import calib.runtime

    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for n, k in shapes:
            path = Path(tmp) / f"ts_lac_threshold_{k}"
            lib = fit_pipeline(k, path)
            if k == shapes[0][1]:
                load = load_times(path, max(args.repeat, 3))
                print(f"fresh interpreter: import numpy {load['numpy_s'] * 1e3:.1f} ms; + import calib.runtime "
                      f"{load['import_s'] * 1e3:.1f} ms; + load of a TS + LAC + threshold artifact "
                      f"{load['total_s'] * 1e3:.1f} ms in all; heavy modules imported: {load['heavy'] or 'none'}")
            pipe = calib.runtime.load(path)
            x, _ = synthetic_logits(n, k, seed=2)
            t_soft, _ = best_of(lambda: softmax_pass(x), args.repeat)

            def library():
                p = lib.calibrator.predict_proba(x)
                s = lib.conformal.predict_set(p)
                return p, s, lib.policy.route(p, sets=None)

            t_lib, (p_lib, s_lib, d_lib) = best_of(library, args.repeat)
            t_run, out = best_of(lambda: pipe.apply(x), args.repeat)
            same = (np.array_equal(out.probs, p_lib) and np.array_equal(out.sets, s_lib)
                    and np.array_equal(out.actions, d_lib.actions))
            for name, t in (("softmax pass", t_soft), ("library path", t_lib), ("runtime apply", t_run)):
                rows.append((f"{n:,} x {k:,}", name, f"{t:.3f}", f"{n / t / 1e6:.2f}", f"{t / t_soft:.2f}",
                             ("equal" if same else "DIFFERENT") if name == "runtime apply" else ""))
        print_table(rows, ["logits", "path", "seconds", "M rows/s", "x softmax", "outputs vs library"])
    print("target: runtime apply within 3x the softmax pass")


if __name__ == "__main__":
    main()
