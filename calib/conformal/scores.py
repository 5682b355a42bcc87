"""Non-conformity scores for classification, as pure functions of probabilities.

Every score maps probabilities (n, k) to a score per (row, class): large means "this label does not
conform". ``*_scores(probs, labels=None, ...)`` returns the (n,) scores of the given labels, or the
(n, k) scores of every class when ``labels`` is None. The set at threshold ``qhat`` is
``{j : score_j <= qhat}``.

Rank-based scores (APS, RAPS, SAPS, top-k) sort each row once, in row chunks of about
``CHUNK_ELEMENTS`` entries, and accumulate in float64. Randomised scores take ``u`` of shape (n,):
one uniform draw per row, shared by all the classes of that row (Romano et al., 2020).
"""

from __future__ import annotations

import numpy as np

__all__ = ["lac_scores", "aps_scores", "raps_scores", "saps_scores", "topk_scores", "SCORES",
           "sorted_order", "CHUNK_ELEMENTS", "label_rank_scores", "rank_sets", "lac_prob_threshold"]

#: Entries of one (rows, k) chunk in the sorting passes (about 16 MB of float64).
CHUNK_ELEMENTS = 1 << 21


def _chunks(n, k):
    rows = max(1, CHUNK_ELEMENTS // max(k, 1))
    for start in range(0, n, rows):
        yield slice(start, min(n, start + rows))


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
    p = np.asarray(probs)
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
    raise ValueError(f"Unknown rank score {kind!r}.")


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
    raise ValueError(f"Unknown rank score {kind!r}.")


def _rank_scores(probs, labels, kind, u, **kw):
    p = np.asarray(probs)
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
    return _rank_scores(probs, labels, "raps", u, k_reg=k_reg, lam=lam)


def saps_scores(probs, labels=None, *, u=None, weight=0.2):
    """SAPS score (Huang et al., 2024, "Conformal prediction for deep classifiers via label ranking").

    ``s = u * p_max`` for the top class, ``p_max + weight * (rank(y) - 2 + u)`` otherwise; ``u=None``
    means ``u = 1``.

    >>> saps_scores(np.array([[0.6, 0.3, 0.1]]), weight=0.5).round(6).tolist()
    [[0.6, 1.1, 1.6]]
    """
    return _rank_scores(probs, labels, "saps", u, weight=weight)


def topk_scores(probs, labels=None, *, u=None):
    """Top-k score: the 1-based rank of the label (minus ``u`` when randomised), so sets are top-k.

    >>> topk_scores(np.array([[0.1, 0.6, 0.3]])).tolist()
    [[3.0, 1.0, 2.0]]
    """
    return _rank_scores(probs, labels, "topk", u)


#: name -> (function, needs_sort)
SCORES = {"lac": lac_scores, "aps": aps_scores, "raps": raps_scores, "saps": saps_scores, "topk": topk_scores}
