"""Nonconformity scores for classification: pure functions of probabilities, and score objects.

(Nonconformity: large means "this label does not conform". Confidence scores, where large means "sure",
are :mod:`calib.selective`'s and the routing policies'.)

Every score maps probabilities (n, k) to a score per (row, class): large means "this label does not
conform". ``*_scores(probs, labels=None, ...)`` returns the (n,) scores of the given labels, or the
(n, k) scores of every class when ``labels`` is None. The set at threshold ``qhat`` is
``{j : score_j <= qhat}``.

Rank-based scores (APS, RAPS, SAPS, top-k) sort each row once, in row chunks of about
:data:`calib._chunks.SORT` entries, and accumulate in float64. Randomised scores take ``u`` of shape
(n,): one uniform draw per row, shared by all the classes of that row (Romano et al., 2020).

A conformal predictor holds one **score object** (:class:`Score`), chosen once at construction by
:func:`make_score`: :class:`LAC`, :class:`APS`, :class:`RAPS`, :class:`SAPS`, :class:`TopK`, or
:class:`CallableScore` for a user's function. The protocol is two operations, both chunked over rows:
the scores of the true labels (for the quantile) and the sets for thresholds (one per alpha, or one
per row and alpha). A new score is one new subclass registered in :data:`SCORES`.
"""

from __future__ import annotations

import numbers

import numpy as np

from calib import _chunks as chunking

__all__ = ["lac_scores", "aps_scores", "raps_scores", "saps_scores", "topk_scores", "SCORES", "Score", "LAC", "APS",
           "RAPS", "SAPS", "TopK", "CallableScore", "make_score", "sorted_order", "label_rank_scores", "rank_sets",
           "lac_prob_threshold", "check_score_inputs", "check_u", "RANK_KINDS"]


def _chunks(n, k):
    return chunking.row_slices(n, k, entries=chunking.SORT)


def check_score_inputs(probs, labels=None, u=None, *, n_classes=None):
    """Validated ``(p, labels, u)`` for the public score functions and methods: probabilities (n, k) as
    :func:`calib._validation.check_probs`, labels in [0, k) of length n (or None), ``u`` (n,) uniforms in
    [0, 1] (or None)."""
    from calib._validation import check_labels, check_probs

    p = check_probs(probs, "probs", n_classes=n_classes)
    y = None if labels is None else check_labels(labels, "labels", n_samples=p.shape[0], n_classes=p.shape[1])
    return p, y, check_u(u, p.shape[0])


def check_u(u, n):
    """Per-row uniforms: None, or finite floats in [0, 1] of shape (n,)."""
    if u is None:
        return None
    from calib._validation import as_array

    a = as_array(u, "u")
    if a.dtype.kind not in "fiu" or a.dtype.kind == "b":
        raise TypeError(f"Expected u as uniform draws in [0, 1] (floats), got dtype {a.dtype}.")
    if a.shape != (n,):
        raise ValueError(f"Expected u of shape ({n},) (one uniform per row of probs), got shape {a.shape}.")
    a = a.astype(np.float64, copy=False)
    if not (np.isfinite(a).all() and (a >= 0).all() and (a <= 1).all()):
        bad = a[~(np.isfinite(a) & (a >= 0) & (a <= 1))]
        raise ValueError(f"Expected u in [0, 1], got {bad.size} entries outside it (e.g. {float(bad[0])!r}).")
    return a


def lac_scores(probs, labels=None):
    """LAC / THR score ``1 - p_y`` (Sadinle, Lei & Wasserman, 2019), in float64.

    Parameters
    ----------
    probs : ndarray of shape (n, k)
    labels : ndarray of shape (n,), optional

    Returns
    -------
    ndarray of shape (n,) if labels are given, else (n, k)

    >>> lac_scores(np.array([[0.7, 0.3]]), np.array([1])).round(6).tolist()
    [0.7]
    """
    p, labels, _ = check_score_inputs(probs, labels)
    if labels is None:
        return 1.0 - p.astype(np.float64)
    return 1.0 - p[np.arange(p.shape[0]), labels].astype(np.float64)


def sorted_order(probs_block):
    """Column indices of each row sorted by decreasing probability (ties: lower class index first)."""
    return np.argsort(-probs_block, axis=1, kind="stable")


def _rank_scores_sorted(p_sorted, kind, u, *, k_reg=0, lam=0.0, weight=1.0):
    """Scores in sorted order, float64 (rows, k); non-decreasing along each row."""
    rows, k = p_sorted.shape
    if kind in ("aps", "raps"):
        s = np.cumsum(p_sorted, axis=1, dtype=np.float64)
        if u is not None:
            s -= u[:, None] * p_sorted
        if kind == "raps" and lam > 0:
            pen = np.maximum(np.arange(1, k + 1, dtype=np.float64) - k_reg, 0.0) * lam
            s += pen[None, :]
        return s
    if kind == "topk":
        s = np.broadcast_to(np.arange(1, k + 1, dtype=np.float64), (rows, k)).copy()
        if u is not None:
            s -= u[:, None]
        return s
    if kind == "saps":
        uu = np.ones(rows) if u is None else u
        pmax = p_sorted[:, 0].astype(np.float64)
        s = np.empty((rows, k), dtype=np.float64)
        s[:, 0] = uu * pmax
        s[:, 1:] = pmax[:, None] + weight * (np.arange(0, k - 1, dtype=np.float64)[None, :] + uu[:, None])
        return s
    raise ValueError(f"Expected a rank score kind in {list(RANK_KINDS)}, got {kind!r}.")


#: the scores computed from each row's order of decreasing probability
RANK_KINDS = ("aps", "raps", "saps", "topk")


def label_rank_scores(block, labels, kind, u, *, k_reg=0, lam=0.0, weight=1.0):
    """Rank scores of the given labels without sorting, O(k) per row.

    The classes ranked before ``y`` (stable order: larger probability first, ties by lower class index)
    are ``{j : p_j > p_y or (p_j == p_y and j < y)}``; their mass and count give the APS/RAPS cumulative
    sum and the 1-based rank.
    """
    rows, k = block.shape
    r = np.arange(rows)
    py = block[r, labels]
    before = block > py[:, None]
    before |= (block == py[:, None]) & (np.arange(k)[None, :] < labels[:, None])
    rank = before.sum(axis=1) + 1
    py64 = py.astype(np.float64)
    uu = None if u is None else np.asarray(u, dtype=np.float64)
    if kind in ("aps", "raps"):
        s = np.einsum("ij,ij->i", block, before, dtype=np.float64) + py64
        if uu is not None:
            s -= uu * py64
        if kind == "raps" and lam > 0:
            s += lam * np.maximum(rank - k_reg, 0)
        return s
    if kind == "topk":
        return rank - (0.0 if uu is None else uu)
    if kind == "saps":
        uu = np.ones(rows) if uu is None else uu
        pmax = block.max(axis=1).astype(np.float64)
        return np.where(rank == 1, uu * pmax, pmax + weight * (rank - 2 + uu))
    raise ValueError(f"Expected a rank score kind in {list(RANK_KINDS)}, got {kind!r}.")


def _rank_scores(probs, labels, kind, u, **kw):
    p, labels, u = check_score_inputs(probs, labels, u)
    n, k = p.shape
    if labels is not None:
        out = np.empty(n, dtype=np.float64)
    else:
        out = np.empty((n, k), dtype=np.float64)
    for sl in _chunks(n, k):
        block = p[sl]
        if labels is not None:
            out[sl] = label_rank_scores(block, labels[sl], kind, None if u is None else u[sl], **kw)
            continue
        order = sorted_order(block)
        p_sorted = np.take_along_axis(block, order, axis=1)
        s = _rank_scores_sorted(p_sorted, kind, None if u is None else u[sl], **kw)
        np.put_along_axis(out[sl], order, s, axis=1)
    return out


#: Partial-sort tiers of :func:`rank_sets`: the top-K classes are selected with argpartition; rows
#: whose set may reach beyond the K-th class go to the next tier, the last one is a full sort.
#: None: ``(max(16, k // 16), max(64, k // 2))`` (measured best of a few choices at k = 100 and 1000).
PARTIAL_TIERS = None


def rank_sets(block, kind, u, thr, out, **kw):
    """Write ``{j : s(x, j) <= thr}`` for a rank score into ``out`` (rows, k, m) without a full sort.

    Rank scores are non-decreasing along the sorted order, so only the top classes can be in a set:
    select the top K with argpartition, order them (stable: probability, then class index), score them,
    and keep the rows whose K-th score already exceeds every threshold and whose last included class is
    not tied with the K-th (ties across the selection boundary could reorder it). Other rows go to the
    next tier. ``thr`` is (rows, m).
    """
    rows, k = block.shape
    out[...] = False
    todo = np.arange(rows)
    tiers = PARTIAL_TIERS if PARTIAL_TIERS is not None else (max(16, k // 16), max(64, k // 2))
    for K in tuple(tiers) + (k,):
        if todo.size == 0:
            return
        sub = block[todo]
        uu = None if u is None else u[todo]
        th = thr[todo]
        if K >= k:
            order = sorted_order(sub)
        else:
            part = np.argpartition(-sub, K - 1, axis=1)[:, :K]
            part.sort(axis=1)  # class index order, so the stable sort below breaks ties by index
            vals = np.take_along_axis(sub, part, axis=1)
            order = np.take_along_axis(part, np.argsort(-vals, axis=1, kind="stable"), axis=1)
        p_sorted = np.take_along_axis(sub, order, axis=1)
        s = _rank_scores_sorted(p_sorted, kind, uu, **kw)
        mask = s[:, :, None] <= th[:, None, :]
        if K < k:
            n_in = mask.sum(axis=1).max(axis=1)
            last = np.maximum(n_in - 1, 0)
            ok = (s[:, -1] > th.max(axis=1)) & (
                (n_in == 0) | (p_sorted[np.arange(todo.size), last] != p_sorted[:, -1]))
        else:
            ok = np.ones(todo.size, dtype=bool)
        idx = todo[ok]
        target = np.zeros((idx.size, k, th.shape[1]), dtype=bool)
        np.put_along_axis(target, order[ok][:, :, None], mask[ok], axis=1)
        out[idx] = target
        todo = todo[~ok]


def lac_prob_threshold(qhat, dtype):
    """Smallest ``v`` of ``dtype`` in [0, 1] with ``1 - float64(v) <= qhat`` (``inf`` if none).

    ``1 - float64(v)`` is non-increasing in ``v``, so ``p >= v`` gives exactly the LAC set
    ``1 - p <= qhat`` while comparing in the input precision (no float64 temporary).

    >>> float(lac_prob_threshold(0.25, np.float64))
    0.75
    """
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"Expected dtype float32 or float64, got {dtype}.")
    if isinstance(qhat, bool) or not isinstance(qhat, (numbers.Real, np.floating)) or np.isnan(qhat):
        raise ValueError(f"Expected qhat as a real number or ±inf (not NaN), got {qhat!r}.")
    one = np.array(1.0, dtype=dtype)
    if not (1.0 - float(one)) <= qhat:
        return np.inf
    if 1.0 - 0.0 <= qhat:
        return dtype.type(0.0)
    itype = np.int32 if dtype == np.float32 else np.int64
    lo, hi = 0, int(one.view(itype))  # predicate false at lo, true at hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        v = np.array(mid, dtype=itype).view(dtype)
        if 1.0 - float(v) <= qhat:
            hi = mid
        else:
            lo = mid
    return np.array(hi, dtype=itype).view(dtype)[()]


def aps_scores(probs, labels=None, *, u=None):
    """APS score (Romano, Sesia & Candès, 2020): mass of the classes ranked at or above the label.

    ``s(x, y) = sum_{j : rank(j) <= rank(y)} p_j - u * p_y``; ``u=None`` is the non-randomised score
    (``u = 0``, inclusive cumulative sum, as MAPIE's calibration cumsum and TorchCP's APS(randomized=False)).

    >>> aps_scores(np.array([[0.6, 0.3, 0.1]])).round(6).tolist()
    [[0.6, 0.9, 1.0]]
    """
    return _rank_scores(probs, labels, "aps", u)


def raps_scores(probs, labels=None, *, u=None, k_reg=1, lam=0.01):
    """RAPS score (Angelopoulos, Bates, Malik & Jordan, 2021): APS + ``lam * max(0, rank(y) - k_reg)``.

    ``rank`` is 1-based (the top class has rank 1).

    >>> raps_scores(np.array([[0.6, 0.3, 0.1]]), k_reg=1, lam=0.5).round(6).tolist()
    [[0.6, 1.4, 2.0]]
    """
    s = RAPS(k_reg=k_reg, lam=lam)  # validates k_reg and lam
    return _rank_scores(probs, labels, "raps", u, k_reg=s.k_reg, lam=s.lam)


def saps_scores(probs, labels=None, *, u=None, weight=0.2):
    """SAPS score (Huang et al., 2024, "Conformal prediction for deep classifiers via label ranking").

    ``s = u * p_max`` for the top class, ``p_max + weight * (rank(y) - 2 + u)`` otherwise; ``u=None``
    means ``u = 1``.

    >>> saps_scores(np.array([[0.6, 0.3, 0.1]]), weight=0.5).round(6).tolist()
    [[0.6, 1.1, 1.6]]
    """
    return _rank_scores(probs, labels, "saps", u, weight=SAPS(weight=weight).weight)


def topk_scores(probs, labels=None, *, u=None):
    """Top-k score: the 1-based rank of the label (minus ``u`` when randomised), so sets are top-k.

    >>> topk_scores(np.array([[0.1, 0.6, 0.3]])).tolist()
    [[3.0, 1.0, 2.0]]
    """
    return _rank_scores(probs, labels, "topk", u)


class Score:
    """A nonconformity score: ``s(x, y)``, non-decreasing along each row's order of decreasing probability
    for the rank scores. Subclasses set ``name`` and implement :meth:`_block` (scores of every class for
    a chunk of rows) and, when faster, :meth:`label_scores` and :meth:`sets`.

    Every method takes validated probabilities ``p`` (n, k) and ``u`` (n,) uniforms or None; scores are
    float64. Score objects hold hyper-parameters only and are never changed after construction.
    """

    name = ""
    #: whether a per-row uniform ``u`` applies (randomised sets); a subclass that uses ``u`` says so
    randomizable = False
    #: the predictors' hyper-parameters (``k_reg``, ``lam``, ``weight``) this score's constructor takes
    takes = ()

    def params(self):
        """Hyper-parameters that define the score (JSON)."""
        return {}

    def domain(self, n_classes):
        """``(lo, hi)``: every score of probabilities with ``n_classes`` columns lies in it (with the slack of
        rows that sum to 1 within :func:`calib._validation.check_probs`'s tolerance). A fitted threshold is
        a calibration score (or ±inf), so stored thresholds outside it were not produced by a fit."""
        return -np.inf, np.inf

    @staticmethod
    def _slack(n_classes):
        return 1e-3 + 2e-7 * n_classes

    def label_scores(self, p, labels, u=None):
        """Scores of the given labels, (n,) float64."""
        n, k = p.shape
        s = np.empty(n, dtype=np.float64)
        for sl in _chunks(n, k):
            s[sl] = np.take_along_axis(self._block(p[sl], None if u is None else u[sl]), labels[sl, None], 1)[:, 0]
        return s

    def blocks(self, p, u=None):
        """Yield ``(row_slice, scores)`` with scores (rows, k) float64 of every class, in class order."""
        n, k = p.shape
        for sl in _chunks(n, k):
            yield sl, self._block(p[sl], None if u is None else u[sl])

    def matrix(self, p, u=None):
        """Scores of every class, (n, k) float64."""
        out = np.empty(p.shape, dtype=np.float64)
        for sl, s in self.blocks(p, u):
            out[sl] = s
        return out

    def sets(self, p, u, thresholds):
        """Sets ``{j : s(x, j) <= t}`` as bool (n, k, m) for ``thresholds`` (m,) or per row (n, m)."""
        t, out = _sets_buffer(p, thresholds)
        for sl, s in self.blocks(p, u):
            thr = t[None, None, :] if t.ndim == 1 else t[sl][:, None, :]
            np.less_equal(s[:, :, None], thr, out=out[sl])
        return out

    def extremes(self, p, u=None):
        """``(lo, hi)``: the smallest and the largest score of each row, (n,) float64 each (the set at ``t`` is
        empty iff ``lo > t``, holds every class iff ``hi <= t``). Generic: from the score matrix."""
        lo, hi = np.empty(p.shape[0]), np.empty(p.shape[0])
        for sl, sc in self.blocks(p, u):
            lo[sl], hi[sl] = sc.min(axis=1), sc.max(axis=1)
        return lo, hi

    def class_sets(self, p, u, thresholds):
        """Sets with one threshold per class: class ``c`` is in iff ``s(x, c) <= thresholds[c, j]``;
        ``thresholds`` (k, m), result (n, k, m)."""
        t, out = _sets_buffer(p, thresholds)
        for sl, s in self.blocks(p, u):
            np.less_equal(s[:, :, None], t[None, :, :], out=out[sl])
        return out

    def _block(self, block, u):
        raise NotImplementedError

    def __eq__(self, other):
        return type(self) is type(other) and self.params() == other.params()

    def __hash__(self):
        return hash((type(self), tuple(sorted(self.params().items()))))

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


class LAC(Score):
    """``1 - p_y`` (Sadinle, Lei & Wasserman, 2019); sets ``{j : p_j >= v(t)}`` compared in the input's
    precision (:func:`lac_prob_threshold`), exactly the sets of ``1 - p_j <= t``."""

    name = "lac"

    def domain(self, n_classes):
        return -self._slack(n_classes), 1.0

    def label_scores(self, p, labels, u=None):
        return 1.0 - p[np.arange(p.shape[0]), labels].astype(np.float64)  # one gather: nothing to chunk

    def extremes(self, p, u=None):
        return 1.0 - p.max(axis=1).astype(np.float64), 1.0 - p.min(axis=1).astype(np.float64)

    def _block(self, block, u):
        return 1.0 - block.astype(np.float64)

    @staticmethod
    def prob_thresholds(thresholds, dtype):
        """Probability cut-offs ``v`` with ``p >= v`` iff ``1 - p <= t``, in ``dtype`` when all finite."""
        t = np.array([lac_prob_threshold(v, dtype) for v in np.ravel(thresholds)]).reshape(np.shape(thresholds))
        return t.astype(dtype) if np.isfinite(t).all() else t

    def sets(self, p, u, thresholds):
        t = np.asarray(thresholds, dtype=np.float64)
        if t.ndim == 2:
            return super().sets(p, u, t)
        v = self.prob_thresholds(t, p.dtype)
        out = np.empty(p.shape + (t.size,), dtype=bool)
        for j in range(t.size):  # one 2-D comparison per alpha (a trailing axis of 1 is a slow inner loop)
            np.greater_equal(p, v[j], out=out[:, :, j])
        return out

    def class_sets(self, p, u, thresholds):
        t, out = _sets_buffer(p, thresholds)
        for j in range(t.shape[1]):  # class c is in the set iff p_c >= v_c
            v = np.array([lac_prob_threshold(x, p.dtype) for x in t[:, j]])
            np.greater_equal(p, v[None, :].astype(np.float64) if not np.isfinite(v).all()
                             else v.astype(p.dtype)[None, :], out=out[:, :, j])
        return out


class _RankScore(Score):
    """Scores that depend on a class's rank in its row: labels scored in O(k) per row without a sort,
    sets built from a partial sort (:func:`label_rank_scores`, :func:`rank_sets`), on worker threads."""

    randomizable = True

    def _kw(self):
        return self.params()

    def label_scores(self, p, labels, u=None):
        n, k = p.shape
        s = np.empty(n, dtype=np.float64)

        def one_chunk(sl):
            s[sl] = label_rank_scores(p[sl], labels[sl], self.name, None if u is None else u[sl], **self._kw())

        chunking.map_row_chunks(one_chunk, n, k, entries=chunking.FUSED)  # chunks write their own rows: same scores on any threads
        return s

    def extremes(self, p, u=None):
        """The scores of each row's top class (rank 1: no class before it) and bottom class (rank k: every other
        class before it), in closed form from the row's max, min and sum: three reductions, no sort. Equal to
        the score matrix's row min and max up to float64 rounding of the sum (tested)."""
        n, k = p.shape
        pmax = p.max(axis=1).astype(np.float64)
        pmin = p.min(axis=1).astype(np.float64)
        kw = self._kw()
        if self.name == "topk":
            uu = np.zeros(n) if u is None else u
            return 1.0 - uu, k - uu
        if self.name == "saps":
            uu = np.ones(n) if u is None else u
            return uu * pmax, pmax + kw["weight"] * (k - 2 + uu)
        uu = np.zeros(n) if u is None else u
        lo = pmax - uu * pmax
        hi = p.sum(axis=1, dtype=np.float64) - uu * pmin
        if self.name == "raps" and kw["lam"] > 0:
            lo += kw["lam"] * max(1 - kw["k_reg"], 0)
            hi += kw["lam"] * max(k - kw["k_reg"], 0)
        return lo, hi

    def _block(self, block, u):
        order = sorted_order(block)
        s = _rank_scores_sorted(np.take_along_axis(block, order, axis=1), self.name, u, **self._kw())
        out = np.empty_like(s)
        np.put_along_axis(out, order, s, axis=1)
        return out

    def sets(self, p, u, thresholds):
        n, k = p.shape
        t, out = _sets_buffer(p, thresholds)
        m = t.shape[-1]

        def one_chunk(sl):
            thr = np.broadcast_to(t[None, :], (sl.stop - sl.start, m)) if t.ndim == 1 else t[sl]
            rank_sets(p[sl], self.name, None if u is None else u[sl], thr, out[sl], **self._kw())

        chunking.map_row_chunks(one_chunk, n, k, entries=chunking.FUSED)  # chunks write their own rows: same sets on any threads
        return out


class APS(_RankScore):
    """Adaptive prediction sets (Romano, Sesia & Candès, 2020): :func:`aps_scores`."""

    name = "aps"

    def domain(self, n_classes):
        return -self._slack(n_classes), 1.0 + self._slack(n_classes)


class RAPS(_RankScore):
    """Regularised APS (Angelopoulos et al., 2021): :func:`raps_scores` with ``k_reg`` and ``lam``."""

    name = "raps"
    takes = ("k_reg", "lam")

    def __init__(self, k_reg=1, lam=0.01):
        if isinstance(k_reg, bool) or not isinstance(k_reg, numbers.Integral) or k_reg < 0:
            raise ValueError(f"Expected k_reg as an integer >= 0, got {k_reg!r}.")
        _check_nonneg(lam, "lam")
        self.k_reg, self.lam = int(k_reg), float(lam)

    def params(self):
        return {"k_reg": self.k_reg, "lam": self.lam}

    def domain(self, n_classes):
        eps = self._slack(n_classes)
        return -eps, 1.0 + eps + self.lam * max(0, n_classes - self.k_reg)


class SAPS(_RankScore):
    """Sorted adaptive prediction sets (Huang et al., 2024): :func:`saps_scores` with rank ``weight`` > 0."""

    name = "saps"
    takes = ("weight",)

    def __init__(self, weight=0.2):
        _check_nonneg(weight, "weight")
        if not weight > 0:
            raise ValueError(f"Expected weight > 0 for score 'saps', got {weight!r}.")
        self.weight = float(weight)

    def params(self):
        return {"weight": self.weight}

    def domain(self, n_classes):
        eps = self._slack(n_classes)
        return -eps, 1.0 + eps + self.weight * (n_classes - 1)


class TopK(_RankScore):
    """The label's rank: sets are the top-k classes (:func:`topk_scores`)."""

    name = "topk"

    def domain(self, n_classes):
        return 0.0, float(n_classes)


class CallableScore(Score):
    """A user's function ``probs (n, k) -> scores (n, k)``; evaluated once on the whole array (it may not
    be row-separable), so it cannot be stored in an artifact."""

    def __init__(self, fn):
        if not callable(fn):
            raise TypeError(f"Expected a callable score, got {fn!r}.")
        self.fn = fn
        self.name = getattr(fn, "__name__", "callable")

    def blocks(self, p, u=None):
        yield slice(0, p.shape[0]), self._call(p)

    def _call(self, p):
        """``fn(p)`` checked: real scores of shape (n, k) without NaN (±inf allowed), as float64."""
        who = f"the score callable {self.name!r}"
        out = self.fn(p)
        try:
            s = np.asarray(out)
        except Exception as err:  # noqa: BLE001  (an object numpy cannot read as an array)
            raise TypeError(f"Expected {who} to return real scores of shape {p.shape}, got "
                            f"{type(out).__name__} ({err}).") from None
        if s.dtype.kind not in "biuf":
            raise TypeError(f"Expected {who} to return real scores of shape {p.shape}, got dtype {s.dtype}.")
        if s.shape != p.shape:
            raise ValueError(f"Expected the score callable to return shape {p.shape}, got {s.shape} from "
                             f"{self.name!r} (one score per row and class).")
        s = s.astype(np.float64, copy=False)
        nan = np.isnan(s)
        if nan.any():
            rows = np.flatnonzero(nan.any(axis=1))
            raise ValueError(f"Expected {who} to return scores without NaN, got {int(nan.sum())} NaN entries "
                             f"(first rows: {rows[:5].tolist()}); a NaN score is never <= a threshold, so it "
                             "would silently leave the class out of every set.")
        return s

    def label_scores(self, p, labels, u=None):
        (_, s), = self.blocks(p)
        return s[np.arange(s.shape[0]), labels]

    def __eq__(self, other):
        return type(self) is type(other) and self.fn is other.fn

    def __hash__(self):
        return hash(self.fn)


def _sets_buffer(p, thresholds):
    """Thresholds as float64 and an uninitialised bool (n, k, m) for their sets (m: the last axis)."""
    t = np.asarray(thresholds, dtype=np.float64)
    if np.isnan(t).any():
        raise ValueError(f"Expected thresholds without NaN, got {int(np.isnan(t).sum())} NaN entries; a NaN "
                         "threshold gives empty sets.")
    return t, np.empty(p.shape + (t.shape[-1],), dtype=bool)


def _check_nonneg(v, name):
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not (v >= 0 and np.isfinite(v)):
        raise ValueError(f"Expected {name} as a finite number >= 0, got {v!r}.")


#: score name -> :class:`Score` subclass (the names a config or an artifact may use)
SCORES = {cls.name: cls for cls in (LAC, APS, RAPS, SAPS, TopK)}


def make_score(score, **params):
    """The :class:`Score` for a name of :data:`SCORES` (given only the hyper-parameters it takes), a
    :class:`Score` instance (returned as is), or a callable (wrapped in :class:`CallableScore`).

    >>> make_score("raps", k_reg=2, lam=0.1, weight=0.2)
    RAPS(k_reg=2, lam=0.1)
    """
    if isinstance(score, Score):
        return score
    if isinstance(score, str):
        if score not in SCORES:
            raise ValueError(f"Expected score as one of {sorted(SCORES)} or a callable, got {score!r}.")
        cls = SCORES[score]
        return cls(**{n: params[n] for n in cls.takes if n in params})
    if callable(score):
        return CallableScore(score)
    raise TypeError(f"Expected score as one of {sorted(SCORES)} or a callable, got {type(score).__name__} {score!r}.")
