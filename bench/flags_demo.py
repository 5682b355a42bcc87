"""Must-show of issue #12 (flags are tests): class-conditional (Mondrian) conformal sets on real 100-class logits
flag a number of classes consistent with chance.

    python bench/flags_demo.py                      # the CIFAR-100 sets of ../shared/data/cifar_netcal
    python bench/flags_demo.py --alpha 0.05 --data FILE [FILE ...]

Per file: temperature scaling fitted on split == 0; ``MondrianConformal(condition="class", score="lac")`` fitted
on the calibrated split == 0; its sets on split == 1. Printed per file:

- ``below 1-alpha (old list)``: classes whose observed coverage is below ``1 - alpha`` (the old
  ``violating_classes``), and how many chance predicts for a class-valid procedure: the sum over classes of
  ``P(BetaBinomial(m_c, r_c, n_c + 1 - r_c) < (1 - alpha) m_c)`` (exact law of the class's covered count);
- ``p <= 0.05``: classes whose exact p-value (Beta-binomial law, H0 "coverage >= 1 - alpha") is <= 0.05, and
  the bound a valid procedure stays under: p-values of a class-valid procedure are super-uniform and
  independent across classes given the labels, so the count is stochastically below Binomial(k, 0.05); the
  check is ``count <= its 0.999 quantile`` (a false alarm at most 0.1 % of the time);
- ``Holm flagged``: classes with Holm-adjusted p <= 0.05 (family-wise error <= 0.05: zero flags expected in
  at least 95 % of runs of a valid procedure);
- for contrast, the same sets tested with the binomial law given the fitted sets (H0 "this fitted predictor
  covers class c at >= 1 - alpha"), which a class-valid procedure does not promise: a fitted class coverage
  below 1 - alpha by a few points is what the Beta law of a ~50-row class produces.

Exit status 2 when there is no data (the default folder is absent and no --data given).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DIR = REPO.parent / "shared" / "data" / "cifar_netcal"
DEFAULT = sorted(DEFAULT_DIR.glob("cifar100_*.npz"))
LEVEL = 0.05


def demo_file(path, alpha):
    from scipy.stats import betabinom, binom

    from calib import load_logits
    from calib.calibrators import TemperatureScaling
    from calib.conformal import MondrianConformal, conformal_rank
    from calib.evaluation.conformal import coverage_law_kwargs
    from calib.evaluation.set_metrics import class_coverage_test, set_metrics

    data = load_logits(path)
    cal, test = data.split_cal_test()
    ts = TemperatureScaling().fit(cal.logits, cal.labels)
    pc, pt = ts.predict_proba(cal.logits), ts.predict_proba(test.logits)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        pred = MondrianConformal(condition="class", score="lac", alpha=alpha).fit(pc, cal.labels)
        sets = pred.predict_set(pt)
    block = set_metrics(sets, test.labels, alpha, **coverage_law_kwargs(pred))
    test_block = block["class_coverage_test"]
    k = pt.shape[1]
    n_c = pred.stratum_sizes_
    m_c = np.bincount(test.labels, minlength=k)
    cov = np.array([np.nan if c is None else c for c in block["class_coverage"]])
    below = int(np.sum(cov < 1 - alpha))
    chance_below = 0.0  # sum over classes of P(covered count < (1 - alpha) m_c) under the exact law
    for n, m in zip(n_c, m_c):
        r = conformal_rank(int(n), alpha)
        if m and r <= n:
            chance_below += float(betabinom.cdf(np.ceil((1 - alpha) * m) - 1, m, r, n + 1 - r))
    binom_block = class_coverage_test(sets, test.labels, alpha)  # binomial law given the fitted sets
    return {
        "k": k, "n_cal": int(cal.n_samples), "n_test": int(test.n_samples), "temperature": float(ts.temperature_),
        "n_cal_range": (int(n_c.min()), int(n_c.max())), "n_test_range": (int(m_c.min()), int(m_c.max())),
        "coverage": block["coverage"], "marginal_p": block["coverage_test"]["p_value"],
        "mean_set_size": block["mean_set_size"], "below": below, "chance_below": chance_below,
        "p_below": test_block["n_p_below_level"], "bound": int(binom.ppf(0.999, test_block["n_tested"], LEVEL)),
        "holm": len(test_block["flagged"]), "min_p": test_block["smallest_p"][0]["p_value"],
        "law": test_block["law"], "binom_p_below": binom_block["n_p_below_level"],
        "binom_holm": len(binom_block["flagged"]),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", type=Path, default=DEFAULT)
    parser.add_argument("--alpha", type=float, default=0.1)
    args = parser.parse_args(argv)
    if not args.data:
        print(f"flags_demo.py: Expected logits files, got none: the default folder {str(DEFAULT_DIR)!r} holds no "
              "cifar100_*.npz; pass --data FILE [FILE ...].", file=sys.stderr)
        return 2
    print(f"mondrian_class (LAC, alpha = {args.alpha}) on temperature-scaled logits, fit on split 0, test on split 1; "
          f"tests at level {LEVEL}")
    print("| file | n cal / test | class rows cal, test | coverage (marginal p) | mean size | below 1-alpha (old list) "
          "[chance predicts] | p <= 0.05 [bound: 0.999 q. of Bin(k, 0.05)] | Holm flagged (min p) | "
          "binomial-given-fit: p <= 0.05, Holm |")
    print("|---|---|---|---|---|---|---|---|---|")
    for path in args.data:
        try:
            r = demo_file(path, args.alpha)
        except (ValueError, TypeError, FileNotFoundError) as err:
            print(f"flags_demo.py: {err}", file=sys.stderr)
            return 2
        print(f"| {path.stem} | {r['n_cal']} / {r['n_test']} | {r['n_cal_range'][0]}-{r['n_cal_range'][1]}, "
              f"{r['n_test_range'][0]}-{r['n_test_range'][1]} | {r['coverage']:.4f} ({r['marginal_p']:.2f}) | "
              f"{r['mean_set_size']:.2f} | {r['below']} of {r['k']} [{r['chance_below']:.1f}] | "
              f"{r['p_below']} [{r['bound']}: {'ok' if r['p_below'] <= r['bound'] else 'EXCEEDED'}] | "
              f"{r['holm']} ({r['min_p']:.3f}) | {r['binom_p_below']}, {r['binom_holm']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
