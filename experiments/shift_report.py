"""Shift report: calibrate + choose the risk-controlling threshold on one split, evaluate on another.

    python experiments/shift_report.py                      # c10lt_sctl: long-tailed val -> balanced test, 4 CNNs
    python experiments/shift_report.py --target-risk 0.05 --delta 0.1 --out docs_shift.md
    python experiments/shift_report.py --score aps --conformal-alpha 0.05 --json shift.json

Exit status 2, with a message naming the file, when there is no data to report on (the default folder is
absent and no --data was given) or a file cannot be read.

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
DEFAULT_DIR = REPO.parent / "shared" / "data" / "c10lt_sctl"
DEFAULT = sorted(DEFAULT_DIR.glob("*.npz"))


def _pct(v):
    return "n/a" if v is None else f"{100 * v:.2f}"


def report_file(path, *, target_risk, delta, seed, score="lac", conformal_alpha=0.1):
    from calib import load_logits
    from calib.calibrators import TemperatureScaling
    from calib.conformal import SplitConformal
    from calib.policy import RiskControlPolicy
    from calib.evaluation.shift_report import shift_report

    data = load_logits(path)
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", type=Path, default=DEFAULT)
    parser.add_argument("--target-risk", type=float, default=0.05)
    parser.add_argument("--delta", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--score", default="lac", help="conformal score of the coverage table (default lac)")
    parser.add_argument("--conformal-alpha", type=float, default=0.1, help="conformal miscoverage (default 0.1)")
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown here")
    parser.add_argument("--json", type=Path, default=None, help="also write both reports of every file as JSON")
    args = parser.parse_args(argv)
    if not args.data:
        print(f"shift_report.py: Expected logits files to report on, got none: the default folder {str(DEFAULT_DIR)!r} "
              "holds no .npz file; pass --data FILE [FILE ...].", file=sys.stderr)
        return 2
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
            try:
                shifted, control = report_file(path, target_risk=args.target_risk, delta=args.delta, seed=args.seed,
                                               score=args.score, conformal_alpha=args.conformal_alpha)
            except (ValueError, TypeError, FileNotFoundError) as err:
                print(f"shift_report.py: {err}", file=sys.stderr)
                return 2
            for setting, rep in (("LT val -> balanced test", shifted), ("control: test half -> other half", control)):
                ci = rep["test_ci"]
                broken = [f"{c['class']} ({_pct(c['test_selective_risk'])})" for c in rep["classes"] if c["broken"]]
                lines.append(
                    f"| {path.stem} | {setting} | {rep['guarantee']['certified']} | "
                    f"{_pct(rep['calibration_split']['automation_rate'])} | {_pct(rep['calibration_split']['selective_risk'])} | "
                    f"{_pct(rep['test_split']['automation_rate'])} [{_pct(ci['automation_rate'][0])}, {_pct(ci['automation_rate'][1])}] | "
                    f"{_pct(rep['test_split']['selective_risk'])}"
                    + (f" [{_pct(ci['selective_risk'][0])}, {_pct(ci['selective_risk'][1])}]" if ci["selective_risk"] else "")
                    + f" | {_pct(rep['test_ece'])} | {'YES' if rep['broken'] else 'no'} | {', '.join(broken) or '-'} |")
                conf_lines.append(_conformal_row(path.stem, setting, rep))
            reports[path.stem] = {"shifted": shifted, "control": control}
    text = "\n".join(lines + conf_lines) + "\n"
    print(text)
    if args.out:
        from calib._atomic import write_text_atomic

        write_text_atomic(args.out, text)
    if args.json:
        from calib._atomic import write_json_atomic

        write_json_atomic(args.json, reports)
    return 0


if __name__ == "__main__":
    sys.exit(main())
