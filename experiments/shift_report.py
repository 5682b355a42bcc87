"""Shift report: calibrate + choose the risk-controlling threshold on one split, evaluate on another.

    python experiments/shift_report.py                      # 4 embedded c10lt models: long-tailed val -> balanced test
    python experiments/shift_report.py --target-risk 0.05 --delta 0.1 --out docs_shift.md
    python experiments/shift_report.py --score aps --conformal-alpha 0.05 --json shift.json
    python experiments/shift_report.py --data c10lt_wrn28 path/to/logits.npz --out-dir outputs/my_shift

Default data: the four embedded long-tailed CIFAR-10 sets (``c10lt_densenet40``, ``c10lt_resnet110``,
``c10lt_resnet110_sd``, ``c10lt_wrn28``; no download), whose calibration part is long-tailed and whose test part
is balanced. ``--data`` takes names of embedded sets (``calib.datasets.available()``) or logits files with a
``split``. Writes shift_report.md (both tables), shift_report.json (every number) and shift_report.png (test
selective risk and conformal coverage with their intervals, shifted split beside the control) into ``--out-dir``
(default outputs/shift_report/<date>_<time>), and prints the tables.

Exit status 2, with a message naming the file, when there is no data to report on or a file cannot be read.

For each file: temperature scaling and RiskControlPolicy (Learn then Test) fitted on split == 0, applied to
split == 1. As a control, the same is done on an in-distribution resplit of the test part (first half of a
seeded permutation -> second half). Prints whether the overall guarantee broke (test selective risk
significantly above the target, exact binomial test) and which classes broke (Holm-corrected). A second
table gives conformal coverage next to it: a split-conformal predictor (``--score``, default LAC, at
``--conformal-alpha``, default 0.1) fitted on the calibrated first split, its marginal test coverage with
the exact p-value of H0 "coverage >= 1 - alpha" (Beta-binomial law of split conformal) and the classes whose
coverage is significantly below 1 - alpha (exact binomial tests given the fitted sets, Holm-corrected).
``--json`` writes every number of both reports.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
#: Embedded sets (calib.datasets.BUILTIN) reported on by default.
DEFAULT = ["c10lt_densenet40", "c10lt_resnet110", "c10lt_resnet110_sd", "c10lt_wrn28"]
SETTINGS = (("shifted", "LT val -> balanced test"), ("control", "control: test half -> other half"))


def _pct(v):
    return "n/a" if v is None else f"{100 * v:.2f}"


def report_file(path, *, target_risk, delta, seed, score="lac", conformal_alpha=0.1):
    from calib import datasets, load_logits
    from calib.calibrators import TemperatureScaling
    from calib.conformal import SplitConformal
    from calib.evaluation.shift_report import shift_report
    from calib.policy import RiskControlPolicy

    data = datasets.load(path) if isinstance(path, str) and path in datasets.BUILTIN else load_logits(path)
    if data.split is None:
        raise ValueError(f"Expected a logits file with a calibration/test split (a 'split' array) in {str(path)!r}, "
                         "got none: the shift report compares the file's own two parts.")
    cal, test = data.split_cal_test(seed=seed)

    def conformal():
        return SplitConformal(score=score, alpha=conformal_alpha, seed=seed)

    shifted = shift_report(cal.logits, cal.labels, test.logits, test.labels, calibrator=TemperatureScaling(),
                           policy=RiskControlPolicy(target_risk=target_risk, delta=delta), seed=seed,
                           conformal=conformal())
    perm = np.random.default_rng(seed).permutation(test.n_samples)
    a, b = perm[: test.n_samples // 2], perm[test.n_samples // 2:]
    control = shift_report(test.logits[a], test.labels[a], test.logits[b], test.labels[b],
                           calibrator=TemperatureScaling(), policy=RiskControlPolicy(target_risk=target_risk, delta=delta),
                           seed=seed, conformal=conformal())
    return shifted, control


def _conformal_row(name, setting, rep):
    c = rep["conformal"]
    t, ct = c["coverage_test"], c["class_coverage_test"]
    flagged = [f"{j} ({_pct(c['class_coverage'][j])})" for j in ct["flagged"]]
    return (f"| {name} | {setting} | {c['n_calibration']} | {_pct(c['coverage'])} | {t['p_value']:.2g} | "
            f"{'YES' if t['rejected'] else 'no'} | {_pct(c['min_class_coverage'])} | {c['mean_set_size']:.2f} | "
            f"{', '.join(flagged) or '-'} |")


def _name(entry):
    return Path(entry).stem  # an embedded set's name is its own stem


def draw(reports, *, target_risk, alpha):
    """Two panels, one row per model and setting: test selective risk [CI] against r, conformal test coverage
    [95% Clopper-Pearson] against 1 - alpha; filled markers = significantly broken (the tables' tests)."""
    import matplotlib.pyplot as plt

    from calib.stats import clopper_pearson

    rows = [(model, key, label, pair[key]) for model, pair in reports.items() for key, label in SETTINGS]
    fig, axes = plt.subplots(1, 2, figsize=(11, 1.2 + 0.45 * len(rows)), sharey=True)
    y = np.arange(len(rows))[::-1]
    colours = {"shifted": "#d62728", "control": "#1f77b4"}
    for yi, (model, key, _, rep) in zip(y, rows):
        risk, ci = rep["test_split"]["selective_risk"], rep["test_ci"]["selective_risk"]
        c = rep["conformal"]["coverage_test"]
        lo, hi = clopper_pearson(c["covered"], c["n"])
        for ax, value, (a, b), bad in ((axes[0], risk, ci or (risk, risk), rep["broken"]),
                                       (axes[1], c["coverage"], (lo, hi), c["rejected"])):
            if value is None:
                continue
            ax.errorbar(value, yi, xerr=[[value - a], [b - value]], fmt="o", color=colours[key], capsize=3,
                        markerfacecolor=colours[key] if bad else "white", markersize=7)
    axes[0].axvline(target_risk, color="black", linestyle="--", linewidth=1, label=f"target r = {target_risk:g}")
    axes[1].axvline(1 - alpha, color="black", linestyle="--", linewidth=1, label=f"1 - alpha = {1 - alpha:g}")
    axes[0].set_xlabel("test selective risk (95% CI)")
    axes[1].set_xlabel("conformal test coverage (95% Clopper-Pearson)")
    axes[0].set_yticks(y, [f"{model}\n{label}" for model, _, label, _ in rows], fontsize=8)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="o", linestyle="", color=colours[k], label=label) for k, label in SETTINGS]
    handles += [Line2D([], [], marker="o", linestyle="", color="grey", markerfacecolor="grey",
                       label="filled: significantly broken (p <= 0.05)"),
                Line2D([], [], marker="o", linestyle="", color="grey", markerfacecolor="white", label="open: not")]
    handles.append(Line2D([], [], color="black", linestyle="--", label="target (r, 1 - alpha)"))
    for ax in axes:
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_title(f"Learn-then-Test risk control, target r = {target_risk:g}", fontsize=9)
    axes[1].set_title(f"split conformal, target coverage {1 - alpha:g}", fontsize=9)
    fig.suptitle("Shift report: fitted on the calibration split, measured on the test split", fontsize=10)
    fig.tight_layout(rect=(0, 0.1 if len(rows) < 6 else 0.06, 1, 1))
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    return fig


def main(argv=None):
    from datetime import datetime

    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] + " Exit status: 0 report written, 2 no data or bad input.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", nargs="+", default=DEFAULT,
                        help="names of embedded sets or logits files with a split")
    parser.add_argument("--target-risk", type=float, default=0.05, help="target selective risk r of the policy")
    parser.add_argument("--delta", type=float, default=0.1, help="Learn-then-Test error level")
    parser.add_argument("--seed", type=int, default=0, help="seed of the control split and the bootstrap")
    parser.add_argument("--score", default="lac", help="conformal score of the coverage table")
    parser.add_argument("--conformal-alpha", type=float, default=0.1, help="conformal miscoverage")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="folder for shift_report.md/.json/.png (default outputs/shift_report/<date>_<time>)")
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown here")
    parser.add_argument("--json", type=Path, default=None, help="also write both reports of every file as JSON here")
    parser.add_argument("--no-figure", action="store_true", help="skip shift_report.png")
    args = parser.parse_args(argv)
    if not args.data:
        print("shift_report.py: Expected logits files or names of embedded sets to report on (--data), got none.",
              file=sys.stderr)
        return 2
    out_dir = args.out_dir or Path("outputs") / "shift_report" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    lines = [f"Target selective risk r = {args.target_risk}, delta = {args.delta}; rates in %. "
             "'broken' = test risk significantly > r (exact binomial, level 0.05; classes Holm-corrected).", "",
             "| model | setting | certified | cal coverage | cal risk | test coverage [CI] | test risk [CI] | test ECE | "
             "broken | classes broken (test risk %) |", "|---|---|---|---|---|---|---|---|---|---|"]
    conf_lines = ["", (f"Conformal coverage: split conformal, score {args.score}, alpha = {args.conformal_alpha} "
                       f"(target {_pct(1 - args.conformal_alpha)} %), fitted on the calibrated first split. p: exact "
                       "one-sided p-value of H0 coverage >= 1 - alpha (Beta-binomial law of split conformal); below = "
                       "p <= 0.05. Classes: coverage significantly below 1 - alpha (exact binomial given the fitted "
                       "sets, Holm-corrected at 0.05), with their test coverage %."), "",
                  ("| model | setting | n cal | test coverage | p | below | min class coverage | mean set size | "
                   "classes below (coverage %) |"), "|---|---|---|---|---|---|---|---|---|"]
    reports = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for path in args.data:
            name = _name(path)
            try:
                shifted, control = report_file(path, target_risk=args.target_risk, delta=args.delta, seed=args.seed,
                                               score=args.score, conformal_alpha=args.conformal_alpha)
            except (ValueError, TypeError, FileNotFoundError) as err:
                print(f"shift_report.py: {err}", file=sys.stderr)
                return 2
            for setting, rep in ((SETTINGS[0][1], shifted), (SETTINGS[1][1], control)):
                ci = rep["test_ci"]
                broken = [f"{c['class']} ({_pct(c['test_selective_risk'])})" for c in rep["classes"] if c["broken"]]
                lines.append(
                    f"| {name} | {setting} | {rep['guarantee']['certified']} | "
                    f"{_pct(rep['calibration_split']['automation_rate'])} | {_pct(rep['calibration_split']['selective_risk'])} | "
                    f"{_pct(rep['test_split']['automation_rate'])} [{_pct(ci['automation_rate'][0])}, {_pct(ci['automation_rate'][1])}] | "
                    f"{_pct(rep['test_split']['selective_risk'])}"
                    + (f" [{_pct(ci['selective_risk'][0])}, {_pct(ci['selective_risk'][1])}]" if ci["selective_risk"] else "")
                    + f" | {_pct(rep['test_ece'])} | {'YES' if rep['broken'] else 'no'} | {', '.join(broken) or '-'} |")
                conf_lines.append(_conformal_row(name, setting, rep))
            reports[name] = {"shifted": shifted, "control": control}
    if not reports:
        print("shift_report.py: Expected at least one report, got none.", file=sys.stderr)
        return 2
    text = "\n".join(lines + conf_lines) + "\n"
    print(text)
    from calib._atomic import write_json_atomic, write_text_atomic

    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "shift_report.md", out_dir / "shift_report.json"]
    write_text_atomic(written[0], text)
    write_json_atomic(written[1], reports)
    if not args.no_figure:
        import os

        os.environ.setdefault("MPLBACKEND", "Agg")
        from calib.plotting import save_figure

        written.append(save_figure(draw(reports, target_risk=args.target_risk, alpha=args.conformal_alpha),
                                   out_dir / "shift_report.png"))
    if args.out:
        write_text_atomic(args.out, text)
        written.append(args.out)
    if args.json:
        write_json_atomic(args.json, reports)
        written.append(args.json)
    print("Wrote " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
