"""Fit a calibrator on the calibration split, judge it on the test split, save metrics, plot, artifact.

    python experiments/calibrate.py                                  # embedded real dataset
    python experiments/calibrate.py data=npz data.path=my_logits.npz calibrator=temperature hydra.run.dir=out/
    python experiments/calibrate.py -m experiment=kull2019           # a preset sweep (conf/experiment/)
    python experiments/calibrate.py data=npz data.path=big.npy data.mmap=true conformal=aps  # out of core

With ``data.mmap=true`` and a ``.npy`` logits file (labels in ``labels.npy`` beside it or ``data.labels_path=``,
a ``.npz`` of labels/split/groups/fallback there too; split in ``split.npy`` beside it or ``data.split_path=``) the
pipeline reads the file in row chunks of ``data.chunk_rows`` rows (calib.evaluation.streaming; docs/scaling.md).

Writes into the run folder: metrics.json (deterministic; its artifact_id names the artifact beside it), timings.json, reliability.png,
artifact/, and Hydra's resolved config in .hydra/. A re-run into a used folder first removes the previous run's
outputs; metrics.json is written last, so a run that fails or is killed leaves none (and its error is the last
ERROR line of <run folder>/calibrate.log, which experiments/aggregate.py reports). See docs/experiments.md.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from calib._atomic import write_json_atomic
from calib._hydra import instantiate
from calib.config import check_overrides, register_configs, validate_root
from calib.evaluation.pipeline import clear_run_folder, fit_and_evaluate

os.environ.setdefault("MPLBACKEND", "Agg")  # files only; before anything imports matplotlib
log = logging.getLogger("calibrate")
register_configs()  # root-key schema + sweep-folder resolver, before Hydra composes


def _optional(cfg, key):
    node = cfg.get(key)
    return instantiate(node) if node else None


def run(cfg: DictConfig, out_dir: Path) -> dict:
    """Run one experiment; return the metrics dict also written to ``out_dir/metrics.json``."""
    start = time.perf_counter()
    # Hydra has just written this run's .hydra/config.yaml: no output of a previous run may stay beside it,
    # even when this one fails before writing anything.
    clear_run_folder(out_dir)
    validate_root(cfg)
    log.info("[1/4] Components: calibrator %s, conformal %s, policy %s", cfg.calibrator.get("_target_"),
             (cfg.conformal or {}).get("_target_"), (cfg.policy or {}).get("_target_"))
    calibrator, conformal, policy = instantiate(cfg.calibrator), _optional(cfg, "conformal"), _optional(cfg, "policy")
    out_of_core = bool(cfg.data.get("mmap")) and str(cfg.data.get("path", "")).lower().endswith(".npy")
    if out_of_core:  # refuse what cannot stream before reading anything
        from calib.evaluation.streaming import check_streaming_components

        check_streaming_components(calibrator, conformal, policy, procedure_resamples=cfg.eval.procedure_resamples)
        if str(cfg.monitor.target) == "test":
            raise ValueError("Expected monitor.target as a logits file with data.mmap=true, got 'test': an "
                             "out-of-core run keeps no test part in memory to monitor.")
    data_node = OmegaConf.create(OmegaConf.to_container(cfg.data, resolve=True))
    chunk_rows = data_node.pop("chunk_rows", None)  # the out-of-core chunk size, not an argument of load_logits
    data = instantiate(data_node)
    test = None
    if out_of_core and data.is_mapped:
        from calib.evaluation.streaming import fit_and_evaluate_streaming

        log.info("[2/4] Data: %d rows x %d classes, memory-mapped (%s): read in row chunks", data.n_samples,
                 data.n_classes, data.logits.dtype)
        result = fit_and_evaluate_streaming(data, calibrator, conformal=conformal, policy=policy,
                                            n_bins=cfg.eval.n_bins, n_bootstrap=cfg.eval.n_bootstrap,
                                            bootstrap_seed=cfg.eval.bootstrap_seed,
                                            calibration_bootstrap=cfg.eval.calibration_bootstrap,
                                            procedure_resamples=cfg.eval.procedure_resamples,
                                            cal_fraction=cfg.split.cal_fraction, seed=cfg.seed,
                                            resplit=cfg.split.resplit, chunk_rows=chunk_rows)
    else:
        cal, test = data.split_cal_test(cal_fraction=cfg.split.cal_fraction, seed=cfg.seed, resplit=cfg.split.resplit)
        log.info("[2/4] Data: %d calibration / %d test rows, %d classes", cal.n_samples, test.n_samples,
                 data.n_classes)
        result = fit_and_evaluate(cal, test, calibrator, conformal=conformal, policy=policy, n_bins=cfg.eval.n_bins,
                                  n_bootstrap=cfg.eval.n_bootstrap, bootstrap_seed=cfg.eval.bootstrap_seed,
                                  calibration_bootstrap=cfg.eval.calibration_bootstrap,
                                  procedure_resamples=cfg.eval.procedure_resamples)
    fitted = time.perf_counter()
    log.info("[3/4] Fitted and evaluated in %.2f s", fitted - start)
    data_name = cfg.data.get("name") or (Path(str(cfg.data.path)).name if cfg.data.get("path") else None)
    result.write(out_dir, config_yaml=OmegaConf.to_yaml(cfg, resolve=True), data_name=data_name)
    write_json_atomic(out_dir / "timings.json", {"fit_evaluate_s": fitted - start, "artifact_id": result.metrics["artifact_id"],
                                                 "total_s": time.perf_counter() - start})
    log.info("[4/4] Wrote metrics.json, timings.json, plots and artifact/")
    if cfg.monitor.target is not None:
        result.metrics["monitor_alarm"] = _monitor(cfg.monitor, out_dir, test)
    return result.metrics


def _monitor(mcfg, out_dir: Path, test) -> bool:
    """Run the shift monitor against the artifact just written; write <run folder>/monitor/; return the alarm."""
    from calib.deploy import FittedPipeline
    from calib.evaluation.monitor import monitor_batch
    from calib.io import load_logits

    pipe = FittedPipeline.load(out_dir / "artifact")
    if str(mcfg.target) == "test":
        if test is None:  # refused before the fit; kept for a caller of run() that skipped the check
            raise ValueError("Expected monitor.target as a logits file with data.mmap=true, got 'test'.")
        logits, source = test.logits, "this run's test part (labels unused)"
    else:
        logits, source = load_logits(mcfg.target, require_labels=False).logits, str(mcfg.target)
    res = monitor_batch(pipe, logits, alpha=mcfg.alpha, fdr=mcfg.fdr, novelty_score=mcfg.novelty_score,
                        label_shift=mcfg.label_shift, n_bootstrap=mcfg.n_bootstrap,
                        accuracy_tolerance=mcfg.accuracy_tolerance, seed=mcfg.seed)
    res.write(out_dir / "monitor", overwrite=True)
    log.info("Monitor: %s against artifact/", source)
    for line in res.summary():
        log.info("  %s", line)
    log.info("Monitor: %s; wrote monitor/", "ALARM" if res.alarm else "no alarm")
    return res.alarm


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
