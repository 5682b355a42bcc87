"""Audit the Learn-then-Test guarantee of the risk_control policy on real logits.

    python experiments/audit_policy.py                 # 500 random 50/50 splits of each file, 6 (r, delta) targets
    python experiments/audit_policy.py --quick         # 100 splits, one file
    python experiments/audit_policy.py --data path/a.npz path/b.npz --n-splits 1000

For every split: temperature scaling fitted on the calibration half, threshold chosen by Learn then Test
(fixed-sequence, exact binomial p-values), selective risk measured on the test half. Prints, per file and
target, how many splits exceeded the target risk and the allowed count: the 99% upper quantile of
Binomial(n_splits, delta). Exit status 1 when any row fails.
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", type=Path, default=DEFAULT_DATA, help="logits files (.npz, ...)")
    parser.add_argument("--n-splits", type=int, default=500)
    parser.add_argument("--cal-fraction", type=float, default=0.5)
    parser.add_argument("--calibrator", default="temperature", choices=["temperature", "identity"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="100 splits of the first file")
    args = parser.parse_args(argv)

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
    print(f"Learn-then-Test audit: {n_splits} random splits (cal fraction {args.cal_fraction}, {args.calibrator}), "
          "violation = test selective risk > r")
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
                               cal_fraction=args.cal_fraction, seed=args.seed, calibrator=args.calibrator)
        for row in rows:
            failed |= not row.passed
            print(f"{path.stem:<24} {row.target_risk:>5g} {row.delta:>5g} {row.n_splits:>6} {row.violations:>10} "
                  f"{row.violation_rate:>6.3f} {row.allowed:>12} {row.not_certified:>9} {row.mean_test_risk:>9.4f} "
                  f"{row.mean_coverage:>8.3f}  {'yes' if row.passed else 'NO'}")
        print(f"  ({time.perf_counter() - start:.1f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
