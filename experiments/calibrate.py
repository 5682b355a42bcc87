"""Fit a calibrator on the calibration split, judge it on the test split, save metrics, plot, artifact.

    python experiments/calibrate.py                                  # embedded real dataset
    python experiments/calibrate.py data=npz data.path=my_logits.npz calibrator=temperature hydra.run.dir=out/
    python experiments/calibrate.py -m experiment=kull2019           # a preset sweep (conf/experiment/)
    python experiments/calibrate.py data=npz data.path=big.npy data.mmap=true conformal=aps  # out of core

With ``data.mmap=true`` and a ``.npy`` logits file (labels in ``labels.npy`` beside it or ``data.labels_path=``,
a ``.npz`` of labels/split/groups/fallback there too; split in ``split.npy`` beside it or ``data.split_path=``) the
pipeline reads the file in row chunks of ``data.chunk_rows`` rows (calib.evaluation.streaming; docs/scaling.md).

Writes into the run folder: metrics.json (deterministic; its artifact_id names the artifact beside it), timings.json, reliability.png,
artifact/, report.html (one self-contained page: decisions first, then the details) and Hydra's resolved config in .hydra/. A re-run into a used folder first removes the previous run's
outputs; metrics.json is written last, so a run that fails or is killed leaves none (and its error is the last
ERROR line of <run folder>/calibrate.log, which experiments/aggregate.py reports). See docs/experiments.md.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from calib.config import check_overrides, register_configs
from calib.experiment import run  # noqa: F401  (calibrate.run: the tests' entry point)

os.environ.setdefault("MPLBACKEND", "Agg")  # files only; before anything imports matplotlib
log = logging.getLogger("calibrate")
register_configs()  # root-key schema + sweep-folder resolver, before Hydra composes


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        metrics = run(cfg, out_dir)
    except Exception as err:
        # One ERROR line into the job's calibrate.log (and the console) naming the root cause, not Hydra's
        # InstantiationException wrapper: aggregate.py reports this line for a failed job of a sweep. Hydra
        # prints the error itself (the traceback with HYDRA_FULL_ERROR=1).
        root = err
        while root.__cause__ is not None:
            root = root.__cause__
        log.error("Run failed: %s: %s", type(root).__name__, " ".join(str(root).split()))
        raise
    log.info("Wrote %s", out_dir)
    if metrics.get("monitor_alarm") and cfg.monitor.fail_on_alarm:
        log.error("Monitor alarm (monitor.fail_on_alarm=true): see %s", out_dir / "monitor" / "monitor.json")
        sys.exit(1)
    return metrics["calibrated"]["nll"]


if __name__ == "__main__":
    try:  # root keys, and keys inside component groups against the chosen YAML and its constructor
        sys.argv[1:] = check_overrides(sys.argv[1:], config_dir=Path(__file__).resolve().parents[1] / "conf")
    except ValueError as err:
        raise SystemExit(f"calibrate.py: {err}") from None
    main()
