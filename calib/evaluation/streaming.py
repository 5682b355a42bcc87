"""The pipeline of :func:`calib.evaluation.pipeline.fit_and_evaluate` on logits larger than memory.

``experiments/calibrate.py data=npz data.path=X.npy data.mmap=true`` runs this: the logits stay in their
memory-mapped ``.npy`` file (float16, float32 or float64; numpy has no bfloat16) and are read in row chunks
(:func:`calib.io.iter_row_chunks`: positioned reads, float16 upcast to float32 chunk by chunk, NaN/inf refused
with the file and row named). No (n, k) array other than one chunk ever exists: no ``astype`` of the whole
array, no fancy-indexed calibration/test copies (each chunk's calibration and test rows are selected inside the
chunk), no (n, k) probability or set arrays. What the metrics, the stages and the figures need is kept per row:
top-label confidence, predicted label, correctness, the label's probability, the Brier term, set size and "label
in set" per alpha, the policy's confidence and action.

Passes over the file (each reads it once): the temperature fit (a strided subsample, then one pass per Halley
step, typically 2-3), the calibration rows (calibrated per-row values; the label scores of a non-randomised
score), for a randomised score (APS, RAPS, SAPS, top-k) one more pass for the label scores (their uniforms
depend on a digest of every calibration row), and the test rows (metrics, sets, routing).

**Same results as in memory.** Every number is computed as the in-memory pipeline computes it, with the same
order of floating-point operations: the temperature's NLL sums use the same row blocks
(:func:`calib.calibrators.temperature.fit_inverse_temperature_chunked`), the Brier and classwise-ECE sums the
same blocks as :mod:`calib.metrics`, the conformal threshold the same label scores and uniforms
(:mod:`calib.conformal.chunked`), the policy the same confidences; so ``metrics.json`` is identical to the
in-memory run's on the same file, bit for bit, but for ``calibration_ci`` (below) and the ``*_s`` timings
(tests/test_out_of_core.py compares them).

Supported: calibrators with ``supports_chunked_fit`` (``temperature``; ``histogram_binning`` and ``isotonic``
with ``multiclass="top_label"``, which fit on per-row confidence and correctness); conformal ``split`` predictors without
tuning (``lac``, ``aps``, ``raps``, ``saps``, ``topk``); policies ``threshold`` and ``risk_control``. Anything
else is refused before the file is read, naming what is supported. Not computed out of core (logged):
``calibration_ci`` (its bootstrap reweights the (n, k) test probabilities) and ``procedure_ci`` (refused when
asked for: it refits on resampled rows).
"""

from __future__ import annotations

import hashlib
import logging
import math

import numpy as np

from calib import metrics as _metrics
from calib.io import LogitsData, chunk_rows_for, iter_row_chunks

__all__ = ["fit_and_evaluate_streaming", "STREAMING_POLICIES", "check_streaming_components"]

log = logging.getLogger(__name__)

#: routing policies the out-of-core pipeline fits from per-row confidence and correctness
STREAMING_POLICIES = ("threshold", "risk_control")


class _Blocks:
    """Re-cut row pieces (tuples of arrays with the same number of rows) into blocks of exactly ``rows`` rows: the
    blocks an in-memory loop over the concatenated rows would cut, so sums over them keep the in-memory order."""

    def __init__(self, rows):
        self.rows = int(rows)
        self.parts = []
        self.count = 0

    def push(self, *arrays):
        if arrays[0].shape[0]:
            self.parts.append(arrays)
            self.count += arrays[0].shape[0]
        if self.count < self.rows:
            return []
        cat = [np.concatenate([p[i] for p in self.parts]) if len(self.parts) > 1 else self.parts[0][i]
               for i in range(len(arrays))]
        full = (self.count // self.rows) * self.rows
        out = [tuple(c[s:s + self.rows] for c in cat) for s in range(0, full, self.rows)]
        self.parts = [tuple(c[full:] for c in cat)] if self.count > full else []
        self.count -= full
        return out

    def flush(self):
        if not self.count:
            return []
        cat = [np.concatenate([p[i] for p in self.parts]) for i in range(len(self.parts[0]))]
        self.parts, self.count = [], 0
        return [tuple(cat)]


class _TestMetrics:
    """The calibration metrics of :func:`calib.evaluation.pipeline._test_metrics` accumulated chunk by chunk, in the
    order of operations of :mod:`calib.metrics` (per-row vectors for the binned metrics; the Brier and classwise
    sums over the same row blocks as ``calib.metrics._chunks``)."""

    def __init__(self, n, k, n_bins):
        self.n, self.k, self.n_bins = int(n), int(k), int(n_bins)
        _, self.step = _metrics._chunks(self.n, self.k)
        self.blocks = _Blocks(self.step)
        self.conf, self.pred, self.py = [], [], []
        self.brier = 0.0
        self.slots = {"width": self.n_bins, "digitize": self.n_bins + 1}
        self.diff = {b: np.zeros(self.k * s) for b, s in self.slots.items()}

    def update(self, p, y):
        pred = p.argmax(axis=1)
        self.pred.append(pred)
        self.conf.append(np.take_along_axis(p, pred[:, None], axis=1)[:, 0])
        self.py.append(np.take_along_axis(p, y[:, None], axis=1)[:, 0])
        for pb, yb in self.blocks.push(p, y):
            self._block(pb, yb)

    def _block(self, block, y):
        sq = np.einsum("ij,ij->i", block, block, dtype=np.float64)
        py = np.take_along_axis(block, y[:, None], axis=1)[:, 0].astype(np.float64)
        self.brier += float(np.sum(sq - 2.0 * py + 1.0))
        # calib.metrics._classwise, with its (block, one-hot, index) temporaries done in place: the bins of
        # _bin_index ("width": searchsorted - 1, clipped; "digitize": np.digitize - 1, i.e. searchsorted right - 1)
        # and the weights p - 1[y = c] (p - 0.0 and p - 1.0 are exactly the subtraction of the one-hot matrix)
        b64 = block.astype(np.float64)
        idx = {}
        for binning, n_slots in self.slots.items():
            edges = np.linspace(0.0, 1.0, self.n_bins + (1 if binning == "width" else 0))
            i = np.searchsorted(edges, b64, side="left" if binning == "width" else "right")
            i -= 1
            if binning == "width":
                np.clip(i, 0, self.n_bins - 1, out=i)
            i += np.arange(self.k) * n_slots
            idx[binning] = i
        rows = np.arange(b64.shape[0])
        b64[rows, y] -= 1.0
        for binning, n_slots in self.slots.items():
            self.diff[binning] += np.bincount(idx[binning].ravel(), weights=b64.ravel(), minlength=self.k * n_slots)

    def result(self, labels):
        for pb, yb in self.blocks.flush():
            self._block(pb, yb)
        conf, pred = np.concatenate(self.conf), np.concatenate(self.pred)
        hit = pred == labels
        py = np.concatenate(self.py).astype(np.float64)
        n_bins = self.n_bins
        per_class = {b: np.abs(d).reshape(self.k, s).sum(axis=1) / self.n
                     for (b, s), d in zip(self.slots.items(), self.diff.values())}
        d = _metrics._DebiasedECE(conf, hit, n_bins, "mass").squared()
        out = {
            "accuracy": float(np.mean(hit)),
            "nll": float(-np.mean(np.log(np.maximum(py, _metrics._NLL_CLIP)))),
            "brier": self.brier / self.n,
            "ece": _metrics._ece(conf, hit, n_bins, "width"),
            "ece_mass": _metrics._ece(conf, hit, n_bins, "mass"),
            "mce": _metrics._mce(conf, hit, n_bins, "width"),
            "classwise_ece": float(per_class["width"].mean()),
            "classwise_ece_sum": float(per_class["digitize"].sum()),
            "ece_debiased": float(np.sqrt(max(d, 0.0))),
            "smece": _metrics._SmoothECE(conf, hit).value(sigma=None)[0],
        }
        return out, conf, pred, hit


#: allocations of at least this many bytes are memory-mapped by glibc while the out-of-core pipeline runs
MMAP_THRESHOLD = 1 << 20


def _bound_heap():
    """Keep freed chunk buffers out of the resident set (glibc only; a no-op elsewhere).

    glibc raises its mmap threshold each time a large block is freed (up to 32 MiB), after which chunk-sized
    arrays come from the heap, where freed space is kept rather than returned (measured once, on 200,000 x 1000
    float16 rows: 610 MiB resident after a run, 172 MiB after ``malloc_trim``; most of the in-run peak then was
    a view that kept every chunk alive, since fixed). A precaution: fixing the threshold at :data:`MMAP_THRESHOLD` (``mallopt(M_MMAP_THRESHOLD)``, which also
    stops the adjustment) maps every chunk-sized array on its own, so freeing it returns it to the OS. The
    setting is process-wide and only moves where large blocks live; ``malloc_trim`` after each pass returns the
    rest."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, MMAP_THRESHOLD)  # M_MMAP_THRESHOLD
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


def check_streaming_components(calibrator, conformal=None, policy=None, *, procedure_resamples=0):
    """Refuse, before any data are read, what the out-of-core pipeline cannot run (naming what it can)."""
    from calib.calibrators import REGISTRY
    from calib.conformal.chunked import check_chunked_predictor

    if not getattr(calibrator, "supports_chunked_fit", False):
        able = sorted(kind for kind, cls in REGISTRY.items() if getattr(cls, "supports_chunked_fit", False) is True)
        what = getattr(calibrator, "kind", type(calibrator).__name__)
        if getattr(calibrator, "multiclass", None) is not None:
            what = f"{what} (multiclass={calibrator.multiclass!r})"
        raise ValueError(f"Expected a calibrator that can be fitted on logits read in chunks (data.mmap=true): one of "
                         f"{able}, or histogram_binning / isotonic with multiclass='top_label' "
                         f"(calibrator=histogram_binning_top_label, isotonic_top_label), got {what}; set "
                         "data.mmap=false to fit it in memory.")
    if conformal is not None:
        check_chunked_predictor(conformal)
    if policy is not None and getattr(policy, "kind", None) not in STREAMING_POLICIES:
        raise ValueError(f"Expected a routing policy in {list(STREAMING_POLICIES)} for logits read in chunks "
                         f"(data.mmap=true), got {getattr(policy, 'kind', type(policy).__name__)!r}; set data.mmap=false "
                         "to route in memory.")
    if procedure_resamples:
        raise ValueError(f"Expected procedure_resamples=0 for logits read in chunks (data.mmap=true), got "
                         f"{procedure_resamples}: the procedure-level interval refits on resampled rows in memory.")


def _fit_policy_rows(policy, conf, correct, labels, n_classes, fallback):
    """Fit a threshold or risk-control policy from the calibration rows' confidence (the policy's own score) and
    correctness: what ``RoutingPolicy.fit`` computes from (n, k) probabilities, rebuilt through ``from_state``."""
    from calib.policy.guarantees import ltt_threshold

    k = int(n_classes)
    if isinstance(policy.fallback, int) and policy.fallback >= k:
        raise ValueError(f"Expected fallback class index in [0, {k - 1}] for {k} classes, got {policy.fallback}.")
    state = {"n_classes": k, "majority_class": int(np.bincount(labels, minlength=k).argmax())}
    if policy.kind == "threshold":
        if policy.threshold is not None:
            t = policy.threshold
        else:
            s = np.sort(conf)[::-1]
            t = float(s[max(1, math.ceil(policy.target_coverage * s.size)) - 1])
    else:
        g = ltt_threshold(conf, correct, target_risk=policy.target_risk, delta=policy.delta,
                          max_escalation=policy.max_escalation, grid_size=policy.grid_size, family=policy.family)
        t = g.threshold
        d = g.to_dict()
        d.pop("threshold")
        state["guarantee"] = d
    fitted = type(policy).from_state(policy.get_params(), state, {"threshold": np.asarray([t], dtype=np.float64)})
    fitted._fallback_labels(labels.size, fallback)  # the checks fit makes (fallback='extras' needs the array)
    for attr, value in fitted.__dict__.items():
        if attr.endswith("_"):
            policy.__dict__[attr] = value
    if policy.kind == "risk_control":
        policy.guarantee_ = g  # the fit's own object (from_state rebuilt an equal one)
    return policy


def _set_metrics_rows(size, hit, y, k, alpha, groups, n_calibration, level):
    """:func:`calib.evaluation.set_metrics.set_metrics` of split-conformal sets (law ``n_calibration``) from each
    row's set size and "label in set"."""
    from calib.evaluation import set_metrics as sm
    from calib.stats import betabinom_less_pvalue

    hist = np.bincount(size, minlength=k + 1)
    counts = np.bincount(y, minlength=k).astype(np.float64)
    covered = np.bincount(y, weights=hit, minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        cc = np.where(counts > 0, covered / np.maximum(counts, 1), np.nan)
    present = ~np.isnan(cc)
    mn = float(np.min(cc[present]))
    m_, c_, p_, exact = sm.stratum_coverage_pvalues(hit, y, k, alpha, None)
    class_test = sm._stratum_test(m_, c_, p_, exact, list(range(k)), alpha, level, "class")[0]
    m, kc = int(hit.size), int(hit.sum())
    marginal = {"h0": "coverage >= 1 - alpha", "alpha": alpha, "n": m, "covered": kc, "coverage": kc / m}
    r = sm._ranks([n_calibration], alpha)[0]
    n_cal = int(n_calibration)
    p = 1.0 if r > n_cal else betabinom_less_pvalue(kc, m, int(r), n_cal + 1 - int(r))
    marginal.update(law="beta_binomial", n_calibration=n_cal)
    marginal.update(p_value=float(p), level=level, rejected=bool(p <= level))
    scount = np.bincount(size)
    scov = np.bincount(size, weights=hit)
    out = {
        "coverage": float(hit.mean()),
        "coverage_test": marginal,
        "mean_set_size": float(size.mean()),
        "median_set_size": float(np.median(size)),
        "singleton_rate": float((size == 1).mean()),
        "empty_rate": float((size == 0).mean()),
        "size_histogram": hist.tolist(),
        "size_stratified_coverage": {str(int(v)): {"count": int(scount[v]), "coverage": float(scov[v] / scount[v])}
                                     for v in np.flatnonzero(scount)},
        "min_class_coverage": mn,
        "class_coverage_gap": max(0.0, 1.0 - alpha - mn),
        "class_coverage_test": class_test,
        "class_coverage": [None if np.isnan(c) else float(c) for c in cc],
    }
    if groups is not None:
        values, inv = np.unique(groups, return_inverse=True)
        gc, gh = np.bincount(inv), np.bincount(inv, weights=hit)
        out["group_coverage"] = {str(v): {"count": int(c), "coverage": float(h / c)} for v, c, h in zip(values, gc, gh)}
        names = [str(v) for v in values]
        m_, c_, p_, exact = sm.stratum_coverage_pvalues(hit, inv, len(names), alpha, None)
        out["group_coverage_test"] = sm._stratum_test(m_, c_, p_, exact, names, alpha, level, "group")[0]
    return out


def fit_and_evaluate_streaming(data: LogitsData, calibrator, *, conformal=None, policy=None, n_bins=15,
                               n_bootstrap=2000, bootstrap_seed=0, calibration_bootstrap=0, procedure_resamples=0,
                               cal_fraction=0.5, seed=0, resplit=False, chunk_rows=None):
    """:func:`calib.evaluation.pipeline.fit_and_evaluate` on ``data`` (typically ``load_logits(X.npy, mmap=True)``)
    read in chunks of ``chunk_rows`` rows (default: about 8 MiB of float32), with the calibration/test split of
    :meth:`calib.io.LogitsData.split_cal_test` (``cal_fraction``, ``seed``, ``resplit``). Returns the same
    :class:`calib.evaluation.pipeline.PipelineResult` (``probs_before``/``probs_after`` None, the reliability
    panels kept instead); see the module docstring for what is supported and how results match."""
    from calib._json import to_json
    from calib._validation import check_positive_int, warn_if_probabilities
    from calib.calibrators.base import _chunk_rows, softmax
    from calib.calibrators.temperature import subsample_index
    from calib.deploy import reliability_table
    from calib.evaluation.pipeline import METRIC_KEYS, PipelineResult, warn_guarantees
    from calib.plotting import FigureSpec
    from calib.plotting import reliability as rel
    from calib.selective import confidence_scores
    from calib.shift import ReferenceStats, novelty_scores

    check_positive_int(calibration_bootstrap, "calibration_bootstrap", minimum=0)
    procedure_resamples = check_positive_int(procedure_resamples, "procedure_resamples", minimum=0)
    check_streaming_components(calibrator, conformal, policy, procedure_resamples=procedure_resamples)
    if not isinstance(data, LogitsData):
        raise TypeError(f"Expected data as a calib.io.LogitsData, got {type(data).__name__}.")
    if data.labels is None:
        raise ValueError("Expected labels to fit and evaluate, got data without labels.")
    n, k = data.n_samples, data.n_classes
    rows = chunk_rows_for(k, chunk_rows)
    y = data.labels
    is_cal = data.calibration_mask(cal_fraction=cal_fraction, seed=seed, resplit=resplit)
    before = np.concatenate([[0], np.cumsum(is_cal, dtype=np.int64)])  # calibration rows before each row
    n_cal = int(before[-1])
    n_test = n - n_cal
    y_cal, y_test = y[is_cal], y[~is_cal]
    g_test = None if data.groups is None else data.groups[~is_cal]
    fb = data.extras.get("fallback")
    fb_cal = None if fb is None else fb[is_cal]
    fb_test = None if fb is None else fb[~is_cal]
    dtype = np.float64 if data.logits.dtype == np.float64 else np.float32
    log.info("Out of core: %d rows x %d classes (%s) in chunks of %d rows; %d calibration / %d test rows",
             n, k, data.logits.dtype, rows, n_cal, n_test)

    trim = _bound_heap()

    def chunks():
        for a, block in iter_row_chunks(data.logits, rows):
            sel = is_cal[a:a + block.shape[0]]
            yield a, block, sel
        if trim is not None:
            trim(0)  # after each pass over the file

    # --- the calibrator, fitted on the calibration rows -----------------------------------------------------
    sub = subsample_index(n_cal)
    subsample = None
    if sub is not None:
        xs, ys = [], []
        for a, block, sel in chunks():
            c0, c1 = before[a], before[a + block.shape[0]]
            pick = sub[(sub >= c0) & (sub < c1)] - c0
            if pick.size:
                xs.append(block[sel][pick])
                ys.append(y_cal[c0 + pick])
        subsample = (np.concatenate(xs), np.concatenate(ys))
        warn_if_probabilities(subsample[0], "logits")
    ts_rows = _chunk_rows(k)

    def cal_blocks():
        cut = _Blocks(ts_rows)
        for a, block, sel in chunks():
            c0, c1 = before[a], before[a + block.shape[0]]
            yield from cut.push(block[sel], y_cal[c0:c1])
        yield from cut.flush()

    log.info("Fitting %s on %d calibration rows (out of core)", calibrator, n_cal)
    calibrator.fit_chunked(cal_blocks, n_cal, k, dtype, subsample=subsample)

    # --- calibration rows: per-row values, fingerprint, label scores ----------------------------------------
    fp = hashlib.sha256()
    fp.update(repr((n_cal, k)).encode())
    cal_conf, cal_pred, cal_py, pol_conf, scores, nov_ml, nov_en = [], [], [], [], [], [], []
    randomized = conformal is not None and conformal.is_randomized
    check_step = None
    if conformal is not None:
        from calib.conformal.split import SET_SIZE_CHECK_ROWS

        check_step = -(-n_cal // SET_SIZE_CHECK_ROWS)
    check_lohi = []  # (lo, hi) score extremes of the set-size check rows (two numbers per row, not the row)
    from calib.conformal import chunked

    for a, block, sel in chunks():
        c0, c1 = before[a], before[a + block.shape[0]]
        xc = block[sel]
        fp.update(memoryview(np.ascontiguousarray(xc, dtype=np.float32)).cast("B"))
        nov_ml.append(novelty_scores(xc, "max_logit"))  # the reference statistics' novelty samples (calib.shift)
        nov_en.append(novelty_scores(xc, "energy"))
        pc = calibrator.predict_proba(xc)
        yc = y_cal[c0:c1]
        pred = pc.argmax(axis=1)
        cal_pred.append(pred)
        cal_conf.append(np.take_along_axis(pc, pred[:, None], axis=1)[:, 0])
        cal_py.append(np.take_along_axis(pc, yc[:, None], axis=1)[:, 0])
        if policy is not None:
            pol_conf.append(confidence_scores(pc, policy.confidence))
        if conformal is not None and not randomized:
            scores.append(conformal.label_scores(pc, yc))
            first = -(-c0 // check_step) * check_step
            if first < c1:
                check_lohi.append(chunked.set_size_extremes(conformal, pc[first - c0::check_step]))
    fp.update(memoryview(np.ascontiguousarray(y_cal, dtype=np.int64)).cast("B"))
    fingerprint = {"sha256": fp.hexdigest(), "n_samples": n_cal, "n_classes": k}
    cal_conf, cal_pred = np.concatenate(cal_conf), np.concatenate(cal_pred)
    cal_hit = cal_pred == y_cal
    reliability = reliability_table(cal_conf, cal_hit)

    plots = {}
    curve = None
    if conformal is not None:
        log.info("Conformal stage: %s (out of core)", conformal)
        key = chunked.draw_key(conformal, np.concatenate(cal_py), y_cal, k)
        u = chunked.calibration_uniforms(conformal, n_cal, key)
        if randomized:
            for a, block, sel in chunks():
                c0, c1 = before[a], before[a + block.shape[0]]
                pc = calibrator.predict_proba(block[sel])
                scores.append(conformal.label_scores(pc, y_cal[c0:c1], u[c0:c1]))
                first = -(-c0 // check_step) * check_step
                if first < c1:
                    check_lohi.append(chunked.set_size_extremes(conformal, pc[first - c0::check_step],
                                                                u[first:c1:check_step]))
        scores = np.concatenate(scores)
        extremes = (np.concatenate([lo for lo, _ in check_lohi]), np.concatenate([hi for _, hi in check_lohi]))
        chunked.fit_from_label_scores(conformal, scores, k, key, extremes=extremes)
        curve_alphas = np.linspace(0.02, 0.3, 15)
        curve = chunked.quiet_fit_from_label_scores(conformal.clone(alpha=[float(x) for x in curve_alphas]), scores,
                                                    k, key)
        del scores, check_lohi
    if policy is not None:
        log.info("Policy stage: %s (out of core)", policy)
        _fit_policy_rows(policy, np.concatenate(pol_conf), cal_hit, y_cal, k, fb_cal)
        del pol_conf

    # --- test rows: metrics, sets, routing ------------------------------------------------------------------
    m_before, m_after = _TestMetrics(n_test, k, n_bins), _TestMetrics(n_test, k, n_bins)
    sizes, hits, curve_hits, actions, prediction, fb_out, t_conf = [], [], [], [], [], [], []
    cal_actions = np.zeros(3, dtype=np.int64)  # the fitted policy's actions on the calibration rows (reference)
    cal_silent = 0
    for a, block, sel in chunks():
        c0, c1 = before[a], before[a + block.shape[0]]
        t0, t1 = a - c0, a + block.shape[0] - c1
        if policy is not None and c1 > c0:
            dc = policy.route(calibrator.predict_proba(block[sel]), fallback=None if fb_cal is None else fb_cal[c0:c1])
            cal_actions += np.bincount(dc.actions, minlength=3)[:3]
            cal_silent += int(np.count_nonzero((dc.actions == 0) & (dc.output != y_cal[c0:c1])))
        if t1 == t0:
            continue
        xt = block[~sel]
        yt = y_test[t0:t1]
        m_before.update(softmax(xt), yt)
        pt = calibrator.predict_proba(xt)
        m_after.update(pt, yt)
        r = np.arange(yt.size)
        if conformal is not None:
            s = conformal.predict_set(pt, row_offset=int(t0))
            s3 = s if s.ndim == 3 else s[:, :, None]
            sizes.append(s3.sum(axis=1, dtype=np.int64))
            hits.append(s3[r, yt, :])
            del s, s3
            cs = curve.predict_set(pt, row_offset=int(t0))
            curve_hits.append(cs[r, yt, :])
            del cs
        if policy is not None:
            d = policy.route(pt, fallback=None if fb_test is None else fb_test[t0:t1])
            actions.append(d.actions)
            prediction.append(d.prediction)
            if d.fallback is not None:
                fb_out.append(d.fallback)
            t_conf.append(confidence_scores(pt, policy.confidence))
    before_m, conf0, _, hit0 = m_before.result(y_test)
    after_m, conf1, pred1, hit1 = m_after.result(y_test)
    state, _ = calibrator.get_state()
    result = {
        "n_cal": n_cal,
        "n_test": n_test,
        "n_classes": k,
        "calibrator": {"kind": calibrator.kind, **{key: v for key, v in state.items() if key != "n_classes"}},
        "uncalibrated": {key: before_m[key] for key in METRIC_KEYS},
        "calibrated": {key: after_m[key] for key in METRIC_KEYS},
        "data_fingerprint": fingerprint,
    }
    log.info("Test ECE %.4f -> %.4f, NLL %.4f -> %.4f", before_m["ece"], after_m["ece"], before_m["nll"],
             after_m["nll"])
    if calibration_bootstrap:
        log.warning("calibration_ci is not computed for logits read in chunks (its bootstrap reweights the (n, k) "
                    "test probabilities); set eval.calibration_bootstrap=0 to silence this.")
    if conformal is not None:
        from calib.evaluation.set_metrics import LEVEL
        from calib.plotting import conformal as cplots

        size, hit = np.concatenate(sizes), np.concatenate(hits)
        alphas = list(conformal.alphas)
        multi = isinstance(conformal.alpha, tuple)
        blocks = [_set_metrics_rows(size[:, j], hit[:, j], y_test, k, al, g_test, conformal.n_calibration_, LEVEL)
                  for j, al in enumerate(alphas)]
        section = {"kind": conformal.kind, "score": conformal.score_name, "alpha": alphas if multi else alphas[0],
                   "n_calibration": int(conformal.n_calibration_)}
        for key in blocks[0]:
            vals = [b[key] for b in blocks]
            section[key] = to_json(vals if multi else vals[0])
        section["qhat"] = to_json(conformal.qhat_)
        if hasattr(conformal, "k_reg_") and conformal.score_name == "raps":
            section["k_reg"], section["lam"] = int(conformal.k_reg_), float(conformal.lam_)
        result["conformal"] = section
        ch = np.concatenate(curve_hits)
        curve_data = cplots.coverage_band(curve_alphas, ch.mean(axis=0), n_cal, n_test)
        plots["conformal_coverage.png"] = FigureSpec(
            "conformal.plot_coverage_curve", curve_data, size=(5, 4),
            title=f"{conformal.kind}/{conformal.score_name}: coverage vs alpha", title_fontsize=9)
        plots["set_size_histogram.png"] = FigureSpec(
            "conformal.plot_set_size_histogram", cplots.SetSizeData(np.bincount(size[:, 0], minlength=k + 1)),
            size=(5, 4), title=f"{conformal.kind}/{conformal.score_name}: set sizes at alpha={alphas[0]:g}",
            title_fontsize=9)
        from calib.evaluation import set_metrics as sm

        m_, c_, p_, exact = sm.stratum_coverage_pvalues(hit[:, 0], y_test, k, alphas[0], None)
        _, p_holm = sm._stratum_test(m_, c_, p_, exact, list(range(k)), alphas[0], LEVEL, "class")
        plots["class_coverage.png"] = FigureSpec(
            "conformal.plot_class_coverage", cplots.prepare_class_coverage_rows(
                hit[:, 0], y_test, k, alphas[0], p_holm=p_holm, level=LEVEL, class_names=data.class_names),
            size=cplots.class_coverage_figure_size(k),
            title=f"{conformal.kind}/{conformal.score_name}: coverage per class at alpha={alphas[0]:g}",
            title_fontsize=9)
    if policy is not None:
        sections, plot_data = _policy_sections(policy, np.concatenate(actions), np.concatenate(prediction),
                                               np.concatenate(fb_out) if fb_out else None, y_test,
                                               np.concatenate(t_conf), conf1, pred1, k, g_test, n_bootstrap,
                                               bootstrap_seed, class_names=data.class_names)
        result.update(sections)
        plots.update(plot_data)
    panels = [("uncalibrated", rel.prepare_reliability_rows(conf0.astype(np.float64), hit0, n_bins=n_bins)),
              (calibrator.kind, rel.prepare_reliability_rows(conf1.astype(np.float64), hit1, n_bins=n_bins))]
    rates = None
    if policy is not None:
        rates = {name: float(c / n_cal) for name, c in zip(("automation", "escalation", "fallback"), cal_actions)}
        rates["silent_failure"] = cal_silent / n_cal
    reference = ReferenceStats().fit_rows(cal_conf, cal_pred, y_cal, np.concatenate(nov_ml), np.concatenate(nov_en),
                                          k, rates=rates)
    del nov_ml, nov_en
    warn_guarantees(result, y_cal, y_test, k)  # one WARNING line per significantly violated guarantee
    return PipelineResult(result, calibrator, conformal, policy, y_test, None, None, class_names=data.class_names,
                          reference=reference,
                          n_bins=n_bins, plots=plots, reliability=reliability, reliability_panels=panels)


def _policy_sections(policy, actions, prediction, fallback, y, conf, top_conf, pred, k, groups, n_resamples, seed,
                     class_names=None):
    """:func:`calib.evaluation.routing.policy_stage`'s sections and figures from the test rows' routing (per row)."""
    from calib.evaluation.product_metrics import product_metrics
    from calib.evaluation.routing import _check_resampling, routing_sections
    from calib.evaluation.slices import slices_from_rows

    n_resamples, seed = _check_resampling(n_resamples, seed)
    m = product_metrics(actions, prediction, y, fallback, costs=policy.cost_model, n_resamples=n_resamples, seed=seed)
    return routing_sections(policy, m, actions, prediction, y, conf,
                            lambda target: slices_from_rows(top_conf, pred, y, actions, k, target=target,
                                                            groups=groups, class_names=class_names))
