"""Routing thresholds re-chosen under label-shift weights (calib.shift.reweight_policy) on the four embedded c10lt
models: long-tailed validation (split 0) -> balanced test (split 1), a real label shift.

    python bench/shift_policy.py                       # four models, risks 0.02 0.05 0.1, three bounds; ~15 s
    python bench/shift_policy.py --models c10lt_resnet110 --risks 0.05 --bounds bernstein hoeffding

Per model: temperature scaling fitted on split 0; RiskControlPolicy(target_risk=r, delta=0.1) fitted on split 0
(plain: the binomial Learn then Test, no claim under shift) and reweighted with reweight_policy, once per test
(bound="bernstein", the default: weighted Bernstein with per-class Clopper-Pearson variance bounds;
bound="hoeffding"; bound="per_class_binomial": per-class Clopper-Pearson bounds, Bonferroni over the classes):
unit weights (no shift: the price of each test against the pooled binomial one), the true weights
w(y) = 0.1 / (split-0 frequency of y), and EM-estimated weights (estimate_label_shift(..., method="em") on the
unlabeled split-1 probabilities).
Columns: the threshold (inf: nothing certified, every item escalated), the share of test items answered, their
selective risk, the exact p-value of H0 "selective risk <= r" on the test answers (calib.evaluation.routing.
test_risk_test; small = the test split is evidence of a risk above r), and whether Learn then Test certified a
threshold. Printed as a markdown table (kept in docs/shift.md, "Routing under label shift"), then per bound the
number of (model, r, weights) cases certified, and per-model notes.
"""

from __future__ import annotations

import argparse
import math
import time
import warnings

import numpy as np

import calib.datasets
from calib.calibrators import TemperatureScaling
from calib.evaluation.routing import test_risk_test
from calib.policy import RiskControlPolicy
from calib.policy.routing import ANSWER
from calib.shift import estimate_label_shift, reweight_policy
from calib.shift.adapt import BOUNDS

DELTA = 0.1


def _row(model, r, name, policy, certified, pt, yt):
    a = policy.route(pt).actions == ANSWER
    n_ans = int(a.sum())
    err = int((pt.argmax(1)[a] != yt[a]).sum())
    t = policy.threshold_
    hi = 1.0 + 1e-3 + 2e-7 * pt.shape[1]  # confidence_domain("max_prob", k)[1]: above it, "escalate every item"
    thr = "inf" if (not math.isfinite(t) or t > hi) else f"{t:.4f}"
    risk = f"{err / n_ans:.4f}" if n_ans else "-"
    p = test_risk_test(err, n_ans, r)["p_value"]
    return f"| {model} | {r:g} | {name} | {thr} | {n_ans / yt.size:.3f} | {risk} | {p:.3g} | {certified} |"


def run(model, risks, bounds, tally):
    data = calib.datasets.load(model)
    cal, test = data.split == 0, data.split == 1
    ts = TemperatureScaling().fit(data.logits[cal], data.labels[cal])
    probs = ts.predict_proba(data.logits)
    pc, yc, pt, yt = probs[cal], data.labels[cal], probs[test], data.labels[test]
    k = data.n_classes
    src = np.bincount(yc, minlength=k) / yc.size
    tgt = np.bincount(yt, minlength=k) / yt.size
    w_true = tgt / src
    est = estimate_label_shift(pc, yc, pt, method="em", n_bootstrap=0)
    rows, extra = [], []
    for r in risks:
        pol = RiskControlPolicy(target_risk=r, delta=DELTA)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "nothing certified" is a column of the table
            plain = pol.clone().fit(pc, yc)
            rows.append(_row(model, r, "plain (binomial LTT)", plain, plain.guarantee_.certified, pt, yt))
            for bound in bounds:
                for name, w in (("unit weights", np.ones(k)), ("true weights", w_true), ("EM weights", est)):
                    out, rep = reweight_policy(pol, pc, yc, w, bound=bound)
                    rows.append(_row(model, r, f"{bound}, {name}", out, rep.certified, pt, yt))
                    tally.setdefault((bound, name), [0, 0])
                    tally[(bound, name)][0] += bool(rep.certified)
                    tally[(bound, name)][1] += 1
    ess = reweight_policy(RiskControlPolicy(target_risk=0.5), pc, yc, w_true)[1].effective_sample_size
    extra.append(f"{model}: n_cal={yc.size}, n_test={yt.size}, T={ts.temperature_:.3f}, effective sample size of the "
                 f"true weights {ess:.0f}, EM prior total variation to the true test prior "
                 f"{est.total_variation(tgt):.4f}")
    return rows, extra


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=sorted(calib.datasets.BUILTIN))
    ap.add_argument("--risks", nargs="+", type=float, default=[0.02, 0.05, 0.1])
    ap.add_argument("--bounds", nargs="+", choices=BOUNDS, default=list(BOUNDS))
    args = ap.parse_args()
    t0 = time.perf_counter()
    print(f"delta = {DELTA}; test = split 1 (balanced, 10,000 rows); p = test_risk_test p-value (H0: test-population "
          "selective risk <= r)\n")
    print("| model | r | policy | threshold | test automation | test selective risk | test_risk_test p | certified |")
    print("|---|---|---|---|---|---|---|---|")
    notes, tally = [], {}
    for model in args.models:
        rows, extra = run(model, args.risks, args.bounds, tally)
        print("\n".join(rows))
        notes += extra
    print()
    for (bound, name), (cert, total) in tally.items():
        print(f"reweighted ({bound}), {name}: certified in {cert} of {total} (model, r) cases")
    print()
    print("\n".join(notes))
    print(f"\n({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
