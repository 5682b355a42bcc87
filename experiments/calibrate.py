"""Fit a calibrator on the calibration split, judge it on the test split, save metrics, plot, artifact.

    python experiments/calibrate.py                                  # embedded real dataset
    python experiments/calibrate.py data=npz data.path=my_logits.npz calibrator=temperature hydra.run.dir=out/

Writes into the run folder: metrics.json (deterministic), timings.json, reliability.png, artifact/,
and Hydra's resolved config in .hydra/.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from calib import artifacts, metrics, plots
from calib._atomic import write_json_atomic
from calib._hydra import instantiate
from calib.calibrators import softmax

log = logging.getLogger("calibrate")


def run(cfg: DictConfig, out_dir: Path) -> dict:
    """Run one experiment; return the metrics dict also written to ``out_dir/metrics.json``."""
    clock = {"start": time.perf_counter()}
    data = instantiate(cfg.data)
    cal, test = data.split_cal_test(cal_fraction=cfg.split.cal_fraction, seed=cfg.seed, resplit=cfg.split.resplit)
    log.info("Data: %d calibration / %d test rows, %d classes", cal.n_samples, test.n_samples, data.n_classes)

    calibrator = instantiate(cfg.calibrator)
    log.info("Fitting %s", calibrator)
    calibrator.fit(cal.logits, cal.labels)
    clock["fit"] = time.perf_counter()

    probs_before = softmax(test.logits)
    probs_after = calibrator.predict_proba(test.logits)
    keys = ("accuracy", "nll", "brier", "ece", "classwise_ece", "ece_mass", "mce")
    before = metrics.summary(probs_before, test.labels, n_bins=cfg.eval.n_bins)
    after = metrics.summary(probs_after, test.labels, n_bins=cfg.eval.n_bins)
    state, _ = calibrator.get_state()
    result = {
        "n_cal": cal.n_samples,
        "n_test": test.n_samples,
        "n_classes": data.n_classes,
        "calibrator": {"kind": calibrator.kind, **{k: v for k, v in state.items() if k != "n_classes"}},
        "uncalibrated": {k: before[k] for k in keys},
        "calibrated": {k: after[k] for k in keys},
        "data_fingerprint": artifacts.data_fingerprint(cal.logits, cal.labels),
    }
    clock["evaluate"] = time.perf_counter()

    out_dir.mkdir(parents=True, exist_ok=True)
    fig = plots.plot_reliability_comparison([
        ("uncalibrated", plots.prepare_reliability(probs_before, test.labels, n_bins=cfg.eval.n_bins)),
        (calibrator.kind, plots.prepare_reliability(probs_after, test.labels, n_bins=cfg.eval.n_bins)),
    ])
    plots.save_figure(fig, out_dir / "reliability.png")
    artifacts.save_artifact(calibrator, out_dir / "artifact", metrics=result["calibrated"],
                            data_fingerprint=result["data_fingerprint"], class_names=data.class_names,
                            config_yaml=OmegaConf.to_yaml(cfg, resolve=True), overwrite=True)
    write_json_atomic(out_dir / "metrics.json", result)
    clock["end"] = time.perf_counter()
    write_json_atomic(out_dir / "timings.json", {
        "fit_s": clock["fit"] - clock["start"], "evaluate_s": clock["evaluate"] - clock["fit"],
        "total_s": clock["end"] - clock["start"]})
    log.info("ECE %.4f -> %.4f, NLL %.4f -> %.4f", before["ece"], after["ece"], before["nll"], after["nll"])
    return result


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    result = run(cfg, out_dir)
    log.info("Wrote %s", out_dir)
    return result["calibrated"]["nll"]


if __name__ == "__main__":
    main()
