"""Nothing silent: every bad argument to a conformal predictor, a routing policy or a metric helper is refused
with a ValueError/TypeError (or a calib subclass) whose message names the argument, what was expected and what
came; every tampered state is refused by ``from_state``; and inputs that are merely laid out differently
(float16, int, Fortran order, strided, memmap) give the sets an independent numpy oracle gives.

Table-driven: each row is ``(id, thunk, exception type, message fragment)``. Fitted objects are built once per
module (small data, 2 cores)."""

from __future__ import annotations

import copy
import functools
import signal
import warnings

import numpy as np
import pytest

from calib import metrics, selective
from calib.base import StateError
from calib.conformal import (ConformalRiskControl, MondrianConformal, SplitConformal, aps_scores, class_pvalues,
                             conformal_pvalues, conformal_quantile, conformal_rank, coverage_law, lac_scores,
                             min_calibration_size, raps_scores, risk_control_threshold, saps_scores)
from calib.conformal.scores import lac_prob_threshold
from calib.evaluation import compare, slices
from calib.evaluation import product_metrics as pm
from calib.evaluation import set_metrics as sm
from calib.evaluation.conformal import conformal_stage
from calib.evaluation.routing import evaluate_routing, policy_stage
from calib.policy import (ConformalRoutingPolicy, CostModel, CostPolicy, RiskControlPolicy, ThresholdPolicy,
                          ltt_threshold)
from calib.policy.guarantees import binomial_upper_bound

K = 4


# --- data and fitted objects (built once) -------------------------------------------------------------------------
def _probs(n, k=K, seed=0, conc=0.3):
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(k, conc), size=n)
    y = np.minimum((rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1), k - 1)  # drawn from p: calibrated
    return p, y


P, Y = _probs(600)
PT, YT = _probs(200, seed=1)
G = np.array(["a", "b", "c"])[np.arange(600) % 3]
GT = np.array(["a", "b", "c"])[np.arange(200) % 3]


@functools.cache
def fitted(name):
    """One fitted component per name (treat as read-only)."""
    makers = {
        "split": lambda: SplitConformal(score="lac", alpha=[0.1, 0.2]).fit(P, Y),
        "split_inf": lambda: SplitConformal(score="lac", alpha=[0.1, 0.001], allow_infinite=True).fit(P[:50], Y[:50]),
        "split_raps": lambda: SplitConformal(score="raps", alpha=0.1).fit(P, Y),
        "split_tuned": lambda: SplitConformal(score="raps", tune=True, alpha=0.1).fit(P, Y),
        "mondrian_class": lambda: MondrianConformal(condition="class", score="aps", alpha=[0.1, 0.2]).fit(P, Y),
        "mondrian_small": lambda: MondrianConformal(condition="class", alpha=[0.05, 0.3]).fit(P[:60], Y[:60]),
        "mondrian_group": lambda: MondrianConformal(condition="group", alpha=0.1).fit(P, Y, groups=G),
        "crc_fnr": lambda: ConformalRiskControl(loss="fnr", alpha=[0.1, 0.2]).fit(P, np.eye(K, dtype=bool)[Y]),
        "crc_mis": lambda: ConformalRiskControl(loss="miscoverage", alpha=0.1).fit(P, Y),
        "threshold": lambda: ThresholdPolicy(target_coverage=0.7).fit(P, Y),
        "threshold_fixed": lambda: ThresholdPolicy(threshold=0.6, fallback=1, fallback_threshold=0.2).fit(P, Y),
        "risk": lambda: RiskControlPolicy(target_risk=0.2, delta=0.1).fit(P, Y),
        "risk_uncertified": lambda: _quiet(lambda: RiskControlPolicy(target_risk=0.01, delta=0.01).fit(P[:40], Y[:40])),
        "conformal_routing": lambda: ConformalRoutingPolicy(fallback="majority").fit(
            P, Y, sets=SplitConformal(alpha=0.2).fit(P, Y).predict_set(P)),
        "cost": lambda: CostPolicy(costs={"escalation": 0.1}).fit(P, Y),
    }
    return makers[name]()


def _quiet(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return fn()


def tampered(name, edit, cls=None):
    """``from_state`` of a deep copy of a fitted component's params/state/arrays after ``edit(params, state,
    arrays)``; ``cls`` loads it as another kind."""
    obj = fitted(name)
    params, (state, arrays) = copy.deepcopy(obj.get_params()), copy.deepcopy(obj.get_state())
    edit(params, state, arrays)
    return (cls or type(obj)).from_state(params, state, arrays)


def set_state(key, value):
    return lambda p, s, a: s.__setitem__(key, value)


def pop_state(key):
    return lambda p, s, a: s.pop(key)


def set_array(key, value):
    return lambda p, s, a: a.__setitem__(key, np.asarray(value))


def set_entry(key, index, value):
    def edit(p, s, a):
        x = np.array(a[key], dtype=np.float64)
        x[index] = value
        a[key] = x
    return edit


def set_guarantee(key, value):
    return lambda p, s, a: s["guarantee"].__setitem__(key, value)


def both(*edits):
    def edit(p, s, a):
        for e in edits:
            e(p, s, a)
    return edit


class _Data:  # the LogitsData shape compare_models needs is never reached: arguments fail first
    pass


# --- the table ----------------------------------------------------------------------------------------------------
def _cases():
    c = []

    def add(id_, fn, exc, match):
        c.append(pytest.param(fn, exc, match, id=id_))

    nan_p = P.copy()
    nan_p[3, 1] = np.nan
    one_hot = np.eye(K, dtype=bool)[Y]

    # conformal constructors, every registered kind
    for cls in (SplitConformal, MondrianConformal, ConformalRiskControl):
        n = cls.__name__
        add(f"{n}-alpha=0", lambda cls=cls: cls(alpha=0.0), ValueError, r"Expected alpha in \(0, 1\), got 0.0")
        add(f"{n}-alpha=nan", lambda cls=cls: cls(alpha=float("nan")), ValueError, r"Expected alpha in \(0, 1\)")
        add(f"{n}-alpha=[]", lambda cls=cls: cls(alpha=[]), ValueError, r"Expected alpha as a number .* got \[\]")
        add(f"{n}-alpha-str", lambda cls=cls: cls(alpha="0.1"), TypeError, r"Expected alpha as a real number, got str")
        add(f"{n}-k_reg<0", lambda cls=cls: cls(k_reg=-1), ValueError, r"Expected k_reg as an integer >= 0, got -1")
        add(f"{n}-lam=nan", lambda cls=cls: cls(lam=float("nan")), ValueError, r"Expected lam as a finite number >= 0")
        add(f"{n}-seed<0", lambda cls=cls: cls(seed=-1), ValueError, r"Expected seed as an integer >= 0, got -1")
        add(f"{n}-randomized-str", lambda cls=cls: cls(randomized="yes"), TypeError, r"Expected randomized as a bool")
        add(f"{n}-score-unknown", lambda cls=cls: cls(score="foo"), ValueError, r"Unknown score 'foo'; valid options")
    add("split-allow_infinite-str", lambda: SplitConformal(allow_infinite="no"), TypeError,
        r"Expected allow_infinite as a bool")
    add("split-tune_fraction=1", lambda: SplitConformal(score="raps", tune=True, tune_fraction=1.0), ValueError,
        r"Expected tune_fraction in \(0, 1\), got 1.0")
    add("split-tune-lac", lambda: SplitConformal(score="lac", tune=True), ValueError, r"Expected tune=False for score")
    add("mondrian-condition", lambda: MondrianConformal(condition="feature"), ValueError,
        r"Unknown condition 'feature'")
    add("mondrian-small_strata", lambda: MondrianConformal(small_strata="drop"), ValueError, r"Unknown small_strata")
    add("crc-loss", lambda: ConformalRiskControl(loss="mse"), ValueError, r"Unknown loss 'mse'")

    # conformal fit inputs
    add("fit-nan-probs", lambda: SplitConformal().fit(nan_p, Y), ValueError, r"Expected finite probs")
    add("fit-labels-length", lambda: SplitConformal().fit(P, Y[:-1]), ValueError,
        r"Expected labels of length 600 .* got length 599")
    add("fit-labels-range", lambda: MondrianConformal().fit(P, np.full(600, K)), ValueError,
        r"Expected labels in \[0, 3\] for 4 classes, got maximum 4")
    add("fit-labels-fraction", lambda: SplitConformal().fit(P, Y + 0.5), ValueError, r"fractional part")
    nan_groups = np.arange(600, dtype=float)
    nan_groups[7] = np.nan
    add("mondrian-fit-nan-groups", lambda: MondrianConformal(condition="group").fit(P, Y, groups=nan_groups % 3),
        ValueError, r"Expected finite groups, got 1 NaN/inf entries")
    add("mondrian-fit-object-groups", lambda: MondrianConformal(condition="group").fit(P, Y, groups=G.astype(object)),
        TypeError, r"Expected groups as integers or strings, got dtype object")
    add("mondrian-fit-groups-length", lambda: MondrianConformal(condition="group").fit(P, Y, groups=G[:10]),
        ValueError, r"Expected groups of length 600 \(one per row of probs\)")
    add("mondrian-fit-groups-none", lambda: MondrianConformal(condition="group").fit(P, Y), ValueError,
        r"Expected groups of shape \(n_samples,\) for condition='group', got None")
    add("crc-fit-multilabel-int", lambda: ConformalRiskControl().fit(P, one_hot.astype(int)), ValueError,
        r"Expected multi-label targets as a bool array of shape \(600, 4\), got int")
    add("split-tune-leaves-no-rows", lambda: SplitConformal(score="raps", tune=True, tune_fraction=0.9, alpha=0.5)
        .fit(P[:2], Y[:2]), ValueError, r"Expected calibration rows left after the tuning split")

    def nan_score(q):
        s = 1.0 - q
        s[0, 0] = np.nan
        return s

    add("callable-score-nan", lambda: SplitConformal(score=nan_score).fit(P, Y), ValueError,
        r"Expected the score callable 'nan_score' to return scores without NaN")
    add("callable-score-shape", lambda: SplitConformal(score=lambda q: q[:, 0]).fit(P, Y), ValueError,
        r"score callable to return shape \(600, 4\), got \(600,\) from '<lambda>'")
    add("callable-score-strings", lambda: SplitConformal(score=lambda q: q.astype(str)).fit(P, Y), TypeError,
        r"Expected the score callable '<lambda>' to return real scores")

    # conformal predict inputs
    add("predict-k-mismatch", lambda: fitted("split").predict_set(np.full((3, 5), 0.2)), ValueError,
        r"Expected probs with 4 classes \(as at fit\), got 5 columns")
    add("predict-nan", lambda: fitted("mondrian_class").predict_set(nan_p), ValueError, r"Expected finite probs")
    add("predict-unseen-group", lambda: fitted("mondrian_group").predict_set(PT[:2], groups=np.array(["a", "z"])),
        ValueError, r"unseen group\(s\) \['z'\]")
    add("predict-group-kind", lambda: fitted("mondrian_group").predict_set(PT[:2], groups=np.array([0, 1])),
        TypeError, r"Expected groups of the kind seen at fit \(strings")
    add("label_scores-u>1", lambda: fitted("split").label_scores(P[:5], Y[:5], np.full(5, 1.5)), ValueError,
        r"Expected u in \[0, 1\]")
    add("label_scores-u-shape", lambda: fitted("split").label_scores(P[:5], Y[:5], np.full(4, 0.5)), ValueError,
        r"Expected u of shape \(5,\)")
    add("label_scores-labels-length", lambda: fitted("split").label_scores(P[:5], Y[:4]), ValueError,
        r"Expected labels of length 5 .* got length 4")

    # quantile, ranks, p-values, scores
    add("quantile-nan-scores", lambda: conformal_quantile(np.array([0.1, np.nan, 0.3]), 0.5, allow_infinite=True),
        ValueError, r"Expected scores without NaN, got 1 NaN")
    add("quantile-alpha=0", lambda: conformal_quantile(np.arange(10.0), 0.0), ValueError, r"Expected alpha in \(0, 1\)")
    add("quantile-alpha=1", lambda: conformal_quantile(np.arange(10.0), 1.0), ValueError,
        r"Expected alpha in \(0, 1\), got 1.0")
    add("quantile-alpha-list", lambda: conformal_quantile(np.arange(10.0), [0.1, 1.5]), ValueError,
        r"Expected alpha in \(0, 1\), got 1.5")
    add("quantile-2d-scores", lambda: conformal_quantile(np.ones((3, 3)), 0.1), ValueError,
        r"Expected scores of shape \(n,\)")
    add("quantile-allow_infinite-str", lambda: conformal_quantile(np.arange(10.0), 0.1, allow_infinite="yes"),
        TypeError, r"Expected allow_infinite as a bool")
    add("rank-negative-n", lambda: conformal_rank(-5, 0.1), ValueError, r"Expected n >= 0, got -5")
    add("rank-fractional-n", lambda: conformal_rank(2.5, 0.1), TypeError, r"Expected n as an integer >= 0")
    add("min_calibration_size-0", lambda: min_calibration_size(0.0), ValueError, r"Expected alpha in \(0, 1\)")
    add("coverage_law-alpha=1", lambda: coverage_law(10, 1.0), ValueError, r"Expected alpha in \(0, 1\)")
    add("pvalues-nan-cal", lambda: conformal_pvalues(np.array([np.nan, 1.0]), np.array([0.5])), ValueError,
        r"Expected cal_scores without NaN")
    add("pvalues-nan-test", lambda: conformal_pvalues(np.array([0.0, 1.0]), np.array([np.nan])), ValueError,
        r"Expected test_scores without NaN")
    add("pvalues-smoothed-str", lambda: conformal_pvalues(np.ones(3), np.ones(2), smoothed="yes"), TypeError,
        r"Expected smoothed as a bool")
    add("class_pvalues-mondrian", lambda: class_pvalues(MondrianConformal(), P, Y, PT), ValueError,
        r"Expected predictor without strata")
    add("crc-threshold-weights-length", lambda: risk_control_threshold(np.arange(5.0), np.ones(4), 5, 0.1), ValueError,
        r"Expected pair_weights of length 5")
    add("crc-threshold-n_positive>n", lambda: risk_control_threshold(np.arange(5.0), np.ones(5), 5, 0.1, n_positive=6),
        ValueError, r"Expected n_positive <= n=5, got 6")
    add("crc-threshold-weights-sum", lambda: risk_control_threshold(np.arange(5.0), np.full(5, 3.0), 5, 0.1),
        ValueError, r"Expected pair_weights summing to n_positive=5")
    add("lac_scores-labels-range", lambda: lac_scores(P[:3], np.array([0, 1, 9])), ValueError,
        r"Expected labels in \[0, 3\] for 4 classes, got maximum 9")
    add("aps_scores-nan", lambda: aps_scores(nan_p), ValueError, r"Expected finite probs")
    add("raps_scores-k_reg", lambda: raps_scores(P[:3], k_reg=-2), ValueError, r"Expected k_reg as an integer >= 0")
    add("saps_scores-u", lambda: saps_scores(P[:3], u=np.array([0.1, 2.0, 0.3])), ValueError, r"Expected u in \[0, 1\]")
    add("lac_prob_threshold-nan", lambda: lac_prob_threshold(float("nan"), np.float32), ValueError,
        r"Expected qhat as a real number or ±inf \(not NaN\)")
    add("lac_prob_threshold-float16", lambda: lac_prob_threshold(0.5, np.float16), TypeError,
        r"Expected dtype float32 or float64, got float16")

    # tampered conformal state through from_state
    add("state-split-n_calibration=0", lambda: tampered("split", set_state("n_calibration", 0)), StateError,
        r"'n_calibration' of SplitConformal >= 1, got 0")
    add("state-split-n_calibration-fraction", lambda: tampered("split", set_state("n_calibration", 2.5)), StateError,
        r"'n_calibration' of SplitConformal as an integer")
    add("state-split-n_calibration-missing", lambda: tampered("split", pop_state("n_calibration")), StateError,
        r"'n_calibration' of SplitConformal to be present")
    add("state-split-threshold-nan", lambda: tampered("split", set_entry("thresholds", 0, np.nan)), StateError,
        r"'thresholds' of SplitConformal without NaN")
    add("state-split-threshold-length", lambda: tampered("split", set_array("thresholds", [0.9, 0.8, 0.7])), StateError,
        r"'thresholds' of SplitConformal of shape \(2,\), got shape \(3,\)")
    add("state-split-threshold-2d", lambda: tampered("split", set_array("thresholds", [[0.9, 0.8]])), StateError,
        r"'thresholds' of SplitConformal of shape \(2,\), got shape \(1, 2\)")
    add("state-split-threshold-sign", lambda: tampered("split", set_entry("thresholds", 1, -0.5)), StateError,
        r"'thresholds' of SplitConformal in \[-0.00\d+, 1\] \(the range of score 'lac'")
    add("state-split-threshold-above-range", lambda: tampered("split", set_entry("thresholds", 0, 3.0)), StateError,
        r"'thresholds' of SplitConformal in .* got 1 outside it \(e.g. 3.0\)")
    add("state-split-threshold-inf", lambda: tampered("split", set_entry("thresholds", 0, np.inf)), StateError,
        r"'thresholds' of SplitConformal finite with allow_infinite=False, got inf")
    add("state-split-threshold-neg-inf", lambda: tampered("split", set_entry("thresholds", 0, -np.inf)), StateError,
        r"'thresholds' of SplitConformal without -inf")
    add("state-split-threshold-order", lambda: tampered("split", set_array("thresholds", [0.5, 0.9])), StateError,
        r"'thresholds' of SplitConformal non-increasing in alpha")
    add("state-split-inf-where-n-suffices", lambda: tampered("split_inf", set_entry("thresholds", 0, np.inf)),
        StateError, r"'thresholds' of SplitConformal at alpha index \(0,\) finite \(n is large enough")
    add("state-split-finite-where-n-too-small", lambda: tampered("split_inf", set_entry("thresholds", 1, 0.99)),
        StateError, r"at alpha index \(1,\) inf \(n too small for it\) for n_calibration=50")
    add("state-split-legacy-qhat-str", lambda: tampered("split", both(lambda p, s, a: a.pop("thresholds"),
                                                                     set_state("qhat", [0.9, "abc"]))),
        StateError, r"'qhat' of SplitConformal as finite numbers or the strings 'inf'/'-inf', got str 'abc'")
    add("state-split-legacy-qhat-length", lambda: tampered("split", both(lambda p, s, a: a.pop("thresholds"),
                                                                        set_state("qhat", 0.9))),
        StateError, r"'qhat' of SplitConformal with 2 value\(s\) \(one per alpha\), got 1")
    add("state-split-lac-with-k_reg", lambda: tampered("split", set_state("k_reg", 1)), StateError,
        r"Unexpected state of SplitConformal: fields \['k_reg'\]")
    add("state-split-extra-array", lambda: tampered("split", set_array("bogus", [1.0])), StateError,
        r"Unexpected state of SplitConformal: .* arrays \['bogus'\]")
    add("state-raps-k_reg<0", lambda: tampered("split_raps", set_state("k_reg", -1)), StateError,
        r"'k_reg' of SplitConformal >= 0, got -1")
    add("state-raps-lam<0", lambda: tampered("split_raps", set_state("lam", -0.5)), StateError,
        r"'lam' of SplitConformal >= 0, got -0.5")
    add("state-raps-k_reg-not-param", lambda: tampered("split_raps", set_state("k_reg", 3)), StateError,
        r"'k_reg' and 'lam' of SplitConformal equal to the parameters k_reg=1, lam=0.01 \(no tuning\)")
    add("state-raps-missing-k_reg", lambda: tampered("split_raps", pop_state("k_reg")), StateError,
        r"'k_reg' of SplitConformal to be present")
    add("state-tuned-lam-off-grid", lambda: tampered("split_tuned", set_state("lam", 0.3)), StateError,
        r"'lam' of SplitConformal in the tuning grid")
    add("state-tuned-k_reg>k", lambda: tampered("split_tuned", set_state("k_reg", 9)), StateError,
        r"'k_reg' of SplitConformal in \[1, 4\] \(a tuned rank\), got 9")
    add("state-mondrian-threshold-rows", lambda: tampered("mondrian_class", set_array("thresholds", [[0.9, 0.8]] * 3)),
        StateError, r"'thresholds' of MondrianConformal of shape \(4, 2\), got shape \(3, 2\)")
    add("state-mondrian-threshold-1d", lambda: tampered("mondrian_class", set_array("thresholds", [0.9, 0.8])),
        StateError, r"'thresholds' of MondrianConformal of shape \(4, 2\), got shape \(2,\)")
    add("state-mondrian-sizes-sum", lambda: tampered("mondrian_class", lambda p, s, a: a.__setitem__(
        "stratum_sizes", a["stratum_sizes"] * 2)), StateError,
        r"'stratum_sizes' of MondrianConformal summing to n_calibration=600, got a sum of 1200")
    add("state-mondrian-sizes-negative", lambda: tampered("mondrian_class", lambda p, s, a: a.__setitem__(
        "stratum_sizes", a["stratum_sizes"] * np.array([-1, 1, 1, 1]))),
        StateError, r"'stratum_sizes' of MondrianConformal with entries >= 0")
    add("state-mondrian-sizes-length", lambda: tampered("mondrian_class", lambda p, s, a: a.__setitem__(
        "stratum_sizes", a["stratum_sizes"][:3])), StateError, r"'stratum_sizes' of MondrianConformal of shape \(4,\)")
    add("state-mondrian-small-strata-wrong", lambda: tampered("mondrian_small", set_array("small_strata", np.array(
        [], dtype=np.int64))), StateError, r"'small_strata' of MondrianConformal equal to the strata too small")
    add("state-mondrian-small-cell-finite", lambda: tampered("mondrian_small", lambda p, s, a: a.__setitem__(
        "thresholds", np.where(np.isinf(a["thresholds"]), 0.9, a["thresholds"]))), StateError,
        r"'thresholds' of MondrianConformal at \(stratum, alpha\) index .* inf \(n too small for it\)")
    add("state-mondrian-groups-unsorted", lambda: tampered("mondrian_group", set_array("groups", ["b", "a", "c"])),
        StateError, r"'groups' of MondrianConformal strictly increasing")
    add("state-mondrian-groups-nan", lambda: tampered("mondrian_group", set_array("groups", [0.0, np.nan, 2.0])),
        StateError, r"'groups' of MondrianConformal finite")
    add("state-mondrian-groups-missing", lambda: tampered("mondrian_group", lambda p, s, a: a.pop("groups")),
        StateError, r"'groups' of MondrianConformal \(an array\) to be present")
    add("state-mondrian-groups-length", lambda: tampered("mondrian_group", set_array("groups", ["a", "b"])),
        StateError, r"'stratum_sizes' of MondrianConformal of shape \(2,\), got shape \(3,\)")
    add("state-crc-mis-neg-inf", lambda: tampered("crc_mis", set_entry("thresholds", 0, -np.inf)), StateError,
        r"'thresholds' of ConformalRiskControl without -inf")
    add("state-crc-fnr-order", lambda: tampered("crc_fnr", set_array("thresholds", [0.1, 0.9])), StateError,
        r"'thresholds' of ConformalRiskControl non-increasing in alpha")
    add("state-split-into-mondrian", lambda: MondrianConformal.from_state(
        {"alpha": [0.1, 0.2]}, *copy.deepcopy(fitted("split").get_state())), StateError,
        r"'stratum_sizes' of MondrianConformal \(an array\) to be present")
    add("state-mondrian-into-crc", lambda: ConformalRiskControl.from_state(
        {"alpha": [0.1, 0.2]}, *copy.deepcopy(fitted("mondrian_class").get_state())), StateError,
        r"'thresholds' of ConformalRiskControl of shape \(2,\), got shape \(4, 2\)")
    add("state-policy-into-split", lambda: SplitConformal.from_state(
        {}, *copy.deepcopy(fitted("threshold").get_state())),
        StateError, r"'n_calibration' of SplitConformal to be present")

    # policy constructors, every registered kind
    for cls in (ThresholdPolicy, RiskControlPolicy, ConformalRoutingPolicy, CostPolicy):
        n = cls.__name__
        extra = {"threshold": 0.5} if cls is ThresholdPolicy else {}
        add(f"{n}-fallback<0", lambda cls=cls, extra=extra: cls(fallback=-1, **extra), ValueError,
            r"Expected fallback class index >= 0, got -1")
        add(f"{n}-fallback-bool", lambda cls=cls, extra=extra: cls(fallback=True, **extra), TypeError,
            r"Expected fallback as one of .* got True")
        add(f"{n}-costs-negative", lambda cls=cls, extra=extra: cls(costs={"escalation": -1.0}, **extra), ValueError,
            r"Expected costs.escalation >= 0 \(finite\), got -1.0")
        add(f"{n}-costs-unknown", lambda cls=cls, extra=extra: cls(costs={"speed": 1.0}, **extra), ValueError,
            r"Unknown cost fields \['speed'\]")
    add("risk-target_risk=0", lambda: RiskControlPolicy(target_risk=0.0), ValueError,
        r"Expected target_risk in \(0, 1\)")
    add("risk-delta=1", lambda: RiskControlPolicy(delta=1.0), ValueError, r"Expected delta in \(0, 1\), got 1.0")
    add("risk-grid_size=1", lambda: RiskControlPolicy(grid_size=1), ValueError, r"Expected grid_size >= 2, got 1")
    add("risk-neither", lambda: RiskControlPolicy(target_risk=None), ValueError,
        r"Expected target_risk or max_escalation \(or both\), got neither")
    add("threshold-both", lambda: ThresholdPolicy(threshold=0.5, target_coverage=0.5), ValueError,
        r"Expected exactly one of threshold or target_coverage")
    add("threshold-nan", lambda: ThresholdPolicy(threshold=float("nan")), ValueError,
        r"Expected threshold as a finite real number, got nan")
    add("threshold-fallback_threshold", lambda: ThresholdPolicy(threshold=0.5, fallback_threshold=1.5), ValueError,
        r"Expected fallback_threshold in \[0, 1\], got 1.5")
    add("threshold-confidence", lambda: ThresholdPolicy(threshold=0.5, confidence="x"), ValueError,
        r"Unknown confidence 'x'")

    # policy fit / route inputs
    add("policy-fit-sets-int", lambda: ConformalRoutingPolicy().fit(P, Y, sets=np.ones((600, K), int)), ValueError,
        r"Expected sets as a boolean array of shape \(600, 4\), got dtype int64")
    add("policy-fit-sets-shape", lambda: ConformalRoutingPolicy().fit(P, Y, sets=np.ones((600, 3), bool)), ValueError,
        r"Expected sets as a boolean array of shape \(600, 4\)")
    add("policy-fit-labels-length", lambda: CostPolicy().fit(P, Y[:10]), ValueError,
        r"Expected labels of length 600 .* got length 10")
    add("policy-fit-fallback-unused-but-wrong", lambda: CostPolicy(fallback="none").fit(P, Y, fallback=np.full(600, 9)),
        ValueError, r"Expected fallback in \[0, 3\] for 4 classes, got maximum 9")
    add("policy-route-fallback-length", lambda: fitted("threshold").route(PT, fallback=np.zeros(3, int)), ValueError,
        r"Expected fallback of length 200 .* got length 3")
    add("policy-route-k", lambda: fitted("cost").route(np.full((2, 3), 1 / 3)), ValueError,
        r"Expected probs with 4 classes \(as at fit\), got 3 columns")
    add("policy-route-before-fit", lambda: CostPolicy().route(PT), ValueError, r"not fitted yet")

    # tampered policy state
    add("state-risk-certified-threshold=-1", lambda: tampered("risk", set_array("threshold", [-1.0])), StateError,
        r"'threshold' of RiskControlPolicy in \[0.2\d*, 1.00\d*\] \(the range of its confidence score\) for a "
        r"certified guarantee, got -1.0")
    add("state-risk-certified-threshold=2", lambda: tampered("risk", set_array("threshold", [2.0])), StateError,
        r"'threshold' of RiskControlPolicy in .* for a certified guarantee, got 2.0")
    add("state-risk-uncertified-finite", lambda: tampered("risk_uncertified", set_array("threshold", [0.5])),
        StateError, r"'threshold' of RiskControlPolicy inf when the guarantee is not certified")
    add("state-risk-threshold-nan", lambda: tampered("risk", set_array("threshold", [np.nan])), StateError,
        r"'threshold' of RiskControlPolicy without NaN")
    add("state-risk-threshold-shape", lambda: tampered("risk", set_array("threshold", [0.5, 0.6])), StateError,
        r"'threshold' of RiskControlPolicy of shape \(1,\), got shape \(2,\)")
    add("state-risk-certified-str", lambda: tampered("risk", set_guarantee("certified", "yes")), StateError,
        r"'guarantee.certified' of RiskControlPolicy as true/false, got str 'yes'")
    add("state-risk-n_answered<0", lambda: tampered("risk", set_guarantee("n_answered", -1)), StateError,
        r"'guarantee.n_answered' of RiskControlPolicy >= 0, got -1")
    add("state-risk-n_answered-fraction", lambda: tampered("risk", set_guarantee("n_answered", 10.5)), StateError,
        r"'guarantee.n_answered' of RiskControlPolicy as an integer")
    add("state-risk-coverage>1", lambda: tampered("risk", set_guarantee("cal_coverage", 1.5)), StateError,
        r"'guarantee.cal_coverage' of RiskControlPolicy <= 1, got 1.5")
    add("state-risk-bound>1", lambda: tampered("risk", set_guarantee("risk_upper_bound", 1.5)), StateError,
        r"'guarantee.risk_upper_bound' of RiskControlPolicy <= 1, got 1.5")
    add("state-risk-bound-below-risk", lambda: tampered("risk", set_guarantee("risk_upper_bound", 0.0)), StateError,
        r"'guarantee.risk_upper_bound' of RiskControlPolicy >= cal_selective_risk")
    add("state-risk-risk-not-a-count", lambda: tampered("risk", set_guarantee("cal_selective_risk", 0.1234567)),
        StateError, r"'guarantee.cal_selective_risk' of RiskControlPolicy a whole number of errors")
    add("state-risk-delta-mismatch", lambda: tampered("risk", set_guarantee("delta", 0.5)), StateError,
        r"'guarantee.delta' of RiskControlPolicy equal to the policy's parameter delta=0.1, got 0.5")
    add("state-risk-target-mismatch", lambda: tampered("risk", set_guarantee("target_risk", 0.9)), StateError,
        r"'guarantee.target_risk' of RiskControlPolicy equal to the policy's parameter target_risk=0.2")
    add("state-risk-method", lambda: tampered("risk", set_guarantee("method", "trust_me")), StateError,
        r"'guarantee.method' of RiskControlPolicy in \['learn_then_test_fixed_sequence_binomial'\]")
    add("state-risk-extra-guarantee-field", lambda: tampered("risk", set_guarantee("bonus", 1)), StateError,
        r"guarantee fields \['bonus'\] are not written by any fit")
    add("state-risk-missing-guarantee-field", lambda: tampered("risk", lambda p, s, a: s["guarantee"].pop("n_tested")),
        StateError, r"'guarantee.n_tested' of RiskControlPolicy to be present")
    add("state-risk-guarantee-not-dict", lambda: tampered("risk", set_state("guarantee", [1, 2])), StateError,
        r"'guarantee' of RiskControlPolicy as a mapping, got list")
    add("state-risk-missing-guarantee", lambda: tampered("risk", pop_state("guarantee")), StateError,
        r"'guarantee' of RiskControlPolicy to be present")
    add("state-threshold-fixed-changed", lambda: tampered("threshold_fixed", set_array("threshold", [0.1])), StateError,
        r"'threshold' of ThresholdPolicy equal to the parameter threshold=0.6 \(a fixed threshold\), got 0.1")
    add("state-threshold-out-of-domain", lambda: tampered("threshold", set_array("threshold", [-1.0])), StateError,
        r"'threshold' of ThresholdPolicy in \[0.2\d*, 1.00\d*\] \(the range of confidence 'max_prob' with 4 classes\)")
    add("state-threshold-inf", lambda: tampered("threshold", set_array("threshold", [np.inf])), StateError,
        r"'threshold' of ThresholdPolicy finite, got 1 non-finite")
    add("state-majority-out-of-range", lambda: tampered("cost", set_state("majority_class", 99)), StateError,
        r"'majority_class' of CostPolicy <= 3, got 99")
    add("state-majority-negative", lambda: tampered("conformal_routing", set_state("majority_class", -1)), StateError,
        r"'majority_class' of ConformalRoutingPolicy >= 0, got -1")
    add("state-majority-str", lambda: tampered("threshold", set_state("majority_class", "1")), StateError,
        r"'majority_class' of ThresholdPolicy as an integer, got str")
    add("state-fallback-index-beyond-k", lambda: tampered("threshold_fixed", lambda p, s, a: p.update(fallback=7)),
        StateError, r"Expected the fallback class index of ThresholdPolicy in \[0, 3\] for n_classes=4, got 7")
    add("state-threshold-into-cost", lambda: CostPolicy.from_state({}, *copy.deepcopy(fitted("threshold").get_state())),
        StateError, r"Unexpected state of CostPolicy: fields \[\] and arrays \['threshold'\]")
    add("state-risk-into-threshold", lambda: ThresholdPolicy.from_state(
        {"target_coverage": 0.5}, *copy.deepcopy(fitted("risk").get_state())), StateError,
        r"Unexpected state of ThresholdPolicy: fields \['guarantee'\]")
    add("state-cost-into-risk", lambda: RiskControlPolicy.from_state({}, *copy.deepcopy(fitted("cost").get_state())),
        StateError, r"'threshold' of RiskControlPolicy \(an array\) to be present")
    add("state-conformal-into-policy", lambda: CostPolicy.from_state({}, *copy.deepcopy(fitted("split").get_state())),
        StateError, r"'majority_class' of CostPolicy to be present")

    # Learn then Test and its bound
    conf = np.linspace(0, 1, 100)
    add("ltt-float-correct", lambda: ltt_threshold(conf, np.full(100, 0.3), target_risk=0.1), TypeError,
        r"Expected correct as booleans \(or 0/1 integers\), got dtype float64")
    add("ltt-correct-2", lambda: ltt_threshold(conf, np.full(100, 2), target_risk=0.1), ValueError,
        r"Expected correct as booleans \(or 0/1 integers\), got values \[2\]")
    add("ltt-nan-confidence", lambda: ltt_threshold(np.r_[conf[:-1], np.nan], conf > 0.5, target_risk=0.1), ValueError,
        r"Expected finite confidence, got 1 NaN/inf")
    add("ltt-length", lambda: ltt_threshold(conf, conf[:50] > 0.5, target_risk=0.1), ValueError,
        r"Expected correct of shape \(100,\) \(one per confidence\), got shape \(50,\)")
    add("ltt-delta=0", lambda: ltt_threshold(conf, conf > 0.5, target_risk=0.1, delta=0.0), ValueError,
        r"Expected delta in \(0, 1\)")
    add("ltt-grid_size=1", lambda: ltt_threshold(conf, conf > 0.5, target_risk=0.1, grid_size=1), ValueError,
        r"Expected grid_size >= 2")
    add("ltt-n_starts=0", lambda: ltt_threshold(conf, conf > 0.5, target_risk=0.1, n_starts=0), ValueError,
        r"Expected n_starts >= 1")
    add("bound-errors>n", lambda: binomial_upper_bound(5, 3, 0.1), ValueError, r"Expected errors <= n, got errors=5")
    add("bound-negative", lambda: binomial_upper_bound(-1, 3, 0.1), ValueError,
        r"Expected errors as non-negative integer counts")
    add("bound-delta", lambda: binomial_upper_bound(1, 3, 1.5), ValueError, r"Expected delta in \(0, 1\)")

    # calibration and selective metrics
    add("ece-labels-length", lambda: metrics.expected_calibration_error(P, Y[:-2]), ValueError,
        r"Expected labels of length 600 .* got length 598")
    add("ece-n_bins=0", lambda: metrics.expected_calibration_error(P, Y, n_bins=0), ValueError,
        r"Expected n_bins >= 1, got 0")
    add("mce-binning", lambda: metrics.maximum_calibration_error(P, Y, binning="quantile"), ValueError,
        r"Unknown binning 'quantile'")
    add("classwise-reduction", lambda: metrics.classwise_ece(P, Y, reduction="max"), ValueError,
        r"Unknown reduction 'max'")
    add("bins-length", lambda: metrics.calibration_bins(np.array([0.9, 0.6, 0.7]), np.array([1, 0])), ValueError,
        r"Expected correct of length 3 \(one per confidence\), got shape \(2,\)")
    add("bins-nan", lambda: metrics.calibration_bins(np.array([0.9, np.nan]), np.array([1, 0])), ValueError,
        r"Expected confidence in \[0, 1\], got 1 entries outside it or NaN")
    add("bins-above-1", lambda: metrics.calibration_bins(np.array([0.9, 1.5]), np.array([1, 0])), ValueError,
        r"Expected confidence in \[0, 1\], .* \(e.g. 1.5\)")
    add("bins-float-correct", lambda: metrics.calibration_bins(np.array([0.9, 0.5]), np.array([0.7, 0.2])), TypeError,
        r"Expected correct as booleans \(or 0/1 integers\), got dtype float64")
    add("ece-binary-outcome-2", lambda: metrics.expected_calibration_error_binary(np.array([0.2, 0.5]),
                                                                                  np.array([0, 2])),
        ValueError, r"Expected is_positive as booleans \(or 0/1 integers\), got values \[2\]")
    add("aurc-length", lambda: selective.aurc(np.array([0.9, 0.8]), np.array([True])), ValueError,
        r"Expected correct of shape \(2,\) \(one per confidence\), got shape \(1,\)")
    add("aurc-float-correct", lambda: selective.aurc(np.array([0.9, 0.8]), np.array([1.0, 0.0])), TypeError,
        r"Expected correct as booleans")
    add("aurc-confidence-str", lambda: selective.aurc(np.array(["a", "b"]), np.array([True, False])), TypeError,
        r"Expected confidence as real numbers, got dtype <U1")
    add("risk-at-coverage", lambda: selective.selective_risk_at_coverage(np.ones(3), np.ones(3, bool), 1.5),
        ValueError, r"Expected coverage in \[0, 1\], got 1.5")
    add("coverage-at-risk", lambda: selective.coverage_at_risk(np.ones(3), np.ones(3, bool), -0.1), ValueError,
        r"Expected risk in \[0, 1\], got -0.1")
    add("confidence-scores-name", lambda: selective.confidence_scores(P, "entropy"), ValueError,
        r"Unknown confidence 'entropy'")

    # product metrics
    add("counts-negative", lambda: pm.metrics_from_counts(np.r_[np.ones(11), -1.0]), ValueError,
        r"Expected counts as non-negative integers, got 1 other entries \(e.g. -1.0\)")
    add("counts-fraction", lambda: pm.metrics_from_counts(np.r_[np.ones(11), 0.5]), ValueError,
        r"Expected counts as non-negative integers")
    add("counts-shape", lambda: pm.metrics_from_counts(np.ones(24)), ValueError,
        r"Expected counts of shape \(12,\) or \(B, 12\) .* got shape \(24,\)")
    add("counts-zero", lambda: pm.metrics_from_counts(np.zeros(12)), ValueError,
        r"Expected counts of at least one item per row")
    add("product-actions-3", lambda: pm.product_metrics(np.array([0, 3]), np.array([0, 1]), np.array([0, 1])),
        ValueError, r"Expected actions with values 0/1/2, got \[3\]")
    add("product-actions-float", lambda: pm.product_metrics(np.array([0.0, 1.0]), np.array([0, 1]), np.array([0, 1])),
        TypeError, r"Expected actions as integers 0 \(answer\)")
    add("product-prediction-length", lambda: pm.product_metrics(np.array([0, 1]), np.array([0]), np.array([0, 1])),
        ValueError, r"Expected prediction of length 2 .* got length 1")
    add("product-n_resamples", lambda: pm.product_metrics(np.array([0]), np.array([0]), np.array([0]), n_resamples=0),
        ValueError, r"Expected n_resamples >= 1, got 0")
    add("product-level", lambda: pm.product_metrics(np.array([0]), np.array([0]), np.array([0]), confidence_level=1.0),
        ValueError, r"Expected confidence_level in \(0, 1\), got 1.0")
    add("product-seed", lambda: pm.product_metrics(np.array([0]), np.array([0]), np.array([0]), seed=-3), ValueError,
        r"Expected seed as an integer >= 0, got -3")
    add("product-no-fallback", lambda: pm.product_metrics(np.array([2]), np.array([0]), np.array([0])), ValueError,
        r"Expected fallback labels for items routed to fallback, got fallback=None")
    add("action-costs-p>1", lambda: CostModel().action_costs(np.array([0.5, 1.5]), None), ValueError,
        r"Expected p_pred in \[0, 1\], got 1 entries outside it")
    add("action-costs-length", lambda: CostModel().action_costs(np.array([0.5, 0.5]), np.array([0.1])), ValueError,
        r"Expected p_fallback of length 2 \(one per entry of p_pred\), got length 1")

    # set metrics
    sets = fitted("split").predict_set(PT)[:, :, 0]
    add("coverage-labels-length", lambda: sm.coverage(sets, YT[:-1]), ValueError,
        r"Expected labels of length 200 .* got length 199")
    add("coverage-labels-negative", lambda: sm.coverage(sets, np.r_[YT[:-1], -1]), ValueError,
        r"Expected labels >= 0, got minimum -1")
    add("coverage-labels-range", lambda: sm.coverage(sets, np.r_[YT[:-1], 4]), ValueError,
        r"Expected labels in \[0, 3\] for 4 classes, got maximum 4")
    add("coverage-float-sets", lambda: sm.coverage(sets * 0.3, YT), TypeError,
        r"Expected sets as booleans \(or 0/1 integers\), got dtype float64")
    add("set-sizes-1d", lambda: sm.mean_set_size(sets[:, 0]), ValueError,
        r"Expected sets of shape \(n_samples, n_classes\)")
    add("class-coverage-n_classes", lambda: sm.class_conditional_coverage(sets, YT, n_classes=7), ValueError,
        r"Expected n_classes equal to the 4 columns of sets \(or None\), got 7")
    add("class-summary-alpha", lambda: sm.class_coverage_summary(sets, YT, 1.5), ValueError,
        r"Expected alpha in \(0, 1\), got 1.5")
    add("group-coverage-nan", lambda: sm.group_coverage(sets, YT, np.r_[np.zeros(199), np.nan]), ValueError,
        r"Expected finite groups, got 1 NaN/inf")
    add("group-coverage-length", lambda: sm.group_coverage(sets, YT, GT[:5]), ValueError,
        r"Expected groups of length 200 \(one per row of sets\), got shape \(5,\)")
    add("set-metrics-alpha", lambda: sm.set_metrics(sets, YT, 0.0), ValueError, r"Expected alpha in \(0, 1\), got 0.0")

    # slices
    actions = np.zeros(200, dtype=np.int64)
    add("holm-nan", lambda: slices.holm_adjust(np.array([0.1, np.nan])), ValueError,
        r"Expected pvalues in \[0, 1\], got 1 entries outside it or NaN")
    add("holm-above-1", lambda: slices.holm_adjust(np.array([0.1, 1.2])), ValueError, r"Expected pvalues in \[0, 1\]")
    add("slices-actions-length", lambda: slices.silent_failure_slices(PT, YT, actions[:5], target=0.1), ValueError,
        r"Expected actions of length 200 \(one per label\), got shape \(5,\)")
    add("slices-actions-values", lambda: slices.silent_failure_slices(PT, YT, actions + 5, target=0.1), ValueError,
        r"Expected actions with values 0/1/2, got \[5\]")
    add("slices-n_bins", lambda: slices.silent_failure_slices(PT, YT, actions, target=0.1, n_bins=0), ValueError,
        r"Expected n_bins >= 1, got 0")
    add("slices-class-names", lambda: slices.silent_failure_slices(PT, YT, actions, target=0.1, class_names=["a"]),
        ValueError, r"Expected class_names with 4 entries \(one per column of probs\), got length 1")
    add("slices-groups-nan", lambda: slices.silent_failure_slices(PT, YT, actions, target=0.1,
                                                                  groups=np.r_[np.zeros(199), np.nan]),
        ValueError, r"Expected finite groups")
    add("slices-target", lambda: slices.silent_failure_slices(PT, YT, actions, target=1.0), ValueError,
        r"Expected target in \(0, 1\), got 1.0")

    # evaluation stages
    add("evaluate-routing-labels-range", lambda: evaluate_routing(fitted("cost"), PT, np.r_[YT[:-1], 7]), ValueError,
        r"Expected labels in \[0, 3\] for 4 classes, got maximum 7")
    add("evaluate-routing-labels-length", lambda: evaluate_routing(fitted("cost"), PT, YT[:3]), ValueError,
        r"Expected labels of length 200 .* got length 3")
    add("evaluate-routing-n_resamples", lambda: evaluate_routing(fitted("cost"), PT, YT, n_resamples=0), ValueError,
        r"Expected n_resamples >= 1, got 0")
    add("evaluate-routing-not-a-policy", lambda: evaluate_routing(object(), PT, YT), TypeError,
        r"Expected policy as a routing policy")
    add("policy-stage-groups-length", lambda: policy_stage(CostPolicy(), P, Y, PT, YT, test_groups=GT[:7]), ValueError,
        r"Expected test_groups of length 200 \(one per row of test_probs\), got length 7")
    add("policy-stage-seed", lambda: policy_stage(CostPolicy(), P, Y, PT, YT, seed=-1), ValueError,
        r"Expected seed as an integer >= 0, got -1")
    add("conformal-stage-plots", lambda: conformal_stage(SplitConformal(), P, Y, PT, YT, plots="no"), TypeError,
        r"Expected plots as a bool")
    add("conformal-stage-groups-length", lambda: conformal_stage(SplitConformal(), P, Y, PT, YT, test_groups=GT[:9],
                                                                 plots=False),
        ValueError, r"Expected test_groups of length 200 \(one per row of test_labels\), got length 9")
    add("conformal-stage-labels", lambda: conformal_stage(SplitConformal(), P, Y, PT, np.r_[YT[:-1], 9], plots=False),
        ValueError, r"Expected labels in \[0, 3\] for 4 classes, got maximum 9")
    add("markdown-target", lambda: compare.markdown_table([{"model": "m", "accuracy": 0.9, "policies": {"p": {}}}],
                                                         "p", target_risk=2.0), ValueError,
        r"Expected target_risk in \(0, 1\), got 2.0")
    add("markdown-no-rows", lambda: compare.markdown_table([], "p"), ValueError, r"Expected rows as the non-empty list")
    add("compare-seed", lambda: compare.compare_models([("m", _Data())], lambda: None, {}, seed=-1), ValueError,
        r"Expected seed as an integer >= 0, got -1")
    add("compare-datasets-pairs", lambda: compare.compare_models([_Data()], lambda: None, {}), TypeError,
        r"Expected datasets as \(name, LogitsData\) pairs")
    return c


CASES = _cases()


def test_the_table_is_large():
    assert len(CASES) >= 70


@pytest.mark.parametrize("fn, exc, match", CASES)
def test_bad_input_is_refused_with_a_message_naming_it(fn, exc, match):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # e.g. "nothing certified" while building fixtures
        with pytest.raises(exc, match=match):
            fn()


# --- values that used to hang forever ------------------------------------------------------------------------------
@pytest.fixture
def deadline():
    """Fail (instead of hanging the suite) if the body runs for more than 5 s."""
    if not hasattr(signal, "SIGALRM"):
        pytest.skip("needs SIGALRM")

    def on_alarm(signum, frame):
        raise TimeoutError("hung: the call did not return within 5 s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(5)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("call", [
    lambda: min_calibration_size(-0.1),
    lambda: min_calibration_size(-2.0),
    lambda: conformal_quantile(np.arange(5.0), -0.1),  # its error message used to loop in min_calibration_size
    lambda: conformal_quantile(np.arange(5.0), [0.1, -0.5], allow_infinite=False),
], ids=["min_size-negative", "min_size-very-negative", "quantile-negative", "quantile-list-negative"])
def test_negative_alpha_is_refused_not_looped_on(deadline, call):
    with pytest.raises(ValueError, match=r"Expected alpha in \(0, 1\)"):
        call()


# --- must work: the same answers whatever the layout of the input ----------------------------------------------------
def _dyadic(n, k, seed):
    """Probabilities that are multiples of 1/64 (exact in float16), with labels drawn from them."""
    rng = np.random.default_rng(seed)
    p = np.array([rng.multinomial(64, q) for q in rng.dirichlet(np.full(k, 0.5), size=n)]) / 64.0
    y = np.array([rng.choice(k, p=row) for row in p])
    return p, y


def _oracle_quantile(scores, alpha):
    n = scores.size
    r = int(np.ceil((n + 1) * (1 - alpha) - 1e-9))
    return np.sort(scores)[r - 1]


def _oracle_aps(p):
    """APS scores of every class by the definition: mass of the classes ranked at or above it (ties: lower index)."""
    n, k = p.shape
    out = np.empty((n, k))
    for i in range(n):
        order = sorted(range(k), key=lambda j: (-p[i, j], j))
        out[i, order] = np.cumsum(p[i, order])
    return out


def _layouts(p, tmp_path, name="probs"):
    """The same probabilities as float64, float32, float16, Fortran order, a strided view and a read-only memmap."""
    big = np.zeros((2 * p.shape[0], 2 * p.shape[1]))
    big[::2, ::2] = p
    path = tmp_path / f"{name}.dat"
    mm = np.memmap(path, dtype=np.float64, mode="w+", shape=p.shape)
    mm[:] = p
    mm.flush()
    del mm
    return {"float64": p, "float32": p.astype(np.float32), "float16": p.astype(np.float16),
            "fortran": np.asfortranarray(p), "strided": big[::2, ::2],
            "memmap": np.memmap(path, dtype=np.float64, mode="r", shape=p.shape)}


LAYOUTS = ["float64", "float32", "float16", "fortran", "strided", "memmap"]
PC, YC = _dyadic(400, 5, 11)
PQ, _ = _dyadic(150, 5, 12)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_split_lac_sets_equal_the_oracle_for_every_layout(layout, tmp_path):
    q = _oracle_quantile(1.0 - PC[np.arange(PC.shape[0]), YC], 0.1)
    expected = (1.0 - PQ) <= q
    cp = SplitConformal(score="lac", alpha=0.1).fit(_layouts(PC, tmp_path, "cal")[layout], YC)
    assert cp.qhat_ == q
    got = cp.predict_set(_layouts(PQ, tmp_path)[layout])
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_split_aps_sets_equal_the_oracle_for_every_layout(layout, tmp_path):
    q = _oracle_quantile(_oracle_aps(PC)[np.arange(PC.shape[0]), YC], 0.1)
    expected = _oracle_aps(PQ) <= q + 1e-12
    cp = SplitConformal(score="aps", alpha=0.1, randomized=False).fit(PC, YC)
    np.testing.assert_allclose(cp.qhat_, q, rtol=0, atol=1e-12)
    got = cp.predict_set(_layouts(PQ, tmp_path)[layout])
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_mondrian_class_sets_equal_the_oracle_for_every_layout(layout, tmp_path):
    s = 1.0 - PC[np.arange(PC.shape[0]), YC]
    q = np.array([_oracle_quantile(s[YC == c], 0.2) for c in range(5)])
    expected = (1.0 - PQ) <= q[None, :]
    got = MondrianConformal(condition="class", alpha=0.2).fit(PC, YC).predict_set(_layouts(PQ, tmp_path)[layout])
    np.testing.assert_array_equal(got, expected)


def test_integer_one_hot_probabilities_give_the_oracle_sets():
    q = _oracle_quantile(1.0 - PC[np.arange(PC.shape[0]), YC], 0.1)
    one_hot = np.eye(5, dtype=np.int64)[np.arange(30) % 5]
    got = SplitConformal(score="lac", alpha=0.1).fit(PC, YC).predict_set(one_hot)
    np.testing.assert_array_equal(got, (1.0 - one_hot) <= q)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_threshold_policy_routes_every_layout_like_the_oracle(layout, tmp_path):
    expected = np.where(PQ.max(axis=1) >= 0.5, 0, 1)
    pol = ThresholdPolicy(threshold=0.5, fallback="none").fit(PC, YC)
    np.testing.assert_array_equal(pol.route(_layouts(PQ, tmp_path)[layout]).actions, expected)


def test_legitimate_infinite_scores_and_bool_correctness_still_work():
    # ±inf scores are legitimate (e.g. -log p of p = 0): refused are NaN only
    assert conformal_quantile(np.array([1.0, 2.0, np.inf] * 10), 0.5) == 2.0
    # 0/1 integer correctness is accepted by Learn then Test and the metric helpers, like booleans
    conf = np.linspace(0, 1, 2000)
    correct = conf > 0.2
    a = ltt_threshold(conf, correct, target_risk=0.05)
    b = ltt_threshold(conf, correct.astype(np.int64), target_risk=0.05)
    assert a.certified and b.certified and a.threshold == b.threshold
    answered = conf >= a.threshold
    assert 0 < answered.sum() < conf.size and (~correct[answered]).mean() <= 0.05  # risk of what it answers, by hand
    count, _, _ = metrics.calibration_bins(np.array([0.9, 0.6]), np.array([1, 0]), n_bins=2)
    assert count.tolist() == [0, 2]
