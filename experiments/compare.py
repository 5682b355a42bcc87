"""Compare models that share one test set at matched operating points, with paired intervals.

    python experiments/compare.py                      # the 4 embedded long-tailed CIFAR-10 models (no download)
    python experiments/compare.py budgets=[0.1] target_risks=[0.02,0.05] reference=c10lt_wrn28 hydra.run.dir=/tmp/cmp
    python experiments/compare.py "builtin=[netcal_cifar100_wrn16_4,netcal_cifar100_densenet_bc100]" part=null
    python experiments/compare.py data_dir=my_models/ pattern='*.npz' part=null   # your files sharing one test set

Per model: temperature scaling (or ``calibrator``) fitted on the calibration part; then
:func:`calib.evaluation.compare.compare_models`: every model at the escalation ``budgets`` (each escalates
exactly that share of the test items, its least confident ones) and at the ``target_risks`` (its
Learn-then-Test threshold), paired differences with procedure-level intervals; plus every policy of
``policies`` fitted on the calibrated calibration part (CIs conditional on the fitted policy). Writes
compare.json (everything, with intervals), compare.md (the tables; "n.d." = not distinguishable) and
compare.png (the operating points at the matched budgets and the paired differences) into the Hydra run folder.
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


def _datasets(cfg):
    """(name, LogitsData) of the configured models, restricted to ``cfg.part`` when set."""
    from calib import datasets, load_logits

    if cfg.get("data_dir"):
        items = ((path.stem, load_logits(path)) for path in _files(cfg))
    else:
        names = [cfg.builtin] if isinstance(cfg.builtin, str) else list(cfg.builtin or [])
        if not names:
            raise ValueError("Expected builtin as one or more names of calib.datasets.BUILTIN (or data_dir=...), "
                             "got none.")
        items = ((name, datasets.load(name)) for name in names)
    part = cfg.get("part")
    for name, data in items:
        if part is not None:
            if data.split is None or not (data.split == part).any():
                raise ValueError(f"Expected rows with split == {part} in {name!r} (part={part}), got none; "
                                 "set part=null to use every row with the data's own split.")
            data = data.subset(data.split == part)
        yield name, data


def _files(cfg):
    root = Path(cfg.data_dir)
    root = root if root.is_absolute() else (REPO / root)
    files = sorted(root.glob(cfg.pattern))
    if not files:
        raise FileNotFoundError(f"Expected logit files matching {cfg.pattern!r} in {str(root)!r}, found none.")
    return files


def compare(cfg: DictConfig) -> dict:
    """Evaluate every file of ``cfg``; return {"rows": [...], "curves": {...}}."""
    from omegaconf import OmegaConf

    from calib.evaluation.compare import compare_models

    policies = {name: (lambda node=node: instantiate(node)) for name, node in cfg.policies.items()}
    lists = {key: list(cfg.get(key) or []) for key in ("budgets", "target_risks")}
    costs = cfg.get("costs")
    return compare_models(_datasets(cfg), lambda: instantiate(cfg.calibrator), policies, n_bins=cfg.n_bins,
                          n_resamples=cfg.n_resamples, seed=cfg.seed, **lists, delta=cfg.get("delta", 0.1),
                          family=cfg.get("family", "multi_start"),
                          costs=None if costs is None else OmegaConf.to_container(costs),
                          reference=cfg.get("reference"), paired_resamples=cfg.get("paired_resamples", 1000),
                          resplit=cfg.get("part") is not None, cal_fraction=cfg.get("cal_fraction", 0.5))


OUTPUTS = ("compare.json", "compare.md", "compare.png")


def run(cfg: DictConfig, out_dir: Path) -> dict:
    from calib.evaluation.compare import markdown_table, matched_markdown
    from calib.plotting import save_figure
    from calib.plotting.routing import plot_comparison, plot_matched_comparison

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
    tables = "\n".join(markdown_table(result["rows"], name, target_risk=cfg.policies[name].get("target_risk"),
                                      delta=cfg.policies[name].get("delta"), calibrator=calibrator,
                                      n_bins=cfg.n_bins) for name in names)
    matched = result.get("matched")
    table = tables
    if matched:
        table = (matched_markdown(matched, accuracy={r["model"]: r["accuracy"] for r in result["rows"]})
                 + "\nPer policy, each model at its own operating point:\n\n" + tables)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "compare.json", {"rows": result["rows"], "matched": matched})
    write_text_atomic(out_dir / "compare.md", table)
    models = [r["model"] for r in result["rows"]]
    title = f"{len(models)} models on one test set: {', '.join(models[:4])}{', ...' if len(models) > 4 else ''}"
    if matched and matched["budgets"]:
        fig = plot_matched_comparison(result, title=title)
    else:
        fig = plot_comparison(result, names[0], target_risk=cfg.policies[names[0]].get("target_risk"), title=title)
    save_figure(fig, out_dir / "compare.png")
    print(table)
    return result


def help_text() -> str:
    """``--help``: what the script does, every option it takes with its default (conf/compare.yaml), and the only
    config groups it composes (Hydra's own help lists every group of conf/, most of which compare.py ignores)."""
    conf = REPO / "conf"
    text = (conf / "compare.yaml").read_text()
    options = text[: text.index("\nhydra:")] if "\nhydra:" in text else text
    options = "\n".join(line for line in options.splitlines() if not line.startswith(("#   python", "#  python")))

    def group(folder):
        return ", ".join(sorted(p.stem for p in (conf / folder).glob("*.yaml") if p.stem != "none"))

    return (__doc__.strip() + "\n\nUsage: python experiments/compare.py [key=value ...]\n\n"
            "Options (override any key as key=value; the defaults, from conf/compare.yaml):\n\n" + options.strip()
            + "\n\nConfig groups it takes (group@key=option):\n"
            f"  policy@policies.<name>   a compared policy (options: {group('policy')}); "
            "+policy@policies.<new>=<option> adds one\n"
            f"  policy/costs@costs       the cost model of the matched comparison (options: {group('policy/costs')})\n"
            "\nOutputs: compare.json, compare.md, compare.png in the run folder (hydra.run.dir=..., default "
            "outputs/compare/<date>_<time>). Exit status 0 on success; 1 with an error message when no model is "
            "found or an option is wrong.\nHydra's own flags: --hydra-help, --cfg job, --info.\n")


@hydra.main(version_base="1.3", config_path="../conf", config_name="compare")
def main(cfg: DictConfig) -> None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    run(cfg, out_dir)
    log.info("Wrote %s", out_dir)


if __name__ == "__main__":
    import sys

    if any(arg in ("--help", "-h") for arg in sys.argv[1:]):
        print(help_text())
        sys.exit(0)
    main()
