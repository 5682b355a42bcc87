"""Temperature scaling fit and ECE: calib vs netcal on the same inputs, in one process.

    python bench/bench_temperature.py            # 50,000 x 1,000 float32 logits
    python bench/bench_temperature.py --quick    # 5,000 x 100 smoke run

Prints wall times (best of --repeat) and ratios. Targets (issue 2): TS fit >= 25x faster than netcal's
float64 path; TS fit within 4x of one float32 logsumexp pass over the logits; ECE >= 3x faster than netcal.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import warnings

import numpy as np

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import best_of, print_table, quiet, synthetic_logits, versions  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--k", type=int, default=1_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="5,000 x 100, one repeat")
    args = ap.parse_args(argv)
    print(versions("netcal"))
    if args.quick:
        args.n, args.k, args.repeat = 5_000, 100, 1

    import torch
    from scipy.special import logsumexp

    from calib.calibrators import TemperatureScaling, softmax
    from calib.metrics import expected_calibration_error

    logits, labels = synthetic_logits(args.n, args.k)
    print(f"inputs: {args.n} x {args.k} float32 logits, torch threads {torch.get_num_threads()}")

    t_lse_np, _ = best_of(lambda: np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)), args.repeat)
    xt = torch.from_numpy(logits)
    t_lse_torch, _ = best_of(lambda: torch.logsumexp(xt, dim=1), args.repeat)
    t_lse_scipy, _ = best_of(lambda: logsumexp(logits, axis=1), args.repeat)
    t_ours, ts = best_of(lambda: TemperatureScaling().fit(logits, labels), args.repeat)

    probs64 = softmax(logits.astype(np.float64))
    from netcal.metrics import ECE
    from netcal.scaling import TemperatureScaling as NetcalTS

    def netcal_fit():
        m = NetcalTS()
        with quiet(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m.fit(probs64, labels)
        return m

    t_netcal, nts = best_of(netcal_fit, 1)
    t_netcal_total = t_netcal  # netcal also needs the float64 softmax computed above (not counted)
    t_netcal_f32, nts32 = best_of(lambda: _netcal_f32(NetcalTS, probs64, labels), 1)

    probs32 = softmax(logits)
    t_ece_ours, e_ours = best_of(lambda: expected_calibration_error(probs32, labels, n_bins=15), args.repeat)
    t_ece_netcal, e_netcal = best_of(lambda: ECE(15).measure(probs32, labels), args.repeat)

    rows = [
        ["TS fit: calib (float32 in)", f"{t_ours:.3f}", f"T={ts.temperature_:.6f}", ""],
        ["TS fit: netcal (float64 probs)", f"{t_netcal_total:.3f}", f"T={1 / float(np.ravel(nts.temperature)[0]):.6f}",
         f"calib {t_netcal_total / t_ours:.1f}x faster (target >= 25x)"],
        ["TS fit: netcal (float32 probs)", f"{t_netcal_f32:.3f}", f"T={1 / float(np.ravel(nts32.temperature)[0]):.6f}",
         "netcal's float32 trap: T stays 1"],
        ["logsumexp pass: torch float32", f"{t_lse_torch:.3f}", "",
         f"calib TS fit = {t_ours / t_lse_torch:.2f}x this (target <= 4x)"],
        ["logsumexp pass: numpy float32", f"{t_lse_np:.3f}", "", f"calib TS fit = {t_ours / t_lse_np:.2f}x this"],
        ["logsumexp pass: scipy float32", f"{t_lse_scipy:.3f}", "", f"calib TS fit = {t_ours / t_lse_scipy:.2f}x this"],
        ["ECE(15): calib", f"{t_ece_ours:.4f}", f"{e_ours:.8f}", ""],
        ["ECE(15): netcal", f"{t_ece_netcal:.4f}", f"{e_netcal:.8f}", f"calib {t_ece_netcal / t_ece_ours:.1f}x faster (target >= 3x)"],
    ]
    print_table(rows, ["what", "seconds", "result", "ratio"])
    print(f"solver passes over the full data: {ts.fit_info_['n_passes']}")
    print(f"'import calib' wall time in a fresh interpreter: {_import_time():.3f} s")


def _netcal_f32(cls, probs64, labels):
    m = cls()
    with quiet(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m.fit(probs64.astype(np.float32), labels)
    return m


def _import_time():
    code = "import time; t = time.perf_counter(); import calib, calib.calibrators, calib.metrics, calib.artifacts; print(time.perf_counter() - t)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


if __name__ == "__main__":
    main()
