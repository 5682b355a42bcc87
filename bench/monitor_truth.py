"""What `calib monitor` says vs what is true, on the four embedded c10lt models (about 6 s).

    python bench/monitor_truth.py
    python bench/monitor_truth.py --target-risk 0.05 --models c10lt_resnet110

Per model: the pipeline (temperature scaling + risk_control at --target-risk, delta 0.1) is fitted on split 0 and
saved; the monitor reads only the artifact and an unlabeled batch. Two batches:

- ``shift``: split 1 (balanced test; split 0 is long-tailed, a real label shift);
- ``none``: a control without shift: split 0's rows are halved at random (seeded), the pipeline is fitted on one
  half and the other half is the batch.

Columns: the true and estimated total variation between calibration and batch priors; true accuracy vs the ATC
estimate [95% interval]; the policy's true silent-failure rate (answered and wrong, from the labels the monitor
never sees) vs its predictions (calibrated confidence, and prior-corrected); the alarms that fired.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import calib.datasets
from calib.calibrators import TemperatureScaling
from calib.deploy import FittedPipeline
from calib.evaluation.monitor import monitor_batch
from calib.policy import RiskControlPolicy

MODELS = ("c10lt_resnet110", "c10lt_resnet110_sd", "c10lt_densenet40", "c10lt_wrn28")


def one(name, case, target_risk, seed, tmp):
    d = calib.datasets.load(name)
    if case == "shift":
        cal, bat = d.split == 0, d.split == 1
    else:
        rows = np.flatnonzero(d.split == 0)
        perm = np.random.default_rng(seed).permutation(rows)
        cal, bat = np.zeros(d.labels.size, bool), np.zeros(d.labels.size, bool)
        cal[perm[: rows.size // 2]], bat[perm[rows.size // 2:]] = True, True
    pipe = FittedPipeline.fit(d.logits[cal], d.labels[cal], calibrator=TemperatureScaling(),
                              policy=RiskControlPolicy(target_risk=target_risk, delta=0.1))
    path = Path(tmp) / f"{name}-{case}"
    pipe.save(path)
    served = FittedPipeline.load(path)  # the monitor sees the artifact only
    t0 = time.perf_counter()
    rep = monitor_batch(served, d.logits[bat], seed=seed).report
    wall = time.perf_counter() - t0
    y = d.labels[bat]
    dec = served.apply(d.logits[bat])
    k = d.logits.shape[1]
    src = np.bincount(d.labels[cal], minlength=k) / cal.sum()
    tgt = np.bincount(y, minlength=k) / y.size
    true_sf = float(np.mean((dec.actions == 0) & (dec.output != y)))
    acc = rep["accuracy"]["atc"]
    pol = rep["policy"]
    fired = [a["name"] for a in rep["alarms"] if a["fired"]]
    return (f"| {name} | {case} | {0.5 * np.abs(tgt - src).sum():.3f} | {rep['label_shift']['total_variation']:.3f} "
            f"| {float(np.mean(dec.label == y)):.3f} | {acc['estimate']:.3f} [{acc['low']:.3f}, {acc['high']:.3f}] "
            f"| {true_sf:.4f} | {pol['predicted_silent_failure_rate']:.4f} "
            f"| {pol['predicted_silent_failure_rate_prior_corrected']:.4f} | {', '.join(fired) or 'none'} "
            f"| {wall:.2f} |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), help="embedded c10lt sets (default: all four)")
    ap.add_argument("--target-risk", type=float, default=0.02, help="risk_control target (default 0.02)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the control split and the bootstraps")
    args = ap.parse_args(argv)
    print(f"risk_control target_risk={args.target_risk}, delta=0.1; monitor defaults (alpha 0.05, FDR 0.1, EM, "
          "energy score, 200 bootstrap resamples)\n")
    print("| model | batch | TV true | TV est. | accuracy true | ATC [95%] | silent failures true | predicted "
          "| prior-corrected | alarms | monitor s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            for case in ("shift", "none"):
                print(one(name, case, args.target_risk, args.seed, tmp), flush=True)


if __name__ == "__main__":
    main()
