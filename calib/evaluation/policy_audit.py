"""Empirical audit of the Learn-then-Test guarantee over many random calibration/test splits.

For each split: fit the calibrator on the calibration part, choose the threshold with
:func:`calib.policy.guarantees.ltt_threshold`, and measure the selective risk on the test part. Under
the guarantee the number of splits whose risk exceeds the target is stochastically at most
Binomial(n_splits, delta); the audit passes when the count is <= the ``1 - slack_level`` upper
quantile of that distribution.

What Learn then Test guarantees is P(R(threshold) > r) <= delta over the draw of the calibration set, R
the population selective risk. The test part is finite, so its empirical risk adds binomial noise on top:
the audit measures that harder, product-facing quantity (the risk a team would observe on a held-out set of
the same size), so a count within the slack is evidence for the guarantee, and a count above it would be
evidence against it or against the exchangeability of the splits.

``event="population"`` audits the guarantee itself: the data set is taken as the population, each split
draws its calibration items from it **with replacement** (i.i.d. from that population, as LTT assumes), and
a violation is R(threshold) > r with R the selective risk over the whole data set (the population risk,
exactly). There the count is stochastically at most Binomial(n_splits, delta) for any valid procedure.

``family`` audits either family of fixed sequences (:data:`calib.policy.guarantees.FAMILIES`):
``"multi_start"`` (the default of :class:`calib.policy.RiskControlPolicy`) or ``"fixed_sequence"``. The less
conservative ``fixed_sequence`` lands closer to r, so its *test-split* risk exceeds r more often than delta
(the finite test half's noise), while its population violations stay within the slack.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from calib._validation import check_choice, check_fraction, check_logits_labels, check_positive_int

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
    family: str = "multi_start"
    event: str = "test_risk"

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
                    calibrator="temperature", slack_level=0.99, confidence="max_prob", family="multi_start",
                    event="test_risk"):
    """Audit ``ltt_threshold`` on ``n_splits`` random splits; one :class:`AuditRow` per (family, target_risk,
    delta).

    ``family``: one family of fixed sequences or a sequence of them; several families are audited on the same
    splits (and the same calibrated probabilities), so their coverages compare item for item.
    ``event``: ``"test_risk"`` (a split violates when the selective risk on its test part exceeds r; the
    default, the observable quantity) or ``"population"`` (calibration items drawn with replacement from the
    whole data set, a violation is the selective risk over the whole data set exceeding r: the guarantee).
    Not-certified splits escalate everything and so never violate; they are counted separately.
    """
    import warnings

    from calib.calibrators import REGISTRY
    from calib.calibrators.base import softmax
    from calib.policy.guarantees import FAMILIES, ltt_threshold
    from calib.selective import confidence_scores

    x, y = check_logits_labels(logits, labels, warn_missing=False)
    n_splits = check_positive_int(n_splits, "n_splits")
    cal_fraction = check_fraction(cal_fraction, "cal_fraction")
    families = [family] if isinstance(family, str) else list(family)
    if not families:
        raise ValueError(f"Expected family as one of {list(FAMILIES)} or a list of them, got an empty list.")
    families = [check_choice(f, "family", tuple(FAMILIES)) for f in families]
    event = check_choice(event, "event", ("test_risk", "population"))
    rng = np.random.default_rng(seed)
    n = y.size
    n_cal = int(round(cal_fraction * n))
    stats = {(f, t): [] for f in families for t in targets}
    for _ in range(n_splits):
        if event == "population":  # i.i.d. calibration draw from the data set; "test" = the whole population
            ci, ti = rng.integers(0, n, n_cal), np.arange(n)
        else:
            perm = rng.permutation(n)
            ci, ti = perm[:n_cal], perm[n_cal:]
        if calibrator == "identity":
            pc, pt = softmax(x[ci]), softmax(x[ti])
        else:
            cal = REGISTRY[calibrator]().fit(x[ci], y[ci])
            pc, pt = cal.predict_proba(x[ci]), cal.predict_proba(x[ti])
        cc, ct = confidence_scores(pc, confidence), confidence_scores(pt, confidence)
        hc, ht = pc.argmax(1) == y[ci], pt.argmax(1) == y[ti]
        for f, (r, d) in stats:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                g = ltt_threshold(cc, hc, target_risk=r, delta=d, family=f)
            ans = ct >= g.threshold
            risk = float((~ht[ans]).mean()) if ans.any() else 0.0
            stats[(f, (r, d))].append((risk > r, not g.certified, risk, ans.mean()))
    rows = []
    for (f, (r, d)), s in stats.items():
        a = np.array(s, dtype=np.float64)
        rows.append(AuditRow(target_risk=r, delta=d, n_splits=n_splits, violations=int(a[:, 0].sum()),
                             allowed=binomial_slack(n_splits, d, slack_level), not_certified=int(a[:, 1].sum()),
                             mean_test_risk=float(a[:, 2].mean()), mean_coverage=float(a[:, 3].mean()),
                             family=f, event=event))
    return rows
