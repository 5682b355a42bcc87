"""Regenerate the README screenshots (docs/img/*.png) from the quick start's data and settings:
``python docs/img/make_screenshots.py [--out docs/img] [--all]``.

The quick start (``python experiments/calibrate.py conformal=lac policy=risk_control``) on the embedded
``c10lt_resnet110`` logits, split as by default (rows pooled, stratified seeded split, seed 0): temperature
scaling, APS sets at alpha = 0.1, risk control at target 0.02 (delta 0.1). Writes ``reliability.png``,
``conformal_coverage.png`` and ``completion_frontier.png`` (``--all``: every figure of the run) through the same
writer as a run (:func:`calib.plotting.render` with the data name in every title), at a small dpi so each file stays
under 80 KB. Needs the package data only (no ``../shared``); takes about a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")

SCREENSHOTS = ("reliability.png", "conformal_coverage.png", "completion_frontier.png")
MAX_BYTES = 80_000


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent),
                        help="folder for the PNGs (default: docs/img next to this script)")
    parser.add_argument("--all", action="store_true", help="also write every other figure of the run")
    parser.add_argument("--dpi", type=int, default=100, help="resolution (default 100: files under 80 KB)")
    args = parser.parse_args(argv)

    from calib import datasets
    from calib.calibrators import TemperatureScaling
    from calib.conformal import SplitConformal
    from calib.evaluation.pipeline import fit_and_evaluate
    from calib.plotting import reliability, render, save_figure, with_data_name
    from calib.policy import RiskControlPolicy

    name = "c10lt_resnet110"
    data = datasets.load(name)
    cal, test = data.split_cal_test(cal_fraction=0.5, seed=0, resplit=True)
    result = fit_and_evaluate(cal, test, TemperatureScaling(), conformal=SplitConformal(score="lac", alpha=0.1, seed=0),
                              policy=RiskControlPolicy(target_risk=0.02, delta=0.1), n_bootstrap=200,
                              calibration_bootstrap=0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    panels = [(kind, reliability.prepare_reliability(p, test.labels, n_bins=15))
              for kind, p in (("uncalibrated", result.probs_before), ("temperature", result.probs_after))]
    written = {"reliability.png": reliability.plot_reliability_comparison(
        panels, title=f"reliability (test part) — {name}")}
    for file, spec in result.plots.items():
        if args.all or file in SCREENSHOTS:
            written[file] = render(with_data_name(spec, name))
    for file, fig in written.items():
        path = save_figure(fig, out / file, dpi=args.dpi)
        size = path.stat().st_size
        print(f"{path}: {size} bytes" + ("" if size <= MAX_BYTES else f"  (over {MAX_BYTES}: lower --dpi)"))


if __name__ == "__main__":
    main()
