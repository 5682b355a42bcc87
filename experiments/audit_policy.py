"""Audit the Learn-then-Test guarantee of the risk_control policy on real logits.

    python experiments/audit_policy.py                 # 500 random 50/50 splits of each of 3 embedded sets, 6 targets
    python experiments/audit_policy.py --quick         # 100 splits, one file
    python experiments/audit_policy.py --data path/a.npz netcal_cifar10_wrn16_4 --n-splits 1000   # files or names
    python experiments/audit_policy.py --family fixed_sequence  # the other Learn-then-Test family
    python experiments/audit_policy.py --families      # both families on the same splits: answered share + audit

For every split: temperature scaling fitted on the calibration half, threshold chosen by Learn then Test
(fixed-sequence, exact binomial p-values), selective risk measured on the test half. Prints, per file and
target, how many splits exceeded the target risk and the allowed count: the 99% upper quantile of
Binomial(n_splits, delta). Exit status 1 when any row fails, 2 when there is nothing to audit (a --data file is
missing or unreadable).

Default data (embedded in calib, no download; ``calib.datasets.available()``): ``netcal_cifar10_wrn16_4``,
``netcal_cifar100_wrn16_4`` and ``netcal_cifar100_densenet_bc100`` (every row pooled and split at random, so
calibration and test are exchangeable). ``--data`` takes logits files or names of embedded sets.

``--families``: both families of fixed sequences (``multi_start``: 4 sequences at delta/4, the default;
``fixed_sequence``: one at delta) on the same splits, by default on the four embedded sets
(the four ``c10lt_*`` sets and the two embedded netcal CIFAR-100 sets, all rows pooled and split at random):
the mean answered share (automation) of each, their difference,
and each family's violations against the same slack.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: Embedded sets (calib.datasets.BUILTIN) audited by default.
DEFAULT_DATA = ["netcal_cifar10_wrn16_4", "netcal_cifar100_wrn16_4", "netcal_cifar100_densenet_bc100"]
FAMILY_DATA = ["c10lt_densenet40", "c10lt_resnet110", "c10lt_resnet110_sd", "c10lt_wrn28",
               "netcal_cifar100_wrn16_4", "netcal_cifar100_densenet_bc100"]
TARGETS = ((0.01, 0.1), (0.02, 0.1), (0.05, 0.1), (0.02, 0.05), (0.05, 0.05), (0.1, 0.1))
FAMILY_TARGETS = ((0.02, 0.1), (0.05, 0.1), (0.1, 0.1))


def _item(entry):
    """(display name, loader) of a --data entry: the name of an embedded set or a logits file."""
    from calib import datasets, load_logits

    if isinstance(entry, str) and entry in datasets.BUILTIN:
        return entry, lambda: datasets.load(entry)
    return Path(entry).stem, lambda: load_logits(entry)


def _missing(entries):
    from calib import datasets

    return [str(e) for e in entries if not (isinstance(e, str) and e in datasets.BUILTIN) and not Path(e).is_file()]


def _families(args):
    """Both Learn-then-Test families on the same splits: answered share and violations."""
    from calib.evaluation.policy_audit import audit_guarantee

    entries = args.data if args.data_given else FAMILY_DATA
    missing = _missing(entries)
    if missing:
        return _no_data(missing)
    items = [_item(entry) for entry in entries]
    width = max([24] + [len(name) for name, _ in items])
    what = ("calibration sets drawn i.i.d. from the file (the population); answered share and risk over the whole "
            "file" if args.event == "population" else "random splits; answered share and risk on the test half")
    print(f"Learn-then-Test families on the same {args.n_splits} {what} (cal fraction {args.cal_fraction}, "
          f"{args.calibrator}, violation = {'population' if args.event == 'population' else 'test'} selective risk "
          "> r): mean answered share (automation, %) of each family, and violations against the allowed count "
          "(99% quantile of Binomial(n_splits, delta))")
    print(f"{'data':<{width}} {'r':>5} {'delta':>5} {'multi_start %':>13} {'fixed_seq %':>11} {'diff (pts)':>10} "
          f"{'viol. ms':>8} {'viol. fs':>8} {'allowed':>7}  ok")
    failed = False
    for name, load in items:
        try:
            data = load()
        except (ValueError, TypeError, FileNotFoundError) as err:
            print(f"audit_policy.py: {err}", file=sys.stderr)
            return 2
        start = time.perf_counter()
        rows = audit_guarantee(data.logits, data.labels, targets=FAMILY_TARGETS, n_splits=args.n_splits,
                               cal_fraction=args.cal_fraction, seed=args.seed, calibrator=args.calibrator,
                               family=("multi_start", "fixed_sequence"), event=args.event)
        by = {(r.family, r.target_risk, r.delta): r for r in rows}
        for t, d in FAMILY_TARGETS:
            ms, fs = by[("multi_start", t, d)], by[("fixed_sequence", t, d)]
            ok = ms.passed and fs.passed
            failed |= not ok
            print(f"{name:<{width}} {t:>5g} {d:>5g} {100 * ms.mean_coverage:>13.2f} {100 * fs.mean_coverage:>11.2f} "
                  f"{100 * (fs.mean_coverage - ms.mean_coverage):>+10.2f} {ms.violations:>8} {fs.violations:>8} "
                  f"{ms.allowed:>7}  {'yes' if ok else 'NO'}")
        print(f"  ({time.perf_counter() - start:.1f} s)")
    return 1 if failed else 0


def _no_data(missing):
    from calib import datasets

    print(f"audit_policy.py: Expected logits files or names of embedded sets ({sorted(datasets.BUILTIN)}) in --data, "
          f"got missing paths {missing}.", file=sys.stderr)
    return 2


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where there is one to show."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0].splitlines()[0] + " Exit status: 0 every row passes, 1 a row fails, "
        "2 no data or bad input.", formatter_class=_Help)
    parser.add_argument("--data", nargs="+", default=None,
                        help="logits files (.npz, .npy, .pt, .csv) or names of embedded sets (default: "
                             f"{' '.join(DEFAULT_DATA)}; --families: {' '.join(FAMILY_DATA)})")
    parser.add_argument("--n-splits", type=int, default=None, help="random splits per file (default 500; "
                        "--families: 100; --quick: 100)")
    parser.add_argument("--cal-fraction", type=float, default=0.5, help="share of each split used for calibration")
    parser.add_argument("--calibrator", default="temperature", choices=["temperature", "identity"],
                        help="calibrator fitted on each calibration half")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random splits")
    parser.add_argument("--quick", action="store_true", help="100 splits of the first file only")
    parser.add_argument("--family", default="multi_start", choices=["multi_start", "fixed_sequence"],
                        help="Learn-then-Test family of fixed sequences")
    parser.add_argument("--event", default=None, choices=["test_risk", "population"],
                        help="violation = test-half risk > r (test_risk, the audit's default) or population risk > r "
                             "with i.i.d. calibration draws from the file (population, the default of --families)")
    parser.add_argument("--families", action="store_true",
                        help="both families on the same splits (default data: the four c10lt sets and the two "
                             "netcal CIFAR-100 sets, all embedded; default 100 splits)")
    args = parser.parse_args(argv)
    args.data_given = args.data is not None
    if args.families:
        args.n_splits = 100 if args.n_splits is None else args.n_splits
        args.event = args.event or "population"
        return _families(args)
    args.event = args.event or "test_risk"
    args.data = DEFAULT_DATA if args.data is None else args.data
    args.n_splits = 500 if args.n_splits is None else args.n_splits

    from calib.evaluation.policy_audit import audit_guarantee

    if not args.data:
        print("audit_policy.py: Expected at least one logits file (--data), got none.", file=sys.stderr)
        return 2
    missing = _missing(args.data)
    if missing:
        return _no_data(missing)
    files = args.data[:1] if args.quick else args.data
    n_splits = 100 if args.quick else args.n_splits
    width = max([24] + [len(_item(entry)[0]) for entry in files])
    header = (f"{'file':<{width}} {'r':>5} {'delta':>5} {'splits':>6} {'violations':>10} {'rate':>6} {'allowed(99%)':>12} "
              f"{'not cert.':>9} {'mean risk':>9} {'coverage':>8}  ok")
    print(f"Learn-then-Test audit ({args.family}): {n_splits} random splits (cal fraction {args.cal_fraction}, "
          f"{args.calibrator}), violation = {'test' if args.event == 'test_risk' else 'population'} selective "
          "risk > r")
    print(header)
    failed = False
    for entry in files:
        name, load = _item(entry)
        try:
            data = load()
        except (ValueError, TypeError, FileNotFoundError) as err:
            print(f"audit_policy.py: {err}", file=sys.stderr)
            return 2
        start = time.perf_counter()
        rows = audit_guarantee(data.logits, data.labels, targets=TARGETS, n_splits=n_splits,
                               cal_fraction=args.cal_fraction, seed=args.seed, calibrator=args.calibrator,
                               family=args.family, event=args.event)
        for row in rows:
            failed |= not row.passed
            print(f"{name:<{width}} {row.target_risk:>5g} {row.delta:>5g} {row.n_splits:>6} {row.violations:>10} "
                  f"{row.violation_rate:>6.3f} {row.allowed:>12} {row.not_certified:>9} {row.mean_test_risk:>9.4f} "
                  f"{row.mean_coverage:>8.3f}  {'yes' if row.passed else 'NO'}")
        print(f"  ({time.perf_counter() - start:.1f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
