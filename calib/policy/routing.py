"""Routing policies: per item, **answer** (the model's label), **escalate** (to a person) or **fallback**
(the output of deterministic logic).

Every policy takes calibrated probabilities (n, k), is built with keyword-only validated arguments,
``fit(probs, labels, *, sets=None, fallback=None)`` on the calibration split, and ``route(probs, *,
sets=None, fallback=None) -> Decision``. The decision maths is numpy only, so a numpy-only runtime can
rebuild a policy from an artifact (``get_params`` / ``get_state`` / ``from_state``) and route the same.

Where the fallback's label comes from (``fallback=``):
``"auto"`` (default) the per-item ``fallback`` array of the data when there is one, else no fallback;
``"extras"`` that array, required; ``"none"`` never fall back; ``"majority"`` the most frequent class of
the calibration labels; an int: that constant label.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import numpy as np

from calib._validation import (as_array, check_choice, check_fraction, check_labels, check_positive_int, check_probs,
                               check_probs_labels)
from calib.base import Component, NotFittedError, StateError, state_array, state_scalar  # noqa: F401  (re-export)
from calib.policy.costs import as_cost_model
from calib.policy.guarantees import FAMILIES, guarantee_from_state, guarantee_statement, ltt_threshold
from calib.selective import CONFIDENCES, _confidence_scores, confidence_domain, confidence_scores

__all__ = ["ANSWER", "ESCALATE", "FALLBACK", "ACTIONS", "REASONS", "Decision", "RoutingPolicy", "ThresholdPolicy",
           "RiskControlPolicy", "ConformalRoutingPolicy", "CostPolicy"]

ANSWER, ESCALATE, FALLBACK = 0, 1, 2
ACTIONS = ("answer", "escalate", "fallback")
#: Why an item was routed as it was: ``Decision.reasons`` holds indices into this tuple (``route(...,
#: explain=True)``); :mod:`calib.deploy` turns them into the sentence a product shows.
REASONS = (
    "no_policy",                # answered: no routing policy is configured
    "confident",                # answered: confidence >= threshold
    "low_confidence",           # escalated: confidence < threshold
    "low_confidence_fallback",  # fallback: confidence < threshold and the fallback's label is likely enough
    "nothing_certified",        # escalated: risk control certified no threshold (every item is escalated)
    "singleton_set",            # answered: the prediction set holds one class
    "empty_set_confident",      # answered: empty set of a rank score (the top class alone passes the threshold)
    "ambiguous_set",            # escalated: the prediction set holds two or more classes
    "empty_set",                # escalated: no class is plausible enough (empty LAC set)
    "fallback_in_set",          # fallback: the fallback's label lies in the prediction set
    "answer_cheapest",          # answered: lowest expected cost
    "fallback_cheapest",        # fallback: lowest expected cost
    "escalate_cheapest",        # escalated: lowest expected cost
)
_R = {name: code for code, name in enumerate(REASONS)}
FALLBACK_MODES = ("auto", "extras", "none", "majority")


@dataclasses.dataclass(frozen=True)
class Decision:
    """Routing of n items: ``actions`` int8 (0 answer, 1 escalate, 2 fallback), the model's label
    ``prediction`` (n,), the fallback's label ``fallback`` (n,) or None, and ``output`` (n,): the
    automated output (model or fallback label), -1 for escalated items. ``reasons`` (int8, indices into
    :data:`REASONS`) with ``route(..., explain=True)``, else None."""

    actions: np.ndarray
    prediction: np.ndarray
    fallback: np.ndarray | None
    output: np.ndarray
    reasons: np.ndarray | None = None

    def rates(self):
        counts = np.bincount(self.actions, minlength=3) / self.actions.size
        return {f"{a}_rate": float(c) for a, c in zip(("automation", "escalation", "fallback"), counts)}


def _check_fallback_mode(value):
    if isinstance(value, bool):
        raise TypeError(f"Expected fallback as one of {list(FALLBACK_MODES)} or a class index, got {value!r}.")
    if isinstance(value, numbers.Integral):
        if value < 0:
            raise ValueError(f"Expected fallback class index >= 0, got {value!r}.")
        return int(value)
    if isinstance(value, str):
        return check_choice(value, "fallback", FALLBACK_MODES)
    raise TypeError(f"Expected fallback as one of {list(FALLBACK_MODES)} or a class index, got {value!r}.")


class RoutingPolicy(Component):
    """Base class (:class:`calib.base.Component`). Subclasses set ``kind`` and implement ``_fit`` and
    ``_actions``; ``route`` never changes the policy."""

    _fit_hint = "fit(probs, labels) before route()"
    #: whether the policy routes on conformal prediction sets
    needs_sets: bool = False

    def __init__(self, *, fallback="auto", costs=None):
        self.fallback = _check_fallback_mode(fallback)
        self.cost_model = as_cost_model(costs)
        self.costs = self.cost_model.to_dict()

    # --- public API -------------------------------------------------------------------------------
    def fit(self, probs, labels, *, sets=None, fallback=None, groups=None):
        """Fit on calibrated calibration probabilities (n, k) and labels (n,); returns self."""
        p, y = check_probs_labels(probs, labels)
        k = p.shape[1]
        if isinstance(self.fallback, int) and self.fallback >= k:
            raise ValueError(f"Expected fallback class index in [0, {k - 1}] for {k} classes, got {self.fallback}.")
        self.n_classes_ = int(k)
        self.majority_class_ = int(np.bincount(y, minlength=k).argmax())
        fb = self._fallback_labels(p.shape[0], fallback)
        s = self._check_sets(sets, p.shape)
        self._fit(p, y, s, fb)
        return self

    def route(self, probs, *, sets=None, fallback=None, explain=False) -> Decision:
        """Route each item: returns a :class:`Decision` (with ``reasons`` when ``explain``)."""
        self._check_fitted()
        p = check_probs(probs, n_classes=self.n_classes_)
        return self._route(p, p.argmax(axis=1), sets=sets, fallback=fallback, explain=explain)

    def _route(self, p, pred, *, sets, fallback, explain):
        """:meth:`route` on probabilities already checked (``pred``: their argmax): the serving path of
        :class:`calib.deploy.FittedPipeline`, which checks its logits once and trusts its calibrator's output."""
        fb = self._fallback_labels(p.shape[0], fallback)
        s = self._check_sets(sets, p.shape)
        actions = self._actions(p, pred, s, fb).astype(np.int8)
        output = np.where(actions == ANSWER, pred, -1)
        if fb is not None:
            output = np.where(actions == FALLBACK, fb, output)
        reasons = self._reasons(p, s, actions).astype(np.int8) if explain else None
        return Decision(actions=actions, prediction=pred, fallback=fb, output=output, reasons=reasons)

    def _reasons(self, p, sets, actions):
        """Codes of :data:`REASONS` for the ``actions`` this policy chose (one per action by default)."""
        return np.choose(actions, [_R["confident"], _R["low_confidence"], _R["low_confidence_fallback"]])

    def guarantee(self):
        """Guarantee section for reports (all None for policies without one)."""
        return {"target_risk": None, "delta": None, "threshold": None, "risk_upper_bound": None,
                "certified": None}

    # --- helpers ------------------------------------------------------------------------------------
    def _fallback_labels(self, n, fallback):
        mode = self.fallback
        if fallback is not None:  # validated even where the mode does not use it: a wrong array is never silent
            fallback = check_labels(fallback, "fallback", n_samples=n, n_classes=self.n_classes_)
        if isinstance(mode, int):
            return np.full(n, mode, dtype=np.int64)
        if mode == "none":
            return None
        if mode == "majority":
            return np.full(n, self.majority_class_, dtype=np.int64)
        if fallback is None:
            if mode == "extras":
                raise ValueError(
                    "Expected a per-item fallback array (data key 'fallback') for fallback='extras', got none; "
                    "set fallback to 'none', 'majority' or a class index, or add 'fallback' to the data file."
                )
            return None
        return fallback

    def _check_sets(self, sets, shape):
        if sets is None:
            if self.needs_sets:
                raise ValueError(
                    f"Policy {self.kind!r} routes on conformal prediction sets, but no conformal predictor is "
                    "configured (conformal=none); choose conformal=lac/aps or another policy."
                )
            return None
        s = as_array(sets, "sets")
        if s.shape != shape or s.dtype != bool:
            raise ValueError(f"Expected sets as a boolean array of shape {shape}, got dtype {s.dtype}, shape {s.shape}.")
        return s

    def _fit(self, probs, labels, sets, fallback):
        pass

    def _get_state(self):
        return {"majority_class": self.majority_class_}, {}

    def _set_state(self, state, arrays):
        k = self.n_classes_
        if isinstance(self.fallback, int) and self.fallback >= k:
            raise StateError(f"Expected the fallback class index of {type(self).__name__} in [0, {k - 1}] for "
                             f"n_classes={k}, got {self.fallback}.")
        self.majority_class_ = state_scalar(state, "majority_class", int, minimum=0, maximum=k - 1, owner=type(self))

    @classmethod
    def _upgrade_params(cls, params):
        if "score" in params and "confidence" not in params:  # calib <= 0.1 called the confidence score "score"
            params["confidence"] = params.pop("score")
        return params

    def _repr_params(self):
        return {k: v for k, v in self.get_params().items() if k != "costs"}


class _ScoreThresholdPolicy(RoutingPolicy):
    """Answer when the confidence score is >= ``threshold_``; otherwise fall back when the model gives the
    fallback's label a probability >= ``fallback_threshold``; otherwise escalate."""

    def _init_confidence(self, confidence, fallback_threshold):
        self.confidence = check_choice(confidence, "confidence", CONFIDENCES)
        if fallback_threshold is not None:
            fallback_threshold = check_fraction(fallback_threshold, "fallback_threshold", inclusive=True)
        self.fallback_threshold = fallback_threshold

    def _actions(self, p, pred, sets, fb):
        s = _confidence_scores(p, self.confidence, pred)  # p was checked by route() / the pipeline
        actions = np.where(s >= self.threshold_, ANSWER, ESCALATE)
        if fb is not None and self.fallback_threshold is not None:
            p_fb = np.take_along_axis(p, fb[:, None], axis=1)[:, 0]
            actions = np.where((actions == ESCALATE) & (p_fb >= self.fallback_threshold), FALLBACK, actions)
        return actions

    def _get_state(self):
        scalars, arrays = super()._get_state()
        return scalars, {**arrays, "threshold": np.asarray([self.threshold_], dtype=np.float64)}

    def _set_state(self, state, arrays):
        super()._set_state(state, arrays)
        t = state_array(arrays, "threshold", shape=(1,), kind="f", finite=self._threshold_finite, owner=type(self))
        self.threshold_ = float(t[0])

    _threshold_finite = True

    def _confidence_domain(self):
        return confidence_domain(self.confidence, self.n_classes_)


class ThresholdPolicy(_ScoreThresholdPolicy):
    """Fixed confidence threshold, or the calibration quantile that answers ``target_coverage`` of items.

    No statistical guarantee (see :class:`RiskControlPolicy`). Geifman & El-Yaniv (2017).

    >>> p = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    >>> ThresholdPolicy(threshold=0.7).fit(p, np.array([0, 1, 1])).route(p).actions.tolist()
    [0, 1, 0]
    """

    kind = "threshold"

    def __init__(self, *, threshold=None, target_coverage=None, confidence="max_prob", fallback_threshold=None,
                 fallback="auto", costs=None):
        super().__init__(fallback=fallback, costs=costs)
        self._init_confidence(confidence, fallback_threshold)
        if (threshold is None) == (target_coverage is None):
            raise ValueError(f"Expected exactly one of threshold or target_coverage, got threshold={threshold!r}, "
                             f"target_coverage={target_coverage!r}.")
        if threshold is not None:
            if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not math.isfinite(threshold):
                raise ValueError(f"Expected threshold as a finite real number, got {threshold!r}.")
            threshold = float(threshold)
        if target_coverage is not None:
            target_coverage = check_fraction(target_coverage, "target_coverage")
        self.threshold = threshold
        self.target_coverage = target_coverage

    def _fit(self, p, y, sets, fb):
        if self.threshold is not None:
            self.threshold_ = self.threshold
        else:
            s = np.sort(confidence_scores(p, self.confidence))[::-1]
            self.threshold_ = float(s[max(1, math.ceil(self.target_coverage * s.size)) - 1])

    def _set_state(self, state, arrays):
        super()._set_state(state, arrays)
        who, t = type(self).__name__, self.threshold_
        if self.threshold is not None:
            if t != self.threshold:
                raise StateError(f"Expected state field 'threshold' of {who} equal to the parameter threshold="
                                 f"{self.threshold!r} (a fixed threshold), got {t!r}.")
            return
        lo, hi = self._confidence_domain()
        if not lo <= t <= hi:  # the confidence of a calibration item
            raise StateError(f"Expected state field 'threshold' of {who} in [{lo:.6g}, {hi:.6g}] (the range of "
                             f"confidence {self.confidence!r} with {self.n_classes_} classes), got {t!r}.")


class RiskControlPolicy(_ScoreThresholdPolicy):
    """Threshold chosen by Learn then Test so that, over the draw of the calibration set,
    P(R(threshold) > target_risk) <= delta, where R is the **population** selective risk P(wrong | answered)
    on new items exchangeable with the calibration items (not the risk of a finite test set); optionally
    with an escalation budget (see :mod:`calib.policy.guarantees`; Angelopoulos et al. 2021, arXiv:2110.01052).

    ``family`` chooses the fixed sequences: ``"multi_start"`` (default; 4 sequences from label-free starts,
    each at level delta / 4 — robust to an early cluster of confident errors, slightly conservative) or
    ``"fixed_sequence"`` (one sequence from a label-free start at level delta). Both keep the guarantee.
    Artifacts written before the choice existed load as ``"multi_start"``, which is what they used.

    When nothing is certified it warns and escalates every item (``guarantee_.certified`` is False).
    ``guarantee()`` adds the family and a plain ``statement`` of what is guaranteed.
    """

    kind = "risk_control"

    def __init__(self, *, target_risk=0.05, delta=0.1, max_escalation=None, confidence="max_prob", grid_size=None,
                 family="multi_start", fallback_threshold=None, fallback="auto", costs=None):
        super().__init__(fallback=fallback, costs=costs)
        self._init_confidence(confidence, fallback_threshold)
        self.target_risk = None if target_risk is None else check_fraction(target_risk, "target_risk")
        self.delta = check_fraction(delta, "delta")
        self.max_escalation = None if max_escalation is None else check_fraction(max_escalation, "max_escalation")
        if self.target_risk is None and self.max_escalation is None:
            raise ValueError("Expected target_risk or max_escalation (or both), got neither.")
        if grid_size is not None:
            grid_size = check_positive_int(grid_size, "grid_size", minimum=2)
        self.grid_size = grid_size
        self.family = check_choice(family, "family", tuple(FAMILIES))

    def _fit(self, p, y, sets, fb):
        conf = confidence_scores(p, self.confidence)
        correct = p.argmax(axis=1) == y
        g = ltt_threshold(conf, correct, target_risk=self.target_risk, delta=self.delta,
                          max_escalation=self.max_escalation, grid_size=self.grid_size, family=self.family)
        self.guarantee_ = g
        self.threshold_ = g.threshold

    def guarantee(self):
        """The fitted guarantee (:class:`~calib.policy.guarantees.Guarantee` as a dict) plus ``family``,
        ``n_starts`` and ``statement``: what is guaranteed, in words."""
        return {**self.guarantee_.to_dict(), "family": self.family, "n_starts": FAMILIES[self.family],
                "statement": guarantee_statement(target_risk=self.target_risk, delta=self.delta,
                                                 max_escalation=self.max_escalation, family=self.family)}

    @classmethod
    def _upgrade_params(cls, params):
        params = super()._upgrade_params(params)
        params.setdefault("family", "multi_start")  # artifacts written before the choice: multi-start, always
        return params

    def _reasons(self, p, sets, actions):
        codes = super()._reasons(p, sets, actions)
        if self.threshold_ == np.inf:  # nothing certified: every item is escalated, whatever its confidence
            codes = np.where(actions == ESCALATE, _R["nothing_certified"], codes)
        return codes

    def _get_state(self):
        scalars, arrays = super()._get_state()
        g = self.guarantee_.to_dict()
        g.pop("threshold")
        return {**scalars, "guarantee": g}, arrays

    _threshold_finite = "allow_inf"  # +inf: nothing certified for a risk target; -inf: a budget alone

    def _set_state(self, state, arrays):
        super()._set_state(state, arrays)
        if "guarantee" not in state:
            raise StateError(f"Expected state field 'guarantee' of {type(self).__name__} to be present, got a state "
                             "without it.")
        self.guarantee_ = guarantee_from_state(
            state.pop("guarantee"), self.threshold_, target_risk=self.target_risk, delta=self.delta,
            max_escalation=self.max_escalation, domain=self._confidence_domain(), owner=type(self))


#: Nonconformity scores whose sets are built by rank (cumulative mass or rank of the label): an empty set means
#: the top class alone already passes the threshold — a *very* confident item. Keep in sync with
#: ``calib.conformal.scores.SCORES`` (tests/test_policy.py checks that every score is classified).
RANK_SCORES = ("aps", "raps", "saps", "topk")
#: Scores whose sets are {class: score <= q}: an empty set means no class is plausible enough — doubt.
THRESHOLD_SCORES = ("lac",)
EMPTY_SET_RULES = ("escalate", "answer_top", "auto")


class ConformalRoutingPolicy(RoutingPolicy):
    """Route on a conformal prediction set: answer a singleton, fall back when the fallback's label is inside
    the set, escalate an ambiguous set (two or more classes). Needs ``sets`` from a fitted conformal predictor
    (Angelopoulos & Bates 2021, "A gentle introduction to conformal prediction").

    An **empty** set means different things for different scores, so ``empty_set`` says what to do with it:

    - ``"escalate"`` (default; what every artifact written before the choice existed did): the empty set is
      doubt and is escalated. Right for LAC (``score=lac``, sets {j: 1 - p_j <= q}): an empty set means no
      class reaches probability 1 - q;
    - ``"answer_top"``: the empty set is answered with the model's top label. Right for the rank scores (APS,
      RAPS, SAPS, top-k): their set is empty when the top class alone already exceeds the threshold, i.e. on
      items the model is very sure of (with non-randomised APS on a 100-class set these are ~9 % of items, at
      confidence >= 0.998 and 100 % right);
    - ``"auto"``: the rule of ``set_score``, the name of the nonconformity score that built the sets —
      ``"answer_top"`` for :data:`RANK_SCORES`, ``"escalate"`` for :data:`THRESHOLD_SCORES`.
      ``conf/policy/conformal_routing.yaml`` sets ``empty_set: auto`` and ``set_score`` to the configured
      ``conformal.score``. Fitting with ``"auto"`` and no ``set_score`` is an error.

    When answering, the output is the model's top label (a singleton set holds it for LAC/APS-type sets).

    >>> sets = np.array([[True, False], [True, True], [False, False]])
    >>> p = np.array([[0.9, 0.1], [0.6, 0.4], [0.5, 0.5]])
    >>> ConformalRoutingPolicy(fallback=1).fit(p, np.array([0, 1, 0]), sets=sets).route(p, sets=sets).actions.tolist()
    [0, 2, 1]
    >>> ConformalRoutingPolicy(fallback=1, empty_set="answer_top").fit(p, np.array([0, 1, 0]), sets=sets).route(
    ...     p, sets=sets).actions.tolist()
    [0, 2, 0]
    """

    kind = "conformal_routing"
    needs_sets = True

    def __init__(self, *, empty_set="escalate", set_score=None, fallback="auto", costs=None):
        super().__init__(fallback=fallback, costs=costs)
        self.empty_set = check_choice(empty_set, "empty_set", EMPTY_SET_RULES)
        if set_score is not None:
            set_score = check_choice(set_score, "set_score", RANK_SCORES + THRESHOLD_SCORES)
        self.set_score = set_score

    @property
    def empty_set_rule(self):
        """The rule in force: ``"escalate"`` or ``"answer_top"`` (``"auto"`` resolved through ``set_score``)."""
        if self.empty_set != "auto":
            return self.empty_set
        if self.set_score is None:
            raise ValueError("Expected set_score (the nonconformity score of the sets: one of "
                             f"{list(RANK_SCORES + THRESHOLD_SCORES)}) with empty_set='auto', got set_score=None; "
                             "set it, or set empty_set to 'escalate' or 'answer_top'.")
        return "answer_top" if self.set_score in RANK_SCORES else "escalate"

    def _fit(self, p, y, sets, fb):
        self.empty_set_rule  # noqa: B018  (refuse 'auto' without a score before anything is routed)

    def _actions(self, p, pred, sets, fb):
        size = sets.sum(axis=1)
        actions = np.full(p.shape[0], ESCALATE)
        if fb is not None:
            in_set = np.take_along_axis(sets, fb[:, None], axis=1)[:, 0]
            actions = np.where(in_set & (size >= 1), FALLBACK, actions)
        answer = (size == 1) | ((size == 0) & (self.empty_set_rule == "answer_top"))
        return np.where(answer, ANSWER, actions)

    def _reasons(self, p, sets, actions):
        size = sets.sum(axis=1)
        empty = size == 0
        return np.where(actions == ANSWER, np.where(empty, _R["empty_set_confident"], _R["singleton_set"]),
                        np.where(actions == FALLBACK, _R["fallback_in_set"],
                                 np.where(empty, _R["empty_set"], _R["ambiguous_set"])))

    @classmethod
    def _upgrade_params(cls, params):
        params = super()._upgrade_params(params)
        params.setdefault("empty_set", "escalate")  # artifacts written before the choice escalated empty sets
        return params


class CostPolicy(RoutingPolicy):
    """Minimum expected cost per item under a :class:`~calib.policy.costs.CostModel`, computed from the
    calibrated probabilities (Chow 1970, "On optimum recognition error and reject tradeoff", extended to a
    third, fallback action). Ties go to answer, then fallback, then escalate.

    >>> p = np.array([[0.95, 0.05], [0.6, 0.4]])
    >>> CostPolicy(costs={"escalation": 0.1, "human_accuracy": 1.0}).fit(p, np.array([0, 1])).route(p).actions.tolist()
    [0, 1]
    """

    kind = "cost"

    def __init__(self, *, fallback="auto", costs=None):
        super().__init__(fallback=fallback, costs=costs)

    def _actions(self, p, pred, sets, fb):
        p_pred = p.max(axis=1)
        p_fb = None if fb is None else np.take_along_axis(p, fb[:, None], axis=1)[:, 0]
        c = self.cost_model.action_costs(p_pred, p_fb)
        # preference order answer < fallback < escalate on ties
        best = np.where(c[:, 0] <= np.minimum(c[:, 1], c[:, 2]), ANSWER,
                        np.where(c[:, 2] <= c[:, 1], FALLBACK, ESCALATE))
        return best

    def _reasons(self, p, sets, actions):
        return np.choose(actions, [_R["answer_cheapest"], _R["escalate_cheapest"], _R["fallback_cheapest"]])
