"""Split conformal prediction for classification: one threshold on a score, fitted on calibration data.

``SplitConformal(score="aps", alpha=0.1).fit(cal_probs, cal_labels).predict_set(test_probs)`` returns
the sets ``{j : s(x, j) <= qhat_}`` with ``qhat_`` the ``ceil((n+1)(1-alpha))``-th smallest calibration
score (Vovk et al., 2005; Angelopoulos & Bates, "A gentle introduction to conformal prediction", 2023),
so that ``P(y in set) >= 1 - alpha`` for exchangeable data.
"""

from __future__ import annotations

import numbers

import numpy as np

from calib._threads import map_threads
from calib._validation import as_array, check_choice, check_fraction, check_labels, check_probs
from calib.calibrators.base import NotFittedError
from calib.conformal import scores as _scores
from calib.conformal.quantile import conformal_quantile, conformal_rank

__all__ = ["SplitConformal", "ConformalBase", "check_alpha"]

RANK_SCORES = ("aps", "raps", "saps", "topk")
SCORE_NAMES = ("lac",) + RANK_SCORES
RAPS_LAMBDA_GRID = (0.0, 0.001, 0.01, 0.05, 0.1, 0.2, 0.5)


def check_alpha(alpha):
    """One alpha in (0, 1), or a non-empty list of them (returned as float or tuple of floats)."""
    if isinstance(alpha, (list, tuple, np.ndarray)):
        if len(alpha) == 0:
            raise ValueError("Expected alpha as a number in (0, 1) or a non-empty list of them, got [].")
        return tuple(check_fraction(a, "alpha") for a in alpha)
    return check_fraction(alpha, "alpha")


class ConformalBase:
    """Shared parts: score configuration, randomisation policy, validation, (de)serialisation.

    Randomisation policy (reproducible sets): the uniform draws ``u`` (one per row) come from
    ``numpy.random.default_rng([seed, 0])`` at fit and ``default_rng([seed, 1])`` at *every*
    ``predict_set`` call, so the same probabilities always give the same sets, before and after an
    artifact round trip. ``u`` is independent of the data, which is all validity needs.
    """

    kind = ""

    def __init__(self, *, score="lac", alpha=0.1, randomized=False, k_reg=1, lam=0.01, weight=0.2,
                 seed=0, allow_infinite=False):
        if callable(score):
            self.score = score
        else:
            self.score = check_choice(score, "score", SCORE_NAMES)
        self.alpha = check_alpha(alpha)
        if not isinstance(randomized, bool):
            raise TypeError(f"Expected randomized as a bool, got {type(randomized).__name__} {randomized!r}.")
        if randomized and (callable(score) or score == "lac"):
            raise ValueError(f"Expected randomized=False for score {score!r}; randomisation applies to "
                             f"{sorted(RANK_SCORES)}.")
        self.randomized = randomized
        if isinstance(k_reg, bool) or not isinstance(k_reg, numbers.Integral) or k_reg < 0:
            raise ValueError(f"Expected k_reg as an integer >= 0, got {k_reg!r}.")
        self.k_reg = int(k_reg)
        for name, v in (("lam", lam), ("weight", weight)):
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not (v >= 0 and np.isfinite(v)):
                raise ValueError(f"Expected {name} as a finite number >= 0, got {v!r}.")
        if score == "saps" and not weight > 0:
            raise ValueError(f"Expected weight > 0 for score 'saps', got {weight!r}.")
        self.lam = float(lam)
        self.weight = float(weight)
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise ValueError(f"Expected seed as an integer >= 0, got {seed!r}.")
        self.seed = int(seed)
        if not isinstance(allow_infinite, bool):
            raise TypeError(f"Expected allow_infinite as a bool, got {allow_infinite!r}.")
        self.allow_infinite = allow_infinite

    # --- scores ---------------------------------------------------------------------------------
    @property
    def score_name(self):
        return self.score if isinstance(self.score, str) else getattr(self.score, "__name__", "callable")

    def _u(self, n, stream):
        if not self.randomized:
            return None
        return np.random.default_rng([self.seed, stream]).random(n)

    def _score_kwargs(self):
        if self.score == "raps":
            return {"k_reg": getattr(self, "k_reg_", self.k_reg), "lam": getattr(self, "lam_", self.lam)}
        if self.score == "saps":
            return {"weight": self.weight}
        return {}

    def label_scores(self, probs, labels, u=None):
        """Scores of the given labels, shape (n,), float64."""
        if callable(self.score):
            s = np.asarray(self.score(probs), dtype=np.float64)
            if s.shape != probs.shape:
                raise ValueError(f"Expected the score callable to return shape {probs.shape}, got {s.shape}.")
            return s[np.arange(s.shape[0]), labels]
        if self.score == "lac":
            return _scores.lac_scores(probs, labels)
        return _scores._rank_scores(probs, labels, self.score, u, **self._score_kwargs())

    def iter_score_blocks(self, probs, u=None, *, original_order=True):
        """Yield ``(row_slice, scores, order)``: scores (rows, k) float64 in the original class order
        (``order`` None), or in sorted order with the column ``order`` when ``original_order=False``."""
        n, k = probs.shape
        if callable(self.score):
            s = np.asarray(self.score(probs), dtype=np.float64)
            if s.shape != probs.shape:
                raise ValueError(f"Expected the score callable to return shape {probs.shape}, got {s.shape}.")
            yield slice(0, n), s, None
            return
        for sl in _scores._chunks(n, k):
            block = probs[sl]
            if self.score == "lac":
                yield sl, 1.0 - block.astype(np.float64), None
                continue
            order = _scores.sorted_order(block)
            s = _scores._rank_scores_sorted(np.take_along_axis(block, order, axis=1), self.score,
                                            None if u is None else u[sl], **self._score_kwargs())
            if original_order:
                out = np.empty_like(s)
                np.put_along_axis(out, order, s, axis=1)
                yield sl, out, None
            else:
                yield sl, s, order

    def score_matrix(self, probs):
        """Scores of every class, shape (n, k), with the predict-time randomisation."""
        p = self._check_predict_probs(probs)
        out = np.empty(p.shape, dtype=np.float64)
        for sl, s, _ in self.iter_score_blocks(p, self._u(p.shape[0], 1)):
            out[sl] = s
        return out

    # --- validation ---------------------------------------------------------------------------------
    @property
    def alphas(self):
        return self.alpha if isinstance(self.alpha, tuple) else (self.alpha,)

    def _check_fit_inputs(self, probs, labels):
        p = check_probs(probs, "probs")
        y = check_labels(labels, "labels", n_samples=p.shape[0], n_classes=p.shape[1])
        return p, y

    def _label_scores_chunked(self, p, y, u):
        """Scores of the labels, computed chunk by chunk (cache-sized, no sort for rank scores)."""
        if callable(self.score):
            return self.label_scores(p, y, u)
        n, k = p.shape
        if self.score == "lac":  # one gather of n entries: nothing to chunk
            return 1.0 - p[np.arange(n), y].astype(np.float64)
        s = np.empty(n, dtype=np.float64)

        def one_chunk(sl):
            s[sl] = _scores.label_rank_scores(p[sl], y[sl], self.score, None if u is None else u[sl],
                                              **self._score_kwargs())

        map_threads(one_chunk, _row_chunks(n, k))  # chunks write their own rows: any thread count, same scores
        return s

    def _sets_fast(self, p, thr_rows=None):
        """Sets (n, k, m) for thresholds ``qhat_`` (m,) or per-row thresholds ``thr_rows`` (n, m)."""
        n, k = p.shape
        q = np.atleast_1d(np.asarray(self.qhat_, dtype=np.float64))
        m = q.size if thr_rows is None else thr_rows.shape[1]
        out = np.empty((n, k, m), dtype=bool)
        u = self._u(n, 1)
        if callable(self.score):
            for sl, s, _ in self.iter_score_blocks(p, u):
                thr = q[None, None, :] if thr_rows is None else thr_rows[sl][:, None, :]
                np.less_equal(s[:, :, None], thr, out=out[sl])
            return out
        if self.score == "lac" and thr_rows is None:
            t = np.array([_scores.lac_prob_threshold(v, p.dtype) for v in q])
            t = t.astype(p.dtype) if np.isfinite(t).all() else t
            for j in range(m):  # one 2-D comparison per alpha (a trailing axis of 1 is a slow inner loop)
                np.greater_equal(p, t[j], out=out[:, :, j])
            return out

        def one_chunk(sl):
            block = p[sl]
            thr = np.broadcast_to(q[None, :], (block.shape[0], m)) if thr_rows is None else thr_rows[sl]
            if self.score == "lac":
                np.less_equal(1.0 - block.astype(np.float64)[:, :, None], thr[:, None, :], out=out[sl])
            else:
                _scores.rank_sets(block, self.score, None if u is None else u[sl], thr, out[sl],
                                  **self._score_kwargs())

        map_threads(one_chunk, _row_chunks(n, k))  # chunks write their own rows: any thread count, same sets
        return out

    def _common_state(self):
        """State shared by every predictor: class count, calibration size, tuned RAPS parameters."""
        self._check_fitted()
        state = {"n_classes": self.n_classes_, "n_calibration": self.n_calibration_}
        if self.score == "raps":
            state.update(k_reg=int(self.k_reg_), lam=float(self.lam_))
        return state

    @classmethod
    def _from_common_state(cls, params, state):
        """A new predictor built from ``params`` with the state of :meth:`_common_state` restored."""
        obj = cls(**params)
        obj.n_classes_, obj.n_calibration_ = int(state["n_classes"]), int(state["n_calibration"])
        if "k_reg" in state:
            obj.k_reg_, obj.lam_ = int(state["k_reg"]), float(state["lam"])
        return obj

    def _check_fitted(self):
        if not hasattr(self, "qhat_"):
            raise NotFittedError(
                f"{type(self).__name__} is not fitted yet; call fit(probs, labels) before predict_set()."
            )

    def _check_predict_probs(self, probs):
        self._check_fitted()
        return check_probs(probs, "probs", n_classes=self.n_classes_)

    def _quantile(self, s):
        q = conformal_quantile(s, list(self.alphas), allow_infinite=self.allow_infinite)
        return q

    def _shape_qhat(self, q):
        """float for one alpha, ndarray (m,) for several."""
        q = np.asarray(q, dtype=np.float64)
        return float(q[0]) if not isinstance(self.alpha, tuple) else q

    # --- parameters and state -----------------------------------------------------------------------
    def get_params(self):
        """Constructor arguments, JSON-serialisable."""
        if callable(self.score):
            raise TypeError(
                f"Expected a named score to store {type(self).__name__} in an artifact, got the callable "
                f"{self.score_name!r}; callables cannot be saved (valid names: {sorted(SCORE_NAMES)})."
            )
        import inspect

        sig = inspect.signature(type(self).__init__)
        out = {}
        for name in sig.parameters:
            if name == "self":
                continue
            v = getattr(self, name)
            out[name] = list(v) if isinstance(v, tuple) else v
        return out

    def __repr__(self):
        params = {k: getattr(self, k) for k in ("score", "alpha")}
        return f"{type(self).__name__}(score={self.score_name!r}, alpha={params['alpha']!r})"


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
        for attr in ("qhat_", "k_reg_", "lam_"):
            self.__dict__.pop(attr, None)
        if self.tune:
            perm = np.random.default_rng([self.seed, 2]).permutation(p.shape[0])
            n_tune = int(round(self.tune_fraction * p.shape[0]))
            tune_idx, cal_idx = np.sort(perm[:n_tune]), np.sort(perm[n_tune:])
            self.k_reg_, self.lam_ = self._tune_raps(p[tune_idx], y[tune_idx])
            p, y = p[cal_idx], y[cal_idx]
        elif self.score == "raps":
            self.k_reg_, self.lam_ = self.k_reg, self.lam
        s = self._label_scores_chunked(p, y, self._u(p.shape[0], 0))
        q = self._quantile(s)
        self.n_classes_ = int(p.shape[1])
        self.n_calibration_ = int(p.shape[0])
        self.qhat_ = self._shape_qhat(q)
        return self

    def _tune_raps(self, p, y):
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
            s_lab = _scores.raps_scores(p, y, u=u_fit, k_reg=k_reg, lam=lam)
            q = conformal_quantile(s_lab, alpha)
            s_all = _scores.raps_scores(p, u=u_fit, k_reg=k_reg, lam=lam)
            size = float((s_all <= q).sum(axis=1).mean())
            if best is None or size < best[0] - 1e-12:
                best = (size, lam)
        return k_reg, float(best[1])

    def predict_set(self, probs, groups=None):
        """Boolean sets: (n, k) for one alpha, (n, k, n_alphas) for a list; ``groups`` is ignored."""
        if self.score == "lac" and not callable(self.score):
            out = self._lac_sets_checked(probs)
        else:
            out = self._sets_fast(self._check_predict_probs(probs))
        return out[:, :, 0] if not isinstance(self.alpha, tuple) else out

    def _lac_sets_checked(self, probs):
        """LAC sets computed inside the validation pass (one read of ``probs``): ``p >= v(qhat)``."""
        self._check_fitted()
        p = as_array(probs, "probs")
        if p.ndim != 2 or p.dtype not in (np.float32, np.float64):
            return self._sets_fast(self._check_predict_probs(p))
        q = np.atleast_1d(np.asarray(self.qhat_, dtype=np.float64))
        t = np.array([_scores.lac_prob_threshold(v, p.dtype) for v in q])
        t = t.astype(p.dtype) if np.isfinite(t).all() else t
        out = np.empty((p.shape[0], p.shape[1], q.size), dtype=bool)

        def compare(start, block):
            for j in range(q.size):  # one 2-D comparison per alpha
                np.greater_equal(block, t[j], out=out[start:start + block.shape[0], :, j])

        check_probs(p, "probs", n_classes=self.n_classes_, on_chunk=compare)
        return out

    def get_state(self):
        return {**self._common_state(), "qhat": _to_json(self.qhat_)}, {}

    @classmethod
    def from_state(cls, params, state, arrays):
        obj = cls._from_common_state(params, state)
        obj.qhat_ = obj._shape_qhat(np.asarray(_from_json(state["qhat"]), dtype=np.float64).ravel())
        return obj


#: Elements per chunk of the fused passes (1 MB of float32: stays in cache between the steps).
FAST_CHUNK_ELEMENTS = 1 << 18


def _row_chunks(n, k):
    rows = max(1, FAST_CHUNK_ELEMENTS // max(k, 1))
    for start in range(0, n, rows):
        yield slice(start, min(n, start + rows))


def _to_json(q):
    """qhat as JSON: floats, with +-inf stored as the strings "inf"/"-inf" (strict JSON has no infinity)."""
    a = np.atleast_1d(np.asarray(q, dtype=np.float64))
    vals = [(("inf" if v > 0 else "-inf") if np.isinf(v) else float(v)) for v in a]
    return vals if np.ndim(q) else vals[0]


def _from_json(v):
    if isinstance(v, list):
        return [float(x) for x in v]  # float("inf") and float("-inf") parse the stored strings
    return float(v)
