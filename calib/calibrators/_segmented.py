"""Vectorised per-class 1-D fits: isotonic regression and piecewise-linear lookup for many classes at once.

The trick used throughout: class c's values in [0, 1] are shifted by ``2 c`` so that all classes live in
disjoint, increasing intervals of one sorted array. One sort, one pool-adjacent-violators pass (scipy's
C++ ``isotonic_regression``; targets shifted the same way can never violate monotonicity across a class
boundary, so no block ever spans two classes) and one ``np.interp`` then serve every class.
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["fit_isotonic_columns", "interp_rows", "pad_ragged"]


def fit_isotonic_columns(values_t, targets, *, class_chunk=64):
    """Increasing isotonic fit of each row of ``values_t`` against its 0/1 targets.

    Parameters
    ----------
    values_t : ndarray (m, n) in [0, 1]
        One row per fitted map (classes first: a transposed probability matrix).
    targets : ndarray (n,) of int, or ndarray (m, n) of float
        The label vector (row c is fitted against ``targets == c``), or the targets of each row.
    class_chunk : int
        Rows processed together (memory is O(class_chunk x n)); chunks run on a few threads.

    Returns
    -------
    knots_x, knots_y : list of m float64 arrays
        Knots of the fitted step-linear function per row, as scikit-learn's
        ``IsotonicRegression(out_of_bounds="clip")`` would interpolate them (ties in x are averaged
        with their weights first; only the ends of constant runs are kept).
    """
    from scipy.optimize import isotonic_regression

    m, n = values_t.shape
    by_label = targets.ndim == 1

    def one_chunk(c0):
        c1 = min(m, c0 + class_chunk)
        mc = c1 - c0
        kxs, kys = [], []
        block = values_t[c0:c1]
        if by_label:
            # sort values only (much faster than argsort); place each positive (row with label c) at the
            # first sorted position holding its value: ties are pooled below, so that is its group
            v = np.sort(block, axis=1).ravel()
            pos_rows = np.flatnonzero((targets >= c0) & (targets < c1))
            pos_cls = targets[pos_rows] - c0
            t = np.bincount(_first_position(v, pos_cls * n, block[pos_cls, pos_rows], n), minlength=mc * n)
        else:
            order = np.argsort(block, axis=1)
            v = np.take_along_axis(block, order, axis=1).ravel()
            t = np.take_along_axis(targets[c0:c1], order, axis=1).ravel()
        seg_start = np.arange(mc) * n
        v = v.astype(np.float64)
        starts = _group_starts(v, seg_start, n)
        seg = np.repeat(np.arange(mc), n)
        if starts.size == v.size:  # no pooled values (the usual case for continuous probabilities)
            ux, useg, uy, w = v, seg, t.astype(np.float64), None
        else:
            w = np.diff(starts, append=v.size).astype(np.float64)
            ux = v[starts]
            useg = seg[starts]
            uy = np.add.reduceat(t.astype(np.float64), starts) / w
        shifted = useg * 2.0
        shifted += uy
        res = isotonic_regression(shifted, weights=w, increasing=True)
        # scipy pools equal neighbours, so consecutive blocks have different values: the knots are the first
        # and last point of each block (scikit-learn keeps the same points when it trims constant runs)
        b_start = res.blocks[:-1]
        b_end = res.blocks[1:] - 1
        knot = np.stack([b_start, b_end], axis=1).ravel()
        knot = knot[np.append(True, knot[1:] != knot[:-1])]
        kseg = useg[knot]
        kx = ux[knot]
        ky = res.x[knot] - 2.0 * kseg
        bounds = np.searchsorted(kseg, np.arange(mc + 1))
        for j in range(mc):
            kxs.append(kx[bounds[j]:bounds[j + 1]])
            kys.append(ky[bounds[j]:bounds[j + 1]])
        return kxs, kys

    knots_x, knots_y = [], []
    for kxs, kys in _map_threads(one_chunk, range(0, m, class_chunk)):
        knots_x.extend(kxs)
        knots_y.extend(kys)
    return knots_x, knots_y


#: values closer than this to the first value of a group are pooled with it (scikit-learn's rule for float64)
TIE_EPS = float(np.finfo(np.float64).resolution)


def _first_position(v, lo, values, n):
    """For each query, the first index in ``v[lo:lo + n]`` (a sorted slice) holding a value >= it."""
    lo = lo.astype(np.int64).copy()
    hi = lo + n
    while True:
        active = lo < hi
        if not active.any():
            return lo
        mid = (lo + hi) // 2
        less = v[np.minimum(mid, v.size - 1)] < values
        lo = np.where(active & less, mid + 1, lo)
        hi = np.where(active & ~less, mid, hi)


def _group_starts(v, seg_start, n):
    """First index of each group of (nearly) tied values in a class-major, per-class sorted float64 ``v``.

    scikit-learn's isotonic regression scans the sorted values and starts a new group when
    ``x - x_group_start >= 1e-15``; we reproduce that greedy rule. Where consecutive gaps are >= eps a
    new group certainly starts; only inside runs of smaller gaps spanning >= eps is the greedy scan
    needed, and it runs for all such runs at once (a vectorised binary search per step).
    """
    eps = TIE_EPS
    definite = np.empty(v.size, bool)
    definite[0] = True
    np.greater_equal(np.diff(v), eps, out=definite[1:])
    definite[seg_start] = True
    if definite.all():
        return np.arange(v.size)
    # runs of small gaps: a non-definite position j continues the run that started before it
    inner = np.flatnonzero(~definite)
    head = inner - 1  # positions right before a small gap
    first = np.ones(inner.size, bool)
    first[1:] = inner[1:] != inner[:-1] + 1
    run_s = head[first]
    last = np.ones(inner.size, bool)
    last[:-1] = first[1:]
    run_e = inner[last] + 1
    complex_ = v[run_e - 1] - v[run_s] >= eps
    extra = []
    cur, end = run_s[complex_], run_e[complex_]
    while cur.size:
        lo, hi = cur + 1, end.copy()
        while True:
            active = lo < hi
            if not active.any():
                break
            mid = (lo + hi) // 2
            midc = np.minimum(mid, v.size - 1)
            cond = (v[midc] - v[cur]) >= eps
            hi = np.where(active & cond, mid, hi)
            lo = np.where(active & ~cond, mid + 1, lo)
        found = lo < end
        cur, end = lo[found], end[found]
        extra.append(cur)
    if extra:
        definite[np.concatenate(extra)] = True
    return np.flatnonzero(definite)


def pad_ragged(arrays, fill=np.nan):
    """Stack 1-D arrays of different lengths into ``(padded (m, L), lengths (m,))``."""
    lengths = np.array([a.size for a in arrays], dtype=np.int64)
    out = np.full((len(arrays), int(lengths.max(initial=1))), fill, dtype=np.float64)
    for i, a in enumerate(arrays):
        out[i, :a.size] = a
    return out, lengths


def interp_rows(values_t, knots_x, knots_y, lengths, *, dtype=np.float64):
    """``out[c] = np.interp(values_t[c], knots_x[c, :len_c], knots_y[c, :len_c])`` for every row c,
    clamped to the end values outside the knots (scikit-learn's ``out_of_bounds="clip"``).

    ``values_t`` is (m, n) (classes first, so each call reads contiguous memory); ``knots_x``/``knots_y``
    are padded (m, L) arrays with per-row ``lengths``; returns (m, n) of ``dtype``. One ``np.interp`` per row:
    shifting the rows into one array, as the fit does for the targets, would cost float64 resolution of
    tiny probabilities.
    """
    m, n = values_t.shape
    out = np.empty((m, n), dtype=dtype)

    def rows(c0):
        for c in range(c0, min(m, c0 + 16)):
            L = lengths[c]
            out[c] = np.interp(values_t[c], knots_x[c, :L], knots_y[c, :L])

    _map_threads(rows, range(0, m, 16))
    return out


def _map_threads(fn, items):
    """``list(map(fn, items))`` on a few threads when there is more than one item (numpy's sort, interp and
    reductions release the GIL; every item writes its own rows, so the result does not depend on timing)."""
    items = list(items)
    workers = min(len(items), os.cpu_count() or 1, 4)
    if workers <= 1:
        return [fn(i) for i in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as ex:
        return list(ex.map(fn, items))
