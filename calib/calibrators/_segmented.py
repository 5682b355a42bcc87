"""Vectorised per-class 1-D fits: isotonic regression and piecewise-linear lookup for many classes at once.

The trick used throughout: class c's values in [0, 1] are shifted by ``2 c`` so that all classes live in
disjoint, increasing intervals of one sorted array. One sort, one pool-adjacent-violators pass (scipy's
C++ ``isotonic_regression``; targets shifted the same way can never violate monotonicity across a class
boundary, so no block ever spans two classes) and one ``np.interp`` then serve every class.
"""

from __future__ import annotations

import numpy as np

from calib._chunks import map_threads as _map_threads

__all__ = ["transpose", "fit_isotonic_columns", "fit_isotonic_ovr", "interp_rows", "interp_rows_f32", "pad_ragged"]


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
        kx, ky, kseg = _pav_knots(v, t, np.full(mc, n, dtype=np.int64))
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


def _pav_knots(v, t, counts):
    """Knots of the increasing isotonic fit of class-major, per-class sorted values ``v`` (counts[c] values of
    class c, in order) with 0/1 (or fractional) targets ``t``: returns (knot x, knot y, knot class) arrays."""
    mc = counts.size
    v = v.astype(np.float64)
    seg_start = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)
    seg = np.repeat(np.arange(mc), counts)
    if v.size == 0:
        empty = np.empty(0)
        return empty, empty, np.empty(0, dtype=np.int64)
    starts = _group_starts(v, seg_start[counts > 0], None)
    if starts.size == v.size:  # no pooled values (the usual case for continuous probabilities)
        ux, useg, uy, w = v, seg, t.astype(np.float64), None
    else:
        w = np.diff(starts, append=v.size).astype(np.float64)
        ux = v[starts]
        useg = seg[starts]
        uy = np.add.reduceat(t.astype(np.float64), starts) / w
    from scipy.optimize import isotonic_regression

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
    return ux[knot], res.x[knot] - 2.0 * kseg, kseg


def fit_isotonic_ovr(probs, labels):
    """One-vs-rest isotonic knots of every column of float32 ``probs`` (n, k) against ``labels == c``.

    Same knots as :func:`fit_isotonic_columns` on ``probs.T``, without a PAV pass over all n x k values.
    In a sorted column, a block of the isotonic fit starts with a target 1 and ends with a target 0
    (every prefix of a block averages at least the block, every suffix at most), so each run of
    consecutive negatives between two positives is one weighted point of the pool-adjacent-violators
    problem: PAV runs on about 2 x n points in all instead of n x k. The columns are sorted (numpy's SIMD
    sort), each positive is located in its sorted column by binary search, and only the values at the
    ends of the runs are read. This needs the positives and the run ends to be their own scikit-learn
    tie groups (neighbour gaps >= ``TIE_EPS``); columns where that fails (exact ties, tiny probabilities
    packed closer than 1e-15) or without negatives get the full PAV over their sorted values.

    Returns ``knots_x, knots_y`` as lists of k float64 arrays.
    """
    n, k = probs.shape
    labels = np.asarray(labels, dtype=np.int64)
    pos_val = probs[np.arange(n), labels]
    s = transpose(probs)
    _map_threads(lambda c0: s[c0:c0 + 64].sort(axis=1), range(0, k, 64))
    # positives by (class, value); their first sorted position holding a value >= theirs
    order = np.lexsort((pos_val, labels))
    pc, pv = labels[order], pos_val[order]
    flat = s.ravel()
    P = _first_position(flat, pc * n, pv, n) - pc * n
    eps = TIE_EPS

    def gap(i):  # flat[i] - flat[i - 1] >= eps, as float64, for in-row i >= 1
        return flat[i].astype(np.float64) - flat[i - 1].astype(np.float64) >= eps

    base = pc * n
    ok = np.ones(P.size, bool)
    m1, m2, p1 = P >= 1, P >= 2, P <= n - 2
    ok[m1] &= gap(base[m1] + P[m1])
    ok[p1] &= gap(base[p1] + P[p1] + 1)
    ok[m2] &= gap(base[m2] + P[m2] - 1)
    n_pos = np.bincount(labels, minlength=k)
    bad = np.bincount(pc[~ok], minlength=k) > 0
    bad |= n_pos >= n
    if n >= 2:
        bad |= ~gap(np.arange(k) * n + n - 1)
    good = ~bad
    keep = good[pc]
    pc_all, P_all = pc, P
    pc, P = pc[keep], P[keep]
    # points: the run of negatives before each positive (if any), the positive, the run after the last one
    first_in_cls = np.ones(pc.size, bool)
    first_in_cls[1:] = pc[1:] != pc[:-1]
    prev = np.where(first_in_cls, -1, np.roll(P, 1))
    gcls = np.flatnonzero(good)
    last_p = np.full(k, -1, dtype=np.int64)
    last_p[pc] = P  # the last write per class wins: its largest position
    run_c = np.concatenate([pc, gcls])
    run_s = np.concatenate([prev + 1, last_p[gcls] + 1])
    run_e = np.concatenate([P - 1, np.full(gcls.size, n - 1)])
    nonempty = run_e >= run_s
    run_c, run_s, run_e = run_c[nonempty], run_s[nonempty], run_e[nonempty]
    e_c = np.concatenate([run_c, pc])
    e_s = np.concatenate([run_s, P])
    e_e = np.concatenate([run_e, P])
    e_t = np.concatenate([np.zeros(run_c.size), np.ones(pc.size)])
    o = np.lexsort((e_s, e_c))
    e_c, e_s, e_e, e_t = e_c[o], e_s[o], e_e[o], e_t[o]
    w = (e_e - e_s + 1).astype(np.float64)
    x_first = flat[e_c * n + e_s].astype(np.float64)
    x_last = flat[e_c * n + e_e].astype(np.float64)
    knots_x, knots_y = [np.empty(0)] * k, [np.empty(0)] * k
    if e_c.size:
        from scipy.optimize import isotonic_regression

        res = isotonic_regression(e_c * 2.0 + e_t, weights=w, increasing=True)
        b_start, b_end = res.blocks[:-1], res.blocks[1:] - 1
        kx = np.stack([x_first[b_start], x_last[b_end]], axis=1).ravel()
        kc = np.repeat(e_c[b_start], 2)
        ky = np.repeat(res.x[b_start], 2) - 2.0 * kc
        dup = np.zeros(kx.size, bool)
        dup[1:] = (kx[1:] == kx[:-1]) & (kc[1:] == kc[:-1])
        kx, ky, kc = kx[~dup], ky[~dup], kc[~dup]
        bounds = np.searchsorted(kc, np.arange(k + 1))
        for c in gcls:
            knots_x[c], knots_y[c] = kx[bounds[c]:bounds[c + 1]], ky[bounds[c]:bounds[c + 1]]
    bad_cls = np.flatnonzero(bad)
    if bad_cls.size:  # full PAV on these sorted columns, ties pooled by scikit-learn's rule
        remap = np.full(k, -1, dtype=np.int64)
        remap[bad_cls] = np.arange(bad_cls.size)
        bc = remap[pc_all[~keep]]
        t = np.bincount(bc * n + P_all[~keep], minlength=bad_cls.size * n)
        kx, ky, kc = _pav_knots(s[bad_cls].ravel(), t, np.full(bad_cls.size, n, dtype=np.int64))
        bounds = np.searchsorted(kc, np.arange(bad_cls.size + 1))
        for j, c in enumerate(bad_cls):
            knots_x[c], knots_y[c] = kx[bounds[j]:bounds[j + 1]], ky[bounds[j]:bounds[j + 1]]
    return knots_x, knots_y


def transpose(a, block=256):
    """C-contiguous ``a.T`` copied in cache-sized tiles (faster than one strided copy for large arrays)."""
    n, k = a.shape
    out = np.empty((k, n), dtype=a.dtype)
    for s in range(0, n, block):
        out[:, s:s + block] = a[s:s + block].T
    return out


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


#: per-row bucket tables of :func:`interp_rows_f32` hold at most about this many buckets in all
_TABLE_BUCKETS = 1 << 20


def interp_rows_f32(values_t, knots_x, knots_y, lengths):
    """:func:`interp_rows` for float32 values in [0, 1] and float32-exact knots, returning float32 (m, n).

    Each map's domain is cut into buckets of the float32 bit pattern (8 to 32 per octave, so tiny
    probabilities get as fine buckets as large ones). In a bucket holding no knot the map is one linear
    piece, evaluated as ``np.interp`` does (``slope * (x - x_j) + y_j`` in float64) from per-bucket tables;
    values in buckets holding a knot (a few percent) start from the last knot of the lower buckets and step
    over the bucket's own knots (values >= 2 all take that exact path). Values must be non-negative and not
    NaN (probabilities); other dtypes or knots not exactly float32 fall back to :func:`interp_rows`.
    """
    m, n = values_t.shape
    lengths = np.asarray(lengths, dtype=np.int64)
    L = knots_x.shape[1]
    valid = np.arange(L)[None, :] < lengths[:, None]
    kx = np.where(valid, knots_x, 0.0)
    kx32 = kx.astype(np.float32)
    if (values_t.dtype != np.float32 or (lengths < 1).any() or not np.array_equal(kx32.astype(np.float64), kx)
            or (kx < 0).any()):
        return interp_rows(values_t, knots_x, knots_y, lengths, dtype=np.float32)
    ky = np.where(valid, knots_y, 0.0)
    # finest buckets (top bits of the float32 pattern) whose tables stay about _TABLE_BUCKETS entries;
    # bit patterns of values in [0, 2) are below 2^30
    shift = 18
    while shift < 20 and m * (1 << (30 - shift)) > _TABLE_BUCKETS:
        shift += 1
    B = 1 << (30 - shift)
    rows = np.arange(m)
    kb = np.minimum(kx32.view(np.uint32) >> shift, B - 1).astype(np.int64)
    hist = np.zeros((m, B), dtype=np.int64)
    np.add.at(hist, (np.broadcast_to(rows[:, None], kb.shape)[valid], kb[valid]), 1)
    mixed = hist > 0
    mixed[:, B - 1] = True  # the last bucket also takes every value beyond the table: exact path
    below = np.cumsum(hist, axis=1) - hist  # knots in lower buckets
    j = below - 1  # last knot <= every value of the bucket (pure buckets only)
    last = lengths[:, None] - 1
    inner = (j >= 0) & (j < last)
    jc = np.clip(j, 0, np.maximum(last - 1, 0))
    x0 = np.take_along_axis(kx, jc, axis=1)
    y0 = np.take_along_axis(ky, jc, axis=1)
    if L > 1:
        x1 = np.take_along_axis(kx, jc + 1, axis=1)
        y1 = np.take_along_axis(ky, jc + 1, axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            slope = np.where(inner, (y1 - y0) / np.where(inner, x1 - x0, 1.0), 0.0)
    else:
        slope = np.zeros_like(x0)
    first_y = ky[:, :1]
    last_y = np.take_along_axis(ky, last, axis=1)
    y0 = np.where(j < 0, first_y, np.where(j >= last, last_y, y0))
    x0 = np.where(inner, x0, 0.0)
    slope[mixed] = np.nan  # marks values that need the exact search below
    x0, slope, y0 = x0.ravel(), slope.ravel(), y0.ravel()
    start, count = j.ravel(), hist.ravel()
    flat_x, flat_y = kx.ravel(), ky.ravel()
    out = np.empty((m, n), dtype=np.float32)

    def chunk(c0):
        c1 = min(m, c0 + 8)
        blk = values_t[c0:c1]
        idx = np.minimum(blk.view(np.uint32) >> shift, B - 1).astype(np.intp)
        idx += (np.arange(c0, c1) * B)[:, None]
        res = blk - x0.take(idx)
        res *= slope.take(idx)
        res += y0.take(idx)
        f = np.flatnonzero(np.isnan(res))  # 1-D: much faster than a 2-D nonzero
        if f.size:
            # the last knot <= q: the last knot of the lower buckets, advanced over the bucket's own knots
            bi = idx.ravel()[f]
            c = f // n + c0
            q = blk.ravel()[f].astype(np.float64)
            jj, cnt = start[bi], count[bi]
            base = c * L
            for t in range(int(cnt.max())):
                nxt = np.minimum(jj + 1, L - 1)
                jj = jj + ((t < cnt) & (flat_x[base + nxt] <= q))
            hi_ = lengths[c] - 1
            ji = base + np.clip(jj, 0, np.maximum(hi_ - 1, 0))
            ji1 = base + np.minimum(np.clip(jj, 0, None) + 1, hi_)
            xa, ya = flat_x[ji], flat_y[ji]
            inner_ = (jj >= 0) & (jj < hi_)
            with np.errstate(divide="ignore", invalid="ignore"):
                v = (flat_y[ji1] - ya) / np.where(inner_, flat_x[ji1] - xa, 1.0) * (q - xa) + ya
            res.ravel()[f] = np.where(inner_, v, np.where(jj < 0, flat_y[base], flat_y[base + hi_]))
        out[c0:c1] = res

    _map_threads(chunk, range(0, m, 8))
    return out
