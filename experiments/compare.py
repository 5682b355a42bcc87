"""Compare models that share one test set: accuracy, ECE and product metrics at the same policy targets.

    python experiments/compare.py                                   # 8 CIFAR-10 models, risk_control r=0.02, delta=0.1
    python experiments/compare.py policies.risk_control.target_risk=0.01 hydra.run.dir=/tmp/cmp

Per file: temperature scaling (or ``calibrator``) fitted on ``split == 0``, every policy of ``policies``
fitted on the calibrated calibration part and applied to ``split == 1``. Writes compare.json (every
metric with its bootstrap CI), compare.md (the table) and compare.png (automation rate at the target
vs accuracy, and the risk-coverage curves) into the Hydra run folder.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from calib._atomic import write_json_atomic, write_text_atomic
from calib._hydra import instantiate

os.environ.setdefault("MPLBACKEND", "Agg")  # files only; before anything imports matplotlib
log = logging.getLogger("compare")
REPO = Path(__file__).resolve().parents[1]


def _files(cfg):
    root = Path(cfg.data_dir)
    root = root if root.is_absolute() else (REPO / root)
    files = sorted(root.glob(cfg.pattern))
    if not files:
        raise FileNotFoundError(f"Expected logit files matching {cfg.pattern!r} in {str(root)!r}, found none.")
    return files


def compare(cfg: DictConfig) -> dict:
    """Evaluate every file of ``cfg``; return {"rows": [...], "curves": {...}}."""
    from calib import load_logits
    from calib.evaluation.compare import compare_models

    datasets = ((path.stem, load_logits(path)) for path in _files(cfg))
    policies = {name: (lambda node=node: instantiate(node)) for name, node in cfg.policies.items()}
    return compare_models(datasets, lambda: instantiate(cfg.calibrator), policies, n_bins=cfg.n_bins,
                          n_resamples=cfg.n_resamples, seed=cfg.seed)


OUTPUTS = ("compare.json", "compare.md", "compare.png")


def run(cfg: DictConfig, out_dir: Path) -> dict:
    from calib.evaluation.compare import markdown_table
    from calib.plotting import save_figure
    from calib.plotting.routing import plot_comparison

    # A re-run into a used folder: no output of the previous run may stay beside this run's .hydra/ config,
    # even if this one fails.
    for stale in OUTPUTS:
        (out_dir / stale).unlink(missing_ok=True)
    names = [cfg.table_policy] if isinstance(cfg.table_policy, str) else list(cfg.table_policy)
    if not names:
        raise ValueError(f"Expected table_policy as one or more of {sorted(cfg.policies)}, got an empty list.")
    unknown = sorted(set(names) - set(cfg.policies))
    if unknown:
        raise ValueError(f"Unknown table_policy {unknown}; valid options: {sorted(cfg.policies)}.")
    result = compare(cfg)
    calibrator = cfg.calibrator._target_.rsplit(".", 1)[-1]
    table = "\n".join(markdown_table(result["rows"], name, target_risk=cfg.policies[name].get("target_risk"),
                                     delta=cfg.policies[name].get("delta"), calibrator=calibrator,
                                     n_bins=cfg.n_bins) for name in names)
    name = names[0]
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "compare.json", {"rows": result["rows"]})
    write_text_atomic(out_dir / "compare.md", table)
    save_figure(plot_comparison(result, name, target_risk=cfg.policies[name].get("target_risk")),
                out_dir / "compare.png")
    print(table)
    return result


@hydra.main(version_base="1.3", config_path="../conf", config_name="compare")
def main(cfg: DictConfig) -> None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    run(cfg, out_dir)
    log.info("Wrote %s", out_dir)


if __name__ == "__main__":
    main()
