"""Validity audit of every conformal score and Mondrian mode over repeated random splits of real logits.

    python experiments/audit_conformal.py                 # 500 splits, embedded CIFAR-10 WRN and CIFAR-100 DenseNet
    python experiments/audit_conformal.py --quick         # 100 splits, CIFAR-10 only
    python experiments/audit_conformal.py --data netcal_cifar100_wrn16_4 --alphas 0.1 0.05   # a name or a file
    python experiments/audit_conformal.py --data cifar_chenyaofo/cifar100_vgg16_bn.npz   # opt-in, in ../shared/data
    python experiments/audit_conformal.py --configs aps_rand raps_rand --draws fit   # the predictors' own draws
    python experiments/audit_conformal.py --configs aps_default raps_default --n-splits 200   # never_empty defaults

The per-split covered count follows BetaBinomial(m, r, n + 1 - r), r = ceil((n+1)(1-alpha)) (a sum of
such laws per stratum for Mondrian); see calib/evaluation/conformal_audit.py for the derivation and the checks.
Randomised scores get fresh uniforms on every split (--draws split: drawn by the audit; fit: every split
refits the predictor, whose own draws come from its seed and the data; auto: fit for never_empty predictors).
never_empty predictors (the *_default configs) are checked one-sided (law "at_least": coverage not below the law).
Probabilities are softmax(logits) in float64 (validity does not need calibration). Mondrian-group uses
groups = the confidence bin of max-probability (<0.9, <0.99, >=0.99), a function of x.
Default data (embedded in calib, no download): ``netcal_cifar10_wrn16_4`` and ``netcal_cifar100_densenet_bc100``
(``calib.datasets.available()``). ``--data`` takes names of embedded sets or logits files (absolute, relative to the
working directory, or relative to ``$CALIB_SHARED_DATA``, default ../shared/data).
Exit status 1 if any row fails, 2 on bad input (a missing file, an unknown config).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

DEFAULT_DATA = ["netcal_cifar10_wrn16_4", "netcal_cifar100_densenet_bc100"]
SHARED = Path(os.environ.get("CALIB_SHARED_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data")


def _resolve(entry):
    """The name of an embedded set (kept as is) or the path of a logits file."""
    from calib import datasets

    if entry in datasets.BUILTIN:
        return entry
    path = Path(entry)
    if path.is_absolute() or path.is_file():
        return path
    return SHARED / entry


def _load(entry):
    from calib import datasets, load_logits

    return datasets.load(entry) if isinstance(entry, str) else load_logits(entry)


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where there is one to show."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] + " Exit status: 0 every row passes, 1 a row "
                                 "fails, 2 bad input.", formatter_class=_Help)
    ap.add_argument("--n-splits", type=int, default=500, help="random calibration/test splits per row")
    ap.add_argument("--data", nargs="+", default=None,
                    help="names of embedded sets or logits files: absolute, relative to the working directory or to "
                         f"$CALIB_SHARED_DATA (default: {' '.join(DEFAULT_DATA)})")
    ap.add_argument("--alphas", nargs="+", type=float, default=[0.1, 0.05], help="miscoverage levels")
    ap.add_argument("--cal-fraction", type=float, default=0.5, help="share of each split used for calibration")
    ap.add_argument("--configs", nargs="+", default=None,
                    help="subset of calib.evaluation.conformal_audit.AUDIT_CONFIGS (default: all of them) or "
                         "DEFAULT_CONFIGS")
    ap.add_argument("--draws", choices=["auto", "split", "fit", "seed_only"], default="auto",
                    help="who draws the uniforms of randomised scores (see calib.evaluation.conformal_audit)")
    ap.add_argument("--level", type=float, default=0.999, help="two-sided level of the mean and KS checks")
    ap.add_argument("--quick", action="store_true", help="100 splits on the first data set only")
    ap.add_argument("--seed", type=int, default=0, help="seed of the splits and draws")
    args = ap.parse_args(argv)

    from calib.calibrators.base import softmax
    from calib.conformal import REGISTRY
    from calib.evaluation.conformal_audit import (
        AUDIT_CONFIGS,
        DEFAULT_CONFIGS,
        audit_predictor,
    )

    data = args.data or DEFAULT_DATA
    n_splits = args.n_splits
    if args.quick:
        data, n_splits = data[:1], min(n_splits, 100)
    known = {**AUDIT_CONFIGS, **DEFAULT_CONFIGS}
    configs = args.configs or list(AUDIT_CONFIGS)
    unknown = sorted(set(configs) - set(known))
    if unknown:
        print(f"audit_conformal.py: Unknown --configs {unknown}; valid options: {sorted(known)}.", file=sys.stderr)
        return 2
    entries = [_resolve(rel) for rel in data]
    missing = [str(p) for p in entries if not isinstance(p, str) and not p.is_file()]
    if missing:
        from calib import datasets

        print(f"audit_conformal.py: Expected names of embedded sets ({sorted(datasets.BUILTIN)}) or logits files, got "
              f"missing paths {missing} (relative paths are read from the working directory, else from "
              f"{str(SHARED)!r}).", file=sys.stderr)
        return 2
    t_all = time.perf_counter()
    rows = []
    header = (f"{'data':28s} {'config':24s} {'alpha':>5s} {'n_cal':>5s} {'n_test':>6s} {'draws':>9s} {'law':>8s} "
              f"{'mean cov':>8s} {'exact E':>8s} {'band':>17s} {'z':>6s} {'mean p':>7s} {'KS p':>6s} {'ok':>3s} "
              f"{'sec':>5s}")
    print(f"{n_splits} random splits per row; law: BetaBinomial(m, r, n+1-r) per stratum (at_least: one-sided); "
          f"checks at level {args.level}")
    print(header)
    print("-" * len(header))
    for rel, entry in zip(data, entries):
        try:
            d = _load(entry)
        except (ValueError, TypeError, FileNotFoundError) as err:
            print(f"audit_conformal.py: {err}", file=sys.stderr)
            return 2
        probs = softmax(d.logits.astype(np.float64))
        groups = np.digitize(probs.max(axis=1), [0.9, 0.99])
        for name in configs:
            kind, kw = known[name]
            t0 = time.perf_counter()
            try:
                out = audit_predictor(REGISTRY[kind](**kw), probs, d.labels, alphas=args.alphas, n_splits=n_splits,
                                      cal_fraction=args.cal_fraction, groups=groups, seed=args.seed, level=args.level,
                                      data_name=Path(rel).stem, config_name=name, draws=args.draws)
            except ValueError as err:
                print(f"audit_conformal.py: config {name!r}: {err}", file=sys.stderr)
                return 2
            dt = time.perf_counter() - t0
            for r in out:
                rows.append(r)
                print(f"{r.data:28s} {r.config:24s} {r.alpha:5.2f} {r.n_cal:5d} {r.n_test:6d} {r.draws:>9s} "
                      f"{r.law:>8s} {r.mean_coverage:8.4f} {r.expected:8.4f} [{r.band_low:.4f},{r.band_high:.4f}] "
                      f"{r.z:+6.2f} {r.mean_pvalue:7.3f} {r.ks_pvalue:6.3f} {'yes' if r.ok else 'NO':>3s} "
                      f"{dt / len(out):5.2f}")
    if not rows:
        print("audit_conformal.py: Expected audit rows, got none (nothing was audited).", file=sys.stderr)
        return 2
    n_bad = sum(not r.ok for r in rows)
    print(f"\n{len(rows) - n_bad}/{len(rows)} rows pass; total {time.perf_counter() - t_all:.1f} s")
    return 1 if n_bad else 0


if __name__ == "__main__":
    sys.exit(main())
