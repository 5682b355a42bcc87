"""The plotting layer's prepare_* functions and the audit and report helpers refuse bad input with the shared
message template (they are public: notebooks call them directly)."""

from __future__ import annotations

import numpy as np
import pytest

from calib.plotting import conformal as C
from calib.plotting import reliability as R
from calib.plotting import routing as Ro

P = np.full((10, 3), 1 / 3)
Y = np.arange(10) % 3
SETS = np.ones((10, 3), bool)
CONF, HIT = np.linspace(0.1, 0.9, 10), np.arange(10) % 2 == 0

CASES = [
    ("rel-n_bins-0", lambda: R.prepare_reliability(P, Y, n_bins=0), ValueError, r"n_bins >= 1, got 0"),
    ("rel-n_bins-float", lambda: R.prepare_reliability(P, Y, n_bins=1.5), TypeError, r"n_bins as an integer"),
    ("rel-labels-length", lambda: R.prepare_reliability(P, Y[:5]), ValueError, r"labels of length 10"),
    ("rel-probs-nan", lambda: R.prepare_reliability(np.full((10, 3), np.nan), Y), ValueError, r"finite probs"),
    ("sizes-float", lambda: C.prepare_set_sizes(np.full((3, 3), 0.5)), TypeError, r"sets as booleans"),
    ("sizes-1d", lambda: C.prepare_set_sizes(np.ones(3, bool)), ValueError, r"sets of shape \(n_samples, n_classes\)"),
    ("sizes-twos", lambda: C.prepare_set_sizes(np.full((3, 3), 2)), ValueError, r"got values \[2\]"),
    ("classcov-alpha", lambda: C.prepare_class_coverage(SETS, Y, 2.0), ValueError, r"alpha in \(0, 1\), got 2.0"),
    ("classcov-length", lambda: C.prepare_class_coverage(SETS, Y[:4], 0.1), ValueError, r"one per row of sets"),
    ("classcov-label-range", lambda: C.prepare_class_coverage(SETS, Y + 5, 0.1), ValueError, r"labels in \[0, 2\]"),
    ("rc-length", lambda: Ro.prepare_risk_coverage(CONF, HIT[:4]), ValueError, r"correct of shape \(10,\)"),
    ("rc-nan", lambda: Ro.prepare_risk_coverage(np.full(10, np.nan), HIT), ValueError, r"finite confidence"),
    ("rc-float-correct", lambda: Ro.prepare_risk_coverage(CONF, np.full(10, 0.5)), TypeError, r"correct as booleans"),
    ("rc-target", lambda: Ro.prepare_risk_coverage(CONF, HIT, target_risk=2), ValueError, r"target_risk in \[0, 1\]"),
    ("rc-threshold-nan", lambda: Ro.prepare_risk_coverage(CONF, HIT, threshold=float("nan")), ValueError,
     r"threshold as a finite number"),
    ("frontier-human", lambda: Ro.prepare_completion_frontier(CONF, HIT, human_accuracy=2), ValueError,
     r"human_accuracy in \[0, 1\]"),
    ("frontier-human-nan", lambda: Ro.prepare_completion_frontier(CONF, HIT, human_accuracy=float("nan")),
     ValueError, r"human_accuracy"),
    ("slices-top", lambda: Ro.prepare_slices([], top=0), ValueError, r"top >= 1, got 0"),
    ("slices-target", lambda: Ro.prepare_slices([], target=-1), ValueError, r"target in \[0, 1\]"),
]


@pytest.mark.parametrize("case,call,err,match", CASES, ids=[c[0] for c in CASES])
def test_prepare_functions_refuse_bad_input(case, call, err, match):
    with pytest.raises(err, match=match):
        call()


def test_int_sets_and_labels_give_the_bool_result():
    sets = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 1, 1]])
    labels = np.array([0, 2, 2, 1])
    a = C.prepare_class_coverage(sets, labels, 0.1)
    b = C.prepare_class_coverage(sets.astype(bool), labels.astype(np.float64), 0.1)
    assert a.coverage.tolist() == b.coverage.tolist() == [0.5, 1.0, 1.0]  # class 2: 1 of 2 rows covered


def _audit_cases():
    from calib.calibrators import TemperatureScaling, softmax
    from calib.conformal import SplitConformal
    from calib.evaluation import conformal_audit as CA, policy_audit as PA, shift_report as SR
    from calib.policy import RiskControlPolicy

    rng = np.random.default_rng(0)
    x = (rng.normal(size=(400, 3)) * 2).astype(np.float32)
    y = np.argmax(x + rng.gumbel(size=x.shape), 1)
    p = softmax(x)
    lac = SplitConformal(score="lac")
    return [
        ("pmf-alpha", lambda: CA.coverage_count_pmf([10], [10], 2.0), ValueError, r"alpha in \(0, 1\)"),
        ("pmf-sizes", lambda: CA.coverage_count_pmf([-1], [10], 0.1), ValueError, r"cal_sizes as integers >= 1"),
        ("pmf-lengths", lambda: CA.coverage_count_pmf([5, 6], [10], 0.1), ValueError, r"same length"),
        ("audit-splits", lambda: CA.audit_predictor(lac, p, y, n_splits=0), ValueError, r"n_splits >= 1"),
        ("audit-cal-fraction", lambda: CA.audit_predictor(lac, p, y, n_splits=5, cal_fraction=1.5), ValueError,
         r"cal_fraction in \(0, 1\)"),
        ("slack-delta", lambda: PA.binomial_slack(10, 2.0), ValueError, r"delta in \(0, 1\)"),
        ("slack-n", lambda: PA.binomial_slack(0, 0.1), ValueError, r"n_splits >= 1"),
        ("shift-alpha", lambda: SR.shift_report(x[:200], y[:200], x[200:], y[200:], calibrator=TemperatureScaling(),
                                                policy=RiskControlPolicy(target_risk=0.3), alpha=2),
         ValueError, r"alpha in \(0, 1\)"),
    ]


@pytest.mark.parametrize("i", range(8))
def test_audit_and_report_helpers_refuse_bad_input(i):
    case, call, err, match = _audit_cases()[i]
    with pytest.raises(err, match=match):
        call()
