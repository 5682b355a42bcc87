"""One fitted chain, from held-out logits to the decision a product shows: :class:`FittedPipeline`.

calibrator -> (conformal predictor) -> (routing policy), with the class names, the input contract
(``n_classes``, logits, the dtype it was fitted on), a **reliability table** (the calibration items' accuracy
per equal-mass bin of calibrated confidence, with exact Clopper-Pearson intervals: the *band* of an item's
confidence) and a few **probe rows** whose outputs are stored at fit time, so ``calib verify`` can recompute
them anywhere. ``experiments/calibrate.py`` saves this same object; :mod:`calib.runtime` loads it with numpy
alone.

``apply(logits, groups=None, fallback=None)`` -> :class:`Decisions`: probabilities, label, confidence and its
band, the set, the action (answer / escalate / fallback), the output and the reason of each item, in row
chunks (memory bounded by the chunk, not the batch). Nothing in ``apply`` changes the pipeline: one object
serves concurrent requests. Outputs equal the library components' called on the whole batch, bit for bit.

>>> from calib.datasets import synthetic
>>> from calib.calibrators import TemperatureScaling
>>> from calib.conformal import SplitConformal
>>> from calib.policy import ThresholdPolicy
>>> d = synthetic(n=4000, n_classes=4, temperature=0.5, seed=0)
>>> pipe = FittedPipeline.fit(d.logits[:2000], d.labels[:2000], calibrator=TemperatureScaling(),
...                           conformal=SplitConformal(score="lac", alpha=0.1),
...                           policy=ThresholdPolicy(threshold=0.7, fallback="none"))
>>> out = pipe.apply(d.logits[2000:2004])
>>> out.actions.tolist()
[0, 1, 1, 1]
>>> out.explain(0)["message"]
"Answered '0': calibrated confidence 0.776 is at or above the answer threshold 0.700. Calibration items this confident were right 76.5%-87.5% of the time (95% interval)."
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np

from calib import _chunks

__all__ = ["FittedPipeline", "Decisions", "NotPortableError", "BAND_LEVEL", "PROBE_ROWS"]

#: Confidence level of the bands (exact Clopper-Pearson intervals of the bin accuracies).
BAND_LEVEL = 0.95
#: Probe rows stored with the pipeline (synthetic logits, never calibration data) and recomputed by ``verify``.
PROBE_ROWS = 64
#: Rows per chunk of ``apply`` are chosen for this many float32 entries (about 16 MB).
APPLY_ENTRIES = 1 << 22


class NotPortableError(ValueError):
    """The pipeline holds a component that needs a third-party package to predict (``calib.runtime`` is numpy only)."""


def _registries():
    from calib import calibrators, conformal, policy, shift

    return {"calibrator": calibrators.REGISTRY, "conformal": {**conformal.REGISTRY, **shift.CONFORMAL_REGISTRY},
            "policy": policy.REGISTRY}


_PACKAGES = {"calibrator": "calib.calibrators", "conformal": "calib.conformal", "policy": "calib.policy"}


def _check_chain(conformal, policy):
    """A policy that routes on sets needs a conformal predictor with one alpha."""
    if policy is None or not getattr(policy, "needs_sets", False):
        return
    if conformal is None:
        raise ValueError(f"Expected a conformal predictor with policy {policy.kind!r} (it routes on conformal "
                         "prediction sets), got none.")
    if isinstance(conformal.alpha, tuple):
        raise ValueError(f"Expected a conformal predictor with one alpha for policy {policy.kind!r} (it routes on "
                         f"one prediction set per item), got alpha={list(conformal.alpha)}.")


def _check_component(obj, name, *, fitted):
    """``obj`` must be an instance of a class in its package's REGISTRY (and fitted when ``fitted``)."""
    registry = _registries()[name]
    if isinstance(obj, type):
        raise TypeError(f"Expected {name} as an instance of a class of {_PACKAGES[name]}.REGISTRY, got the class "
                        f"{obj.__name__} itself; pass an instance, e.g. {obj.__name__}().")
    kind = getattr(obj, "kind", None)
    if not isinstance(kind, str) or kind not in registry or type(obj) is not registry[kind]:
        raise TypeError(f"Expected {name} as an instance of a class of {_PACKAGES[name]}.REGISTRY (kinds: "
                        f"{sorted(registry)}), got {type(obj).__name__} {obj!r:.60}.")
    if fitted:
        obj._check_fitted()


# --- reliability table: the band of a confidence ------------------------------------------------------
def reliability_table(confidence, correct, *, n_bins=10, min_per_bin=50, level=BAND_LEVEL):
    """Equal-mass bins of calibrated top-label ``confidence`` on the calibration items, each with its count,
    correct count and exact Clopper-Pearson ``level`` interval of the accuracy: ``{"edges" (m - 1 interior
    edges, a confidence c falls in bin searchsorted(edges, c, "right")), "n", "correct", "lower", "upper",
    "level"}``. At most ``n // min_per_bin`` bins (at least 1)."""
    from calib.stats import clopper_pearson

    c = np.asarray(confidence, dtype=np.float64)
    ok = np.asarray(correct, dtype=bool)
    n = c.size
    m = max(1, min(int(n_bins), n // int(min_per_bin)))
    edges = np.unique(np.quantile(c, np.arange(1, m) / m)) if m > 1 else np.empty(0)
    while True:  # tied confidences can leave a bin empty: merge it into its right neighbour (the last: left)
        idx = np.searchsorted(edges, c, side="right")
        counts = np.bincount(idx, minlength=edges.size + 1)
        empty = np.flatnonzero(counts == 0)
        if empty.size == 0 or edges.size == 0:
            break
        edges = np.delete(edges, min(int(empty[0]), edges.size - 1))
    hits = np.bincount(idx, weights=ok, minlength=edges.size + 1).astype(np.int64)
    bounds = np.array([clopper_pearson(int(h), int(t), level) for h, t in zip(hits, counts)], dtype=np.float64)
    return {"edges": edges.tolist(), "n": counts.tolist(), "correct": hits.tolist(),
            "lower": bounds[:, 0].tolist(), "upper": bounds[:, 1].tolist(), "level": float(level)}


def _check_reliability(table, where):
    """A reliability table read from an artifact: sizes, orders and ranges (untrusted input)."""
    def bad(msg):
        from calib.artifacts import ArtifactError

        raise ArtifactError(f"Expected {where}.reliability {msg}.")

    if not isinstance(table, dict) or set(table) != {"edges", "n", "correct", "lower", "upper", "level"}:
        bad("as a table with edges, n, correct, lower, upper and level")
    for key in ("edges", "n", "correct", "lower", "upper"):
        values = table[key]
        if isinstance(values, np.ndarray):
            values = values.tolist()
        if not isinstance(values, (list, tuple)) or not all(
                isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
                for v in values):
            bad(f"{key} as a list of numbers")
    if isinstance(table["level"], bool) or not isinstance(table["level"], (int, float)):
        bad("level as a number")
    try:
        edges = np.asarray(table["edges"], dtype=np.float64).reshape(-1)
        n = np.asarray(table["n"], dtype=np.float64)
        correct = np.asarray(table["correct"], dtype=np.float64)
        lower = np.asarray(table["lower"], dtype=np.float64)
        upper = np.asarray(table["upper"], dtype=np.float64)
        level = float(table["level"])
    except (TypeError, ValueError):
        bad("holding numbers only")
    m = edges.size + 1
    if any(a.shape != (m,) for a in (n, correct, lower, upper)):
        bad(f"with {m} bins for {edges.size} edges in n, correct, lower and upper")
    if not (np.isfinite(edges).all() and np.all(np.diff(edges) > 0) and (edges.size == 0 or (edges[0] >= 0 and edges[-1] <= 1))):
        bad("edges increasing within [0, 1]")
    if not (np.all(n == np.round(n)) and np.all(correct == np.round(correct)) and np.all(n >= 0)
            and np.all(correct >= 0) and np.all(correct <= n)):
        bad("counts as integers with 0 <= correct <= n")
    if not (np.all(np.isfinite(lower)) and np.all(np.isfinite(upper)) and np.all(lower >= 0) and np.all(upper <= 1)
            and np.all(lower <= upper)):
        bad("bounds with 0 <= lower <= upper <= 1")
    if not 0 < level < 1:
        bad("level in (0, 1)")
    filled = n > 0
    rate = np.divide(correct, n, out=np.zeros_like(lower), where=filled)
    if np.any(filled & ((rate < lower) | (rate > upper))):
        bad("bounds around each bin's accuracy (lower <= correct / n <= upper)")
    if np.any(~filled & ((lower != 0) | (upper != 1))):
        bad("bounds [0, 1] for an empty bin")
    return {"edges": edges, "n": n.astype(np.int64), "correct": correct.astype(np.int64), "lower": lower,
            "upper": upper, "level": level}


def probe_logits(n_classes, rows=PROBE_ROWS):
    """Deterministic synthetic logits (``rows`` x ``n_classes`` float32) spanning confident to flat rows: the
    rows whose outputs an artifact stores and :meth:`FittedPipeline.verify` recomputes."""
    rng = np.random.default_rng(20261129)
    scale = np.geomspace(0.25, 16.0, rows)[:, None]
    return (rng.standard_normal((rows, n_classes)) * scale).astype(np.float32)


def set_strings(sets, names):
    """Each row's set as its class names joined by ``|`` (object array): formatted once per distinct set."""
    k = sets.shape[1]
    uniq, inverse = np.unique(np.packbits(sets, axis=1), axis=0, return_inverse=True)
    text = np.array(["|".join(names[j] for j in np.flatnonzero(np.unpackbits(u)[:k])) for u in uniq], dtype=object)
    return text[inverse.reshape(-1)]


# --- decisions ----------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Decisions:
    """What :meth:`FittedPipeline.apply` returns for n items.

    ``probs`` (n, k) calibrated probabilities; ``label`` (n,) the model's label (argmax); ``confidence`` (n,)
    its calibrated probability; ``band_low`` / ``band_high`` (n,) the accuracy interval of calibration items of
    like confidence (NaN without a reliability table); ``sets`` (n, k) bool or None; ``actions`` (n,) int8
    (0 answer, 1 escalate, 2 fallback; all 0 without a policy); ``output`` (n,) the automated label (-1 when
    escalated); ``reasons`` (n,) int8 indices into :data:`calib.policy.routing.REASONS`.
    ``fallback`` (n,) the fallback's label per item, or None without a fallback.
    ``explain(i)`` is the per-item explanation a product shows; ``columns()`` a flat table."""

    probs: np.ndarray
    label: np.ndarray
    confidence: np.ndarray
    band_low: np.ndarray
    band_high: np.ndarray
    sets: np.ndarray | None
    actions: np.ndarray
    output: np.ndarray
    reasons: np.ndarray
    fallback: np.ndarray | None = None  # the fallback's label per item (None: no fallback)
    pipeline: "FittedPipeline" = dataclasses.field(default=None, repr=False, compare=False)

    def __len__(self):
        return int(self.label.shape[0])

    def rates(self):
        """Shares of items answered, escalated and sent to the fallback."""
        counts = np.bincount(self.actions, minlength=3) / max(len(self), 1)
        return {f"{a}_rate": float(c) for a, c in zip(("automation", "escalation", "fallback"), counts)}

    def explain(self, i):
        """The explanation of item ``i``: ``{"label", "class_name", "confidence", "band", "set", "action",
        "output", "reason", "message"}`` (``message``: one plain sentence)."""
        from calib.policy.routing import ACTIONS, REASONS

        n = len(self)
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not -n <= i < n:
            raise IndexError(f"Expected an item index in [0, {n}), got {i!r}.")
        i = int(i) % n
        pipe = self.pipeline
        label, conf = int(self.label[i]), float(self.confidence[i])
        band = None if math.isnan(self.band_low[i]) else [float(self.band_low[i]), float(self.band_high[i])]
        sets_i = None if self.sets is None else self.sets[i]
        if sets_i is not None and sets_i.ndim == 2:  # several alphas: the sentence uses the first
            members = np.flatnonzero(sets_i[:, 0]).tolist()
        else:
            members = None if sets_i is None else np.flatnonzero(sets_i).tolist()
        action = ACTIONS[int(self.actions[i])]
        output = int(self.output[i])
        reason = REASONS[int(self.reasons[i])]
        out = {"label": label, "class_name": pipe.class_name(label), "confidence": conf, "band": band,
               "set": None if members is None else [pipe.class_name(j) for j in members],
               **({"sets_by_alpha": {f"{a:g}": [pipe.class_name(j) for j in np.flatnonzero(sets_i[:, m])]
                                     for m, a in enumerate(pipe.conformal.alpha)}}
                  if sets_i is not None and sets_i.ndim == 2 else {}),
               "action": action, "output": None if output < 0 else output,
               "output_name": None if output < 0 else pipe.class_name(output), "reason": reason}
        fb = None if self.fallback is None else int(self.fallback[i])
        out["message"] = pipe._message(out, self.probs[i], members, fb)
        return out

    def columns(self, *, sets=True):
        """A flat table (dict of 1-D arrays): label, class_name, confidence, band_low, band_high,
        set_size and set (class names joined by ``|``) when there are sets, action, output, reason."""
        from calib.policy.routing import ACTIONS, REASONS

        names = np.asarray(self.pipeline.class_names_or_indices())
        cols = {"label": self.label, "class_name": names[self.label], "confidence": self.confidence,
                "band_low": self.band_low, "band_high": self.band_high}
        if self.sets is not None:
            per_alpha = [("", self.sets)] if self.sets.ndim == 2 else \
                [(f"_{a:g}", self.sets[:, :, m]) for m, a in enumerate(self.pipeline.conformal.alpha)]
            for suffix, s in per_alpha:
                cols[f"set_size{suffix}"] = s.sum(axis=1)
                if sets:
                    cols[f"set{suffix}"] = set_strings(s, names)
        cols["action"] = np.asarray(ACTIONS)[self.actions]
        cols["output"] = self.output
        cols["reason"] = np.asarray(REASONS)[self.reasons]
        return cols


#: How a policy's confidence score reads in an explanation.
_SCORE_WORDS = {"max_prob": "calibrated confidence", "margin": "margin between the top two classes",
                "neg_entropy": "negative entropy"}

_FIELDS = ("probs", "label", "confidence", "band_low", "band_high", "sets", "actions", "output", "reasons",
           "fallback")


# --- the pipeline -------------------------------------------------------------------------------------
class FittedPipeline:
    """calibrator -> (conformal) -> (policy), fitted, with class names, an input contract and a reliability
    table; :meth:`fit`, :meth:`save` / :meth:`load`, :meth:`apply`. See the module docstring."""

    def __init__(self, calibrator, conformal=None, policy=None, *, class_names=None, reliability=None,
                 input_dtype="float32", probe=None, provenance=None, reference=None):
        for name, obj in (("calibrator", calibrator), ("conformal", conformal), ("policy", policy)):
            if obj is None:
                if name == "calibrator":
                    raise TypeError("Expected a fitted calibrator, got None.")
                continue
            _check_component(obj, name, fitted=True)
        k = calibrator.n_classes_
        for name, obj in (("conformal", conformal), ("policy", policy)):
            if obj is not None and obj.n_classes_ != k:
                raise ValueError(f"Expected the {name} fitted on {k} classes (as the calibrator), got {obj.n_classes_}.")
        _check_chain(conformal, policy)
        if class_names is not None:
            if isinstance(class_names, (str, bytes)) or not hasattr(class_names, "__len__"):
                raise TypeError(f"Expected class_names as a sequence of {k} strings, got {type(class_names).__name__} "
                                f"{class_names!r:.60}.")
            class_names = tuple(str(c) for c in class_names)
            if len(class_names) != k:
                raise ValueError(f"Expected {k} class_names, got {len(class_names)}.")
        if reference is not None:
            from calib.shift import ReferenceStats

            if not isinstance(reference, ReferenceStats) or not reference.is_fitted:
                raise TypeError(f"Expected reference as a fitted calib.shift.ReferenceStats, got {reference!r:.80}.")
            if reference.n_classes_ != k:
                raise ValueError(f"Expected the reference fitted on {k} classes (as the calibrator), got "
                                 f"{reference.n_classes_}.")
        self.calibrator, self.conformal, self.policy = calibrator, conformal, policy
        self.reference = reference
        self.class_names = class_names
        self.n_classes = int(k)
        if str(input_dtype) not in ("float16", "float32", "float64"):
            raise ValueError(f"Expected input_dtype as one of ['float16', 'float32', 'float64'], got {input_dtype!r:.60}.")
        self.input_dtype = str(input_dtype)
        self.reliability = None if reliability is None else _check_reliability(reliability, "FittedPipeline")
        self.probe = probe  # {"logits", "fallback", "groups", "probs", "sets", "actions", "reasons"} or None
        self.provenance = dict(provenance or {})

    # --- construction -------------------------------------------------------------------------------
    @classmethod
    def fit(cls, logits, labels, *, calibrator, conformal=None, policy=None, groups=None, fallback=None,
            class_names=None, n_bins=10):
        """Fit ``calibrator`` on calibration logits and labels, then ``conformal`` and ``policy`` on the calibrated
        probabilities (``groups`` for a group-conditional predictor, ``fallback`` per-item labels for the
        policy), and build the reliability table (``n_bins`` equal-mass bins) and the probe outputs."""
        from calib._validation import check_logits_labels, check_positive_int

        n_bins = check_positive_int(n_bins, "n_bins")
        _check_component(calibrator, "calibrator", fitted=False)
        for name, obj in (("conformal", conformal), ("policy", policy)):
            if obj is not None:
                _check_component(obj, name, fitted=False)
        _check_chain(conformal, policy)
        x, y = check_logits_labels(logits, labels)
        if class_names is not None and (isinstance(class_names, (str, bytes)) or not hasattr(class_names, "__len__")
                                        or len(class_names) != x.shape[1]):
            raise ValueError(f"Expected class_names as a sequence of {x.shape[1]} strings (one per column of logits), "
                             f"got {class_names!r:.80}.")
        calibrator.fit(x, y)
        p = calibrator.predict_proba(x)
        sets = None
        if conformal is not None:
            conformal.fit(p, y, groups=groups)
            if policy is not None and policy.needs_sets:
                sets = conformal.predict_set(p, groups=groups)
        if policy is not None:
            policy.fit(p, y, sets=sets, fallback=fallback, groups=groups)
        table = reliability_table(p.max(axis=1), p.argmax(axis=1) == y, n_bins=n_bins)
        pipe = cls(calibrator, conformal, policy, class_names=class_names, reliability=table,
                   input_dtype=np.dtype(x.dtype).name if x.dtype in (np.float16, np.float32, np.float64) else "float32")
        pipe.probe = pipe._probe_outputs()
        pipe.attach_reference(x, y, probs=p, fallback=fallback, groups=groups)
        return pipe

    def attach_reference(self, logits, labels, *, probs=None, fallback=None, groups=None):
        """Fit and keep :class:`calib.shift.ReferenceStats` on the calibration rows (what ``calib monitor``
        compares a serving batch with): class counts, the calibrated model's confusion matrix, confidence and
        novelty-score samples, the ATC threshold and, with a policy, its rates on these rows (automation, escalation,
        fallback, and silent failure: answered and wrong). Returns ``self``."""
        from calib.shift import ReferenceStats

        x = self._check_logits(logits)
        p = self.predict_proba(x) if probs is None else probs
        rates = None
        if self.policy is not None:  # {"automation", "escalation", "fallback", "silent_failure"} on these rows
            d = self.apply(x, fallback=fallback, groups=groups)
            rates = {k.removesuffix("_rate"): v for k, v in d.rates().items()}
            y = np.asarray(labels)
            if y.shape == (x.shape[0],):  # else ReferenceStats.fit refuses the labels, naming them
                rates["silent_failure"] = float(np.mean((d.actions == 0) & (d.output != y)))
        self.reference = ReferenceStats().fit(x, labels, probs=p, rates=rates)
        return self

    @classmethod
    def from_parts(cls, calibrator, conformal=None, policy=None, *, cal_probs=None, cal_labels=None, **kwargs):
        """A pipeline of already fitted components; with the calibration probabilities and labels, the
        reliability table too (what :func:`calib.evaluation.pipeline.fit_and_evaluate` uses)."""
        if (cal_probs is None) != (cal_labels is None):
            raise ValueError("Expected cal_probs and cal_labels together (the reliability table needs both), got "
                             f"{'cal_probs' if cal_labels is None else 'cal_labels'} alone.")
        if cal_probs is not None:
            from calib._validation import check_probs_labels

            p, y = check_probs_labels(cal_probs, cal_labels)
            kwargs.setdefault("reliability", reliability_table(p.max(axis=1), p.argmax(axis=1) == y))
        pipe = cls(calibrator, conformal, policy, **kwargs)
        if pipe.probe is None:
            pipe.probe = pipe._probe_outputs()
        return pipe

    def _probe_outputs(self):
        if not self.portable:
            return None  # not served by calib.runtime
        x = probe_logits(self.n_classes)
        groups = None
        if self.conformal is not None and self.conformal.kind == "mondrian" and self.conformal.condition == "group":
            g = self.conformal.groups_
            groups = g[np.arange(x.shape[0]) % g.size]  # every fitted group, in turn
        fb = None
        if self.policy is not None and self.policy.fallback in ("extras", "auto"):  # per-item fallback labels
            fb = (np.arange(x.shape[0]) % self.n_classes).astype(np.int64)
        d = self.apply(x, fallback=fb, groups=groups)
        return {"logits": x, "fallback": fb, "groups": groups, "probs": d.probs, "sets": d.sets, "actions": d.actions,
                "reasons": d.reasons}

    # --- properties ---------------------------------------------------------------------------------
    @property
    def components(self):
        return {name: obj for name, obj in (("calibrator", self.calibrator), ("conformal", self.conformal),
                                            ("policy", self.policy), ("reference", self.reference))
                if obj is not None}

    @property
    def portable(self):
        """Whether every component predicts with numpy alone (:mod:`calib.runtime` serves it)."""
        return all(type(obj).portable for obj in self.components.values())

    @property
    def input_contract(self):
        return {"kind": "logits", "n_classes": self.n_classes, "dtype": self.input_dtype}

    def class_name(self, j):
        return str(j) if self.class_names is None else self.class_names[j]

    def class_names_or_indices(self):
        return list(self.class_names) if self.class_names is not None else [str(j) for j in range(self.n_classes)]

    def __repr__(self):
        parts = ", ".join(f"{name}={obj!r}" for name, obj in self.components.items())
        return f"FittedPipeline({parts}, n_classes={self.n_classes})"

    # --- serving ------------------------------------------------------------------------------------
    def _check_logits(self, logits):
        from calib._validation import check_logits

        x = check_logits(logits, "logits")
        if x.shape[1] != self.n_classes:
            raise ValueError(f"Expected logits with {self.n_classes} columns (this pipeline was fitted on "
                             f"{self.n_classes} classes), got {x.shape[1]}.")
        return x

    def chunk_rows(self):
        return _chunks.rows_per_chunk(self.n_classes, entries=APPLY_ENTRIES, minimum=64)

    def predict_proba(self, logits):
        """Calibrated probabilities (n, k), computed in row chunks."""
        x = self._check_logits(logits)
        out = None
        for rows in _chunks.row_slices(x.shape[0], x.shape[1], entries=APPLY_ENTRIES, minimum=64):
            p = self.calibrator.predict_proba(x[rows])
            if out is None:
                out = np.empty((x.shape[0], self.n_classes), dtype=p.dtype)
            out[rows] = p
        return out if out is not None else self.calibrator.predict_proba(x)

    def predict_set(self, logits, *, groups=None):
        """Prediction sets (n, k) bool of the conformal predictor."""
        if self.conformal is None:
            raise ValueError("Expected a pipeline with a conformal predictor for predict_set, got none "
                             "(fit or save it with conformal=...).")
        x = self._check_logits(logits)
        groups = self._check_rows(groups, "groups", x.shape[0])
        out = None
        for rows in _chunks.row_slices(x.shape[0], self.n_classes, entries=APPLY_ENTRIES, minimum=64):
            s = self.conformal.predict_set(self.calibrator.predict_proba(x[rows]),
                                           groups=None if groups is None else groups[rows], row_offset=rows.start)
            if out is None:
                out = np.empty((x.shape[0], *s.shape[1:]), dtype=bool)
            out[rows] = s
        return out

    def apply(self, logits, *, groups=None, fallback=None):
        """Decisions for every row of ``logits`` (n, k): see :class:`Decisions`. ``groups`` (n,) feeds a
        group-conditional conformal predictor, ``fallback`` (n,) per-item fallback labels feed the policy.
        Works in row chunks; equal to the components called on the whole batch."""
        x = self._check_logits(logits)
        n = x.shape[0]
        groups = self._check_rows(groups, "groups", n)
        fallback = self._check_rows(fallback, "fallback", n)
        slices = _chunks.row_slices(n, self.n_classes, entries=APPLY_ENTRIES, minimum=64)
        if len(slices) <= 1:
            return self._apply_rows(x, groups, fallback, 0)
        out = None
        for rows in slices:  # each chunk writes its rows into the outputs allocated after the first one
            d = self._apply_rows(x[rows], None if groups is None else groups[rows],
                                 None if fallback is None else fallback[rows], rows.start)
            if out is None:
                out = {f: (None if getattr(d, f) is None else np.empty((n, *getattr(d, f).shape[1:]), getattr(d, f).dtype))
                       for f in _FIELDS}
            for f in _FIELDS:
                if out[f] is not None:
                    out[f][rows] = getattr(d, f)
        return Decisions(**out, pipeline=self)

    def iter_apply(self, logits, *, groups=None, fallback=None, chunk_rows=None):
        """``(start_row, Decisions)`` for consecutive row chunks of ``logits`` (e.g. a memory-mapped ``.npy``):
        memory bounded by the chunk. The concatenated decisions equal :meth:`apply` on the whole array. A
        memory-mapped ``.npy`` (:func:`calib.io.is_mapped`, float16 too) is read chunk by chunk with positioned
        reads (:func:`calib.io.iter_row_chunks`), each chunk upcast on its own."""
        x = self._check_shape_only(logits)
        n = x.shape[0]
        groups = self._check_rows(groups, "groups", n)
        fallback = self._check_rows(fallback, "fallback", n)
        if chunk_rows is None:
            chunk_rows = self.chunk_rows()
        if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, (int, np.integer)) or chunk_rows < 1:
            raise ValueError(f"Expected chunk_rows as a positive integer, got {chunk_rows!r}.")
        if n == 0:
            raise ValueError(f"Expected logits with at least one row, got shape {tuple(x.shape)}.")
        from calib.io import is_mapped, iter_row_chunks

        if is_mapped(x):  # a memory-mapped .npy: positioned reads, so the resident set stays one chunk
            for start, block in iter_row_chunks(x, int(chunk_rows)):
                rows = slice(start, start + block.shape[0])
                yield start, self._apply_rows(self._check_chunk(block, start),
                                              None if groups is None else groups[rows],
                                              None if fallback is None else fallback[rows], start)
            return
        for start in range(0, n, int(chunk_rows)):
            rows = slice(start, min(n, start + int(chunk_rows)))
            yield start, self._apply_rows(self._check_chunk(x[rows], start), None if groups is None else groups[rows],
                                          None if fallback is None else fallback[rows], start)

    def _check_chunk(self, chunk, start):
        """:meth:`_check_logits` of rows ``start:start + len(chunk)`` of a larger input; a non-finite entry is
        reported by its row in the whole input."""
        try:
            return self._check_logits(chunk)
        except ValueError:
            c = np.asarray(chunk)
            if c.dtype.kind == "f":
                bad = ~np.isfinite(c)
                if bad.any():
                    rows = np.flatnonzero(bad.any(axis=1)) + start
                    raise ValueError(f"Expected finite logits, got {int(bad.sum())} NaN/inf entries in rows {start}-"
                                     f"{start + c.shape[0] - 1} (first rows: {rows[:5].tolist()}).") from None
            raise

    def _check_shape_only(self, logits):
        x = logits if hasattr(logits, "shape") and hasattr(logits, "dtype") else np.asarray(logits)
        if getattr(x, "ndim", None) != 2 or x.shape[1] != self.n_classes:
            raise ValueError(f"Expected logits of shape (n, {self.n_classes}) (this pipeline was fitted on "
                             f"{self.n_classes} classes), got shape {tuple(getattr(x, 'shape', ()))}.")
        return x

    @staticmethod
    def _check_rows(a, name, n):
        if a is None:
            return None
        from calib._validation import as_array

        a = as_array(a, name)
        if a.ndim != 1 or a.shape[0] != n:
            raise ValueError(f"Expected {name} as a 1-D array with one entry per row of logits ({n}), got shape {a.shape}.")
        return a

    def _apply_rows(self, x, groups, fallback, offset):
        p = self.calibrator.predict_proba(x)
        label = p.argmax(axis=1)
        conf = np.take_along_axis(p, label[:, None], axis=1)[:, 0]
        sets = None
        if self.conformal is not None:
            sets = self.conformal.predict_set(p, groups=groups, row_offset=offset)
        if self.policy is not None:  # the calibrator's output is trusted here: no second validation pass
            d = self.policy._route(p, label, sets=sets if self.policy.needs_sets else None, fallback=fallback,
                                   explain=True)
            actions, output, reasons, fb = d.actions, d.output, d.reasons, d.fallback
        else:
            fb = None
            actions = np.zeros(p.shape[0], dtype=np.int8)
            output = label.copy()
            reasons = np.zeros(p.shape[0], dtype=np.int8)  # "no_policy"
        lo, hi = self._band(conf)
        return Decisions(probs=p, label=label, confidence=conf, band_low=lo, band_high=hi, sets=sets,
                         actions=actions, output=output, reasons=reasons, fallback=fb, pipeline=self)

    def _band(self, conf):
        t = self.reliability
        if t is None:
            nan = np.full(conf.shape, np.nan)
            return nan, nan.copy()
        idx = np.searchsorted(t["edges"], conf, side="right")
        return t["lower"][idx], t["upper"][idx]

    # --- explanation text ---------------------------------------------------------------------------
    def _message(self, e, probs, members, fb_label=None):
        name = e["class_name"]
        band = ""
        if e["band"] is not None:
            lvl = self.reliability["level"]
            band = (f" Calibration items this confident were right {e['band'][0]:.1%}-{e['band'][1]:.1%} of the time "
                    f"({lvl:.0%} interval).")
        conf = f"calibrated confidence {e['confidence']:.3f}"
        pol, cf = self.policy, self.conformal
        level = "" if cf is None else f"{1 - cf.alphas[0]:.0%} "
        setdesc = "" if members is None else (
            f"the {level}prediction set holds {len(members)} class{'es' if len(members) != 1 else ''}"
            + (f" ({', '.join(e['set'][:5])}{', ...' if len(members) > 5 else ''})" if members else ""))
        fb = e["output_name"]
        r = e["reason"]
        if r == "no_policy":
            return f"Answered {name!r}: {conf} (no routing policy).{band}"
        score = _SCORE_WORDS.get(getattr(pol, "confidence", None), "")
        if r == "confident":
            return (f"Answered {name!r}: {score} {self._score(probs):.3f} is at or above the answer threshold "
                    f"{pol.threshold_:.3f}.{band}")
        if r == "low_confidence":
            return (f"Escalated to a person: {score} {self._score(probs):.3f} is below the answer threshold "
                    f"{pol.threshold_:.3f} (the model says {name!r}).{band}")
        if r == "low_confidence_fallback":
            return (f"Fallback label {fb!r}: {score} {self._score(probs):.3f} is below the answer threshold "
                    f"{pol.threshold_:.3f}, and the model gives the fallback's label probability >= "
                    f"{pol.fallback_threshold:.3f}.")
        if r == "nothing_certified":
            return (f"Escalated to a person: risk control certified no threshold at target risk {pol.target_risk} "
                    f"(delta {pol.delta}), so every item is escalated (the model says {name!r}, {conf}).")
        if r == "singleton_set":
            return f"Answered {name!r}: {setdesc}.{band}"
        if r == "empty_set_confident":
            return f"Answered {name!r}: the top class alone passes the conformal threshold (empty rank-score set); {conf}.{band}"
        if r == "ambiguous_set":
            return f"Escalated to a person: {setdesc}.{band}"
        if r == "empty_set":
            return f"Escalated to a person: no class is plausible enough ({setdesc}); the model says {name!r}, {conf}."
        if r == "fallback_in_set":
            return f"Fallback label {fb!r}: it lies in {setdesc}."
        c = pol.cost_model.action_costs(np.asarray([float(probs.max())]),
                                        None if fb_label is None else np.asarray([float(probs[fb_label])]))
        costs = ", ".join(f"{a} {v:.3f}" for a, v in zip(("answer", "escalate", "fallback"), c[0]) if np.isfinite(v))
        fb_name = None if fb_label is None else self.class_name(fb_label)
        verb = {"answer_cheapest": f"Answered {name!r}",
                "escalate_cheapest": f"Escalated to a person (the model says {name!r}"
                                     + (f", the fallback {fb_name!r})" if fb_name is not None else ")"),
                "fallback_cheapest": f"Fallback label {fb!r}"}[r]
        return f"{verb}: lowest expected cost ({costs}).{band}"

    def _score(self, probs):
        from calib.selective import confidence_scores

        return float(confidence_scores(np.asarray(probs, dtype=np.float64)[None, :], self.policy.confidence)[0])

    # --- storage ------------------------------------------------------------------------------------
    def _block(self):
        block = {"input": self.input_contract, "reliability": None, "probe": None, "provenance": self.provenance}
        arrays = {}
        if self.reliability is not None:
            t = self.reliability
            block["reliability"] = {"edges": t["edges"].tolist(), "n": t["n"].tolist(), "correct": t["correct"].tolist(),
                                    "lower": t["lower"].tolist(), "upper": t["upper"].tolist(), "level": t["level"]}
        if self.probe is not None:
            block["probe"] = sorted(k for k, v in self.probe.items() if v is not None)
            arrays = {f"probe_{k}": np.asarray(v) for k, v in self.probe.items() if v is not None}
        return block, arrays

    def save(self, path, *, overwrite=False, key=None, metrics=None, data_fingerprint=None, config_yaml=None):
        """Write the pipeline as an artifact folder (:mod:`calib.artifacts`: atomic, pickle-free, checksummed;
        signed with ``key`` or the ``CALIB_SIGNING_KEY[_FILE]`` environment variable when one is set)."""
        from calib.artifacts import save_artifact

        return save_artifact(self.calibrator, path, conformal=self.conformal, policy=self.policy, metrics=metrics,
                             data_fingerprint=data_fingerprint, class_names=self.class_names,
                             config_yaml=config_yaml, overwrite=overwrite, pipeline=self._block(), key=key,
                             reference=self.reference)

    @classmethod
    def load(cls, path, *, key=None, max_bytes=None, require_portable=False):
        """Load a pipeline saved by :meth:`save` (or any calib artifact: schema 1 folders get no reliability
        table). Untrusted input: everything is validated (:func:`calib.artifacts.load_pipeline`)."""
        from calib.artifacts import ArtifactError, load_pipeline

        comps, manifest, parrays = load_pipeline(path, key=key, max_bytes=max_bytes, with_manifest=True)
        mfile = str(Path(path) / "manifest.json")
        if require_portable:
            bad = [f"{name} {obj.kind!r}" for name, obj in comps.items() if not type(obj).portable]
            if bad:
                raise NotPortableError(f"Artifact {str(path)!r} holds {', '.join(bad)}, which needs its third-party "
                                       "package to predict: calib.runtime (numpy only) cannot serve it; load it with "
                                       "calib.deploy.FittedPipeline.load in an environment with that package.")
        block = manifest.get("pipeline")
        if manifest.get("schema_version", 1) >= 2:
            if "pipeline" not in manifest:
                raise ArtifactError(f"Expected a 'pipeline' entry (a table or null) in the schema-2 manifest {mfile!r}, "
                                    "got none.")
            if block is not None and (not isinstance(block, dict)
                                      or set(block) != {"input", "reliability", "probe", "provenance", "arrays"}):
                raise ArtifactError(f"Expected pipeline in {mfile!r} as a table of input, reliability, probe, provenance "
                                    f"and arrays, got {sorted(block) if isinstance(block, dict) else block!r:.200}.")
        block = block or {}
        inp = block.get("input") or {"kind": "logits", "n_classes": manifest.get("n_classes"), "dtype": "float32"}
        if not isinstance(inp, dict) or inp.get("kind") != "logits" or inp.get("n_classes") != manifest.get("n_classes") \
                or inp.get("dtype") not in ("float16", "float32", "float64"):
            raise ArtifactError(f"Expected pipeline.input in {mfile!r} as {{kind: logits, n_classes: "
                                f"{manifest.get('n_classes')}, dtype: float16|float32|float64}}, got {inp!r:.200}.")
        reliability = block.get("reliability")
        if reliability is not None:
            reliability = _check_reliability(reliability, f"pipeline in {mfile!r}")
        probe = None
        if block.get("probe"):
            names = block["probe"]
            if not isinstance(names, list) or not all(isinstance(k, str) for k in names) or not set(names) <= {"logits", "fallback", "groups", "probs", "sets", "actions", "reasons"} \
                    or set(parrays) != {f"probe_{k}" for k in names} or "logits" not in names:
                raise ArtifactError(f"Expected pipeline.probe in {mfile!r} listing the stored probe arrays, got {names!r:.200}.")
            probe = {k: parrays[f"probe_{k}"] for k in names}
            if probe["logits"].ndim != 2 or probe["logits"].shape[1] != manifest.get("n_classes"):
                raise ArtifactError(f"Expected pipeline.probe_logits in {mfile!r} with {manifest.get('n_classes')} columns.")
        elif parrays:
            raise ArtifactError(f"Unexpected pipeline arrays {sorted(parrays)} in {mfile!r}.")
        provenance = block.get("provenance") or {}
        if not isinstance(provenance, dict):
            raise ArtifactError(f"Expected pipeline.provenance in {mfile!r} as a table.")
        try:
            pipe = cls(comps["calibrator"], comps.get("conformal"), comps.get("policy"),
                       class_names=manifest.get("class_names"), reliability=None, input_dtype=inp["dtype"],
                       probe=probe, provenance=provenance, reference=comps.get("reference"))
        except (TypeError, ValueError) as err:
            raise ArtifactError(f"Could not assemble the pipeline of {mfile!r}: {err}") from err
        pipe.reliability = reliability
        pipe.manifest = manifest
        return pipe

    def verify(self):
        """Recompute the stored probe outputs (probabilities, sets, actions, reasons) and compare them bit
        for bit: ``{"probe_rows", "checked": [...], "mismatches": {name: count}, "max_abs_diff_probs"}``;
        ``ok`` is True when nothing differs. A pipeline without stored probes reports ``checked: []``."""
        if self.probe is None:
            return {"probe_rows": 0, "checked": [], "mismatches": {}, "max_abs_diff_probs": None, "ok": True}
        d = self.apply(self.probe["logits"], fallback=self.probe.get("fallback"), groups=self.probe.get("groups"))
        got = {"probs": d.probs, "sets": d.sets, "actions": d.actions, "reasons": d.reasons}
        mismatches, checked = {}, []
        for name in ("probs", "sets", "actions", "reasons"):
            if name not in self.probe:
                continue
            checked.append(name)
            want, have = self.probe[name], got[name]
            if have is None or want.shape != have.shape or want.dtype != have.dtype:
                mismatches[name] = int(want.shape[0])
                continue
            if name == "probs":
                rows = ~np.all(want.view(np.uint8).reshape(want.shape[0], -1) == have.view(np.uint8).reshape(want.shape[0], -1), axis=1)
            else:
                rows = ~np.all((want == have).reshape(want.shape[0], -1), axis=1)
            if rows.any():
                mismatches[name] = int(rows.sum())
        diff = float(np.max(np.abs(got["probs"].astype(np.float64) - self.probe["probs"].astype(np.float64)))) \
            if got["probs"].shape == self.probe["probs"].shape else None
        return {"probe_rows": int(self.probe["logits"].shape[0]), "checked": checked, "mismatches": mismatches,
                "max_abs_diff_probs": diff, "ok": not mismatches}

    def describe(self):
        """A JSON-ready summary: components (kind, params), classes, input contract, reliability table."""
        out = {"input": self.input_contract, "class_names": self.class_names_or_indices(),
               "portable": self.portable,
               "components": {name: {"kind": obj.kind, "params": obj.get_params()} for name, obj in self.components.items()}}
        if self.policy is not None:
            g = self.policy.guarantee()
            out["components"]["policy"]["threshold"] = getattr(self.policy, "threshold_", None)
            out["components"]["policy"]["guarantee"] = {k: v for k, v in g.items() if v is not None} or None
        if self.conformal is not None:
            out["components"]["conformal"]["qhat"] = self.conformal.qhat_ if np.ndim(self.conformal.qhat_) == 0 \
                else np.asarray(self.conformal.qhat_).tolist()
        if self.reliability is not None:
            t = self.reliability
            out["reliability"] = {"level": t["level"], "bins": [
                {"from": lo, "to": hi, "n": int(n), "accuracy": (int(c) / int(n)) if n else None,
                 "lower": float(a), "upper": float(b)}
                for lo, hi, n, c, a, b in zip([0.0, *t["edges"].tolist()], [*t["edges"].tolist(), 1.0], t["n"],
                                              t["correct"], t["lower"], t["upper"])]}
        return json.loads(json.dumps(out, default=float))
