"""Empirical audit of the Learn-then-Test guarantee over many random calibration/test splits.

For each split: fit the calibrator on the calibration part, choose the threshold with
:func:`calib.policy.guarantees.ltt_threshold`, and measure the selective risk on the test part. Under
the guarantee the number of splits whose risk exceeds the target is stochastically at most
Binomial(n_splits, delta); the audit passes when the count is <= the ``1 - slack_level`` upper
quantile of that distribution.

The guarantee is about the population risk; the test part is finite, so its empirical risk adds noise
on top. The audit measures that harder, product-facing quantity (the risk a team would observe on a
held-out set of the same size).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from calib._validation import check_fraction, check_logits_labels, check_positive_int

__all__ = ["AuditRow", "audit_guarantee", "binomial_slack"]


@dataclasses.dataclass(frozen=True)
class AuditRow:
    target_risk: float
    delta: float
    n_splits: int
    violations: int
    allowed: int
    not_certified: int
    mean_test_risk: float
    mean_coverage: float

    @property
    def violation_rate(self):
        return self.violations / self.n_splits

    @property
    def passed(self):
        return self.violations <= self.allowed


def binomial_slack(n_splits, delta, level=0.99):
    """Largest violation count consistent with rate <= delta: the ``level`` quantile of Binomial(n, delta).

    >>> binomial_slack(500, 0.1)
    66
    """
    from scipy.stats import binom

    n_splits = check_positive_int(n_splits, "n_splits")
    delta = check_fraction(delta, "delta")
    level = check_fraction(level, "level")
    return int(binom.ppf(level, n_splits, delta))


def audit_guarantee(logits, labels, *, targets=((0.02, 0.1),), n_splits=500, cal_fraction=0.5, seed=0,
                    calibrator="temperature", slack_level=0.99, confidence="max_prob"):
    """Audit ``ltt_threshold`` on ``n_splits`` random splits; one :class:`AuditRow` per (target_risk, delta).

    Not-certified splits escalate everything and so never violate; they are counted separately.
    """
    import warnings

    from calib.calibrators import REGISTRY
    from calib.calibrators.base import softmax
    from calib.policy.guarantees import ltt_threshold
    from calib.selective import confidence_scores

    x, y = check_logits_labels(logits, labels, warn_missing=False)
    n_splits = check_positive_int(n_splits, "n_splits")
    cal_fraction = check_fraction(cal_fraction, "cal_fraction")
    rng = np.random.default_rng(seed)
    n = y.size
    n_cal = int(round(cal_fraction * n))
    stats = {t: [] for t in targets}
    for _ in range(n_splits):
        perm = rng.permutation(n)
        ci, ti = perm[:n_cal], perm[n_cal:]
        if calibrator == "identity":
            pc, pt = softmax(x[ci]), softmax(x[ti])
        else:
            cal = REGISTRY[calibrator]().fit(x[ci], y[ci])
            pc, pt = cal.predict_proba(x[ci]), cal.predict_proba(x[ti])
        cc, ct = confidence_scores(pc, confidence), confidence_scores(pt, confidence)
        hc, ht = pc.argmax(1) == y[ci], pt.argmax(1) == y[ti]
        for r, d in targets:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                g = ltt_threshold(cc, hc, target_risk=r, delta=d)
            ans = ct >= g.threshold
            risk = float((~ht[ans]).mean()) if ans.any() else 0.0
            stats[(r, d)].append((risk > r, not g.certified, risk, ans.mean()))
    rows = []
    for (r, d), s in stats.items():
        a = np.array(s, dtype=np.float64)
        rows.append(AuditRow(target_risk=r, delta=d, n_splits=n_splits, violations=int(a[:, 0].sum()),
                             allowed=binomial_slack(n_splits, d, slack_level), not_certified=int(a[:, 1].sum()),
                             mean_test_risk=float(a[:, 2].mean()), mean_coverage=float(a[:, 3].mean())))
    return rows
