"""Split conformal prediction for classification: one threshold on a score, fitted on calibration data.

``SplitConformal(score="aps", alpha=0.1).fit(cal_probs, cal_labels).predict_set(test_probs)`` returns
the sets ``{j : s(x, j) <= qhat_}`` with ``qhat_`` the ``ceil((n+1)(1-alpha))``-th smallest calibration
score (Vovk et al., 2005; Angelopoulos & Bates, "A gentle introduction to conformal prediction", 2023),
so that ``P(y in set) >= 1 - alpha`` for exchangeable data.
"""

from __future__ import annotations

import numbers

import numpy as np

from calib._validation import as_array, check_choice, check_fraction, check_labels, check_probs
from calib.base import (Component, NotFittedError, StateError, constructor_params,  # noqa: F401  (re-export)
                        state_array, state_scalar)
from calib.conformal import scores as _scores
from calib.conformal.quantile import _rank, check_alpha, conformal_quantile, conformal_rank

__all__ = ["SplitConformal", "ConformalBase", "check_alpha"]

RAPS_LAMBDA_GRID = (0.0, 0.001, 0.01, 0.05, 0.1, 0.2, 0.5)


class ConformalBase(Component):
    """Shared parts of every conformal predictor: the score object, thresholds, randomisation, validation,
    state (:class:`calib.base.Component`).

    The score is chosen once at construction (:func:`calib.conformal.scores.make_score`); fitting may
    replace it by a fitted copy ``score_`` (tuned RAPS). Thresholds are stored as ``thresholds_``, always
    an array with one entry per alpha (per stratum and alpha for Mondrian); ``qhat_`` shows them as a
    float for one alpha.

    Randomisation policy (reproducible sets): the uniform draws ``u`` (one per row) come from
    ``numpy.random.default_rng([seed, 0])`` at fit and ``default_rng([seed, 1])`` at *every*
    ``predict_set`` call, so the same probabilities always give the same sets, before and after an
    artifact round trip. ``u`` is independent of the data, which is all validity needs.
    """

    _fit_hint = "fit(probs, labels) before predict_set()"

    def __init__(self, *, score="lac", alpha=0.1, randomized=False, k_reg=1, lam=0.01, weight=0.2,
                 seed=0, allow_infinite=False):
        if not (callable(score) or isinstance(score, _scores.Score)):
            score = check_choice(score, "score", tuple(_scores.SCORES))
        self.score = score
        self.alpha = check_alpha(alpha)
        if not isinstance(randomized, bool):
            raise TypeError(f"Expected randomized as a bool, got {type(randomized).__name__} {randomized!r}.")
        if isinstance(k_reg, bool) or not isinstance(k_reg, numbers.Integral) or k_reg < 0:
            raise ValueError(f"Expected k_reg as an integer >= 0, got {k_reg!r}.")
        for name, v in (("lam", lam), ("weight", weight)):
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not (v >= 0 and np.isfinite(v)):
                raise ValueError(f"Expected {name} as a finite number >= 0, got {v!r}.")
        self.k_reg, self.lam, self.weight = int(k_reg), float(lam), float(weight)
        self._score = _scores.make_score(score, k_reg=self.k_reg, lam=self.lam, weight=self.weight)
        if randomized and not self._score.randomizable:
            randomizable = sorted(n for n, c in _scores.SCORES.items() if c.randomizable)
            raise ValueError(f"Expected randomized=False for score {self.score_name!r}; randomisation applies to "
                             f"{randomizable}.")
        self.randomized = randomized
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise ValueError(f"Expected seed as an integer >= 0, got {seed!r}.")
        self.seed = int(seed)
        if not isinstance(allow_infinite, bool):
            raise TypeError(f"Expected allow_infinite as a bool, got {allow_infinite!r}.")
        self.allow_infinite = allow_infinite

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

    def _u(self, n, stream):
        if not self.randomized:
            return None
        return np.random.default_rng([self.seed, stream]).random(n)

    def label_scores(self, probs, labels, u=None):
        """Scores of the given labels, shape (n,), float64 (``u``: per-row uniforms in [0, 1] or None).

        ``probs`` and ``labels`` are validated (with the class count of the fit once fitted)."""
        n_classes = self.__dict__.get("n_classes_")
        p, y, u = _scores.check_score_inputs(probs, labels, u, n_classes=n_classes)
        return self.scorer.label_scores(p, y, u)

    def score_matrix(self, probs):
        """Scores of every class, shape (n, k), with the predict-time randomisation."""
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
        for attr in ("thresholds_", "score_", "n_classes_", "n_calibration_"):
            self.__dict__.pop(attr, None)

    def _check_predict_probs(self, probs):
        self._check_fitted()
        return check_probs(probs, "probs", n_classes=self.n_classes_)

    def _sets(self, p, thresholds):
        """Sets (n, k, m) for thresholds (m,), with the predict-time randomisation."""
        return self.scorer.sets(p, self._u(p.shape[0], 1), thresholds)

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
        return state, {"thresholds": self.thresholds_}

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
    randomized : bool, default=False
        Randomised APS/RAPS/SAPS/top-k (one uniform per row); exact ``1 - alpha`` coverage on average.
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
    allow_infinite : bool, default=False
        If n is too small for alpha: False raises ValueError at fit, True gives all-classes sets.

    Attributes
    ----------
    qhat_ : float or ndarray of shape (n_alphas,)
    n_classes_, n_calibration_ : int
    k_reg_, lam_ : fitted RAPS parameters (equal to ``k_reg``, ``lam`` unless ``tune``)

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> p = rng.dirichlet(np.ones(5), size=200); y = rng.integers(0, 5, 200)
    >>> cp = SplitConformal(score="lac", alpha=0.2).fit(p, y)
    >>> cp.predict_set(p).shape
    (200, 5)
    """

    kind = "split"

    def __init__(self, *, score="lac", alpha=0.1, randomized=False, k_reg=1, lam=0.01, weight=0.2,
                 tune=False, tune_fraction=0.2, seed=0, allow_infinite=False):
        super().__init__(score=score, alpha=alpha, randomized=randomized, k_reg=k_reg, lam=lam, weight=weight,
                         seed=seed, allow_infinite=allow_infinite)
        if not isinstance(tune, bool):
            raise TypeError(f"Expected tune as a bool, got {tune!r}.")
        if tune and score != "raps":
            raise ValueError(f"Expected tune=False for score {score!r}; tuning applies to 'raps' only.")
        self.tune = tune
        self.tune_fraction = check_fraction(tune_fraction, "tune_fraction")

    def fit(self, probs, labels, groups=None):
        """Compute ``qhat_`` from calibration probabilities (n, k) and labels (n,); ``groups`` is ignored."""
        p, y = self._check_fit_inputs(probs, labels)
        self._reset()
        score = self._score
        if self.tune:
            perm = np.random.default_rng([self.seed, 2]).permutation(p.shape[0])
            n_tune = int(round(self.tune_fraction * p.shape[0]))
            tune_idx, cal_idx = np.sort(perm[:n_tune]), np.sort(perm[n_tune:])
            if cal_idx.size == 0:
                raise ValueError(f"Expected calibration rows left after the tuning split (tune_fraction="
                                 f"{self.tune_fraction:g} of n={p.shape[0]}), got none; lower tune_fraction or "
                                 "add calibration data.")
            score = self._tune_raps(p[tune_idx], y[tune_idx])
            p, y = p[cal_idx], y[cal_idx]
        s = score.label_scores(p, y, self._u(p.shape[0], 0))
        self.thresholds_ = np.asarray(conformal_quantile(s, list(self.alphas), allow_infinite=self.allow_infinite),
                                      dtype=np.float64)
        self.score_ = score
        self.n_calibration_ = int(p.shape[0])
        self.n_classes_ = int(p.shape[1])
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

    def _tune_raps(self, p, y):
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
        u_fit = self._u(n, 3)
        best = None
        for lam in RAPS_LAMBDA_GRID:
            candidate = _scores.RAPS(k_reg=k_reg, lam=lam)
            q = conformal_quantile(candidate.label_scores(p, y, u_fit), alpha)
            size = float((candidate.matrix(p, u_fit) <= q).sum(axis=1).mean())
            if best is None or size < best[0] - 1e-12:
                best = (size, candidate)
        return best[1]

    def predict_set(self, probs, groups=None):
        """Boolean sets: (n, k) for one alpha, (n, k, n_alphas) for a list; ``groups`` is ignored."""
        if isinstance(self.scorer, _scores.LAC):
            return self._finish(self._lac_sets_checked(probs))
        return self._finish(self._sets(self._check_predict_probs(probs), self.thresholds_))

    def _lac_sets_checked(self, probs):
        """LAC sets computed inside the validation pass (one read of ``probs``): ``p >= v(qhat)``."""
        self._check_fitted()
        p = as_array(probs, "probs")
        if p.ndim != 2 or p.dtype not in (np.float32, np.float64):
            return self._sets(self._check_predict_probs(p), self.thresholds_)
        t = _scores.LAC.prob_thresholds(self.thresholds_, p.dtype)
        out = np.empty((p.shape[0], p.shape[1], t.size), dtype=bool)

        def compare(start, block):
            for j in range(t.size):  # one 2-D comparison per alpha
                np.greater_equal(block, t[j], out=out[start:start + block.shape[0], :, j])

        check_probs(p, "probs", n_classes=self.n_classes_, on_chunk=compare)
        return out


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
