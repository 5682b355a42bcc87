"""One experiment from a Hydra config: compose it, fit and evaluate, write the run folder.

``experiments/calibrate.py`` is the command-line entry point over :func:`run`; notebooks and tests use the same
two functions, so a notebook's numbers are those of the run folder a colleague gets from the command line::

    from calib.experiment import compose, fit
    cfg = compose(["conformal=lac", "policy=risk_control", "policy.target_risk=0.02"])
    res = fit(cfg)                 # a calib.evaluation.pipeline.PipelineResult: fitted parts, metrics, test probs
    res.metrics["policy"]["automation_rate"]

:func:`compose` reads ``conf/`` of this checkout (Hydra's compose API, the schema of :mod:`calib.config`
registered first); overrides are checked like the command line's (a misspelled key fails with the closest valid
one). :func:`fit` instantiates the components (:func:`calib._hydra.instantiate`: only calib's own targets),
loads and splits the data and calls :func:`calib.evaluation.pipeline.fit_and_evaluate`, or the out-of-core
pipeline for ``data.mmap=true`` with a ``.npy`` file. :func:`run` also writes the run folder (figures,
``artifact/``, ``metrics.json``, ``timings.json``, the shift monitor when ``monitor.target`` is set, and
``report.html``, :mod:`calib.evaluation.report`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

__all__ = ["CONFIG_DIR", "compose", "fit", "run"]

log = logging.getLogger("calibrate")

#: ``conf/`` of this checkout (a source install); pass ``config_dir=`` elsewhere.
CONFIG_DIR = Path(__file__).resolve().parents[1] / "conf"


def compose(overrides=(), *, config_dir=None, config_name="config"):
    """The resolved-on-access :class:`omegaconf.DictConfig` that ``calibrate.py OVERRIDES`` would run.

    ``overrides``: a list of ``key=value`` strings as on the command line (a single string is refused: it is
    almost always a forgotten list). ``config_dir``: the folder of ``config.yaml`` (default :data:`CONFIG_DIR`).
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from calib.config import check_overrides, register_configs

    if isinstance(overrides, (str, bytes)):
        raise TypeError(f"Expected overrides as a list of 'key=value' strings, got the string {overrides!r}; "
                        f"write [{overrides!r}].")
    overrides = list(overrides)
    bad = [o for o in overrides if not isinstance(o, str)]
    if bad:
        raise TypeError(f"Expected overrides as 'key=value' strings, got {bad[0]!r} ({type(bad[0]).__name__}).")
    config_dir = Path(CONFIG_DIR if config_dir is None else config_dir).resolve()
    if not (config_dir / f"{config_name}.yaml").is_file():
        raise FileNotFoundError(f"Expected config_dir as a folder holding {config_name}.yaml (calib's conf/), got "
                                f"{str(config_dir)!r}: pass config_dir= (the conf/ folder of a calib checkout).")
    register_configs()
    overrides = check_overrides(overrides, config_dir=config_dir, config_name=config_name)
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        return hydra_compose(config_name, overrides=overrides)


def _optional(cfg, key):
    from calib._hydra import instantiate

    node = cfg.get(key)
    return instantiate(node) if node else None


def fit(cfg):
    """Fit and evaluate the experiment of ``cfg`` (a composed config); write nothing.

    Returns a :class:`calib.evaluation.pipeline.PipelineResult` (an out-of-core run's keeps no test
    probabilities). ``result.cal`` / ``result.test`` are the two parts (:class:`calib.io.LogitsData`; None out of core).
    """
    from omegaconf import OmegaConf

    from calib._hydra import instantiate
    from calib.config import validate_root
    from calib.evaluation.pipeline import fit_and_evaluate

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
        return result
    cal, test = data.split_cal_test(cal_fraction=cfg.split.cal_fraction, seed=cfg.seed, resplit=cfg.split.resplit)
    log.info("[2/4] Data: %d calibration / %d test rows, %d classes", cal.n_samples, test.n_samples, data.n_classes)
    result = fit_and_evaluate(cal, test, calibrator, conformal=conformal, policy=policy, n_bins=cfg.eval.n_bins,
                              n_bootstrap=cfg.eval.n_bootstrap, bootstrap_seed=cfg.eval.bootstrap_seed,
                              calibration_bootstrap=cfg.eval.calibration_bootstrap,
                              procedure_resamples=cfg.eval.procedure_resamples)
    result.cal, result.test = cal, test
    return result


def data_name(cfg):
    """The data's name for titles: ``data.name``, else the file name of ``data.path``, else None."""
    return cfg.data.get("name") or (Path(str(cfg.data.path)).name if cfg.data.get("path") else None)


def run(cfg, out_dir) -> dict:
    """Run one experiment into ``out_dir``; return the metrics dict also written to ``out_dir/metrics.json``.

    The previous run's outputs in ``out_dir`` are removed first, even when this one fails before writing
    anything; ``metrics.json`` is written after the figures and ``artifact/``, then the shift monitor
    (``monitor.target``) and ``report.html``.
    """
    from omegaconf import OmegaConf

    from calib._atomic import write_json_atomic
    from calib.evaluation.pipeline import clear_run_folder
    from calib.evaluation.report import write_report

    start = time.perf_counter()
    out_dir = Path(out_dir)
    # Hydra has just written this run's .hydra/config.yaml: no output of a previous run may stay beside it.
    clear_run_folder(out_dir)
    result = fit(cfg)
    fitted = time.perf_counter()
    log.info("[3/4] Fitted and evaluated in %.2f s", fitted - start)
    result.write(out_dir, config_yaml=OmegaConf.to_yaml(cfg, resolve=True), data_name=data_name(cfg))
    write_json_atomic(out_dir / "timings.json", {"fit_evaluate_s": fitted - start,
                                                 "artifact_id": result.metrics["artifact_id"],
                                                 "total_s": time.perf_counter() - start})
    log.info("[4/4] Wrote metrics.json, timings.json, plots and artifact/")
    if cfg.monitor.target is not None:
        result.metrics["monitor_alarm"] = _monitor(cfg.monitor, out_dir, result.test)
    write_report(out_dir)
    log.info("Wrote report.html")
    return result.metrics


def _monitor(mcfg, out_dir: Path, test) -> bool:
    """Run the shift monitor against the artifact just written; write <run folder>/monitor/; return the alarm."""
    from calib.deploy import FittedPipeline
    from calib.evaluation.monitor import monitor_batch
    from calib.io import load_logits

    pipe = FittedPipeline.load(out_dir / "artifact")
    if str(mcfg.target) == "test":
        if test is None:  # refused before the fit; kept for a caller that skipped the check
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
