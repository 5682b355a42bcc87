"""Audit the Learn-then-Test guarantee of the risk_control policy on real logits.

    python experiments/audit_policy.py                 # 500 random 50/50 splits of each file, 6 (r, delta) targets
    python experiments/audit_policy.py --quick         # 100 splits, one file
    python experiments/audit_policy.py --data path/a.npz path/b.npz --n-splits 1000
    python experiments/audit_policy.py --family fixed_sequence  # the other Learn-then-Test family
    python experiments/audit_policy.py --families      # both families on the same splits: answered share + audit

For every split: temperature scaling fitted on the calibration half, threshold chosen by Learn then Test
(fixed-sequence, exact binomial p-values), selective risk measured on the test half. Prints, per file and
target, how many splits exceeded the target risk and the allowed count: the 99% upper quantile of
Binomial(n_splits, delta). Exit status 1 when any row fails.

``--families``: both families of fixed sequences (``multi_start``: 4 sequences at delta/4, the default;
``fixed_sequence``: one at delta) on the same splits, by default on the four embedded sets
(``calib.datasets.BUILTIN``, all rows pooled and split at random) and the CIFAR-100 sets of
../shared/data/cifar_netcal when present: the mean answered share (automation) of each, their difference,
and each family's violations against the same slack.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = [REPO.parent / "shared" / "data" / "cifar_chenyaofo" / f"{m}.npz"
                for m in ("cifar10_resnet56", "cifar10_vgg11_bn", "cifar100_resnet56")]
TARGETS = ((0.01, 0.1), (0.02, 0.1), (0.05, 0.1), (0.02, 0.05), (0.05, 0.05), (0.1, 0.1))
FAMILY_TARGETS = ((0.02, 0.1), (0.05, 0.1), (0.1, 0.1))
NETCAL_C100 = [REPO.parent / "shared" / "data" / "cifar_netcal" / f"{m}.npz"
               for m in ("cifar100_wrn16_4", "cifar100_densenet_bc100")]


def _families(args):
    """Both Learn-then-Test families on the same splits: answered share and violations."""
    from calib import datasets, load_logits
    from calib.evaluation.policy_audit import audit_guarantee

    if args.data_given:
        items = [(Path(p).stem, lambda p=p: load_logits(p)) for p in args.data]
    else:
        items = [(name, lambda name=name: datasets.load(name)) for name in datasets.BUILTIN]
        items += [(p.stem, lambda p=p: load_logits(p)) for p in NETCAL_C100 if p.is_file()]
    what = ("calibration sets drawn i.i.d. from the file (the population); answered share and risk over the whole "
            "file" if args.event == "population" else "random splits; answered share and risk on the test half")
    print(f"Learn-then-Test families on the same {args.n_splits} {what} (cal fraction {args.cal_fraction}, "
          f"{args.calibrator}, violation = {'population' if args.event == 'population' else 'test'} selective risk "
          "> r): mean answered share (automation, %) of each family, and violations against the allowed count "
          "(99% quantile of Binomial(n_splits, delta))")
    print(f"{'data':<24} {'r':>5} {'delta':>5} {'multi_start %':>13} {'fixed_seq %':>11} {'diff (pts)':>10} "
          f"{'viol. ms':>8} {'viol. fs':>8} {'allowed':>7}  ok")
    failed = False
    for name, load in items:
        data = load()
        start = time.perf_counter()
        rows = audit_guarantee(data.logits, data.labels, targets=FAMILY_TARGETS, n_splits=args.n_splits,
                               cal_fraction=args.cal_fraction, seed=args.seed, calibrator=args.calibrator,
                               family=("multi_start", "fixed_sequence"), event=args.event)
        by = {(r.family, r.target_risk, r.delta): r for r in rows}
        for t, d in FAMILY_TARGETS:
            ms, fs = by[("multi_start", t, d)], by[("fixed_sequence", t, d)]
            ok = ms.passed and fs.passed
            failed |= not ok
            print(f"{name:<24} {t:>5g} {d:>5g} {100 * ms.mean_coverage:>13.2f} {100 * fs.mean_coverage:>11.2f} "
                  f"{100 * (fs.mean_coverage - ms.mean_coverage):>+10.2f} {ms.violations:>8} {fs.violations:>8} "
                  f"{ms.allowed:>7}  {'yes' if ok else 'NO'}")
        print(f"  ({time.perf_counter() - start:.1f} s)")
    return 1 if failed else 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", type=Path, default=None, help="logits files (.npz, ...)")
    parser.add_argument("--n-splits", type=int, default=None, help="default 500 (--families: 100)")
    parser.add_argument("--cal-fraction", type=float, default=0.5)
    parser.add_argument("--calibrator", default="temperature", choices=["temperature", "identity"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="100 splits of the first file")
    parser.add_argument("--family", default="multi_start", choices=["multi_start", "fixed_sequence"],
                        help="Learn-then-Test family of fixed sequences")
    parser.add_argument("--event", default=None, choices=["test_risk", "population"],
                        help="violation = test-half risk > r (default of the audit) or population risk > r with "
                             "i.i.d. calibration draws from the file (default of --families)")
    parser.add_argument("--families", action="store_true",
                        help="both families on the same splits (default data: the embedded sets and, when present, "
                             "the cifar_netcal CIFAR-100 sets; default 100 splits)")
    args = parser.parse_args(argv)
    args.data_given = args.data is not None
    if args.families:
        args.n_splits = 100 if args.n_splits is None else args.n_splits
        args.event = args.event or "population"
        return _families(args)
    args.event = args.event or "test_risk"
    args.data = DEFAULT_DATA if args.data is None else args.data
    args.n_splits = 500 if args.n_splits is None else args.n_splits

    from calib import load_logits
    from calib.evaluation.policy_audit import audit_guarantee

    if not args.data:
        print("audit_policy.py: Expected at least one logits file (--data), got none.", file=sys.stderr)
        return 2
    missing = [str(p) for p in args.data if not Path(p).is_file()]
    if missing:
        print(f"audit_policy.py: Expected logits files, got missing paths {missing}.", file=sys.stderr)
        return 2
    files = args.data[:1] if args.quick else args.data
    n_splits = 100 if args.quick else args.n_splits
    header = (f"{'file':<24} {'r':>5} {'delta':>5} {'splits':>6} {'violations':>10} {'rate':>6} {'allowed(99%)':>12} "
              f"{'not cert.':>9} {'mean risk':>9} {'coverage':>8}  ok")
    print(f"Learn-then-Test audit ({args.family}): {n_splits} random splits (cal fraction {args.cal_fraction}, "
          f"{args.calibrator}), violation = {'test' if args.event == 'test_risk' else 'population'} selective "
          "risk > r")
    print(header)
    failed = False
    for path in files:
        try:
            data = load_logits(path)
        except (ValueError, TypeError, FileNotFoundError) as err:
            print(f"audit_policy.py: {err}", file=sys.stderr)
            return 2
        start = time.perf_counter()
        rows = audit_guarantee(data.logits, data.labels, targets=TARGETS, n_splits=n_splits,
                               cal_fraction=args.cal_fraction, seed=args.seed, calibrator=args.calibrator,
                               family=args.family, event=args.event)
        for row in rows:
            failed |= not row.passed
            print(f"{path.stem:<24} {row.target_risk:>5g} {row.delta:>5g} {row.n_splits:>6} {row.violations:>10} "
                  f"{row.violation_rate:>6.3f} {row.allowed:>12} {row.not_certified:>9} {row.mean_test_risk:>9.4f} "
                  f"{row.mean_coverage:>8.3f}  {'yes' if row.passed else 'NO'}")
        print(f"  ({time.perf_counter() - start:.1f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
