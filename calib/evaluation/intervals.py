"""Intervals that say what they cover (docs/metrics.md).

Three kinds of interval appear in ``metrics.json``; each holds something fixed, and says so in its ``method``:

* :func:`calibration_bootstrap` -- calibration metrics (ECE, classwise ECE, NLL, Brier, debiased and smooth
  ECE, accuracy) of one or more probability arrays on the same test items, and the paired difference
  between two of them (the same resampled items on both sides). Percentile bootstrap over **test items,
  the fitted calibrator held fixed**: it covers the metric of this calibrator on the test population.
* the policy block's ``ci`` (:func:`calib.evaluation.product_metrics.product_metrics`) -- percentile
  bootstrap over test items with **the fitted policy (threshold) held fixed**, i.e. conditional on the
  calibration split.
* :func:`procedure_bootstrap` -- **procedure level**: each resample draws the calibration rows and the test
  rows with replacement, refits everything (calibrator, conformal predictor, policy) and scores it; the
  percentile interval covers what the whole procedure gives on a fresh calibration and test set of these
  sizes, the variation of the fitted threshold included.

Bootstrap resamples draw n items with replacement; a resample is represented by its counts (how often each
item was drawn), so every metric is a weighted sum over the original items: per-item and per-bin sums are
matrix products with the (chunk of resamples x items) count matrix; the metrics whose bins depend on the
sample (equal-mass debiased ECE, smooth ECE's bandwidth) loop over resamples with O(n) numpy each.
Percentile intervals: Efron & Tibshirani (1993), ``np.quantile`` (linear interpolation) of the finite
resampled values.
"""

from __future__ import annotations

import logging
import numbers
import time
import warnings

import numpy as np

from calib import metrics as _metrics
from calib._validation import (
    check_fraction,
    check_labels,
    check_positive_int,
    check_probs_labels,
)

__all__ = [
    "CALIBRATION_CI_METHOD",
    "CI_METRICS",
    "PROCEDURE_CI_METHOD",
    "calibration_bootstrap",
    "percentile_interval",
    "procedure_bootstrap",
    "resample_indices",
]

log = logging.getLogger(__name__)

#: Calibration metrics given an interval by :func:`calibration_bootstrap` (keys of metrics.json's blocks).
CI_METRICS = ("accuracy", "nll", "brier", "ece", "classwise_ece", "ece_debiased", "smece")

CALIBRATION_CI_METHOD = ("percentile bootstrap over test items (the same resampled items for every block and the "
                         "difference), fitted calibrator held fixed")
PROCEDURE_CI_METHOD = ("percentile bootstrap of the whole procedure: per resample the calibration rows and the test "
                       "rows are drawn with replacement and the calibrator, conformal predictor and policy are refitted")

_CELLS = 1 << 21  # entries of a (resamples x items) block of counts: 16 MB of float64


def _check_seed(seed):
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"Expected seed as an integer >= 0, got {seed!r}.")
    return int(seed)


def percentile_interval(values, confidence_level=0.95):
    """``[lo, hi]`` percentile interval of the finite entries of ``values`` (None when there are none)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return None
    a = (1.0 - confidence_level) / 2.0
    return [float(np.quantile(v, a)), float(np.quantile(v, 1.0 - a))]


def resample_indices(rng, n, size=None):
    """Indices of a bootstrap resample of ``n`` items (``size`` resamples as rows when given)."""
    return rng.integers(0, n, size=(n,) if size is None else (size, n))


# --- calibration metrics -----------------------------------------------------------------------------------

class _Block:
    """Per-item quantities of one probability array, so that every metric of :data:`CI_METRICS` is a
    function of the resample counts ``W`` (b, n): ``metric(W)`` equals the metric of the materialised
    resample (tests/test_intervals.py checks it against calib.metrics on ``probs[idx]``)."""

    def __init__(self, probs, labels, n_bins, wanted):
        p, y, pred = check_probs_labels(probs, labels, return_argmax=True)
        self.wanted = wanted
        n, k = p.shape
        self.n, self.k, self.n_bins = n, k, n_bins
        conf, hit = _metrics._top_from(p, y, pred)
        conf = np.asarray(conf, dtype=np.float64)
        hit = hit.astype(np.float64)
        self.hit = hit
        py = np.take_along_axis(p, y[:, None], axis=1)[:, 0].astype(np.float64)
        self.nll = -np.log(np.maximum(py, _metrics._NLL_CLIP))
        if "brier" in wanted:
            self.brier = np.einsum("ij,ij->i", p, p, dtype=np.float64) - 2.0 * py + 1.0
        if "ece" in wanted:  # top-label, equal-width (lo, hi] bins: sum_b |sum_{i in b} (conf - hit)| / n
            b = _metrics._bin_index(conf, n_bins, "width")
            self.ece_d = np.zeros((n, n_bins))
            self.ece_d[np.arange(n), b] = conf - hit
        if "classwise_ece" in wanted:
            self._prepare_classwise(p, y)
        if "ece_debiased" in wanted:
            self.debiased = _metrics._DebiasedECE(conf, hit, n_bins, "mass")
        if "smece" in wanted:
            self.smooth = _metrics._SmoothECE(conf, hit)

    def _prepare_classwise(self, p, y):
        # Per class c and equal-width bin of p_c: sum of w_i (p_ic - 1[y_i = c]). Bin 0 holds most entries:
        # it is the class total (W @ (P - Y)) minus the other bins, which are sparse (p_ic > 1 / n_bins).
        from scipy import sparse

        n, k, nb = self.n, self.k, self.n_bins
        block = p.astype(np.float64)
        resid = block.copy()
        resid[np.arange(n), y] -= 1.0
        self.cw_resid = resid
        bins = _metrics._bin_index(block, nb, "width")
        rows, cols = np.nonzero(bins > 0)
        slot = cols * nb + bins[rows, cols]
        used, slot = np.unique(slot, return_inverse=True)
        self.cw_sparse = sparse.csr_matrix((resid[rows, cols], (rows, slot)), shape=(n, used.size))
        self.cw_onehot = np.zeros((used.size, k))
        self.cw_onehot[np.arange(used.size), used // nb] = 1.0

    def metrics(self, w):
        """Dict of (b,) arrays for counts ``w`` of shape (b, n) (one row per resample)."""
        n = self.n
        out = {}
        if "accuracy" in self.wanted:
            out["accuracy"] = w @ self.hit / n
        if "nll" in self.wanted:
            out["nll"] = w @ self.nll / n
        if "brier" in self.wanted:
            out["brier"] = w @ self.brier / n
        if "ece" in self.wanted:
            out["ece"] = np.abs(w @ self.ece_d).sum(axis=1) / n
        if "classwise_ece" in self.wanted:
            total = w @ self.cw_resid  # (b, k)
            sums = np.asarray(w @ self.cw_sparse)  # (b, non-empty (class, bin >= 1) slots)
            bin0 = total - sums @ self.cw_onehot  # what is left is bin 0 of each class
            out["classwise_ece"] = (np.abs(bin0).sum(axis=1) + np.abs(sums).sum(axis=1)) / n / self.k
        if "ece_debiased" in self.wanted:  # one O(n) pass per resample
            out["ece_debiased"] = np.array([np.sqrt(max(self.debiased.squared(row), 0.0)) for row in w])
        if "smece" in self.wanted:
            out["smece"] = np.array([self.smooth.value(row)[0] for row in w])
        return out


def calibration_bootstrap(probs, labels, *, difference=None, n_bins=15, n_resamples=1000, confidence_level=0.95,
                          seed=0, metrics=CI_METRICS):
    """Percentile bootstrap intervals of calibration metrics over the test items, calibrators held fixed.

    Parameters
    ----------
    probs : dict of name -> ndarray (n, k)
        Probability arrays on the same items (e.g. ``{"uncalibrated": ..., "calibrated": ...}``).
    labels : ndarray (n,)
    difference : (str, str), optional
        ``(a, b)``: also the paired interval of ``metric[a] - metric[b]`` (the same resampled items on both
        sides), e.g. ``("calibrated", "uncalibrated")``.
    n_bins : int, default 15      bins of ``ece`` and ``classwise_ece`` (equal width, as in metrics.json)
    n_resamples : int, default 1000
    confidence_level : float in (0, 1), default 0.95
    seed : int, default 0
    metrics : names from :data:`CI_METRICS`

    Returns
    -------
    dict: ``method``, ``level``, ``n_resamples``, ``seed``, ``metrics`` (the names), one block per name of
    ``probs`` ({metric: [lo, hi]}) and, with ``difference``, ``"difference"`` ({metric: [lo, hi]} of a - b)
    and ``"difference_of"`` ([a, b]).

    The metric definitions are calib.metrics': ``ece`` top-label equal-width, ``classwise_ece`` the mean over
    classes, ``ece_debiased`` :func:`calib.metrics.debiased_ece` (l2, 15 equal-mass bins), ``smece``
    :func:`calib.metrics.smooth_ece` with its bandwidth re-chosen on every resample.
    """
    if not isinstance(probs, dict) or not probs:
        raise TypeError(f"Expected probs as a non-empty dict of name -> probability array, got {type(probs).__name__}.")
    n_bins = check_positive_int(n_bins, "n_bins")
    n_resamples = check_positive_int(n_resamples, "n_resamples")
    level = check_fraction(confidence_level, "confidence_level")
    seed = _check_seed(seed)
    metrics = tuple(metrics)
    unknown = sorted(set(metrics) - set(CI_METRICS))
    if unknown or not metrics:
        raise ValueError(f"Expected metrics from {list(CI_METRICS)}, got {list(metrics)}.")
    if difference is not None and (not isinstance(difference, (tuple, list)) or len(difference) != 2
                                   or any(d not in probs for d in difference)):
        raise ValueError(f"Expected difference as two names of probs {sorted(probs)}, got {difference!r}.")
    y = check_labels(labels, "labels")
    blocks = {name: _Block(p, y, n_bins, metrics) for name, p in probs.items()}
    n = y.size
    rng = np.random.default_rng(seed)
    values = {name: {m: [] for m in metrics} for name in blocks}
    diffs = {m: [] for m in metrics}
    step = max(1, min(n_resamples, _CELLS // max(n, 1)))
    for start in range(0, n_resamples, step):
        b = min(step, n_resamples - start)
        idx = resample_indices(rng, n, b)  # row r: the items of resample start + r
        w = np.bincount((idx + n * np.arange(b)[:, None]).ravel(), minlength=b * n).reshape(b, n).astype(np.float64)
        got = {name: blk.metrics(w) for name, blk in blocks.items()}
        for name in blocks:
            for m in metrics:
                values[name][m].append(got[name][m])
        if difference is not None:
            for m in metrics:
                diffs[m].append(got[difference[0]][m] - got[difference[1]][m])
    out = {"method": CALIBRATION_CI_METHOD, "level": level, "n_resamples": n_resamples, "seed": seed,
           "metrics": list(metrics)}
    for name in blocks:
        out[name] = {m: percentile_interval(np.concatenate(values[name][m]), level) for m in metrics}
    if difference is not None:
        out["difference_of"] = list(difference)
        out["difference"] = {m: percentile_interval(np.concatenate(diffs[m]), level) for m in metrics}
    return out


# --- procedure level ---------------------------------------------------------------------------------------

def procedure_bootstrap(fit_and_score, n_cal, n_test, *, n_resamples=200, confidence_level=0.95, seed=0,
                        progress=None):
    """Percentile interval of a whole fit-and-evaluate procedure, the calibration part resampled too.

    Parameters
    ----------
    fit_and_score : callable ``(cal_idx, test_idx) -> dict of float``
        Fits everything afresh on the calibration rows ``cal_idx`` (indices into the calibration part, with
        repeats) and returns the metrics of the test rows ``test_idx``. Values that are None or not finite
        (e.g. a selective risk with nothing answered) are left out of that metric's interval and counted.
    n_cal, n_test : int      sizes of the calibration and test parts (each resample draws that many)
    n_resamples : int, default 200
    confidence_level : float in (0, 1), default 0.95
    seed : int, default 0
    progress : callable ``(done, total, elapsed_s)``, optional; default: an INFO log line about every 10 s

    Returns
    -------
    dict: ``method``, ``level``, ``n_resamples``, ``seed``, ``ci`` ({metric: [lo, hi] or None}),
    ``n_undefined`` ({metric: resamples where it was undefined}, only those > 0), ``n_warned`` (resamples
    whose fit warned, e.g. a temperature fit that did not converge or a policy that certified nothing).
    """
    if not callable(fit_and_score):
        raise TypeError(f"Expected fit_and_score as a callable (cal_idx, test_idx) -> dict, got "
                        f"{type(fit_and_score).__name__}.")
    n_cal = check_positive_int(n_cal, "n_cal")
    n_test = check_positive_int(n_test, "n_test")
    n_resamples = check_positive_int(n_resamples, "n_resamples")
    level = check_fraction(confidence_level, "confidence_level")
    seed = _check_seed(seed)
    rng = np.random.default_rng(seed)
    values = {}
    n_warned = 0
    start = last = time.perf_counter()
    for r in range(n_resamples):
        cal_idx = resample_indices(rng, n_cal)
        test_idx = resample_indices(rng, n_test)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            scores = fit_and_score(cal_idx, test_idx)
        n_warned += bool(caught)
        if not isinstance(scores, dict):
            raise TypeError(f"Expected fit_and_score to return a dict of metric -> float, got {type(scores).__name__}.")
        if r == 0:
            values = {k: np.full(n_resamples, np.nan) for k in scores}
        elif set(scores) != set(values):
            raise ValueError(f"Expected fit_and_score to return the same keys on every resample, got {sorted(scores)} "
                             f"after {sorted(values)}.")
        for k, v in scores.items():
            values[k][r] = np.nan if v is None else float(v)
        now = time.perf_counter()
        if progress is not None:
            progress(r + 1, n_resamples, now - start)
        elif now - last > 10.0:
            log.info("procedure bootstrap: %d/%d resamples, %.0f s", r + 1, n_resamples, now - start)
            last = now
    log.info("procedure bootstrap: %d resamples in %.1f s", n_resamples, time.perf_counter() - start)
    if n_warned:
        log.warning("procedure bootstrap: the fit warned on %d of %d resamples (warnings suppressed there)",
                    n_warned, n_resamples)
    ci = {k: percentile_interval(v, level) for k, v in values.items()}
    undefined = {k: int(np.sum(~np.isfinite(v))) for k, v in values.items()}
    return {"method": PROCEDURE_CI_METHOD, "level": level, "n_resamples": n_resamples, "seed": seed, "ci": ci,
            "n_undefined": {k: c for k, c in undefined.items() if c}, "n_warned": n_warned}
