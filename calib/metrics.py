"""Calibration metrics on probabilities: pure functions returning floats.

Conventions (stated because published tables differ):

* ``brier_score`` is the mean over samples of the sum over classes of (p_c - 1[y = c])^2 (range
  [0, 2]). Kull et al. 2019 tabulate the mean over all n*k entries: divide by k to compare.
* ``expected_calibration_error`` is top-label ECE, reported as a fraction. Equal-width bins are
  ``(lo, hi]`` over [0, 1] (a confidence of exactly 0 joins the first bin), as in Guo et al. 2017 and
  netcal; equal-mass bins hold ``n // n_bins`` or one more samples each, in order of confidence.
* ``classwise_ece`` is the mean over classes of the per-class ECE of p_c against 1[y = c]. Kull et al.
  2019 tabulate the **sum** over classes with ``np.digitize`` bins: use ``reduction="sum",
  binning="digitize"`` to reproduce their numbers.
* ``negative_log_likelihood`` clips p_y at 1e-15 (as scikit-learn's ``log_loss`` did up to 1.4).
* ``debiased_ece`` is Kumar, Liang & Ma (2019)'s debiased estimate of the **l2** (root-mean-square)
  top-label calibration error over 15 equal-mass bins (their ``uncertainty-calibration`` package's
  ``get_calibration_error(probs, labels, p=2, debias=True, mode="top-label")`` for continuous
  probabilities); ``squared=True`` gives the unbiased squared error itself (may be negative).
* ``smooth_ece`` is Blasiok & Nakkiran (2023)'s smooth ECE of the top-label confidence with their automatic
  bandwidth (the fixed point sigma = smECE_sigma), discretised as their ``relplot`` package (1.0.3) does.

See docs/metrics.md for what each estimator measures and its bias.

Accumulation is in float64 whatever the input precision; large inputs are processed in row chunks.
"""

from __future__ import annotations

import numpy as np

from calib import _chunks as chunking
from calib._validation import as_array, check_binary, check_choice, check_positive_int, check_probs_labels

__all__ = [
    "accuracy",
    "negative_log_likelihood",
    "brier_score",
    "expected_calibration_error",
    "maximum_calibration_error",
    "classwise_ece",
    "calibration_bins",
    "debiased_ece",
    "smooth_ece",
    "summary",
    "BINNINGS",
]

BINNINGS = ("width", "mass", "digitize")
_NLL_CLIP = 1e-15


def _chunks(n, k):
    step = chunking.rows_per_chunk(k, entries=chunking.REDUCE)
    return range(0, n, step), step


def accuracy(probs, labels):
    """Share of rows whose argmax equals the label.

    >>> accuracy(np.array([[0.9, 0.1], [0.6, 0.4]]), np.array([0, 1]))
    0.5
    """
    _, y, pred = check_probs_labels(probs, labels, return_argmax=True)
    return float(np.mean(pred == y))


def negative_log_likelihood(probs, labels):
    """Mean of ``-log p_y`` (natural log), p_y clipped at 1e-15.

    >>> round(negative_log_likelihood(np.array([[0.5, 0.5], [0.25, 0.75]]), np.array([0, 1])), 6)
    0.490415
    """
    return _nll(*check_probs_labels(probs, labels))


def _nll(p, y):
    py = np.take_along_axis(p, y[:, None], axis=1)[:, 0].astype(np.float64)
    return float(-np.mean(np.log(np.maximum(py, _NLL_CLIP))))


def brier_score(probs, labels):
    """Mean over samples of ``sum_c (p_c - 1[y = c])^2``.

    >>> brier_score(np.array([[1.0, 0.0], [0.5, 0.5]]), np.array([0, 0]))
    0.25
    """
    return _brier(*check_probs_labels(probs, labels))


def _brier(p, y):
    n, k = p.shape
    starts, step = _chunks(n, k)
    total = 0.0
    for s in starts:
        block = p[s:s + step]
        sq = np.einsum("ij,ij->i", block, block, dtype=np.float64)
        py = np.take_along_axis(block, y[s:s + step, None], axis=1)[:, 0].astype(np.float64)
        total += float(np.sum(sq - 2.0 * py + 1.0))
    return total / n


def _bin_index(values, n_bins, binning):
    """Bin of each value in [0, 1]: 'width' (lo, hi], 'mass' equal counts, 'digitize' Kull et al."""
    if binning == "width":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
        idx = np.searchsorted(edges, values, side="left") - 1
        return np.clip(idx, 0, n_bins - 1)
    if binning == "digitize":
        # np.digitize(p, linspace(0, 1, n_bins)) - 1: n_bins - 1 bins [lo, hi) of width 1/(n_bins - 1),
        # plus a last bin holding p == 1 exactly.
        return np.digitize(values, np.linspace(0.0, 1.0, n_bins)) - 1
    order = np.argsort(values, kind="stable")
    idx = np.empty(values.shape[0], dtype=np.int64)
    idx[order] = (np.arange(values.shape[0]) * n_bins) // values.shape[0]
    return idx


_CONF_SLACK = 1e-3  # probabilities of rows summing to 1 within check_probs' tolerance may exceed 1 by this


def _check_binned(confidence, correct, conf_name="confidence", hit_name="correct"):
    """``confidence`` (n,) finite in [0, 1], n >= 1, and ``correct`` (n,) booleans or 0/1 integers."""
    c = as_array(confidence, conf_name)
    if c.dtype.kind not in "biuf":
        raise TypeError(f"Expected {conf_name} as real numbers in [0, 1], got dtype {c.dtype}.")
    if c.ndim != 1 or c.size == 0:
        raise ValueError(f"Expected {conf_name} of shape (n_samples,) with n >= 1, got shape {c.shape}.")
    c = np.asarray(c, dtype=np.float64)
    bad = ~(np.isfinite(c) & (c >= -_CONF_SLACK) & (c <= 1 + _CONF_SLACK))
    if bad.any():
        raise ValueError(f"Expected {conf_name} in [0, 1], got {int(bad.sum())} entries outside it or NaN "
                         f"(e.g. {float(c[bad][0])!r}).")
    h = as_array(correct, hit_name)
    if h.shape != c.shape:
        raise ValueError(f"Expected {hit_name} of length {c.size} (one per {conf_name}), got shape {h.shape}.")
    return c, check_binary(h, hit_name)


def calibration_bins(confidence, correct, *, n_bins=15, binning="width"):
    """Per-bin counts, mean confidence and accuracy for a reliability diagram or an ECE.

    Returns ``(count, mean_confidence, accuracy)``, each of shape (n_bins,); empty bins hold NaN means.

    >>> count, conf, acc = calibration_bins(np.array([0.9, 0.6]), np.array([1, 0]), n_bins=2)
    >>> count.tolist(), conf.tolist(), acc.tolist()
    ([0, 2], [nan, 0.75], [nan, 0.5])
    """
    n_bins = check_positive_int(n_bins, "n_bins")
    check_choice(binning, "binning", BINNINGS)
    conf, hit = _check_binned(confidence, correct)
    idx = _bin_index(conf, n_bins, binning)
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / count
        acc = np.bincount(idx, weights=hit, minlength=n_bins) / count
    return count, mean_conf, acc


def _top_label(probs, labels):
    p, y, pred = check_probs_labels(probs, labels, return_argmax=True)
    return _top_from(p, y, pred)


def _top_from(p, y, pred):
    conf = np.take_along_axis(p, pred[:, None], axis=1)[:, 0]
    return conf, pred == y


def _check_bin_options(n_bins, binning):
    return check_positive_int(n_bins, "n_bins"), check_choice(binning, "binning", BINNINGS)


def expected_calibration_error(probs, labels, *, n_bins=15, binning="width"):
    """Top-label ECE: ``sum_b |acc_b - conf_b| * n_b / n`` over confidence bins.

    Parameters
    ----------
    probs : ndarray of shape (n_samples, n_classes)
    labels : ndarray of shape (n_samples,)
    n_bins : int, default 15
    binning : {"width", "mass", "digitize"}, default "width"
        Equal-width ``(lo, hi]`` bins, equal-mass bins, or Kull et al.'s ``np.digitize`` bins.

    >>> round(expected_calibration_error(np.array([[0.9, 0.1], [0.6, 0.4]]), np.array([0, 1]), n_bins=2), 6)
    0.25
    """
    n_bins, binning = _check_bin_options(n_bins, binning)
    conf, hit = _top_label(probs, labels)
    return _ece(conf, hit, n_bins, binning)


def _ece(conf, hit, n_bins, binning):
    count, mean_conf, acc = calibration_bins(conf, hit, n_bins=n_bins, binning=binning)
    filled = count > 0
    return float(np.sum(np.abs(acc[filled] - mean_conf[filled]) * count[filled]) / conf.shape[0])


def maximum_calibration_error(probs, labels, *, n_bins=15, binning="width"):
    """Top-label MCE: the largest ``|acc_b - conf_b|`` over non-empty bins.

    >>> maximum_calibration_error(np.array([[0.9, 0.1], [0.6, 0.4]]), np.array([0, 1]), n_bins=2)
    0.25
    """
    n_bins, binning = _check_bin_options(n_bins, binning)
    conf, hit = _top_label(probs, labels)
    return _mce(conf, hit, n_bins, binning)


def _mce(conf, hit, n_bins, binning):
    count, mean_conf, acc = calibration_bins(conf, hit, n_bins=n_bins, binning=binning)
    filled = count > 0
    return float(np.max(np.abs(acc[filled] - mean_conf[filled])))


def classwise_ece(probs, labels, *, n_bins=15, binning="width", reduction="mean"):
    """Classwise ECE: per class c, the ECE of p_c against 1[y = c]; averaged (or summed) over classes.

    ``reduction="sum", binning="digitize"`` reproduces the values tabulated by Kull et al. 2019.

    >>> p = np.array([[0.9, 0.1], [0.6, 0.4]])
    >>> round(classwise_ece(p, np.array([0, 1]), n_bins=2), 6)
    0.25
    """
    n_bins = check_positive_int(n_bins, "n_bins")
    check_choice(binning, "binning", BINNINGS)
    check_choice(reduction, "reduction", ("mean", "sum"))
    return _classwise(*check_probs_labels(probs, labels), n_bins, binning, reduction)


def _classwise(p, y, n_bins, binning, reduction):
    n, k = p.shape
    if binning == "mass":
        per_class = np.array([
            expected_calibration_error_binary(p[:, c], y == c, n_bins=n_bins, binning="mass") for c in range(k)
        ])
    else:
        n_slots = n_bins + (1 if binning == "digitize" else 0)
        diff = np.zeros(k * n_slots)
        count = np.zeros(k * n_slots)
        offset = np.arange(k) * n_slots
        starts, step = _chunks(n, k)
        for s in starts:
            block = p[s:s + step].astype(np.float64)
            idx = (_bin_index(block, n_bins, binning) + offset).ravel()
            onehot = np.zeros_like(block)
            np.put_along_axis(onehot, y[s:s + step, None], 1.0, axis=1)
            diff += np.bincount(idx, weights=(block - onehot).ravel(), minlength=k * n_slots)
            count += np.bincount(idx, minlength=k * n_slots)
        per_class = np.abs(diff).reshape(k, n_slots).sum(axis=1) / n
    return float(per_class.sum() if reduction == "sum" else per_class.mean())


def expected_calibration_error_binary(prob_positive, is_positive, *, n_bins=15, binning="width"):
    """ECE of a probability for one event against its 0/1 outcomes (the per-class term of classwise ECE).

    ``prob_positive`` (n,) in [0, 1]; ``is_positive`` (n,) booleans or 0/1 integers."""
    conf, hit = _check_binned(prob_positive, is_positive, "prob_positive", "is_positive")
    count, mean_conf, freq = calibration_bins(conf, hit, n_bins=n_bins, binning=binning)
    filled = count > 0
    return float(np.sum(np.abs(freq[filled] - mean_conf[filled]) * count[filled]) / conf.shape[0])


# --- debiased ECE (Kumar, Liang & Ma 2019) -----------------------------------------------------------------

DEBIAS_BINNINGS = ("mass", "width")
DEBIAS_MODES = ("top-label", "marginal")


def debiased_ece(probs, labels, *, n_bins=15, binning="mass", mode="top-label", squared=False):
    """Debiased l2 calibration error of Kumar, Liang & Ma (2019, "Verified uncertainty calibration").

    Over bins b holding n_b of the n items (mean confidence c_b, accuracy a_b), the plug-in squared error
    ``sum_b (n_b / n) (c_b - a_b)^2`` is biased upwards by the sampling variance of a_b; their estimator
    subtracts it bin by bin::

        D = sum_b (n_b / n) [ (c_b - a_b)^2 - a_b (1 - a_b) / (n_b - 1) ]      (bins with n_b < 2 add 0)

    Returns ``sqrt(max(D, 0))``: an estimate of the **l2 (root-mean-square) calibration error**, not of the
    l1 ECE of :func:`expected_calibration_error` (by Jensen l2 >= l1). ``squared=True`` returns D itself,
    unbiased for the binned squared error and therefore sometimes negative.

    Parameters
    ----------
    probs : ndarray (n_samples, n_classes); labels : ndarray (n_samples,)
    n_bins : int, default 15
    binning : {"mass", "width"}, default "mass"
        "mass": their equal-mass bins -- the sorted confidences split into ``n_bins`` runs of ``n // n_bins``
        or one more (larger runs first, as ``np.array_split``), each upper edge the midpoint between the
        runs' neighbouring values, equal edges merged (so tied confidences share a bin); bins ``(lo, hi]``.
        "width": edges ``i / n_bins``, bins ``(lo, hi]``.
    mode : {"top-label", "marginal"}, default "top-label"
        "top-label": the max probability against correctness. "marginal": per class c, p_c against
        1[y = c]; the result is ``sqrt(mean_c max(D_c, 0))`` (``squared=True``: ``mean_c D_c``).

    Equals ``calibration.get_calibration_error(probs, labels, p=2, debias=True, mode=mode)`` of the
    ``uncertainty-calibration`` package for continuous probabilities (its ``lower_bound_scaling_ce`` with
    ``num_bins=15`` and equal-mass bins); float64 throughout.

    >>> p = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])
    >>> round(debiased_ece(p, np.array([0, 0, 1, 0]), n_bins=2), 6)
    0.0
    >>> round(debiased_ece(p, np.array([0, 0, 1, 0]), n_bins=2, squared=True), 6)
    -0.1025
    """
    n_bins = check_positive_int(n_bins, "n_bins")
    check_choice(binning, "binning", DEBIAS_BINNINGS)
    check_choice(mode, "mode", DEBIAS_MODES)
    if not isinstance(squared, (bool, np.bool_)):
        raise TypeError(f"Expected squared as True or False, got {type(squared).__name__} {squared!r}.")
    p, y, pred = check_probs_labels(probs, labels, return_argmax=True)
    if mode == "top-label":
        conf, hit = _top_from(p, y, pred)
        d = _DebiasedECE(conf, hit, n_bins, binning).squared()
        return float(d) if squared else float(np.sqrt(max(d, 0.0)))
    per_class = np.array([_DebiasedECE(p[:, c], y == c, n_bins, binning).squared() for c in range(p.shape[1])])
    return float(per_class.mean()) if squared else float(np.sqrt(np.maximum(per_class, 0.0).mean()))


class _DebiasedECE:
    """Kumar et al.'s unbiased squared binned error of (conf, hit), optionally with integer weights (the
    bootstrap's resample counts: weight w is the item repeated w times). Items are sorted once; every bin is a
    run of the sorted items, so its sums are differences of prefix sums (O(n) per weight vector)."""

    def __init__(self, conf, hit, n_bins, binning):
        conf = np.asarray(conf, dtype=np.float64)
        self.order = np.argsort(conf, kind="stable")
        self.sorted = conf[self.order]
        self.hit_sorted = np.asarray(hit, dtype=np.float64)[self.order]
        self.n_bins = n_bins
        self.binning = binning
        if binning == "width":  # get_equal_prob_bins: i * 1.0 / n_bins, i = 1..n_bins
            self.edges = np.arange(1, n_bins + 1) * 1.0 / n_bins

    def _mass_edges(self, cum):
        m = round(cum[-1])
        nb = min(self.n_bins, m)
        q, r = divmod(m, nb)
        sizes = np.full(nb, q, dtype=np.int64)
        sizes[:r] += 1
        starts = np.cumsum(sizes)[:-1]  # first rank of runs 1..nb-1 in the (weighted) sorted sample
        last = self.sorted[np.searchsorted(cum, starts - 1, side="right")]
        first = self.sorted[np.searchsorted(cum, starts, side="right")]
        return np.unique(np.append((last + first) / 2.0, 1.0))

    def squared(self, weights=None):
        ws = np.ones(self.sorted.size) if weights is None else np.asarray(weights, dtype=np.float64)[self.order]
        cum = np.cumsum(ws)
        edges = self._mass_edges(cum) if self.binning == "mass" else self.edges
        # bins (lo, hi]: the items up to edge e are the first searchsorted(sorted, e, "right"); above the last
        # edge (1.0 plus rounding) they join the last bin, as in the package
        ends = np.searchsorted(self.sorted, edges, side="right")
        ends[-1] = self.sorted.size
        bounds = np.concatenate([[0], ends])
        def run_sums(values):
            c = np.concatenate([[0.0], np.cumsum(values)])
            return c[bounds[1:]] - c[bounds[:-1]]
        nb = run_sums(ws)
        sc, sh = run_sums(ws * self.sorted), run_sums(ws * self.hit_sorted)
        ok = nb >= 2
        nb, mc, mh = nb[ok], sc[ok] / nb[ok], sh[ok] / nb[ok]
        return float(np.sum(nb * ((mc - mh) ** 2 - mh * (1.0 - mh) / (nb - 1.0))) / cum[-1])


# --- smooth ECE (Blasiok & Nakkiran 2023) ------------------------------------------------------------------

_SMECE_DENSITY_EPS = 1e-4  # relplot's BaseKernelMixin.smooth(eps)
_SMECE_MIN_SIGMA = 1e-3  # relplot's smECE(eps): bandwidths below this count as solved
_SMECE_REFINE = 10  # bisection steps of relplot's search_param


def smooth_ece(probs, labels, *, sigma=None, return_sigma=False):
    """Smooth ECE of the top-label confidence (Blasiok & Nakkiran 2023, "Smooth ECE: principled reliability
    diagrams via kernel smoothing").

    With r_i = conf_i - 1[correct_i], the residuals and the item density are smoothed with a Gaussian kernel
    of bandwidth sigma reflected at 0 and 1 (r_hat(t), delta_hat(t)); the smooth ECE at sigma is
    ``int |r_hat(t)| delta_hat(t) dt / int delta_hat(t) dt``, an l1 quantity on the scale of the ECE (a
    fraction). ``sigma=None`` picks their automatic bandwidth, the fixed point ``smECE_sigma = sigma``, by
    their bisection (10 halvings of [0, 1], keeping the upper end; widths below 1e-3 count as solved).

    The discretisation is relplot 1.0.3's (``relplot.smECE(conf, correct)`` with its default reflected
    Gaussian kernel): items are spread linearly onto a grid of ``max(2000, round(20 / sigma)) // 2 + 1``
    points, smoothed by convolution (here by FFT), linearly interpolated at ``max(round(10 / sigma), 200)``
    evaluation points, the density offset by 1e-4. Inputs are used in float64 (pass float64 confidences to
    relplot to compare).

    ``return_sigma=True`` returns ``(smooth_ece, sigma)``.

    >>> p = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])
    >>> round(smooth_ece(p, np.array([0, 0, 1, 0]), sigma=0.1), 4)
    0.0911
    """
    if sigma is not None:
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float, np.floating, np.integer)) \
                or not np.isfinite(sigma) or not 0 < sigma <= 1:
            raise ValueError(f"Expected sigma as a bandwidth in (0, 1] or None (automatic), got {sigma!r}.")
        sigma = float(sigma)
    conf, hit = _top_label(probs, labels)
    value, s = _SmoothECE(conf, hit).value(sigma=sigma)
    return (value, s) if return_sigma else value


class _SmoothECE:
    """relplot's smooth ECE of (conf, hit), optionally with integer weights (bootstrap counts). The grid
    position of every item is computed once per grid size and reused across bandwidths and weights."""

    def __init__(self, conf, hit):
        self.conf = np.asarray(conf, dtype=np.float64)
        self.resid = self.conf - np.asarray(hit, dtype=np.float64)
        self._grids = {}
        self._kernels = {}
        self._interp = {}

    def _grid(self, n_grid):
        if n_grid not in self._grids:
            x = self.conf * (n_grid - 1)
            b = x.astype(np.int64).clip(0, n_grid - 2)
            self._grids[n_grid] = (b, x - b)
        return self._grids[n_grid]

    def _spectrum(self, n_grid, weights, spectra):
        """FFT of the reflected grid values of (residual, count) for ``weights``: shared by every bandwidth
        with this grid size (``spectra``: n_grid -> (spectrum, nfft) for these weights)."""
        if n_grid not in spectra:
            b, frac = self._grid(n_grid)
            w = np.ones(self.conf.size) if weights is None else np.asarray(weights, dtype=np.float64)
            rows = []
            for v in (self.resid * w, w):
                rows.append(np.bincount(b, weights=(1 - frac) * v, minlength=n_grid)
                            + np.bincount(b + 1, weights=frac * v, minlength=n_grid))
            values = np.stack(rows)
            ext = np.concatenate([values[:, ::-1][:, :-1], values, values[:, ::-1][:, 1:]], axis=1)
            # relplot keeps the centre n_grid points of the 'valid' part of ext (3E - 2) * kernel (E): full
            # indices [3h, 5h] of 0..8h (E = 2h + 1). A circular convolution of size N > 5h leaves them exact.
            nfft = _fast_size(5 * (n_grid // 2) + 1)
            spectra[n_grid] = (np.fft.rfft(ext, nfft, axis=1), nfft)
        return spectra[n_grid]

    def _kernel(self, sigma, n_grid, nfft):
        """FFT of relplot's GaussianKernel.kernel_ev(n_grid) for ``sigma`` (cached: bisections revisit them)."""
        key = (sigma, n_grid, nfft)
        if key not in self._kernels:
            t = np.linspace(0, 1, n_grid)
            ker = np.exp(-(t - 0.5) * (t - 0.5) / (2 * sigma ** 2)) / (np.sqrt(2 * np.pi) * sigma)
            self._kernels[key] = np.fft.rfft(ker, nfft)
        return self._kernels[key]

    def _interpolation(self, n_eval, n_grid):
        """relplot's kernels.interpolate(linspace(0, 1, n_eval), y) as (indices, weights), cached."""
        key = (n_eval, n_grid)
        if key not in self._interp:
            t = np.linspace(0, 1, n_eval)
            step = 1 / (n_grid - 1)
            inds = (t * (n_grid - 1)).astype(np.int64).clip(0, n_grid - 2)
            self._interp[key] = (inds, (t - inds * step) / step)
        return self._interp[key]

    def at(self, sigma, weights=None, spectra=None):
        n_eval = max(round(10 / sigma), 200)
        n_grid = max(2000, round(20 / sigma)) // 2 + 1
        spec, nfft = self._spectrum(n_grid, weights, {} if spectra is None else spectra)
        full = np.fft.irfft(spec * self._kernel(sigma, n_grid, nfft), nfft, axis=1)
        smoothed = full[:, n_grid - 1 + n_grid // 2: n_grid - 1 + n_grid // 2 + n_grid]
        inds, resid = self._interpolation(n_eval, n_grid)
        ys, dens = smoothed[:, inds] * (1 - resid) + smoothed[:, inds + 1] * resid
        dens = dens + _SMECE_DENSITY_EPS
        ys = ys / dens
        return float(np.sum(np.abs(ys) * dens) / np.sum(dens))

    def value(self, weights=None, sigma=None):
        if sigma is not None:
            return self.at(sigma, weights), sigma
        cache, spectra = {}, {}

        def solved(alpha):  # relplot: alpha < eps or alpha < smECE_alpha
            if alpha < _SMECE_MIN_SIGMA:
                return True
            cache[alpha] = self.at(alpha, weights, spectra)
            return alpha < cache[alpha]

        if solved(1.0):
            s = 1.0
        else:
            s, end = 1.0, 0.0
            for _ in range(_SMECE_REFINE):
                mid = (s + end) / 2
                if solved(mid):
                    end = mid
                else:
                    s = mid
        return (cache[s] if s in cache else self.at(s, weights, spectra)), s


def _fast_size(n):
    """Smallest 2^a 3^b 5^c >= n (a quick FFT length)."""
    best = 1 << (n - 1).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35
            while m < n:
                m *= 2
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best


def summary(probs, labels, *, n_bins=15):
    """The standard metric dict: accuracy, nll, brier, ece, ece_mass, mce, classwise_ece."""
    n_bins = check_positive_int(n_bins, "n_bins")
    p, y, pred = check_probs_labels(probs, labels, return_argmax=True)  # validated once for all metrics
    conf, hit = _top_from(p, y, pred)
    return {
        "accuracy": float(np.mean(hit)),
        "nll": _nll(p, y),
        "brier": _brier(p, y),
        "ece": _ece(conf, hit, n_bins, "width"),
        "ece_mass": _ece(conf, hit, n_bins, "mass"),
        "mce": _mce(conf, hit, n_bins, "width"),
        "classwise_ece": _classwise(p, y, n_bins, "width", "mean"),
    }
