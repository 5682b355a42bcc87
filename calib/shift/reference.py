"""Reference statistics: what label-free monitoring of a serving stream needs from the calibration data, without it.

:class:`ReferenceStats` is a component (``kind = "reference_stats"``, :mod:`calib.base` contract) fitted on the
calibration logits, their calibrated probabilities and labels. Its state is small and numeric:

- ``class_counts`` (k,): calibration labels per class (the source prior is ``class_counts / n``);
- ``confusion`` (k, k): ``confusion[i, j]`` = calibration rows predicted ``i`` whose label is ``j`` (top label of
  the calibrated probabilities), the matrix black-box shift estimation inverts (Lipton et al. 2018);
- ``confidence`` : the calibrated top-label confidences, sorted; all of them when there are at most
  ``sample_size`` rows, else a quantile sketch (the ``(i + 0.5) / sample_size`` quantiles, ``exact`` False);
  ``confidence_correct``: whether the row behind each kept confidence is predicted right (ATC's bootstrap
  resamples these pairs);
- ``novelty_max_logit``, ``novelty_energy``: the same for two novelty scores of the *logits* (larger = more
  unusual): ``-max_j z_j`` and ``-logsumexp(z)`` (Liu et al. 2020), the reference of conformal novelty p-values;
- ``accuracy`` (calibration accuracy of the calibrated top label) and ``atc_threshold``: the confidence ``t``
  above which the share of calibration rows equals that accuracy (average thresholded confidence, Garg et al.
  2022: on a target batch, the share above ``t`` estimates its accuracy);
- ``rates``: optional fit-time rates of the deployed policy (e.g. ``automation``, ``escalation``), for
  comparison with what the policy does on a serving batch.

State read from disk is checked like user input (:func:`calib.base.state_array` / ``state_scalar``): counts
are integers that agree with each other (the confusion matrix's column sums are the class counts, its total the
row count, its trace the accuracy), every sample is sorted and finite, confidences lie in ``[1/k, 1]``.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from calib._validation import check_labels, check_logits, check_positive_int, check_probs
from calib.base import Component, state_array, state_error, state_scalar

__all__ = ["ReferenceStats", "check_reference", "novelty_scores", "NOVELTY_SCORES"]

#: novelty scores of logits, larger = more unusual
NOVELTY_SCORES = ("max_logit", "energy")


def novelty_scores(logits, score="max_logit"):
    """``-max_j z_j`` (``"max_logit"``) or ``-logsumexp(z)`` (``"energy"``) per row, float64."""
    if score not in NOVELTY_SCORES:
        raise ValueError(f"Expected score as one of {list(NOVELTY_SCORES)}, got {score!r:.80}.")
    z = np.asarray(logits, dtype=np.float64)
    m = z.max(axis=1)
    if score == "max_logit":
        return -m
    return -(m + np.log(np.exp(z - m[:, None]).sum(axis=1)))


def _sketch_rows(n, size):
    """Positions (in ascending order of the values) of the rows a sketch keeps: all ``n`` when ``n <= size``,
    else the ``(i + 0.5) / size`` quantiles (inverted CDF: the ``ceil(q n)``-th smallest row)."""
    if n <= size:
        return np.arange(n)
    return np.ceil((np.arange(size) + 0.5) / size * n).astype(np.int64) - 1


def _sketch(values, size, *, with_order=False):
    """All values sorted (``exact``), or the ``(i + 0.5) / size`` quantiles when there are more than ``size``;
    ``with_order``: also the row index of each kept value (so per-row flags can follow it)."""
    v = np.asarray(values, dtype=np.float64)
    order = np.argsort(v, kind="stable")
    keep = order[_sketch_rows(v.size, size)]
    out = (v[keep], v.size <= size)
    return out + (keep,) if with_order else out


def _atc_threshold(sorted_scores, n_correct):
    """Threshold(s) t with exactly ``n_correct`` of the (sorted, ascending, along the last axis) scores above t
    when scores are tie-free: the (n - c)-th smallest score; ``-inf`` when every row is correct."""
    n = sorted_scores.shape[-1]
    pos = np.asarray(n - n_correct - 1)
    t = np.take_along_axis(np.atleast_2d(sorted_scores), np.clip(pos, 0, n - 1).reshape(-1, 1), axis=1)[:, 0]
    t = np.where(pos.reshape(-1) < 0, -np.inf, t)
    return t if np.ndim(n_correct) else float(t[0])



class ReferenceStats(Component):
    """Calibration-time reference for label-free monitoring (see the module docstring).

    Parameters
    ----------
    sample_size : int, default 10000
        Most confidences (and novelty scores) stored; beyond it a quantile sketch of that many points.

    Examples
    --------
    >>> from calib.datasets import synthetic
    >>> from calib.calibrators import TemperatureScaling
    >>> d = synthetic(n=2000, n_classes=4, temperature=2.0, seed=0)
    >>> ts = TemperatureScaling().fit(d.logits, d.labels)
    >>> ref = ReferenceStats().fit(d.logits, d.labels, probs=ts.predict_proba(d.logits))
    >>> int(ref.class_counts_.sum()), ref.exact_
    (2000, True)
    """

    kind = "reference_stats"
    _fit_hint = "fit(logits, labels, probs=...)"

    def __init__(self, *, sample_size=10000):
        self.sample_size = check_positive_int(sample_size, "sample_size", minimum=100)

    def fit(self, logits, labels, *, probs=None, rates=None):
        """Fit on calibration ``logits`` (n, k), ``labels`` and the calibrated ``probs`` (default: the softmax of
        the logits); ``rates``: optional dict of fit-time policy rates (name -> number in [0, 1])."""
        x = check_logits(logits, "logits")
        n, k = x.shape
        y = check_labels(labels, "labels", n_samples=n, n_classes=k)
        if probs is None:
            z = x.astype(np.float64)
            z = np.exp(z - z.max(axis=1, keepdims=True))
            p = z / z.sum(axis=1, keepdims=True)
        else:
            p = check_probs(probs, "probs", n_classes=k)
            if p.shape[0] != n:
                raise ValueError(f"Expected probs with {n} rows (as logits), got {p.shape[0]}.")
        pred = np.asarray(p.argmax(axis=1), dtype=np.int64)
        conf = np.asarray(p.max(axis=1), dtype=np.float64)
        return self.fit_rows(conf, pred, y, novelty_scores(x, "max_logit"), novelty_scores(x, "energy"), k,
                             rates=rates)

    def fit_rows(self, confidence, prediction, labels, novelty_max_logit, novelty_energy, n_classes, *, rates=None):
        """Fit from per-row vectors of the calibration rows: the calibrated top-label ``confidence`` and its
        class ``prediction``, the ``labels`` and the two novelty scores of the logits (:func:`novelty_scores`).
        What :meth:`fit` computes from (n, k) arrays, and what the out-of-core pipeline (which never holds an
        (n, k) array) calls. Returns ``self``."""
        k = check_positive_int(n_classes, "n_classes", minimum=2)
        conf = np.asarray(confidence, dtype=np.float64)
        n = conf.shape[0] if conf.ndim == 1 else -1
        if n < 1:
            raise ValueError(f"Expected confidence as a non-empty vector, got shape {conf.shape}.")
        y = check_labels(labels, "labels", n_samples=n, n_classes=k)
        pred = check_labels(prediction, "prediction", n_samples=n, n_classes=k)
        novelty = {}
        for name, v in (("max_logit", novelty_max_logit), ("energy", novelty_energy)):
            v = np.asarray(v, dtype=np.float64)
            if v.shape != (n,) or not np.isfinite(v).all():
                raise ValueError(f"Expected novelty_{name} as {n} finite numbers (one per row), got shape {v.shape}"
                                 f"{'' if v.shape != (n,) else ' with non-finite values'}.")
            novelty[name] = v
        if not (np.isfinite(conf).all() and conf.min() >= 1.0 / k - 1e-6 and conf.max() <= 1.0 + 1e-6):
            raise ValueError(f"Expected confidence as top-label probabilities in [1/{k}, 1], got values in "
                             f"[{np.nanmin(conf):.6g}, {np.nanmax(conf):.6g}].")
        rates = self._check_rates(rates)
        self.class_counts_ = np.bincount(y, minlength=k).astype(np.int64)
        self.confusion_ = np.bincount(pred * k + y, minlength=k * k).reshape(k, k).astype(np.int64)
        self.accuracy_ = float(np.trace(self.confusion_) / n)
        self.confidence_, self.exact_, rows = _sketch(conf, self.sample_size, with_order=True)
        # whether each kept row's prediction is right: ATC's bootstrap resamples (confidence, correct) pairs
        self.confidence_correct_ = (pred == y)[rows]
        self.novelty_max_logit_, _ = _sketch(novelty["max_logit"], self.sample_size)
        self.novelty_energy_, _ = _sketch(novelty["energy"], self.sample_size)
        # 0.0 when every row is correct: every confidence (>= 1/k) lies above it
        self.atc_threshold_ = max(0.0, _atc_threshold(np.sort(conf), int(np.trace(self.confusion_))))
        self.rates_ = rates
        self.n_calibration_ = int(n)
        self.n_classes_ = int(k)
        return self

    @property
    def source_prior_(self):
        """Class frequencies of the calibration labels."""
        self._check_fitted()
        return self.class_counts_ / self.class_counts_.sum()

    @staticmethod
    def _check_rates(rates):
        if rates is None:
            return {}
        if not isinstance(rates, dict):
            raise TypeError(f"Expected rates as a dict of name -> number in [0, 1], got {type(rates).__name__}.")
        out = {}
        for name, value in rates.items():
            if not isinstance(name, str) or not name.isidentifier():
                raise ValueError(f"Expected rates keys as identifiers, got {name!r:.80}.")
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)) \
                    or not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"Expected rates[{name!r}] as a number in [0, 1], got {value!r:.80}.")
            out[name] = float(value)
        return out

    def _get_state(self):
        state = {"accuracy": self.accuracy_, "atc_threshold": self.atc_threshold_, "exact": self.exact_,
                 "n_calibration": self.n_calibration_}
        state.update({f"rate_{name}": value for name, value in sorted(self.rates_.items())})
        arrays = {"class_counts": self.class_counts_, "confusion": self.confusion_, "confidence": self.confidence_,
                  "confidence_correct": self.confidence_correct_,
                  "novelty_max_logit": self.novelty_max_logit_, "novelty_energy": self.novelty_energy_}
        return state, arrays

    def _set_state(self, state, arrays):
        cls, k = type(self), self.n_classes_
        n = state_scalar(state, "n_calibration", int, minimum=1, owner=cls)
        counts = state_array(arrays, "class_counts", shape=(k,), kind="i", minimum=0, owner=cls)
        confusion = state_array(arrays, "confusion", shape=(k, k), kind="i", minimum=0, owner=cls)
        if int(counts.sum()) != n:
            raise state_error(cls, "class_counts", f"summing to n_calibration = {n}", int(counts.sum()))
        if not np.array_equal(confusion.sum(axis=0), counts):
            raise state_error(cls, "confusion", "with column sums equal to class_counts", "other sums")
        exact = state_scalar(state, "exact", bool, owner=cls)
        size = min(n, self.sample_size) if exact else self.sample_size
        if exact and n > self.sample_size:
            raise state_error(cls, "exact", f"False for n_calibration = {n} > sample_size = {self.sample_size}",
                              "True")
        if not exact and n <= self.sample_size:
            raise state_error(cls, "exact", f"True for n_calibration = {n} <= sample_size = {self.sample_size}",
                              "False")
        conf = state_array(arrays, "confidence", shape=(size,), minimum=1.0 / k - 1e-6, maximum=1.0 + 1e-6,
                           increasing="weak", owner=cls)
        novelty = {name: state_array(arrays, f"novelty_{name}", shape=(size,), increasing="weak", owner=cls)
                   for name in NOVELTY_SCORES}
        accuracy = state_scalar(state, "accuracy", float, minimum=0.0, maximum=1.0, owner=cls)
        if not math.isclose(accuracy, float(np.trace(confusion)) / n, rel_tol=0.0, abs_tol=1e-12):
            raise state_error(cls, "accuracy", f"equal to trace(confusion) / n = {np.trace(confusion) / n!r}",
                              repr(accuracy))
        atc = state_scalar(state, "atc_threshold", float, minimum=0.0, maximum=1.0, owner=cls)
        correct = state_array(arrays, "confidence_correct", shape=(size,), kind="b", owner=cls)
        if exact and int(correct.sum()) != int(np.trace(confusion)):
            raise state_error(cls, "confidence_correct", f"with {int(np.trace(confusion))} True entries (the trace of "
                              "confusion: every calibration row is kept)", f"{int(correct.sum())}")
        rates = {}
        for key in [key for key in state if isinstance(key, str) and key.startswith("rate_")]:
            rates[key[5:]] = state_scalar(state, key, float, minimum=0.0, maximum=1.0, owner=cls)
        self._check_rates(rates)
        self.n_calibration_, self.class_counts_, self.confusion_, self.exact_ = n, counts, confusion, exact
        self.confidence_, self.accuracy_, self.atc_threshold_, self.rates_ = conf, accuracy, atc, rates
        self.confidence_correct_ = correct
        self.novelty_max_logit_, self.novelty_energy_ = novelty["max_logit"], novelty["energy"]


def check_reference(reference, cal_arrays, *, name="reference"):
    """A fitted :class:`calib.shift.reference.ReferenceStats` given *instead of* the calibration arrays
    ``cal_arrays`` (a dict of their names -> values, all None): one source or the other, never both or neither."""
    given = [key for key, v in cal_arrays.items() if v is not None]
    if reference is None:
        missing = [key for key, v in cal_arrays.items() if v is None]
        if missing:
            raise TypeError(f"Expected the calibration data ({', '.join(cal_arrays)}) or {name}=ReferenceStats "
                            f"(from a fitted pipeline's artifact), got neither ({', '.join(missing)} missing).")
        return None
    if given:
        raise TypeError(f"Expected either the calibration data ({', '.join(cal_arrays)}) or {name}=, got both "
                        f"({', '.join(given)} and {name}).")
    if not isinstance(reference, ReferenceStats):
        raise TypeError(f"Expected {name} as a fitted calib.shift.ReferenceStats, got {type(reference).__name__}.")
    reference._check_fitted()
    return reference
