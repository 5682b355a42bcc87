"""Histogram binning (Zadrozny & Elkan 2001) with equal-mass bins, one-vs-rest or top-label.

``multiclass="ovr"``: per class c, the calibration values p_c are cut into ``n_bins`` bins holding
(about) equal numbers of rows; a probability in bin b is replaced by the frequency of class c among the
calibration rows of that bin; rows are renormalised (all-zero rows fall back to uniform, with a
warning). ``multiclass="top_label"``: the same on (max p, 1[argmax = y]); the other classes share the
remaining mass in proportion (see :func:`calib.calibrators.isotonic.top_label_apply`).

Bin edges are midpoints between consecutive sorted calibration values at the equal-mass cut points, so
the assignment of a calibration row never depends on float ties at an edge.
"""

from __future__ import annotations

import numpy as np

from calib._chunks import map_threads as _map_threads
from calib._validation import check_positive_int
from calib.base import state_array
from calib.calibrators.base import Calibrator, check_option, softmax
from calib.calibrators.isotonic import renormalise, top_label_apply

__all__ = ["HistogramBinning"]


def _fit_bins(values_t, targets_t, n_bins, chunk=64):
    """Equal-mass inner edges (m, n_bins - 1) and bin frequencies (m, n_bins) per row."""
    m, n = values_t.shape
    cut = np.clip((np.arange(1, n_bins) * n) // n_bins, 1, n - 1)  # first index of bins 1..B-1
    edges = np.empty((m, n_bins - 1))
    count = np.empty((m, n_bins))
    hits = np.empty((m, n_bins))

    def one_chunk(c0):
        c1 = min(m, c0 + chunk)
        block = values_t[c0:c1]
        sv = np.sort(block, axis=1)
        e = 0.5 * (sv[:, cut - 1].astype(np.float64) + sv[:, cut])
        edges[c0:c1] = e
        idx = np.empty(block.shape, dtype=np.int64)
        for j in range(c1 - c0):
            idx[j] = np.searchsorted(e[j], block[j], side="right")
        flat = (idx + (np.arange(c1 - c0) * n_bins)[:, None]).ravel()
        size = (c1 - c0) * n_bins
        count[c0:c1] = np.bincount(flat, minlength=size).reshape(-1, n_bins)
        hits[c0:c1] = np.bincount(flat, weights=targets_t[c0:c1].ravel().astype(np.float64),
                                  minlength=size).reshape(-1, n_bins)

    _map_threads(one_chunk, range(0, m, chunk))
    with np.errstate(invalid="ignore", divide="ignore"):
        freq = hits / count
    # empty bins (only possible with many tied values) take the row's overall frequency
    empty = count == 0
    if empty.any():
        mean = hits.sum(axis=1, keepdims=True) / count.sum(axis=1, keepdims=True)
        freq = np.where(empty, mean, freq)
    return edges, freq


def _assign(values_t, edges):
    m, n = values_t.shape
    out = np.empty((m, n), dtype=np.int64)

    def rows(c0):  # one searchsorted per row over few edges, contiguous memory
        for c in range(c0, min(m, c0 + 16)):
            out[c] = np.searchsorted(edges[c], values_t[c], side="right")

    _map_threads(rows, range(0, m, 16))
    return out


class HistogramBinning(Calibrator):
    """Equal-mass histogram binning of softmax probabilities, one-vs-rest or top-label.

    Zadrozny & Elkan, "Obtaining calibrated probability estimates from decision trees and naive
    Bayesian classifiers", ICML 2001; top-label form: Gupta & Ramdas, ICLR 2022.

    Parameters
    ----------
    n_bins : int, default 15
    multiclass : {"ovr", "top_label"}, default "ovr"

    Attributes
    ----------
    bin_edges_ : ndarray (m, n_bins - 1)
        Inner edges per fitted map (m = k for "ovr", 1 for "top_label"); bin b is [edge_{b-1}, edge_b).
    bin_frequencies_ : ndarray (m, n_bins)

    Examples
    --------
    >>> from calib.datasets import synthetic
    >>> d = synthetic(n=2000, n_classes=4, temperature=2.0, seed=0)
    >>> hb = HistogramBinning(n_bins=10).fit(d.logits, d.labels)
    >>> hb.bin_frequencies_.shape
    (4, 10)
    """

    kind = "histogram_binning"

    def __init__(self, *, n_bins=15, multiclass="ovr"):
        self.n_bins = check_positive_int(n_bins, "n_bins", minimum=2)
        self.multiclass = check_option(multiclass, "multiclass", ("ovr", "top_label"))

    def _fit(self, logits, labels):
        p = softmax(logits)
        n = p.shape[0]
        if n < self.n_bins:
            raise ValueError(f"Expected at least n_bins={self.n_bins} calibration rows, got {n}.")
        if self.multiclass == "ovr":
            onehot_t = np.zeros((p.shape[1], n), dtype=np.float32)
            onehot_t[labels, np.arange(n)] = 1.0
            self.bin_edges_, self.bin_frequencies_ = _fit_bins(np.ascontiguousarray(p.T), onehot_t, self.n_bins)
        else:
            top = p.argmax(axis=1)
            conf = p[np.arange(n), top][None, :]
            self.bin_edges_, self.bin_frequencies_ = _fit_bins(conf, (top == labels)[None, :], self.n_bins)

    @property
    def supports_chunked_fit(self):
        """Top-label binning fits on each row's confidence and correctness, so it can be fitted on rows read in
        chunks (:meth:`fit_chunked`); one-vs-rest needs every class's column sorted (the (n, k) matrix)."""
        return self.multiclass == "top_label"

    def fit_chunked(self, blocks, n, n_classes, dtype, *, subsample=None):
        """:meth:`fit` (``multiclass="top_label"``) on ``n`` calibration rows delivered as ``(logits, labels)``
        blocks by ``blocks()``: the same bins, bit for bit. Returns ``self``."""
        if self.multiclass != "top_label":
            raise ValueError("Expected multiclass='top_label' to fit HistogramBinning on rows read in chunks, got "
                             "'ovr' (it sorts every class's column of the (n, k) probabilities).")
        if n < self.n_bins:
            raise ValueError(f"Expected at least n_bins={self.n_bins} calibration rows, got {n}.")
        conf, hit = self._top_label_chunked(blocks, n_classes)
        self.bin_edges_, self.bin_frequencies_ = _fit_bins(conf, hit, self.n_bins)
        return self

    def _lookup(self, values_t):
        idx = _assign(values_t, self.bin_edges_)
        return np.take_along_axis(self.bin_frequencies_, idx, axis=1)

    def _predict_proba(self, logits):
        p = softmax(logits)
        if self.multiclass == "ovr":
            q = self._lookup(np.ascontiguousarray(p.T)).astype(np.float32)
            return renormalise(q, name="HistogramBinning", classes_first=True)[0]  # the warning counts zero rows
        new = self._lookup(p.max(axis=1)[None, :])[0]
        return top_label_apply(p, new)

    def _get_state(self):
        return {}, {"bin_edges": self.bin_edges_, "bin_frequencies": self.bin_frequencies_}

    def _set_state(self, state, arrays):
        cls = type(self)
        m = self.n_classes_ if self.multiclass == "ovr" else 1
        self.bin_edges_ = state_array(arrays, "bin_edges", shape=(m, self.n_bins - 1), minimum=0.0, maximum=1.0,
                                      increasing="weak", owner=cls)
        self.bin_frequencies_ = state_array(arrays, "bin_frequencies", shape=(m, self.n_bins), minimum=0.0,
                                            maximum=1.0, owner=cls)
