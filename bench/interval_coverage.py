"""Do the two policy intervals cover what a reader thinks they cover? A re-split coverage study.

    python bench/interval_coverage.py                       # 200 re-splits x 200 resamples, cifar10_wrn16_4
    python bench/interval_coverage.py --splits 500 --resamples 200
    python bench/interval_coverage.py --data ../shared/data/c10lt_sctl/resnet110.npz --n-max 8000

The procedure: temperature scaling, then a threshold policy answering the ``--target-coverage`` most confident
calibration items (calib's ThresholdPolicy(target_coverage=...)), fitted on a stratified 50/50 re-split of all
rows of a real logits file (its own split ignored), judged on the other half. Per re-split s:

* the metric (automation rate; selective risk) of the procedure on that split, m_s;
* the **conditional** interval: calib's product-metric bootstrap (test items resampled, the fitted threshold
  held fixed; calib.evaluation.product_metrics.product_metrics);
* the **procedure-level** interval: calib.evaluation.intervals.procedure_bootstrap, each resample redrawing
  the calibration and the test rows and refitting the temperature and the threshold.

Target: the mean of m_s over all re-splits (what "the automation rate of this procedure on this data" means
when the calibration split is not fixed). Printed: the share of re-splits whose interval contains it, with an
exact Clopper-Pearson 95 % interval, and the exact one-sided binomial p-value of H0 "containment >= 0.85"
(calib.stats.binom_less_pvalue; the check applied to the procedure interval: p >= 0.05).

Refits are made cheap, not different: the temperature is the NLL optimum found by Newton's method in float64
(warm-started; calib's TemperatureScaling gives the same optimum, checked on the first split), the confidence is
the top softmax probability 1 / sum_c exp(beta (z_c - max z)), and the threshold is ThresholdPolicy's rule
(the answered items are checked against the library's TemperatureScaling + ThresholdPolicy on the first split,
item for item; where calib's float64 temperature fit raises FitError at the optimum, seen on 2,000-row halves,
the temperature is checked against its float32 fit to 1e-6).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from calib.base import FitError
from calib.calibrators import TemperatureScaling
from calib.calibrators.base import softmax
from calib.evaluation.intervals import procedure_bootstrap
from calib.evaluation.product_metrics import product_metrics
from calib.policy import ThresholdPolicy
from calib.stats import binom_less_pvalue, clopper_pearson

SHARED = Path(os.environ.get("CALIB_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
DEFAULT_DATA = SHARED / "cifar_netcal" / "cifar10_wrn16_4.npz"
METRICS = ("automation_rate", "selective_risk")
REQUIRED = 0.85


def centred(z):
    """Logits minus their row maximum (float64): softmax and its argmax do not change, the top class has 0."""
    return z - z.max(axis=1, keepdims=True)


def fit_beta(d, y, beta=1.0, tol=1e-10, max_iter=50):
    """Inverse temperature minimising the mean NLL of softmax(beta d) (Newton in float64; d centred)."""
    ones = np.ones(d.shape[1])
    dy = d[np.arange(y.size), y]
    for _ in range(max_iter):
        e = np.exp(beta * d)
        ed = e * d
        s0, s1, s2 = e @ ones, ed @ ones, (ed * d) @ ones
        mu = s1 / s0
        g, h = np.mean(mu - dy), np.mean(s2 / s0 - mu * mu)
        new = beta - g / h
        new = new if new > 0 else beta / 2
        if abs(new - beta) <= tol * beta:
            return new
        beta = new
    raise RuntimeError("temperature fit did not converge")


def top_confidence(d, beta):
    """Max-probability of softmax(beta d) for centred logits d: 1 / sum_c exp(beta d_c)."""
    return 1.0 / (np.exp(beta * d) @ np.ones(d.shape[1]))


def threshold_rule(conf, target_coverage):
    """calib.policy.ThresholdPolicy(target_coverage=...)._fit: answer the ceil(c n) most confident items."""
    s = np.sort(conf)[::-1]
    return s[max(1, math.ceil(target_coverage * s.size)) - 1]


def stratified_halves(labels, rng):
    cal = np.zeros(labels.size, dtype=bool)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        cal[idx[: idx.size // 2]] = True
    return np.flatnonzero(cal), np.flatnonzero(~cal)


def rates(answer, correct):
    n_a = answer.sum()
    return {"automation_rate": n_a / answer.size,
            "selective_risk": (np.sum(answer & ~correct) / n_a) if n_a else float("nan")}


def study(z, y, *, splits, resamples, level, target_coverage, seed, check=True, log=print):
    point = {m: np.empty(splits) for m in METRICS}
    cond = {m: np.full((splits, 2), np.nan) for m in METRICS}
    proc = {m: np.full((splits, 2), np.nan) for m in METRICS}
    d_all = centred(z)
    pred_all = z.argmax(axis=1)
    beta0 = fit_beta(d_all, y)
    t0 = time.perf_counter()
    for s in range(splits):
        cal_rows, test_rows = stratified_halves(y, np.random.default_rng([seed, s]))
        dc, yc, dt, yt = d_all[cal_rows], y[cal_rows], d_all[test_rows], y[test_rows]
        right_t = pred_all[test_rows] == yt
        beta = fit_beta(dc, yc, beta0)
        thr = threshold_rule(top_confidence(dc, beta), target_coverage)
        answer = top_confidence(dt, beta) >= thr
        for m, v in rates(answer, right_t).items():
            point[m][s] = v
        if check and s == 0:  # the cheap refit is the library's procedure
            zc, zt = z[cal_rows], z[test_rows]
            try:
                t_lib, how = TemperatureScaling().fit(zc, yc).temperature_, "float64"
            except FitError as err:  # calib's float64 fit can refuse an optimum it has reached (reported)
                log(f"note: calib TemperatureScaling on float64 logits raised {type(err).__name__}: {err}")
                t_lib, how = TemperatureScaling().fit(zc.astype(np.float32), yc).temperature_, "float32"
            rel = abs(t_lib * beta - 1.0)
            pol = ThresholdPolicy(target_coverage=target_coverage).fit(softmax(zc, beta=beta), yc)
            same = np.array_equal(pol.route(softmax(zt, beta=beta)).actions == 0, answer)
            log(f"check on split 0: |T_calib ({how}) / T_newton - 1| = {rel:.1e}; ThresholdPolicy actions "
                f"identical: {same}")
            if rel > 1e-6 or not same:
                raise AssertionError("the bench's refit differs from calib's TemperatureScaling + ThresholdPolicy")
        pm = product_metrics(np.where(answer, 0, 1), pred_all[test_rows], yt, n_resamples=resamples,
                             confidence_level=level, seed=s)
        for m in METRICS:
            if pm["ci"][m] is not None:
                cond[m][s] = pm["ci"][m]

        def fit_and_score(ci, ti, dc=dc, yc=yc, dt=dt, right_t=right_t, beta=beta):
            dci = dc[ci]
            b = fit_beta(dci, yc[ci], beta)
            th = threshold_rule(top_confidence(dci, b), target_coverage)
            return rates(top_confidence(dt[ti], b) >= th, right_t[ti])

        pb = procedure_bootstrap(fit_and_score, yc.size, yt.size, n_resamples=resamples, confidence_level=level,
                                 seed=s, progress=lambda *a: None)
        for m in METRICS:
            if pb["ci"][m] is not None:
                proc[m][s] = pb["ci"][m]
        if (s + 1) % max(1, splits // 10) == 0:
            log(f"  {s + 1}/{splits} re-splits, {time.perf_counter() - t0:.0f} s")
    return point, cond, proc, time.perf_counter() - t0


def report(point, cond, proc, level, log=print):
    rows = []
    for m in METRICS:
        target = float(np.nanmean(point[m]))
        spread = float(np.nanstd(point[m], ddof=1))
        for name, ci in (("conditional (policy fixed)", cond[m]), ("procedure-level (refit)", proc[m])):
            ok = (ci[:, 0] <= target) & (target <= ci[:, 1])
            k, n = int(ok.sum()), int(np.isfinite(ci[:, 0]).sum())
            lo, hi = clopper_pearson(k, n, 0.95)
            p = float(binom_less_pvalue(k, n, REQUIRED))
            width = float(np.nanmean(ci[:, 1] - ci[:, 0]))
            rows.append((m, name, k, n, k / n, lo, hi, p, width, target, spread))
            log(f"{m:16s} {name:27s} contains the mean in {k:4d}/{n} = {k / n:.3f}  CP95 [{lo:.3f}, {hi:.3f}]  "
                f"p(H0: >= {REQUIRED}) = {p:.3g}  mean width {width:.4f}")
        log(f"{'':16s} target (mean over re-splits) {target:.4f}; sd over re-splits {spread:.4f} "
            f"(mean +- 1.645 sd spans {2 * 1.6449 * spread:.4f})")
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="npz with logits and labels (all rows are pooled)")
    ap.add_argument("--splits", type=int, default=200)
    ap.add_argument("--resamples", type=int, default=200)
    ap.add_argument("--level", type=float, default=0.9)
    ap.add_argument("--target-coverage", type=float, default=0.8, help="share of items the policy answers")
    ap.add_argument("--n-max", type=int, default=None, help="use a random subsample of this many rows")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    with np.load(args.data, allow_pickle=False) as f:
        z, y = f["logits"].astype(np.float64), f["labels"].astype(np.int64)
    if args.n_max is not None and args.n_max < y.size:
        keep = np.random.default_rng(args.seed).permutation(y.size)[: args.n_max]
        z, y = z[np.sort(keep)], y[np.sort(keep)]
    print(f"data {args.data}: {y.size} rows, {z.shape[1]} classes; {args.splits} stratified 50/50 re-splits, "
          f"{args.resamples} resamples per interval, level {args.level}; procedure: temperature scaling + "
          f"ThresholdPolicy(target_coverage={args.target_coverage})")
    point, cond, proc, secs = study(z, y, splits=args.splits, resamples=args.resamples, level=args.level,
                                    target_coverage=args.target_coverage, seed=args.seed)
    print(f"time {secs:.1f} s ({secs / args.splits * 1000:.0f} ms per re-split)")
    rows = report(point, cond, proc, args.level)
    proc_auto = next(r for r in rows if r[0] == "automation_rate" and r[1].startswith("procedure"))
    verdict = "PASS" if proc_auto[7] >= 0.05 else "FAIL"
    print(f"check: procedure-level automation-rate interval, exact binomial test of H0 'containment >= {REQUIRED}': "
          f"p = {proc_auto[7]:.3g} -> {verdict}; lower Clopper-Pearson 95 % bound {proc_auto[5]:.3f}")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    raise SystemExit(main())
