"""Split conformal prediction for classification: one threshold on a score, fitted on calibration data.

``SplitConformal(score="aps", alpha=0.1).fit(cal_probs, cal_labels).predict_set(test_probs)`` returns
the sets ``{j : s(x, j) <= qhat_}`` with ``qhat_`` the ``ceil((n+1)(1-alpha))``-th smallest calibration
score (Vovk et al., 2005; Angelopoulos & Bates, "A gentle introduction to conformal prediction", 2023),
so that ``P(y in set) >= 1 - alpha`` for exchangeable data.
"""

from __future__ import annotations

import hashlib
import numbers
import warnings

import numpy as np

from calib._validation import as_array, check_choice, check_fraction, check_labels, check_probs
from calib.base import (Component, NotFittedError, StateError, constructor_params,  # noqa: F401  (re-export)
                        state_array, state_scalar)
from calib.conformal import scores as _scores
from calib.conformal.quantile import _rank, check_alpha, conformal_quantile, conformal_rank

__all__ = ["SplitConformal", "ConformalBase", "check_alpha", "SetSizeWarning", "data_fingerprint", "EMPTY_WARN_RATE",
           "FULL_WARN_RATE"]

RAPS_LAMBDA_GRID = (0.0, 0.001, 0.01, 0.05, 0.1, 0.2, 0.5)

#: a fit warns (:class:`SetSizeWarning`) when more than this share of the calibration rows get an empty set
#: (and ``never_empty`` is off): an empty set answers nothing, and at alpha = 0.1 a useful predictor rarely
#: needs more than 1 % of them
EMPTY_WARN_RATE = 0.01
#: ... or when more than this share get a set of all classes (a set that rules nothing out)
FULL_WARN_RATE = 0.05
#: the set-size rates of a fit are measured on at most this many calibration rows (evenly spaced): the
#: standard error of a 1 % rate is then at most 0.001
SET_SIZE_CHECK_ROWS = 10_000
#: draw keys are 63-bit (a JSON integer every reader keeps exactly as a Python int)
DRAW_KEY_MAX = 2 ** 63 - 1
_FITTED = object()


class SetSizeWarning(UserWarning):
    """A conformal fit whose sets are valid but uninformative on its own calibration rows: too many empty
    sets (more than :data:`EMPTY_WARN_RATE`) or too many sets of all classes (more than
    :data:`FULL_WARN_RATE`). The message names the cause and the remedy."""


def data_fingerprint(p, labels):
    """A 63-bit digest of calibration data, O(n): the shape, the labels and the probabilities of the labels
    (the deterministic part of every label score); multi-label targets (bool (n, k)): the packed targets and
    the probabilities of the positive pairs. Different data (a re-split) give a different key, the same data
    the same key.

    >>> p = np.array([[0.7, 0.3], [0.4, 0.6]])
    >>> data_fingerprint(p, np.array([0, 1])) == data_fingerprint(p.copy(), np.array([0, 1]))
    True
    >>> data_fingerprint(p, np.array([0, 1])) == data_fingerprint(p, np.array([1, 1]))
    False
    """
    p = np.asarray(p)
    y = np.asarray(labels)
    n, k = p.shape
    h = hashlib.blake2b(digest_size=8, person=b"calib-draws")
    h.update(np.array([n, k, y.ndim], dtype=np.int64).tobytes())
    if y.ndim == 2:  # multi-label targets
        rows, cols = np.nonzero(y)
        h.update(np.packbits(y.astype(bool, copy=False)).tobytes())
        h.update(np.ascontiguousarray(p[rows, cols], dtype=np.float64).tobytes())
    else:
        y = y.astype(np.int64, copy=False)
        h.update(np.ascontiguousarray(y).tobytes())
        h.update(np.ascontiguousarray(p[np.arange(n), y], dtype=np.float64).tobytes())
    return int.from_bytes(h.digest(), "little") & DRAW_KEY_MAX


class ConformalBase(Component):
    """Shared parts of every conformal predictor: the score object, thresholds, randomisation, validation,
    state (:class:`calib.base.Component`).

    The score is chosen once at construction (:func:`calib.conformal.scores.make_score`); fitting may
    replace it by a fitted copy ``score_`` (tuned RAPS). Thresholds are stored as ``thresholds_``, always
    an array with one entry per alpha (per stratum and alpha for Mondrian); ``qhat_`` shows them as a
    float for one alpha.

    Defaults (``randomized=None``, ``never_empty=None``: "auto"): sets are randomised exactly when the
    score supports it (APS, RAPS, SAPS, top-k; not LAC nor a callable), and ``never_empty`` is on exactly
    when the sets are randomised. Explicit ``True``/``False`` keep their meaning.

    Randomisation policy (fresh per fit, reproducible): the uniform draws ``u`` (one per row) come from
    ``numpy.random.default_rng([seed, stream, draw_key_])``: stream 0 for the calibration rows at fit,
    stream 1 at *every* ``predict_set`` call (stream 3: RAPS tuning rows). ``draw_key_`` is a 63-bit
    digest of the calibration data (:func:`data_fingerprint`: labels and the probabilities of the
    labels, O(n)), computed at fit and stored in the state, so a re-split or new data gets new uniforms,
    while the same seed and the same data reproduce the fit exactly, and the same fitted object (also
    after an artifact round trip) gives the same sets for the same probabilities. With
    ``fresh_draws=False`` (and in artifacts of calib <= 0.1) ``u`` comes from ``default_rng([seed,
    stream])`` alone: every fit with one seed reuses the same uniforms, which is exactly valid only on
    average over seeds (conditionally on one seed's draws RAPS was measured to under-cover).

    ``never_empty``: an empty set gets the row's top class (highest probability, ties -> lowest class
    index). Sets only grow, so coverage stays >= 1 - alpha (valid) but is no longer exactly the Beta
    law; ``never_empty=False`` keeps the exact law.

    A :class:`SetSizeWarning` is raised at fit when, on the calibration rows, more than
    :data:`EMPTY_WARN_RATE` of the sets are empty (without ``never_empty``) or more than
    :data:`FULL_WARN_RATE` hold all classes.
    """

    _fit_hint = "fit(probs, labels) before predict_set()"

    def __init__(self, *, score="lac", alpha=0.1, randomized=None, never_empty=None, k_reg=1, lam=0.01,
                 weight=0.2, seed=0, fresh_draws=True, allow_infinite=False):
        if not (callable(score) or isinstance(score, _scores.Score)):
            score = check_choice(score, "score", tuple(_scores.SCORES))
        self.score = score
        self.alpha = check_alpha(alpha)
        for name, v in (("randomized", randomized), ("never_empty", never_empty)):
            if v is not None and not isinstance(v, bool):
                raise TypeError(f"Expected {name} as a bool or None (auto), got {type(v).__name__} {v!r}.")
        if isinstance(k_reg, bool) or not isinstance(k_reg, numbers.Integral) or k_reg < 0:
            raise ValueError(f"Expected k_reg as an integer >= 0, got {k_reg!r}.")
        for name, v in (("lam", lam), ("weight", weight)):
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not (v >= 0 and np.isfinite(v)):
                raise ValueError(f"Expected {name} as a finite number >= 0, got {v!r}.")
        self.k_reg, self.lam, self.weight = int(k_reg), float(lam), float(weight)
        self._score = _scores.make_score(score, k_reg=self.k_reg, lam=self.lam, weight=self.weight)
        if randomized and not self._score.randomizable:
            randomizable = sorted(n for n, c in _scores.SCORES.items() if c.randomizable)
            raise ValueError(f"Expected randomized=False for score {self.score_name!r} (or None: auto); "
                             f"randomisation applies to {randomizable}.")
        self.randomized = randomized
        self.never_empty = never_empty
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise ValueError(f"Expected seed as an integer >= 0, got {seed!r}.")
        self.seed = int(seed)
        if not isinstance(fresh_draws, bool):
            raise TypeError(f"Expected fresh_draws as a bool, got {type(fresh_draws).__name__} {fresh_draws!r}.")
        self.fresh_draws = fresh_draws
        if not isinstance(allow_infinite, bool):
            raise TypeError(f"Expected allow_infinite as a bool, got {allow_infinite!r}.")
        self.allow_infinite = allow_infinite

    @classmethod
    def _upgrade_params(cls, params):
        """Artifacts of calib <= 0.1 store neither ``fresh_draws`` nor ``never_empty``, and their ``randomized``
        default was False: they keep the meaning they had (seed-only draws, sets that may be empty)."""
        params = super()._upgrade_params(params)
        if "fresh_draws" not in params:
            params.setdefault("randomized", False)
            params.setdefault("never_empty", False)
            params["fresh_draws"] = False
        return params

    @property
    def is_randomized(self):
        """Whether the sets are randomised: ``randomized``, or when None whether the score supports it."""
        return self._score.randomizable if self.randomized is None else self.randomized

    @property
    def is_never_empty(self):
        """Whether empty sets get the top class: ``never_empty``, or when None :attr:`is_randomized`."""
        return self.is_randomized if self.never_empty is None else self.never_empty

    # --- scores ---------------------------------------------------------------------------------
    @property
    def score_name(self):
        return self._score.name

    @property
    def scorer(self):
        """The score object in use: the fitted one (``score_``) after ``fit``, else the configured one."""
        return self.__dict__.get("score_", self._score)

    @property
    def k_reg_(self):
        return self._fitted_raps("k_reg")

    @property
    def lam_(self):
        return self._fitted_raps("lam")

    def _fitted_raps(self, name):
        if not isinstance(self.__dict__.get("score_"), _scores.RAPS):
            raise AttributeError(f"{name}_ (the fitted RAPS parameter) exists after fitting a 'raps' score only.")
        return getattr(self.score_, name)

    def _draw_key(self, p, labels):
        """The draw key of a fit on ``(p, labels)``: :func:`data_fingerprint`, or None (seed-only draws: not
        randomised, or ``fresh_draws=False``)."""
        if not (self.is_randomized and self.fresh_draws):
            return None
        return data_fingerprint(p, labels)

    def _u(self, n, stream, key=_FITTED, offset=0):
        """``n`` uniforms of ``stream`` (0: calibration rows, 1: prediction, 3: RAPS tuning) drawn from
        ``[seed, stream, key]`` (``key``: the fitted ``draw_key_`` by default; None: ``[seed, stream]``),
        starting at draw ``offset`` (the uniforms of rows ``offset:offset + n`` of one long call, so a batch
        predicted in row chunks gets the draws of one call); None when the sets are not randomised."""
        if not self.is_randomized:
            return None
        if key is _FITTED:
            key = self.__dict__.get("draw_key_")
        entropy = [self.seed, stream] if key is None else [self.seed, stream, int(key)]
        rng = np.random.default_rng(entropy)
        if offset:
            rng.bit_generator.advance(offset)  # PCG64: one 64-bit draw per uniform, so this skips `offset` rows
        return rng.random(n)

    def _fill_empty(self, p, out):
        """``never_empty``: every empty set (per alpha) of ``out`` (n, k, m) gets the row's top class (highest
        probability, ties -> lowest class index, as :func:`calib.conformal.scores.sorted_order`)."""
        if not self.is_never_empty:
            return out
        empty = ~out.any(axis=1)
        if empty.any():
            rows, js = np.nonzero(empty)
            out[rows, np.argmax(p[rows], axis=1), js] = True
        return out

    def _warn_set_sizes(self, rates):
        """:class:`SetSizeWarning` for ``rates = [(alpha, empty rate, full rate), ...]`` on the calibration rows."""
        who = type(self).__name__
        for a, empty, full in rates:
            if empty > EMPTY_WARN_RATE and not self.is_never_empty:
                warnings.warn(SetSizeWarning(
                    f"{who}(score={self.score_name!r}) fit: {empty:.1%} of the calibration rows get an empty set at "
                    f"alpha={a:g} (warning above {EMPTY_WARN_RATE:.0%}). Cause: the threshold lies below the score of "
                    "even the top class on those rows (typically confident rows with a non-randomised rank score: "
                    "APS leaves out a class whose probability exceeds qhat); the sets stay valid but an empty set "
                    "says nothing. Remedy: never_empty=True (an empty set gets the top class; coverage can only "
                    "rise), randomized=True for a rank score, a larger alpha, or a better model."), stacklevel=3)
            if full > FULL_WARN_RATE:
                warnings.warn(SetSizeWarning(
                    f"{who}(score={self.score_name!r}) fit: {full:.1%} of the calibration rows get a set of all "
                    f"{self.n_classes_} classes at alpha={a:g} (warning above {FULL_WARN_RATE:.0%}). Cause: the "
                    "threshold is at or above the score of every class on those rows (the model cannot rank the "
                    "classes there at this coverage, or qhat is inf because n is too small for alpha); such a set "
                    "says nothing. Remedy: a larger alpha, a better (better calibrated) model, or more calibration "
                    "data."), stacklevel=3)

    def _set_size_rates(self, p, u, thresholds):
        """[(alpha, empty rate, full rate)] of the sets ``{j : s_j <= t}`` of the rows ``p`` (one threshold per
        alpha, shared by the rows) before ``never_empty``, on at most :data:`SET_SIZE_CHECK_ROWS` evenly spaced
        rows (the check then costs a bounded share of a large fit)."""
        step = _set_size_step(p.shape[0])
        lo, hi = self.scorer.extremes(p[::step], None if u is None else u[::step])
        return self._rates_of(lo, hi, thresholds)

    def _rates_of(self, lo, hi, thresholds):
        """[(alpha, empty rate, full rate)] from the rows' extreme scores ``lo`` (top class), ``hi`` (bottom)."""
        return [(a, float(np.mean(lo > t)), float(np.mean(hi <= t))) for a, t in zip(self.alphas, thresholds)]

    def label_scores(self, probs, labels, u=None):
        """Scores of the given labels, shape (n,), float64 (``u``: per-row uniforms in [0, 1] or None).

        ``probs`` and ``labels`` are validated (with the class count of the fit once fitted)."""
        n_classes = self.__dict__.get("n_classes_")
        p, y, u = _scores.check_score_inputs(probs, labels, u, n_classes=n_classes)
        return self.scorer.label_scores(p, y, u)

    def score_matrix(self, probs):
        """Scores of every class, shape (n, k), with the predict-time randomisation (``score_matrix(p) <= qhat_``
        is the set before ``never_empty`` fills it)."""
        p = self._check_predict_probs(probs)
        return self.scorer.matrix(p, self._u(p.shape[0], 1))

    # --- validation ---------------------------------------------------------------------------------
    @property
    def alphas(self):
        return self.alpha if isinstance(self.alpha, tuple) else (self.alpha,)

    @property
    def qhat_(self):
        """The fitted threshold(s): float for one alpha, ndarray (n_alphas,) for several (Mondrian: one
        row per stratum)."""
        if "thresholds_" not in self.__dict__:
            raise AttributeError("qhat_ exists after fit().")
        return self._shape(self.thresholds_)

    def _shape(self, t):
        """Thresholds as the user sees them: the alpha axis dropped for a single alpha."""
        if isinstance(self.alpha, tuple):
            return t
        return float(t[0]) if t.ndim == 1 else t[:, 0]

    def _check_fit_inputs(self, probs, labels):
        p = check_probs(probs, "probs")
        y = check_labels(labels, "labels", n_samples=p.shape[0], n_classes=p.shape[1])
        return p, y

    def _reset(self):
        for attr in ("thresholds_", "score_", "n_classes_", "n_calibration_", "draw_key_"):
            self.__dict__.pop(attr, None)

    def _check_predict_probs(self, probs):
        self._check_fitted()
        return check_probs(probs, "probs", n_classes=self.n_classes_)

    def _sets(self, p, thresholds, offset=0):
        """Sets (n, k, m) for thresholds (m,), with the predict-time randomisation and ``never_empty``."""
        return self._fill_empty(p, self.scorer.sets(p, self._u(p.shape[0], 1, offset=offset), thresholds))

    def _finish(self, out):
        return out[:, :, 0] if not isinstance(self.alpha, tuple) else out

    # --- parameters and state -----------------------------------------------------------------------
    def get_params(self):
        """Constructor arguments, JSON-serialisable."""
        if not isinstance(self.score, str):
            what = "callable" if isinstance(self._score, _scores.CallableScore) else "score object"
            raise TypeError(
                f"Expected a named score to store {type(self).__name__} in an artifact, got the {what} "
                f"{self.score_name!r}; callables cannot be saved, nor unregistered score objects "
                f"(valid names: {sorted(_scores.SCORES)})."
            )
        return constructor_params(self)

    def _get_state(self):
        """Calibration size, tuned RAPS parameters; thresholds as an array (IEEE infinities round-trip)."""
        state = {"n_calibration": self.n_calibration_}
        if isinstance(self.scorer, _scores.RAPS):
            state.update(k_reg=int(self.k_reg_), lam=float(self.lam_))
        if self._stores_draw_key():
            state["draw_key"] = int(self.draw_key_)
        return state, {"thresholds": self.thresholds_}

    def _stores_draw_key(self):
        return self.is_randomized and self.fresh_draws

    def _set_state(self, state, arrays):
        """Every field checked as strictly as a fit would have produced it (state is untrusted input)."""
        owner = type(self)
        self.n_calibration_ = state_scalar(state, "n_calibration", int, minimum=1, owner=owner)
        score = self._score
        if isinstance(score, _scores.RAPS):  # written for every RAPS predictor (calib >= 0.1)
            k_reg = state_scalar(state, "k_reg", int, minimum=0, owner=owner)
            lam = state_scalar(state, "lam", float, minimum=0, owner=owner)
            self._check_raps_state(k_reg, lam)
            score = _scores.RAPS(k_reg=k_reg, lam=lam)
        self.score_ = score
        # the draw key of fresh per-fit draws (a 63-bit digest); no other fit writes one
        self.draw_key_ = (state_scalar(state, "draw_key", int, minimum=0, maximum=DRAW_KEY_MAX, owner=owner)
                          if self._stores_draw_key() else None)
        self._read_strata(state, arrays)
        t = self._read_thresholds(state, arrays)
        self._check_threshold_domain(t)
        self._check_thresholds(t)
        self.thresholds_ = t

    # --- state checks (hooks) -----------------------------------------------------------------------
    def _check_raps_state(self, k_reg, lam):
        """Without tuning the fitted RAPS parameters are the constructor's."""
        if (k_reg, lam) != (self.k_reg, self.lam):
            raise StateError(f"Expected state fields 'k_reg' and 'lam' of {type(self).__name__} equal to the "
                             f"parameters k_reg={self.k_reg}, lam={self.lam} (no tuning), got k_reg={k_reg}, "
                             f"lam={lam}.")

    def _read_strata(self, state, arrays):
        """Per-stratum fields read before the thresholds (Mondrian)."""

    def _threshold_shape(self):
        return (len(self.alphas),)

    def _read_thresholds(self, state, arrays):
        owner = type(self)
        shape = self._threshold_shape()
        if "thresholds" in arrays or "qhat" not in state:
            return state_array(arrays, "thresholds", shape=shape, kind="f", finite="allow_inf", owner=owner)
        # artifacts written before thresholds moved to arrays: state["qhat"], "inf"/"-inf" as strings
        t = np.atleast_1d(np.asarray(_from_json(state.pop("qhat"), owner), dtype=np.float64))
        if t.shape != shape:
            raise StateError(f"Expected state field 'qhat' of {owner.__name__} with {shape[0]} value(s) (one per "
                             f"alpha), got {t.size}.")
        return t

    def _check_threshold_domain(self, t):
        """Finite thresholds lie in the score's range; -inf only where the kind allows it, +inf only with
        ``allow_infinite`` (both checked again, exactly, by :meth:`_check_thresholds`)."""
        who, k = type(self).__name__, self.n_classes_
        lo, hi = self.scorer.domain(k)
        finite = t[np.isfinite(t)]
        if finite.size and (finite.min() < lo or finite.max() > hi):
            bad = finite[(finite < lo) | (finite > hi)]
            raise StateError(f"Expected state field 'thresholds' of {who} in [{lo:.6g}, {hi:.6g}] (the range of "
                             f"score {self.score_name!r} with {k} classes) or inf, got {bad.size} outside it "
                             f"(e.g. {float(bad[0])!r}).")
        if np.isneginf(t).any() and not self._allows_neg_inf():
            raise StateError(f"Expected state field 'thresholds' of {who} without -inf (a fit of this kind never "
                             "gives empty sets by construction), got -inf.")
        if np.isposinf(t).any() and not self.allow_infinite:
            raise StateError(f"Expected state field 'thresholds' of {who} finite with allow_infinite=False, got inf.")

    def _allows_neg_inf(self):
        return False

    def _check_thresholds(self, t):
        """Split conformal: threshold j is +inf exactly when n is too small for alpha j; smaller alphas
        never have smaller thresholds."""
        n = self.n_calibration_
        want_inf = np.array([_rank(n, a) > n for a in self.alphas])
        _check_inf_pattern(type(self), np.isposinf(t), want_inf, n)
        _check_monotone(type(self), t, self.alphas)

    def _repr_params(self):
        return {"score": self.score_name, "alpha": self.alpha}


class SplitConformal(ConformalBase):
    """Split conformal classifier on probabilities, with any score of :mod:`calib.conformal.scores`.

    Parameters
    ----------
    score : {"lac", "aps", "raps", "saps", "topk"} or callable, default="lac"
        A callable maps probs (n, k) to scores (n, k) (cannot be stored in an artifact).
    alpha : float or list of float, default=0.1
        Miscoverage level(s) ``1 - target coverage``, each in (0, 1). A list gives sets per alpha.
    randomized : bool or None, default=None
        Randomised APS/RAPS/SAPS/top-k (one uniform per row; Romano et al., 2020): coverage exactly
        ``1 - alpha`` on average (the Beta law). None (auto): randomised exactly when the score supports it
        (not LAC); False gives the deterministic sets (non-randomised APS is valid but conservative: large
        sets, and empty sets on confident rows).
    never_empty : bool or None, default=None
        An empty set gets the row's top class (highest probability, ties -> lowest class index). Sets only
        grow, so coverage stays >= ``1 - alpha`` (valid), no longer exactly the Beta law. None (auto): on
        exactly when the sets are randomised; False keeps the exact law.
    k_reg, lam : int, float
        RAPS regularisation ``lam * max(0, rank - k_reg)`` (Angelopoulos et al., 2021).
    weight : float
        SAPS rank weight (Huang et al., 2024).
    tune : bool, default=False
        RAPS only: choose ``k_reg`` and ``lam`` on a held-out ``tune_fraction`` of the calibration
        rows as in Angelopoulos et al. (2021): ``k_reg`` = the conformal ``1 - alpha`` quantile of the
        true-label ranks, ``lam`` from ``RAPS_LAMBDA_GRID`` minimising the mean set size; ``qhat_`` is
        then fitted on the remaining rows only (so validity is untouched).
    tune_fraction : float in (0, 1), default=0.2
    seed : int, default=0
        Randomisation and tuning split seed (see :class:`ConformalBase`).
    fresh_draws : bool, default=True
        Uniforms drawn from ``seed`` and a fingerprint of the calibration data (new draws for every new fit,
        the same for the same seed and data); False: from ``seed`` alone (calib <= 0.1: every fit with one
        seed reuses the same uniforms).
    allow_infinite : bool, default=False
        If n is too small for alpha: False raises ValueError at fit, True gives all-classes sets.

    Attributes
    ----------
    qhat_ : float or ndarray of shape (n_alphas,)
    n_classes_, n_calibration_ : int
    k_reg_, lam_ : fitted RAPS parameters (equal to ``k_reg``, ``lam`` unless ``tune``)
    draw_key_ : int or None
        The fit's draw key (:func:`data_fingerprint` of the calibration rows; None without fresh draws).

    Warns
    -----
    SetSizeWarning
        At fit, when the calibration rows' sets are often empty or of all classes (:class:`ConformalBase`).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> p = rng.dirichlet(np.full(5, 0.3), size=200); y = (p.cumsum(1) > rng.random((200, 1))).argmax(1)
    >>> cp = SplitConformal(score="lac", alpha=0.2).fit(p, y)
    >>> cp.predict_set(p).shape
    (200, 5)
    """

    kind = "split"

    def __init__(self, *, score="lac", alpha=0.1, randomized=None, never_empty=None, k_reg=1, lam=0.01, weight=0.2,
                 tune=False, tune_fraction=0.2, seed=0, fresh_draws=True, allow_infinite=False):
        super().__init__(score=score, alpha=alpha, randomized=randomized, never_empty=never_empty, k_reg=k_reg,
                         lam=lam, weight=weight, seed=seed, fresh_draws=fresh_draws, allow_infinite=allow_infinite)
        if not isinstance(tune, bool):
            raise TypeError(f"Expected tune as a bool, got {tune!r}.")
        if tune and score != "raps":
            raise ValueError(f"Expected tune=False for score {score!r}; tuning applies to 'raps' only.")
        self.tune = tune
        self.tune_fraction = check_fraction(tune_fraction, "tune_fraction")

    def fit(self, probs, labels, groups=None):
        """Compute ``qhat_`` from calibration probabilities (n, k) and labels (n,); ``groups`` is ignored."""
        if type(self._score) is _scores.LAC and not self.tune:
            fused = _lac_fit_pass(probs, labels)
            if fused is not None:
                return self._fit_lac(*fused)
        p, y = self._check_fit_inputs(probs, labels)
        self._reset()
        score = self._score
        key = self._draw_key(p, y)  # of all the calibration rows, tuning rows included
        if self.tune:
            perm = np.random.default_rng([self.seed, 2]).permutation(p.shape[0])
            n_tune = int(round(self.tune_fraction * p.shape[0]))
            tune_idx, cal_idx = np.sort(perm[:n_tune]), np.sort(perm[n_tune:])
            if cal_idx.size == 0:
                raise ValueError(f"Expected calibration rows left after the tuning split (tune_fraction="
                                 f"{self.tune_fraction:g} of n={p.shape[0]}), got none; lower tune_fraction or "
                                 "add calibration data.")
            score = self._tune_raps(p[tune_idx], y[tune_idx], key)
            p, y = p[cal_idx], y[cal_idx]
        u = self._u(p.shape[0], 0, key)
        s = score.label_scores(p, y, u)
        self.thresholds_ = np.asarray(conformal_quantile(s, list(self.alphas), allow_infinite=self.allow_infinite),
                                      dtype=np.float64)
        self.score_ = score
        self.draw_key_ = key
        self.n_calibration_ = int(p.shape[0])
        self.n_classes_ = int(p.shape[1])
        self._warn_set_sizes(self._set_size_rates(p, u, self.thresholds_))
        return self

    def _fit_lac(self, p, y, p_true, top):
        """The end of a LAC fit from :func:`_lac_fit_pass`: the same thresholds, state and warnings as the
        plain path (scores ``1 - p_y`` in float64; extremes ``1 - max p`` and ``1 - min p`` of the rows
        ``p[::step]``), without a second read of ``p``.

        The row minima (``1 - min p``: a set of all classes) are read, from the rows ``p[::step]`` only, when
        some cut-off ``v`` (``p >= v`` iff ``1 - p <= qhat``) is at most ``2 / k``. Above it no row can hold
        every class: a validated row's entries are >= 0 and sum exactly (in real numbers) to less than 2
        (its float sum is within ``1e-4 + k eps`` of 1 and within ``k eps`` relative of the exact sum, and
        ``k eps < 1/4``), so its minimum is below ``2 / k < v``; the full-set rate is then 0 on every row."""
        self._reset()
        key = self._draw_key(p, y)  # None: LAC is never randomised
        s = 1.0 - p_true.astype(np.float64)  # == LAC.label_scores(p, y)
        self.thresholds_ = np.asarray(conformal_quantile(s, list(self.alphas), allow_infinite=self.allow_infinite),
                                      dtype=np.float64)
        self.score_ = self._score
        self.draw_key_ = key
        self.n_calibration_ = int(p.shape[0])
        self.n_classes_ = k = int(p.shape[1])
        lo = 1.0 - top.astype(np.float64)  # == LAC.extremes(p[::step])[0]
        v = np.asarray(_scores.LAC.prob_thresholds(self.thresholds_, p.dtype), dtype=np.float64)
        if k * float(np.finfo(p.dtype).eps) < 0.25 and bool(np.all(v > 2.0 / k)):
            hi = np.full(lo.shape, np.inf)  # no full sets (see above): ``hi <= t`` is False for these finite t
        else:
            hi = 1.0 - np.minimum.reduce(p[::_set_size_step(p.shape[0])], axis=1).astype(np.float64)
        self._warn_set_sizes(self._rates_of(lo, hi, self.thresholds_))
        return self

    def _check_raps_state(self, k_reg, lam):
        if not self.tune:
            return super()._check_raps_state(k_reg, lam)
        who = type(self).__name__
        if not 1 <= k_reg <= self.n_classes_:  # a quantile of the true labels' ranks
            raise StateError(f"Expected state field 'k_reg' of {who} in [1, {self.n_classes_}] (a tuned rank), "
                             f"got {k_reg}.")
        if lam not in RAPS_LAMBDA_GRID:
            raise StateError(f"Expected state field 'lam' of {who} in the tuning grid {list(RAPS_LAMBDA_GRID)}, "
                             f"got {lam!r}.")

    def _tune_raps(self, p, y, key):
        """RAPS with ``k_reg`` and ``lam`` chosen on the tuning rows (see the class docstring)."""
        alpha = min(self.alphas)
        n = p.shape[0]
        order = _scores.sorted_order(p)
        ranks = np.argmax(order == y[:, None], axis=1) + 1
        r = conformal_rank(n, alpha)
        if r > n:
            raise ValueError(f"Expected at least {int(np.ceil(1 / alpha))} tuning rows for alpha={alpha:g}, got {n}; "
                             "raise tune_fraction or pass tune=False.")
        k_reg = int(np.partition(ranks, r - 1)[r - 1])
        u_fit = self._u(n, 3, key)
        best = None
        for lam in RAPS_LAMBDA_GRID:
            candidate = _scores.RAPS(k_reg=k_reg, lam=lam)
            q = conformal_quantile(candidate.label_scores(p, y, u_fit), alpha)
            size = float((candidate.matrix(p, u_fit) <= q).sum(axis=1).mean())
            if best is None or size < best[0] - 1e-12:
                best = (size, candidate)
        return best[1]

    def predict_set(self, probs, groups=None, *, row_offset=0):
        """Boolean sets: (n, k) for one alpha, (n, k, n_alphas) for a list; ``groups`` is ignored.

        ``row_offset``: position of the first row of ``probs`` in a larger batch predicted in row chunks; a
        randomised score then draws the uniforms those rows get in one call on the whole batch."""
        row_offset = check_row_offset(row_offset)
        if isinstance(self.scorer, _scores.LAC):
            return self._finish(self._lac_sets_checked(probs))
        return self._finish(self._sets(self._check_predict_probs(probs), self.thresholds_, row_offset))

    def _lac_sets_checked(self, probs):
        """LAC sets computed inside the validation pass (one read of ``probs``): ``p >= v(qhat)``."""
        self._check_fitted()
        p = as_array(probs, "probs")
        if p.ndim != 2 or p.dtype not in (np.float32, np.float64):
            return self._sets(self._check_predict_probs(p), self.thresholds_)
        t = _scores.LAC.prob_thresholds(self.thresholds_, p.dtype)
        out = np.empty((p.shape[0], p.shape[1], t.size), dtype=bool)

        planes = [(t[j], out[:, :, j]) for j in range(t.size)]  # one 2-D comparison per alpha
        greater_equal = np.greater_equal

        def compare(start, block):
            stop = start + block.shape[0]
            for v, plane in planes:
                greater_equal(block, v, out=plane[start:stop])

        check_probs(p, "probs", n_classes=self.n_classes_, on_chunk=compare)
        return self._fill_empty(p, out)


def _set_size_step(n):
    """Every ``step``-th calibration row is in the set-size check (at most :data:`SET_SIZE_CHECK_ROWS` rows)."""
    return -(-n // SET_SIZE_CHECK_ROWS)


def _lac_fit_pass(probs, labels):
    """The checks of a LAC fit and its reads of ``probs`` fused into one chunked pass (the array is read once,
    each chunk while it is in cache): ``check_probs`` with, per chunk, the probability of each row's label
    and the max of the rows of the set-size check. Returns ``(p, y, p_true, top)``, or None
    when the inputs are not a 2-D float32/float64 array with valid labels: the plain path then runs the
    same checks in today's order (probs first) and raises today's errors."""
    p = as_array(probs, "probs")
    if p.ndim != 2 or p.dtype not in (np.float32, np.float64) or p.shape[0] == 0 or p.shape[1] < 2:
        return None
    n, k = p.shape
    try:
        y = check_labels(labels, "labels", n_samples=n, n_classes=k)
    except (TypeError, ValueError):
        return None
    step = _set_size_step(n)
    p_true = np.empty(n, dtype=p.dtype)
    top = np.empty(-(-n // step), dtype=p.dtype)

    # the label's entry of row i is entry i * k + y[i] of the flattened rows (a view when p is C-contiguous)
    flat = p.reshape(-1) if p.flags.c_contiguous else None
    index = np.arange(0, n * k, k, dtype=np.int64) + y if flat is not None else None
    maximum = np.maximum.reduce

    def gather(start, block):  # writes rows start:start + len(block) only (may run on worker threads)
        stop = start + block.shape[0]
        if flat is not None:  # the chunk is in cache: these reads hit it
            flat.take(index[start:stop], out=p_true[start:stop])
        else:
            p_true[start:stop] = block[np.arange(block.shape[0]), y[start:stop]]
        first = -start % step  # the first row of this chunk in p[::step]
        if first < block.shape[0]:
            sub = block[first::step]
            i = (start + first) // step
            maximum(sub, axis=1, out=top[i:i + sub.shape[0]])

    p = check_probs(p, "probs", on_chunk=gather)
    return p, y, p_true, top


def check_row_offset(value):
    """``row_offset`` of ``predict_set``: an integer >= 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"Expected row_offset as an integer >= 0 (the position of the first row in the batch), "
                         f"got {value!r:.80}.")
    return int(value)


def _from_json(v, owner=None):
    """A threshold as schema-1 artifacts stored it in JSON: a float, or "inf"/"-inf" (or a list of them)."""
    if isinstance(v, list) and v:
        return [_from_json(x, owner) for x in v]
    if isinstance(v, str) and v in ("inf", "-inf"):
        return float(v)
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not np.isfinite(v):
        who = getattr(owner, "__name__", "component")
        raise StateError(f"Expected state field 'qhat' of {who} as finite numbers or the strings 'inf'/'-inf', "
                         f"got {type(v).__name__} {v!r}.")
    return float(v)


def _check_inf_pattern(owner, is_inf, want_inf, n, what="alpha"):
    """+inf thresholds exactly where the rank exceeds the calibration size (what no fit changes)."""
    if not np.array_equal(is_inf, want_inf):
        i = np.flatnonzero(is_inf != want_inf)[0]
        i = np.unravel_index(i, is_inf.shape)
        got = "inf" if is_inf[i] else "a finite value"
        want = "inf (n too small for it)" if want_inf[i] else "finite (n is large enough for it)"
        raise StateError(f"Expected state field 'thresholds' of {owner.__name__} at {what} index {tuple(map(int, i))} "
                         f"{want} for n_calibration={n}, got {got}.")


def _check_monotone(owner, t, alphas):
    """A smaller alpha never gets a smaller threshold (along the last axis of ``t``)."""
    order = np.argsort(np.asarray(alphas, dtype=np.float64), kind="stable")
    ts = np.asarray(t)[..., order]
    if ts.shape[-1] > 1:
        with np.errstate(invalid="ignore"):  # inf - inf
            bad = ts[..., 1:] > ts[..., :-1]
        if bad.any():
            raise StateError(f"Expected state field 'thresholds' of {owner.__name__} non-increasing in alpha (a "
                             f"smaller alpha never gets a smaller threshold), got {np.asarray(t).tolist()} for "
                             f"alpha={list(alphas)}.")
