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
import warnings
from pathlib import Path

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from calib._atomic import write_json_atomic, write_text_atomic
from calib._hydra import instantiate

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
    """Evaluate every file; return {"rows": [...], "curves": {...}}."""
    from calib import load_logits, metrics, selective
    from calib.policy.report import evaluate_routing

    rows, curves, test_labels = [], {}, None
    for path in _files(cfg):
        data = load_logits(path)
        cal, test = data.split_cal_test(seed=cfg.seed)
        if test_labels is None:
            test_labels = test.labels
        elif not np.array_equal(test_labels, test.labels):
            raise ValueError(f"Expected every file to share one test set, but {path.name} has different test labels.")
        calibrator = instantiate(cfg.calibrator).fit(cal.logits, cal.labels)
        pc, pt = calibrator.predict_proba(cal.logits), calibrator.predict_proba(test.logits)
        conf = pt.max(axis=1)
        correct = pt.argmax(axis=1) == test.labels
        row = {"model": path.stem, "n_test": int(test.n_samples), "accuracy": metrics.accuracy(pt, test.labels),
               "ece": metrics.expected_calibration_error(pt, test.labels, n_bins=cfg.n_bins),
               "aurc": selective.aurc(conf, correct), "eaurc": selective.eaurc(conf, correct),
               "policies": {}}
        for name, node in cfg.policies.items():
            policy = instantiate(node)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", UserWarning)
                policy.fit(pc, cal.labels, fallback=cal.extras.get("fallback"))
            for w in caught:
                log.warning("%s / %s: %s", path.stem, name, w.message)
            _, m = evaluate_routing(policy, pt, test.labels, fallback=test.extras.get("fallback"),
                                    n_resamples=cfg.n_resamples, seed=cfg.seed)
            m["guarantee"] = policy.guarantee()
            row["policies"][name] = m
        rows.append(row)
        curves[path.stem] = selective.risk_coverage_curve(conf, correct)
        log.info("%s: acc %.4f, ECE %.4f", path.stem, row["accuracy"], row["ece"])
    return {"rows": rows, "curves": curves}


def _fmt_ci(m, key, pct=True):
    v, ci = m[key], m["ci"].get(key)
    if v is None:
        return "n/a"
    f = (lambda x: f"{100 * x:.2f}") if pct else (lambda x: f"{x:.3f}")
    return f"{f(v)} [{f(ci[0])}, {f(ci[1])}]" if ci else f(v)


def markdown_table(rows, policy_name, policy_cfg):
    target = policy_cfg.get("target_risk")
    head = (f"Policy `{policy_name}`" + (f" (target selective risk r = {target}, delta = {policy_cfg.get('delta')})"
                                         if target is not None else "")
            + "; rates in %, 95% percentile-bootstrap CI in brackets; ECE after temperature scaling (15 bins).\n\n")
    cols = ["model", "acc %", "ECE %", "AURC ‰", "automation %", "selective risk %", "silent failure %",
            "recovery %", "task completion %", "cost / item", "certified"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in sorted(rows, key=lambda r: -r["accuracy"]):
        m = r["policies"][policy_name]
        g = m.get("guarantee") or {}
        lines.append("| " + " | ".join([
            r["model"], f"{100 * r['accuracy']:.2f}", f"{100 * r['ece']:.2f}", f"{1000 * r['aurc']:.2f}",
            _fmt_ci(m, "automation_rate"), _fmt_ci(m, "selective_risk"), _fmt_ci(m, "silent_failure_rate"),
            _fmt_ci(m, "recovery_rate"), _fmt_ci(m, "task_completion_rate"), _fmt_ci(m, "expected_cost", pct=False),
            "n/a" if g.get("certified") is None else str(g["certified"]),
        ]) + " |")
    return head + "\n".join(lines) + "\n"


def plot(result, policy_name, target):
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    ax = axes[0]
    for r in rows:
        m = r["policies"][policy_name]
        lo, hi = m["ci"]["automation_rate"]
        ax.errorbar(100 * r["accuracy"], 100 * m["automation_rate"],
                    yerr=[[100 * (m["automation_rate"] - lo)], [100 * (hi - m["automation_rate"])]], fmt="o", capsize=3)
        ax.annotate(r["model"].replace("cifar10_", "").replace("cifar100_", ""),
                    (100 * r["accuracy"], 100 * m["automation_rate"]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    ax.set_xlabel("test accuracy (%)")
    ax.set_ylabel(f"automation rate (%) at {policy_name}")
    ax.set_title("share answered automatically at the same target", fontsize=9)
    ax = axes[1]
    for name, rc in result["curves"].items():
        ax.plot(rc.coverage, rc.risk, lw=1, label=name.replace("cifar10_", "").replace("cifar100_", ""))
    if target is not None:
        ax.axhline(target, color="k", ls="--", lw=1, label=f"r = {target}")
    ax.set_xlabel("coverage")
    ax.set_ylabel("selective risk")
    ax.set_ylim(0, None)
    ax.legend(fontsize=6, ncol=2)
    ax.set_title("risk-coverage (test, calibrated max-prob)", fontsize=9)
    fig.tight_layout()
    return fig


def run(cfg: DictConfig, out_dir: Path) -> dict:
    from calib.plots import save_figure

    result = compare(cfg)
    names = [cfg.table_policy] if isinstance(cfg.table_policy, str) else list(cfg.table_policy)
    unknown = sorted(set(names) - set(cfg.policies))
    if unknown:
        raise ValueError(f"Unknown table_policy {unknown}; valid options: {sorted(cfg.policies)}.")
    table = "\n".join(markdown_table(result["rows"], name, cfg.policies[name]) for name in names)
    name = names[0]
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "compare.json", {"rows": result["rows"]})
    write_text_atomic(out_dir / "compare.md", table)
    save_figure(plot(result, name, cfg.policies[name].get("target_risk")), out_dir / "compare.png")
    print(table)
    return result


@hydra.main(version_base="1.3", config_path="../conf", config_name="compare")
def main(cfg: DictConfig) -> None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    run(cfg, out_dir)
    log.info("Wrote %s", out_dir)


if __name__ == "__main__":
    main()
