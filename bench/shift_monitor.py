"""Label-free monitoring on real shifts: estimated vs true accuracy, drift p-values, held-out-class novelty.

    python bench/shift_monitor.py            # 4 embedded c10lt models, 100 resamples per table (a few minutes)
    python bench/shift_monitor.py --quick    # 10 resamples

For each embedded model (calib.datasets: split 0 = 10,216 long-tailed validation rows, split 1 = 10,000
balanced CIFAR-10 test rows; temperature scaling fitted on split 0):

1. true test accuracy vs the average-confidence and ATC estimates (95% bootstrap intervals: sampling noise only);
2. drift p-values between split 0 and split 1 (KS on top-label confidence, chi-square on predicted classes);
3. a known label shift on one model: calibration = 5,000 random balanced rows of split 1, target = the rest
   subsampled to the reversed long-tailed prior, at several batch sizes (bias and RMSE of the estimates);
4. the held-out-class novelty table: classes 7, 8, 9 removed from the calibration rows (kept-class rows of split 1
   split at random into calibration and target halves; 390 held-out rows added to the target, ~10%): the share
   of flagged items (BH at fdr = 0.1) among held-out vs other classes and the realised FDR, averaged over
   resamples. Held-out classes are a *proxy* for truly new categories: the model was trained on them.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from calib.calibrators import TemperatureScaling
from calib.datasets import BUILTIN, load
from calib.shift.monitor import (
    benjamini_hochberg,
    drift_tests,
    estimate_accuracy,
    novelty_pvalues,
)


def _ci(e):
    return f"{e.estimate:.4f} [{e.low:.4f}, {e.high:.4f}]"


def accuracy_and_drift(names):
    print("## 1-2. Long-tailed validation (split 0) -> balanced test (split 1), temperature scaling fitted on split 0")
    print(f"{'model':<20} {'cal acc':>7} {'true':>7}  {'average confidence':<26} {'ATC (max conf)':<26} "
          f"{'ATC (neg entropy)':<26} {'KS p':>9} {'chi2 p':>9}")
    for name in names:
        d = load(name)
        c, t = d.split == 0, d.split == 1
        ts = TemperatureScaling().fit(d.logits[c], d.labels[c])
        pc, pt = ts.predict_proba(d.logits[c]), ts.predict_proba(d.logits[t])
        true = float(np.mean(pt.argmax(1) == d.labels[t]))
        avg = estimate_accuracy(pc, d.labels[c], pt, method="average_confidence")
        atc = estimate_accuracy(pc, d.labels[c], pt, method="atc")
        atc_ne = estimate_accuracy(pc, d.labels[c], pt, method="atc", score="neg_entropy")
        rows = {r["test"]: r for r in drift_tests(pc, pt)}
        print(f"{name:<20} {atc.calibration_accuracy:>7.4f} {true:>7.4f}  {_ci(avg):<26} {_ci(atc):<26} "
              f"{_ci(atc_ne):<26} {rows['ks_confidence']['p_value']:>9.2g} "
              f"{rows['chi2_predicted_class']['p_value']:>9.2g}")
    print()


def known_label_shift(name, reps, sizes=(150, 500, 1800)):
    print(f"## 3. Known label shift on {name}: calibration = 5,000 random rows of split 1 (temperature fitted on them),"
          f" target = the rest subsampled to the reversed long-tailed prior; {reps} resamples per size")
    d = load(name)
    prior = np.bincount(d.labels[d.split == 0], minlength=10)[::-1] / np.sum(d.split == 0)
    z, y = d.logits[d.split == 1], d.labels[d.split == 1]
    rng = np.random.default_rng(0)
    print(f"{'m':>6}  {'avg conf bias':>13} {'avg conf RMSE':>13}  {'ATC bias':>9} {'ATC RMSE':>9}  "
          f"{'ATC closer':>10}  {'ATC interval covers true':>24}")
    for m in sizes:
        counts = np.round(prior * m).astype(int)
        err = {"avg": [], "atc": []}
        covered = 0
        for r in range(reps):
            perm = rng.permutation(len(y))
            ci, rest = perm[:5000], perm[5000:]
            ts = TemperatureScaling().fit(z[ci], y[ci])
            ti = np.concatenate([rng.choice(rest[y[rest] == j], counts[j], replace=False) for j in range(10)])
            pc, pt = ts.predict_proba(z[ci]), ts.predict_proba(z[ti])
            true = float(np.mean(pt.argmax(1) == y[ti]))
            atc = estimate_accuracy(pc, y[ci], pt, seed=r)
            avg = estimate_accuracy(pc, y[ci], pt, method="average_confidence", n_bootstrap=0)
            err["atc"].append(atc.estimate - true)
            err["avg"].append(avg.estimate - true)
            covered += atc.low <= true <= atc.high
        a, b = np.array(err["avg"]), np.array(err["atc"])
        print(f"{m:>6}  {a.mean():>+13.4f} {np.sqrt(np.mean(a ** 2)):>13.4f}  {b.mean():>+9.4f} "
              f"{np.sqrt(np.mean(b ** 2)):>9.4f}  {int(np.sum(np.abs(b) < np.abs(a))):>5d}/{reps:<4d}  "
              f"{covered:>18d}/{reps}")
    print()


def held_out_novelty(names, reps, held=(7, 8, 9), n_novel=390, fdr=0.1):
    print(f"## 4. Held-out classes {list(held)} (a proxy for new categories): BH at fdr={fdr}, {reps} resamples")
    print(f"{'model':<20} {'score':<10} {'flagged held-out':>16} {'flagged rest':>12} {'realised FDR':>12} "
          f"{'resamples with flags':>20} {'s / resample':>12}")
    for name in names:
        d = load(name)
        z, y = d.logits[d.split == 1], d.labels[d.split == 1]
        held_mask = np.isin(y, held)
        kept, novel = np.flatnonzero(~held_mask), np.flatnonzero(held_mask)
        for score in ("knn", "energy", "max_logit"):
            rng = np.random.default_rng(0)
            share_novel, share_rest, fdp, any_flag = [], [], [], 0
            t0 = time.perf_counter()
            for _ in range(reps):
                perm = rng.permutation(kept)
                cal, tgt_in = perm[: len(kept) // 2], perm[len(kept) // 2:]
                tgt = np.concatenate([tgt_in, rng.choice(novel, n_novel, replace=False)])
                is_novel = np.r_[np.zeros(len(tgt_in), bool), np.ones(n_novel, bool)]
                flags = benjamini_hochberg(novelty_pvalues(z[cal], z[tgt], score=score,
                                                           seed=int(rng.integers(2**31))), fdr)
                share_novel.append(flags[is_novel].mean())
                share_rest.append(flags[~is_novel].mean())
                fdp.append((flags & ~is_novel).sum() / max(int(flags.sum()), 1))
                any_flag += bool(flags.any())
            secs = (time.perf_counter() - t0) / reps
            print(f"{name:<20} {score:<10} {np.mean(share_novel):>16.4f} {np.mean(share_rest):>12.4f} "
                  f"{np.mean(fdp):>12.4f} {any_flag:>14d}/{reps:<5d} {secs:>12.3f}")
    print(f"(realised FDR = mean over resamples of flagged rest / flagged, 0 when nothing is flagged; BH guarantees "
          f"<= {fdr} x inliers / target = {fdr * 3500 / (3500 + n_novel):.3f} in expectation)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 resamples per table instead of 100")
    parser.add_argument("--models", nargs="+", default=sorted(BUILTIN), choices=sorted(BUILTIN))
    args = parser.parse_args(argv)
    reps = 10 if args.quick else 100
    accuracy_and_drift(args.models)
    known_label_shift("c10lt_resnet110" if "c10lt_resnet110" in args.models else args.models[0], reps)
    held_out_novelty(args.models, reps)


if __name__ == "__main__":
    main()
