"""Shipped conformal defaults on real 100-class logits: coverage, set sizes, empty and full sets (issue #12).

    python bench/conformal_defaults.py                      # the two cifar_netcal CIFAR-100 sets
    python bench/conformal_defaults.py --data-dir /path/to/shared/data
    python bench/conformal_defaults.py --draws-demo         # + the seed-only vs fresh draws re-split audit

Each data set: temperature scaling fitted on split 0 (the calibration part), the conformal predictors on the
same rows, everything measured on split 1. The shipped configs are composed from conf/ (``conformal=aps``,
``conformal=raps``, ``conformal=lac``, run seed 0) and instantiated with calib._hydra.instantiate, so the rows
are what `python experiments/calibrate.py conformal=...` fits. Reference: randomised APS with never_empty off
(the exact law). Must-show: the shipped ``conformal=aps`` has a mean set size within 20 % of the randomised APS
size and an empty-set rate under 1 % on every data set.

``--draws-demo`` (about a minute per data set): 20 predictor seeds x 500 re-splits of the first data set,
RAPS (k_reg=2, lam=0.01, never_empty off) with the draws of calib <= 0.1 (the same uniforms for every fit,
``draws="seed_only"``) and with fresh draws per split; under the exact law the 20 z-scores of the mean
coverage are N(0, 1), so sum z^2 ~ chi2(20).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO.parent / "shared" / "data"
FILES = ["cifar_netcal/cifar100_densenet_bc100.npz", "cifar_netcal/cifar100_wrn16_4.npz"]


def _shipped(option, seed=0):
    """The predictor of ``conformal=<option>`` as experiments/calibrate.py composes and instantiates it."""
    from hydra import compose, initialize_config_dir

    from calib._hydra import instantiate
    from calib.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"conformal={option}", f"seed={seed}"])
    return instantiate(cfg.conformal)


def _row(name, cp, pc, yc, pt, yt, ref_size=None):
    from calib.conformal import SetSizeWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SetSizeWarning)
        sets = cp.fit(pc, yc).predict_set(pt)
    size = sets.sum(axis=1)
    k = sets.shape[1]
    return dict(name=name, coverage=float(sets[np.arange(yt.shape[0]), yt].mean()), size=float(size.mean()),
                ratio=float(size.mean() / ref_size) if ref_size else 1.0, empty=float((size == 0).mean()),
                full=float((size == k).mean()), warned=any(issubclass(w.category, SetSizeWarning) for w in caught))


def measure(path):
    from calib import load_logits
    from calib.calibrators import TemperatureScaling
    from calib.conformal import SplitConformal

    d = load_logits(path)
    c, t = d.split == 0, d.split == 1
    ts = TemperatureScaling().fit(d.logits[c], d.labels[c])
    pc, pt, yc, yt = ts.predict_proba(d.logits[c]), ts.predict_proba(d.logits[t]), d.labels[c], d.labels[t]
    ref = _row("aps randomised, never_empty=False (exact law)",
               SplitConformal(score="aps", randomized=True, never_empty=False), pc, yc, pt, yt)
    rows = [_row("conformal=aps (shipped default)", _shipped("aps"), pc, yc, pt, yt, ref["size"]), ref,
            _row("conformal=raps (shipped default)", _shipped("raps"), pc, yc, pt, yt, ref["size"]),
            _row("conformal=lac", _shipped("lac"), pc, yc, pt, yt, ref["size"]),
            _row("aps randomized=False (old default)", SplitConformal(score="aps", randomized=False), pc, yc, pt, yt,
                 ref["size"])]
    return int(c.sum()), int(t.sum()), rows


def draws_demo(path, n_seeds=20, n_splits=500):
    from scipy import stats

    from calib import load_logits
    from calib.calibrators.base import softmax
    from calib.conformal import SplitConformal
    from calib.evaluation.conformal_audit import audit_predictor

    d = load_logits(path)
    p, y = softmax(d.logits.astype(np.float64)), d.labels
    print(f"\nRe-split audit of RAPS (k_reg=2, lam=0.01, never_empty=False) on {path.name}: {n_seeds} predictor "
          f"seeds x {n_splits} splits (cal 50 %); z = (mean coverage - exact E) / exact sd of the mean")
    for draws, what in (("seed_only", "calib <= 0.1: same uniforms for every fit"), ("split", "fresh draws per split")):
        t0 = time.perf_counter()
        z = np.array([audit_predictor(SplitConformal(score="raps", k_reg=2, lam=0.01, never_empty=False, seed=s),
                                      p, y, n_splits=n_splits, draws=draws, seed=100 + s)[0].z for s in range(n_seeds)])
        chi2 = float((z ** 2).sum())
        print(f"  {draws:9s} ({what}): sum z^2 = {chi2:5.1f} (chi2({n_seeds}) p = {stats.chi2.sf(chi2, n_seeds):.2g}), "
              f"min z = {z.min():+.2f}, seeds with z < -3: {int((z < -3).sum())}  [{time.perf_counter() - t0:.0f} s]")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="folder holding cifar_netcal/")
    ap.add_argument("--draws-demo", action="store_true", help="also run the seed-only vs fresh draws audit")
    args = ap.parse_args(argv)
    paths = [args.data_dir / f for f in FILES]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        print(f"conformal_defaults.py: skipped: the CIFAR-100 logits are absent ({', '.join(missing)}); pass "
              "--data-dir to the folder holding cifar_netcal/.")
        return 0
    ok_all = True
    print("alpha = 0.1; temperature scaling and conformal fitted on split 0, measured on split 1; "
          "ratio = mean size / randomised APS mean size")
    header = f"{'predictor':46s} {'coverage':>8s} {'size':>7s} {'ratio':>6s} {'empty':>7s} {'full':>6s} {'warned':>6s}"
    for path in paths:
        n_cal, n_test, rows = measure(path)
        print(f"\n{path.name} (n_cal={n_cal}, n_test={n_test}, k=100)")
        print(header)
        print("-" * len(header))
        for r in rows:
            print(f"{r['name']:46s} {r['coverage']:8.4f} {r['size']:7.2f} {r['ratio']:6.2f} {r['empty']:7.2%} "
                  f"{r['full']:6.2%} {'yes' if r['warned'] else 'no':>6s}")
        shipped = rows[0]
        ok = abs(shipped["ratio"] - 1) <= 0.2 and shipped["empty"] < 0.01
        ok_all &= ok
        print(f"must-show ({path.stem}): conformal=aps size ratio {shipped['ratio']:.3f} (within 0.8-1.2), empty "
              f"{shipped['empty']:.2%} (< 1 %): {'PASS' if ok else 'FAIL'}")
    print(f"\nmust-show on all data sets: {'PASS' if ok_all else 'FAIL'}")
    if args.draws_demo:
        draws_demo(paths[0])
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
