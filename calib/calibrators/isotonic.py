"""Isotonic-regression calibration (Zadrozny & Elkan 2002), one-vs-rest or top-label.

``multiclass="ovr"``: for every class c an increasing step-linear map g_c fitted by pool-adjacent-
violators to (p_c, 1[y = c]) on the calibration split; then ``q_c = g_c(p_c) / sum_j g_j(p_j)``.
Rows where every g_j(p_j) is 0 (possible when a row's probabilities all fall below each class's
lowest non-zero step) fall back to the uniform distribution 1/k, with a warning that counts them (prediction never
changes the fitted object).

``multiclass="top_label"``: one map g fitted to (max_c p_c, 1[argmax = y]); the top class gets
``g(max p)`` and the other classes share ``1 - g(max p)`` in proportion to their probabilities. The
top probability is floored so that it stays at least the largest other probability (argmax kept, up to
ties).

All classes are fitted at once: the columns are sorted (SIMD sort on a class-major float32 copy), and
since every PAV block of a 0/1 target sequence starts with a 1 and ends with a 0, each run of negatives
between two positives is one weighted point, so one PAV pass runs on about 2 n points instead of n k
(:func:`calib.calibrators._segmented.fit_isotonic_ovr`). The maps are applied through per-class
lookup tables on the float32 bit pattern (:func:`calib.calibrators._segmented.interp_rows_f32`). The output
equals scikit-learn's ``IsotonicRegression(out_of_bounds="clip")`` one-vs-rest plus renormalisation.
"""

from __future__ import annotations

import warnings

import numpy as np

from calib.base import state_array
from calib.calibrators._segmented import (
    fit_isotonic_columns,
    fit_isotonic_ovr,
    interp_rows,
    interp_rows_f32,
    pad_ragged,
    transpose,
)
from calib.calibrators.base import Calibrator, check_option, softmax, state_error

__all__ = ["IsotonicCalibration", "renormalise", "top_label_apply", "check_ragged_knots"]


def check_ragged_knots(owner, key, a, counts, *, increasing=None):
    """Check a padded (m, L) knot array read from state: row i holds ``counts[i]`` values in [0, 1] (sorted
    when ``increasing`` is "weak"), then NaN padding, as :func:`calib.calibrators._segmented.pad_ragged` wrote."""
    valid = np.arange(a.shape[1])[None, :] < counts[:, None]
    vals = a[valid]
    if not np.isfinite(vals).all():
        raise state_error(owner, key, "finite in its first knot_counts entries per row",
                          f"{int((~np.isfinite(vals)).sum())} non-finite entries")
    if vals.size and (vals.min() < 0 or vals.max() > 1):
        raise state_error(owner, key, "in [0, 1] (probabilities)",
                          f"values in [{vals.min()!r}, {vals.max()!r}]")
    if not np.isnan(a[~valid]).all():
        raise state_error(owner, key, "NaN beyond knot_counts (the padding)", "other values there")
    if increasing:
        with np.errstate(invalid="ignore"):
            d = np.diff(a, axis=1)
        inner = valid[:, 1:]  # both ends of the difference valid
        if (d[inner] < 0).any():
            raise state_error(owner, key, "non-decreasing along each row", "values out of order")


def renormalise(q, *, name="calibrator", classes_first=False):
    """Divide rows by their sums; rows summing to 0 become uniform (with a warning).

    ``q`` is (n, k), or (k, n) with ``classes_first`` (then sums run over axis 0 on contiguous rows and
    the result is transposed once at the end). Returns C-contiguous float32 (n, k) and the zero-row count.
    """
    axis = 0 if classes_first else 1
    sums = q.sum(axis=axis, dtype=np.float64)
    zero = sums <= 0
    n_zero = int(zero.sum())
    if n_zero:
        warnings.warn(f"{name}: {n_zero} rows had all one-vs-rest probabilities 0; returned uniform 1/k for them.",
                      UserWarning, stacklevel=3)
        if classes_first:
            q[:, zero] = 1.0
        else:
            q[zero] = 1.0
        sums[zero] = q.shape[axis]
    inv = (1.0 / sums).astype(q.dtype)
    if classes_first:
        q *= inv[None, :]
        return transpose(q.astype(np.float32, copy=False)), n_zero
    q *= inv[:, None]
    return np.ascontiguousarray(q, dtype=np.float32), n_zero


def top_label_apply(probs, new_top):
    """Set each row's top probability to ``new_top`` and rescale the others to sum to ``1 - new_top``."""
    p = probs.astype(np.float64)
    n, k = p.shape
    top = p.argmax(axis=1)
    rows = np.arange(n)
    m = p[rows, top]
    p[rows, top] = 0.0
    second = p.max(axis=1)
    rest = p.sum(axis=1)  # the others' mass, summed (1 - m loses it to float32 rounding when m ~ 1)
    p[rows, top] = m
    # floor the new top at the largest other rescaled probability: t >= o (1 - t) / rest  <=>  t >= o / (rest + o)
    with np.errstate(invalid="ignore", divide="ignore"):
        floor = np.where(rest > 0, second / (rest + second), 0.0)
    t = np.maximum(np.asarray(new_top, dtype=np.float64), floor)
    t = np.minimum(t, 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = np.where(rest > 0, (1.0 - t) / rest, 0.0)
    out = p * scale[:, None]
    degenerate = rest <= 0  # all mass on the top class: share 1 - t uniformly among the others
    if degenerate.any():
        out[degenerate] = ((1.0 - t[degenerate]) / (k - 1))[:, None]
    out[rows, top] = t
    return out.astype(np.float32)


class IsotonicCalibration(Calibrator):
    """Isotonic regression on softmax probabilities, one-vs-rest (renormalised) or top-label.

    Zadrozny & Elkan, "Transforming classifier scores into accurate multiclass probability estimates",
    KDD 2002; top-label form: Gupta & Ramdas, "Top-label calibration and multiclass-to-binary
    reductions", ICLR 2022.

    Parameters
    ----------
    multiclass : {"ovr", "top_label"}, default "ovr"

    Attributes
    ----------
    knots_x_, knots_y_ : ndarray (m, L)
        Padded knots of the fitted maps (m = k for "ovr", 1 for "top_label"); NaN beyond ``knot_counts_``.
    knot_counts_ : ndarray (m,)

    Examples
    --------
    >>> from calib.datasets import synthetic
    >>> d = synthetic(n=2000, n_classes=4, temperature=2.0, seed=0)
    >>> iso = IsotonicCalibration().fit(d.logits, d.labels)
    >>> bool(abs(iso.predict_proba(d.logits).sum(axis=1) - 1).max() < 1e-5)
    True
    """

    kind = "isotonic"

    def __init__(self, *, multiclass="ovr"):
        self.multiclass = check_option(multiclass, "multiclass", ("ovr", "top_label"))

    def _fit(self, logits, labels):
        p = softmax(logits)
        if self.multiclass == "ovr" and p.dtype == np.float32:
            kx, ky = fit_isotonic_ovr(p, labels)
        elif self.multiclass == "ovr":
            kx, ky = fit_isotonic_columns(np.ascontiguousarray(p.T), labels)
        else:
            top = p.argmax(axis=1)
            conf = p[np.arange(p.shape[0]), top][None, :]
            kx, ky = fit_isotonic_columns(conf, (top == labels).astype(np.float64)[None, :])
        self.knots_x_, self.knot_counts_ = pad_ragged(kx)
        self.knots_y_, _ = pad_ragged(ky)

    @property
    def supports_chunked_fit(self):
        """Top-label isotonic regression fits on each row's confidence and correctness, so it can be fitted on
        rows read in chunks (:meth:`fit_chunked`); one-vs-rest needs every class's column (the (n, k) matrix)."""
        return self.multiclass == "top_label"

    def fit_chunked(self, blocks, n, n_classes, dtype, *, subsample=None):
        """:meth:`fit` (``multiclass="top_label"``) on ``n`` calibration rows delivered as ``(logits, labels)``
        blocks by ``blocks()``: the same map, bit for bit. Returns ``self``."""
        if self.multiclass != "top_label":
            raise ValueError("Expected multiclass='top_label' to fit IsotonicCalibration on rows read in chunks, got "
                             "'ovr' (it fits every class's column of the (n, k) probabilities).")
        conf, hit = self._top_label_chunked(blocks, n_classes)
        kx, ky = fit_isotonic_columns(conf, hit.astype(np.float64))
        self.knots_x_, self.knot_counts_ = pad_ragged(kx)
        self.knots_y_, _ = pad_ragged(ky)
        return self

    def _predict_proba(self, logits):
        p = softmax(logits)
        if self.multiclass == "ovr":
            q = interp_rows_f32(transpose(p), self.knots_x_, self.knots_y_, self.knot_counts_)
            return renormalise(q, name="IsotonicCalibration", classes_first=True)[0]  # the warning counts zero rows
        conf = p.max(axis=1)[None, :]
        new = interp_rows(conf, self.knots_x_, self.knots_y_, self.knot_counts_)[0]
        return top_label_apply(p, new)

    def _get_state(self):
        return {}, {"knots_x": self.knots_x_, "knots_y": self.knots_y_, "knot_counts": self.knot_counts_}

    def _set_state(self, state, arrays):
        cls = type(self)
        m = self.n_classes_ if self.multiclass == "ovr" else 1
        kx = state_array(arrays, "knots_x", shape=(m, None), finite=False, owner=cls)
        L = kx.shape[1]
        ky = state_array(arrays, "knots_y", shape=(m, L), finite=False, owner=cls)
        counts = state_array(arrays, "knot_counts", shape=(m,), kind="i", minimum=1, maximum=L, owner=cls)
        if counts.max() != L:
            raise state_error(cls, "knot_counts", f"with a maximum equal to the padded knot length {L}",
                              f"a maximum of {int(counts.max())}")
        check_ragged_knots(cls, "knots_x", kx, counts, increasing="weak")
        check_ragged_knots(cls, "knots_y", ky, counts, increasing="weak")  # isotonic: non-decreasing maps
        self.knots_x_, self.knots_y_, self.knot_counts_ = kx, ky, counts
