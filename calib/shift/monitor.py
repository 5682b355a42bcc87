"""Label-free monitoring of a serving batch, and conformal p-values for items unlike anything calibrated.

Everything here takes what a deployed pipeline has after fit (calibration probabilities or logits, with
labels) and an *unlabeled* target batch:

- :func:`estimate_accuracy` — the target accuracy without target labels: ``"average_confidence"`` (mean
  top-label confidence of the target batch) or ``"atc"`` (Average Thresholded Confidence; Garg et al. 2022,
  "Leveraging unlabeled data to predict out-of-distribution performance", ICLR), with a seeded bootstrap
  interval over calibration and target rows.
- :func:`drift_tests` — do calibration and target differ? A two-sample Kolmogorov-Smirnov test on top-label
  confidence and a chi-square test of homogeneity on predicted-class counts (a conditional Monte Carlo test
  when counts are small), each with its p-value.
- :func:`novelty_pvalues` — one conformal p-value per target item against the calibration reference
  (Bates et al. 2023, "Testing for outliers with conformal p-values", Ann. Statist.), on ``-max logit``, the
  energy score ``-logsumexp(logits)`` (Liu et al. 2020, "Energy-based out-of-distribution detection") or the
  distance to the nearest calibration logits (``"knn"``); :func:`benjamini_hochberg` turns them into flags at a
  chosen false discovery rate, :func:`flagged_by_class` counts them per predicted class.

Numpy at module level; scipy inside the functions that need it.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from calib._validation import (
    as_array,
    check_choice,
    check_fraction,
    check_logits,
    check_positive_int,
    check_probs,
    check_probs_labels,
)
from calib.shift.reference import _atc_threshold, check_reference, novelty_scores

__all__ = [
    "ACCURACY_METHODS",
    "ACCURACY_SCORES",
    "MIN_ROWS_FOR_INTERVAL",
    "NOVELTY_SCORES",
    "AccuracyEstimate",
    "benjamini_hochberg",
    "drift_tests",
    "estimate_accuracy",
    "flagged_by_class",
    "novelty_pvalues",
]

ACCURACY_METHODS = ("atc", "average_confidence")
#: Confidence scores ATC can threshold (large = sure): the top-label probability or sum_j p_j log p_j.
ACCURACY_SCORES = ("max_prob", "neg_entropy")
#: Novelty scores (large = more unusual).
NOVELTY_SCORES = ("max_logit", "energy", "knn")
#: Fewer calibration or target rows than this: the estimate is returned, the bootstrap interval is not (NaN).
MIN_ROWS_FOR_INTERVAL = 20
_BOOT_ELEMENTS = 1 << 22  # resampled entries held at once by the bootstrap (32 MB of float64)


@dataclass(frozen=True)
class AccuracyEstimate:
    """An estimated target accuracy (no target labels used).

    ``low`` / ``high``: a ``confidence`` bootstrap percentile interval over calibration and target rows. It
    covers sampling noise only, never the bias of the method under the shift at hand (NaN when no interval
    was computed; ``notes`` says why). ``threshold``: the ATC threshold on ``score`` (NaN for
    ``average_confidence``).
    """

    estimate: float
    low: float
    high: float
    method: str
    score: str
    threshold: float
    confidence: float
    calibration_accuracy: float
    n_calibration: int
    n_target: int
    n_bootstrap: int
    notes: tuple = ()


def _scores(p, score):
    """Confidence per row in float64 (large = sure)."""
    if score == "max_prob":
        return p.max(axis=1).astype(np.float64)
    p64 = p.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p64 > 0, p64 * np.log(p64), 0.0).sum(axis=1)


def _target_share(rng, s_tgt_sorted, t_b, m):
    """Share of target rows above each threshold in ``t_b`` in a resample of the m target rows: the count above
    t_b among m rows drawn with replacement is Binomial(m, share above t_b), drawn directly (no (B, m) array)."""
    share = 1.0 - np.searchsorted(s_tgt_sorted, t_b, side="right") / m
    return rng.binomial(m, np.clip(share, 0.0, 1.0)) / m


def _check_n_bootstrap(n_bootstrap):
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, numbers.Integral) or n_bootstrap < 0:
        raise ValueError(f"Expected n_bootstrap as an integer >= 0 (0 skips the interval), got {n_bootstrap!r}.")
    return int(n_bootstrap)


def estimate_accuracy(cal_probs=None, cal_labels=None, target_probs=None, *, reference=None, method="atc",
                      score="max_prob", confidence=0.95, n_bootstrap=200, seed=0) -> AccuracyEstimate:
    """Estimate the accuracy of the argmax prediction on an unlabeled target batch.

    Parameters
    ----------
    cal_probs, cal_labels : (n, k) calibrated probabilities and labels of the calibration (reference) rows.
    target_probs : (m, k) calibrated probabilities of the target batch (no labels).
    reference : a fitted :class:`calib.shift.ReferenceStats` in place of ``cal_probs`` / ``cal_labels`` (what a
        deployed artifact carries). ATC then uses the stored threshold (computed on every calibration row) and
        ``score="max_prob"`` only; its bootstrap draws ``n_calibration`` rows from the stored (confidence,
        correct) pairs (all rows, or the quantile sketch). The estimate equals the one from the arrays; the
        interval has the same law (other random draws) when every row is stored, and that of the sketch's
        rows otherwise.
    method : ``"atc"`` (default) or ``"average_confidence"``.
        ``average_confidence``: the mean top-label probability of the target rows (right when the
        probabilities are calibrated *on the target distribution*; it inherits any miscalibration the shift
        causes). ``atc`` (Garg et al. 2022): the threshold ``t`` on ``score`` such that the share of
        calibration rows with score > t equals the calibration accuracy; the estimate is the share of target
        rows with score > t.
    score : ``"max_prob"`` or ``"neg_entropy"`` (ATC only; ``sum_j p_j log p_j``, the variant Garg
        et al. found best).
    confidence : level of the bootstrap interval.
    n_bootstrap : bootstrap resamples (default 200; 0 skips the interval: NaN bounds).
        Calibration rows are resampled (re-deriving the ATC threshold each time) and so are target rows; the
        percentile interval **covers sampling noise only, not the method's bias under shift**, which on real
        shifts can exceed the interval's width (see ``bench/shift_monitor.py``).
    seed : seed of the bootstrap.

    With fewer than :data:`MIN_ROWS_FOR_INTERVAL` calibration or target rows the estimate is returned with
    NaN bounds and a note (a percentile bootstrap on a handful of rows understates its own error).

    >>> p = np.array([[0.9, 0.1], [0.6, 0.4], [0.8, 0.2], [0.3, 0.7]])
    >>> e = estimate_accuracy(p, [0, 1, 0, 1], p, n_bootstrap=0)
    >>> e.calibration_accuracy, e.threshold, e.estimate
    (0.75, 0.6, 0.75)
    """
    check_choice(method, "method", ACCURACY_METHODS)
    check_choice(score, "score", ACCURACY_SCORES)
    confidence = check_fraction(confidence, "confidence")
    n_bootstrap = _check_n_bootstrap(n_bootstrap)
    if target_probs is None:
        raise TypeError("Expected target_probs (the target batch's calibrated probabilities), got None.")
    ref = check_reference(reference, {"cal_probs": cal_probs, "cal_labels": cal_labels})
    if ref is None:
        p_cal, y_cal, pred_cal = check_probs_labels(cal_probs, cal_labels, return_argmax=True)
        k, n = p_cal.shape[1], p_cal.shape[0]
        correct = pred_cal == y_cal
        n_correct = int(correct.sum())
    else:
        if method == "atc" and score != "max_prob":
            raise ValueError(f"Expected score='max_prob' with reference= (the reference stores top-label "
                             f"confidences only), got score={score!r}; pass the calibration arrays for {score!r}.")
        k, n = ref.n_classes_, ref.n_calibration_
        n_correct = int(np.trace(ref.confusion_))
    p_tgt = check_probs(target_probs, "target_probs", n_classes=k)
    m = p_tgt.shape[0]
    cal_acc = n_correct / n
    notes = []
    rng = np.random.default_rng(seed)

    if method == "average_confidence":
        s_tgt = p_tgt.max(axis=1).astype(np.float64)
        estimate = float(s_tgt.mean())
        threshold = float("nan")
        used_score = "max_prob"
        if score != "max_prob":
            notes.append(f"score={score!r} is used by ATC only: average_confidence averages the top-label probability")
    else:
        used_score = score
        if ref is None:
            s_cal_raw = _scores(p_cal, score)
            s_cal = np.sort(s_cal_raw)
            threshold = _atc_threshold(s_cal, n_correct)
        else:
            s_cal = ref.confidence_
            # stored as max(0, t): every top-label confidence (>= 1/k) lies above both 0 and -inf
            threshold = ref.atc_threshold_ if n_correct < n else -np.inf
        s_tgt = _scores(p_tgt, score)
        estimate = float(np.count_nonzero(s_tgt > threshold) / m)
        if ref is None or ref.exact_:
            above = int(np.count_nonzero(s_cal > threshold))
            if above != n_correct:
                notes.append(f"ties in the calibration {score} scores: {above} of {n} rows lie above the ATC "
                             f"threshold, {n_correct} are correct")
        if n_correct == n:
            notes.append("every calibration row is correct: the ATC threshold is -inf and the estimate 1")
        if ref is not None and not ref.exact_:
            notes.append(f"calibration resampled from the reference's {s_cal.size}-point quantile sketch of "
                         f"{n} rows")

    low = high = float("nan")
    if n_bootstrap == 0:
        notes.append("n_bootstrap=0: no interval")
    elif min(n, m) < MIN_ROWS_FOR_INTERVAL:
        notes.append(f"only {n} calibration and {m} target rows (fewer than {MIN_ROWS_FOR_INTERVAL}): the estimate "
                     "is given without an interval, it is not reliable")
    else:
        boot = np.empty(n_bootstrap, dtype=np.float64)
        if method == "average_confidence":
            # the mean of m rows drawn with replacement from the target rows (chunks of resamples bound memory)
            per = max(1, _BOOT_ELEMENTS // m)
            for b0 in range(0, n_bootstrap, per):
                b1 = min(b0 + per, n_bootstrap)
                idx = rng.integers(0, m, size=(b1 - b0, m))
                boot[b0:b1] = s_tgt[idx].mean(axis=1)
        else:
            s_tgt_sorted = np.sort(s_tgt)
            if ref is None:
                per = max(1, _BOOT_ELEMENTS // n)
                for b0 in range(0, n_bootstrap, per):
                    b1 = min(b0 + per, n_bootstrap)
                    idx = rng.integers(0, n, size=(b1 - b0, n))
                    t_b = _atc_threshold(np.sort(s_cal_raw[idx], axis=1), correct[idx].sum(axis=1))
                    boot[b0:b1] = _target_share(rng, s_tgt_sorted, t_b, m)
            else:
                # n rows drawn from the stored pairs: multinomial counts per (sorted) point, no (B, n) array
                flags = ref.confidence_correct_
                size = s_cal.size
                per = max(1, _BOOT_ELEMENTS // size)
                for b0 in range(0, n_bootstrap, per):
                    b1 = min(b0 + per, n_bootstrap)
                    cnt = rng.multinomial(n, np.full(size, 1.0 / size), size=b1 - b0)
                    c_b = cnt @ flags.astype(np.int64)
                    pos = n - c_b - 1  # 0-based position of the ATC threshold in the resample's sorted scores
                    cum = np.cumsum(cnt, axis=1)
                    at = np.minimum((cum <= pos[:, None]).sum(axis=1), size - 1)
                    t_b = np.where(pos < 0, -np.inf, s_cal[at])
                    boot[b0:b1] = _target_share(rng, s_tgt_sorted, t_b, m)
        tail = (1.0 - confidence) / 2.0
        low, high = (float(v) for v in np.quantile(boot, [tail, 1.0 - tail]))
    return AccuracyEstimate(estimate=estimate, low=low, high=high, method=method, score=used_score,
                            threshold=float(threshold), confidence=confidence, calibration_accuracy=cal_acc,
                            n_calibration=n, n_target=m, n_bootstrap=n_bootstrap, notes=tuple(notes))


def _chi2_homogeneity(counts):
    """Pearson chi-square of a (2, c) table (rows: calibration, target), columns with a zero total dropped;
    works on a stack of tables (..., 2, c)."""
    counts = np.asarray(counts, dtype=np.float64)
    expected = counts.sum(axis=-2, keepdims=True) * counts.sum(axis=-1, keepdims=True) / counts.sum(axis=(-2, -1),
                                                                                                    keepdims=True)
    return ((counts - expected) ** 2 / expected).sum(axis=(-2, -1))


def drift_tests(cal_probs=None, target_probs=None, *, reference=None, alpha=0.05, n_permutations=2000, seed=0):
    """Tests of "the target batch comes from the calibration distribution", from probabilities alone.

    Returns a list of dict rows ``{test, statistic, p_value, p_holm, drift, what}``:

    - ``ks_confidence``: two-sample Kolmogorov-Smirnov (``scipy.stats.ks_2samp``) on the top-label
      probability; ``statistic`` is the largest gap between the two empirical CDFs.
    - ``chi2_predicted_class``: Pearson chi-square test of homogeneity of the predicted-class counts
      (calibration vs target; classes nobody predicts dropped). When some expected count is below 5 the
      p-value is a seeded conditional Monte Carlo test instead (``n_permutations`` tables drawn with the
      margins fixed, multivariate hypergeometric; ``p = (1 + #{chi2_b >= chi2}) / (n_permutations + 1)``).

    ``reference``: a fitted :class:`calib.shift.ReferenceStats` in place of ``cal_probs``: its predicted-class
    counts (the confusion matrix's row sums) and its confidence sample. Exact when the reference holds every
    calibration row; with a quantile sketch the KS test compares against the sketch's points as a sample of
    their number (fewer than the calibration rows: a less powerful, not an anti-conservative test).

    ``drift`` is ``p_value < alpha`` for that test alone; ``p_holm`` is Holm-adjusted over the rows
    (:func:`calib.stats.holm_adjust`): raise one alarm for the batch when any ``p_holm < alpha``. Both tests
    assume independent rows; with ties (float32 probabilities of 1.0) the KS p-value is conservative.
    """
    from scipy.stats import chi2 as chi2_law
    from scipy.stats import ks_2samp

    from calib.stats import holm_adjust

    alpha = check_fraction(alpha, "alpha")
    n_permutations = check_positive_int(n_permutations, "n_permutations")
    if target_probs is None:
        raise TypeError("Expected target_probs (the target batch's calibrated probabilities), got None.")
    ref = check_reference(reference, {"cal_probs": cal_probs})
    if ref is None:
        p_cal, pred_cal = check_probs(cal_probs, "cal_probs", return_argmax=True)
        k = p_cal.shape[1]
        conf_cal = np.take_along_axis(p_cal, pred_cal[:, None], axis=1)[:, 0].astype(np.float64)
        pred_counts = np.bincount(pred_cal, minlength=k)
        source = f"{p_cal.shape[0]} calibration"
    else:
        k, conf_cal, pred_counts = ref.n_classes_, ref.confidence_, ref.confusion_.sum(axis=1)
        source = (f"{ref.n_calibration_} calibration" if ref.exact_ else
                  f"a {conf_cal.size}-point quantile sketch of {ref.n_calibration_} calibration")
    p_tgt, pred_tgt = check_probs(target_probs, "target_probs", n_classes=k, return_argmax=True)
    m = p_tgt.shape[0]
    conf_tgt = np.take_along_axis(p_tgt, pred_tgt[:, None], axis=1)[:, 0].astype(np.float64)
    ks = ks_2samp(conf_cal, conf_tgt)
    rows = [{"test": "ks_confidence", "statistic": float(ks.statistic), "p_value": float(ks.pvalue),
             "what": f"largest gap between the top-label confidence CDFs of {source} and {m} target rows"}]

    table = np.stack([pred_counts, np.bincount(pred_tgt, minlength=k)])
    table = table[:, table.sum(axis=0) > 0]
    c = table.shape[1]
    if c < 2:
        stat, p = 0.0, 1.0
        what = "predicted-class counts: every row of both batches predicts one class, nothing to compare"
    else:
        stat = float(_chi2_homogeneity(table))
        expected_min = float((table.sum(axis=1, keepdims=True) * table.sum(axis=0) / table.sum()).min())
        if expected_min >= 5:
            p = float(chi2_law.sf(stat, c - 1))
            what = f"predicted-class shares differ between calibration and target (chi-square, {c - 1} df)"
        else:
            rng = np.random.default_rng(seed)
            tgt = rng.multivariate_hypergeometric(table.sum(axis=0), m, size=n_permutations)
            sims = _chi2_homogeneity(np.stack([table.sum(axis=0) - tgt, tgt], axis=1))
            p = float((1 + np.count_nonzero(sims >= stat * (1 - 1e-12))) / (n_permutations + 1))
            what = (f"predicted-class shares differ between calibration and target (smallest expected count "
                    f"{expected_min:.2g} < 5: conditional Monte Carlo p-value, {n_permutations} tables)")
    rows.append({"test": "chi2_predicted_class", "statistic": stat, "p_value": p, "what": what})
    holm = holm_adjust(np.array([r["p_value"] for r in rows]))
    for r, ph in zip(rows, holm):
        r["p_holm"] = float(ph)
        r["drift"] = bool(r["p_value"] < alpha)
    return [{key: r[key] for key in ("test", "statistic", "p_value", "p_holm", "drift", "what")} for r in rows]


def _knn_distance(reference, x, n_neighbors):
    """Euclidean distance from each row of ``x`` to its ``n_neighbors``-th nearest row of ``reference`` (float64),
    in row chunks of ``x`` (never an (m, n_ref) matrix larger than the bootstrap block)."""
    ref = reference.astype(np.float64)
    ref_sq = np.einsum("ij,ij->i", ref, ref)
    out = np.empty(x.shape[0], dtype=np.float64)
    per = max(1, _BOOT_ELEMENTS // ref.shape[0])
    for a in range(0, x.shape[0], per):
        xb = x[a:a + per].astype(np.float64)
        d2 = np.einsum("ij,ij->i", xb, xb)[:, None] + ref_sq[None, :] - 2.0 * (xb @ ref.T)
        out[a:a + per] = np.sqrt(np.maximum(np.partition(d2, n_neighbors - 1, axis=1)[:, n_neighbors - 1], 0.0))
    return out


def novelty_pvalues(cal_logits=None, target_logits=None, *, reference=None, score="energy", n_neighbors=10,
                    reference_fraction=0.5, seed=0):
    """Conformal p-value of each target item against the calibration rows (Bates et al. 2023, marginal).

    With novelty scores ``s`` (large = unusual) and the ``n`` calibration rows that score them,
    ``p_j = (1 + #{i : s_i >= s_j}) / (n + 1)``. If a target item is exchangeable with the calibration rows (an
    inlier), ``P(p_j <= u) <= u`` for every u; an item unlike anything calibrated gets a small p-value. Select
    with :func:`benjamini_hochberg`: the p-values of a batch are positively dependent (PRDS), so BH controls
    the false discovery rate among inliers (Bates et al. 2023, Theorem 3).

    Scores:

    - ``"max_logit"``: ``-max_j z_j``; ``"energy"`` (default): ``-logsumexp(z)`` (Liu et al. 2020). Both flag
      items the *model* is unsure about (far from everything it was trained on). They do not flag a class the
      model was trained on but the calibration data lacked: the model is confident on it.
    - ``"knn"``: the distance in logit space to the ``n_neighbors``-th nearest calibration row. A random
      ``reference_fraction`` of the calibration rows (seeded) is the reference the distances are taken to; the
      other rows score the p-values (so ``n`` is the rest, and the p-value resolution ``1 / (n + 1)``). It flags
      regions of logit space the calibration data never reached, e.g. classes absent from calibration.

    Validity needs only the inliers' exchangeability with the calibration rows; the power depends on the score.

    ``reference``: a fitted :class:`calib.shift.ReferenceStats` in place of ``cal_logits`` (``max_logit`` and
    ``energy`` only: ``knn`` needs the calibration logits, which an artifact does not store). When it holds
    every calibration row the p-values are those from the logits, exactly; with a quantile sketch of ``s``
    points they are ``(1 + #{sketch points >= s_j}) / (s + 1)``, within about ``1 / s`` of the exact ones.

    >>> novelty_pvalues(np.array([[0.0, 3.0], [0.0, 1.0], [0.0, 2.0]]), np.array([[0.0, 5.0], [0.0, 0.5]]),
    ...                 score="max_logit").tolist()
    [1.0, 0.25]
    """
    check_choice(score, "score", NOVELTY_SCORES)
    if target_logits is None:
        raise TypeError("Expected target_logits (the target batch's logits), got None.")
    ref = check_reference(reference, {"cal_logits": cal_logits})
    if ref is not None:
        if score == "knn":
            raise ValueError("Expected score='energy' or 'max_logit' with reference=: score='knn' needs the "
                             "calibration logits, which the reference (and so the artifact) does not store.")
        z_tgt = check_logits(target_logits, "target_logits", n_classes=ref.n_classes_)
        s_cal = getattr(ref, f"novelty_{score}_")
        s_tgt = novelty_scores(z_tgt, score)
    else:
        z_cal = check_logits(cal_logits, "cal_logits")
        z_tgt = check_logits(target_logits, "target_logits", n_classes=z_cal.shape[1])
    if ref is None and score == "knn":
        n_neighbors = check_positive_int(n_neighbors, "n_neighbors")
        reference_fraction = check_fraction(reference_fraction, "reference_fraction")
        n_ref = round(reference_fraction * z_cal.shape[0])
        if n_ref < n_neighbors or z_cal.shape[0] - n_ref < 1:
            raise ValueError(
                f"Expected cal_logits with enough rows for score='knn': reference_fraction={reference_fraction} of "
                f"{z_cal.shape[0]} rows gives {n_ref} reference rows (need >= n_neighbors={n_neighbors}) and "
                f"{z_cal.shape[0] - n_ref} scoring rows (need >= 1)."
            )
        perm = np.random.default_rng(seed).permutation(z_cal.shape[0])
        base = z_cal[perm[:n_ref]]
        s_cal = np.sort(_knn_distance(base, z_cal[perm[n_ref:]], n_neighbors))
        s_tgt = _knn_distance(base, z_tgt, n_neighbors)
    elif ref is None:
        s_cal = np.sort(novelty_scores(z_cal, score))
        s_tgt = novelty_scores(z_tgt, score)
    n = s_cal.shape[0]
    at_least = n - np.searchsorted(s_cal, s_tgt, side="left")  # #{i : s_i >= s_j}
    return (1.0 + at_least) / (n + 1.0)


def flagged_by_class(flags, target_probs):
    """Flagged items per predicted class: ``(flagged (k,), total (k,))`` counts over the target batch, where
    ``flags`` is a boolean mask (e.g. from :func:`benjamini_hochberg`) and the class is each row's argmax.

    >>> f, t = flagged_by_class([True, False, True], np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]))
    >>> f.tolist(), t.tolist()
    ([2, 0], [2, 1])
    """
    from calib._validation import check_binary

    p = as_array(target_probs, "target_probs")
    if p.ndim != 2 or p.shape[1] < 2 or p.shape[0] == 0:
        p = check_logits(p, "target_probs")  # raises the shape error
    f = check_binary(flags, "flags")
    if f.shape != (p.shape[0],):
        raise ValueError(f"Expected flags of shape ({p.shape[0]},) (one per row of target_probs), got {f.shape}.")
    pred = p.argmax(axis=1)
    k = p.shape[1]
    return np.bincount(pred[f], minlength=k), np.bincount(pred, minlength=k)


def benjamini_hochberg(pvalues, fdr=0.1):
    """Benjamini-Hochberg step-up: reject the ``r`` smallest p-values, ``r`` the largest rank with
    ``p_(r) <= r * fdr / m``. Returns a boolean mask in the input order.

    >>> benjamini_hochberg([0.01, 0.04, 0.03, 0.5], fdr=0.1).tolist()
    [True, True, True, False]
    """
    fdr = check_fraction(fdr, "fdr")
    p = as_array(pvalues, "pvalues")
    if p.ndim != 1:
        raise ValueError(f"Expected pvalues of shape (m,), got an array of shape {p.shape}.")
    if p.dtype.kind not in "fiu" or p.dtype.kind == "b":
        raise TypeError(f"Expected pvalues as real numbers, got dtype {p.dtype}.")
    p = p.astype(np.float64)
    if p.size and not (np.isfinite(p).all() and p.min() >= 0 and p.max() <= 1):
        raise ValueError("Expected pvalues in [0, 1] (finite), got "
                         f"{'NaN/inf' if not np.isfinite(p).all() else f'values in [{p.min():g}, {p.max():g}]'}.")
    m = p.size
    mask = np.zeros(m, dtype=bool)
    if m == 0:
        return mask
    order = np.argsort(p, kind="stable")
    below = np.flatnonzero(p[order] <= fdr * np.arange(1, m + 1) / m)
    if below.size:
        mask[order[:below[-1] + 1]] = True
    return mask
