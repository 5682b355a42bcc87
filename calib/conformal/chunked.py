"""Split conformal calibration over data read in row chunks (logits files larger than memory).

:meth:`calib.conformal.split.SplitConformal.fit` needs the calibration probabilities (n, k) in memory. Its
threshold depends on the rows only through three per-row quantities, so an out-of-core run computes those chunk
by chunk and installs the threshold here:

1. the **draw key** (:func:`draw_key`): a digest of the labels and each row's probability of its label (no
   (n, k) array: the digest reads only ``p[i, y_i]``);
2. the **uniforms** of the calibration rows (:func:`calibration_uniforms`, from the seed and the draw key);
3. the **label scores** ``s(x_i, y_i)`` (``predictor.label_scores(p_chunk, y_chunk, u_chunk)`` per chunk, the
   predictor's own public method: scores are row-wise).

:func:`fit_from_label_scores` then takes the conformal quantile and rebuilds the fitted predictor through
``from_state`` (the same checks as an artifact load), so the fitted predictor is the one ``fit`` gives on the same
rows, bit for bit (tests/test_out_of_core.py). Supported: ``SplitConformal`` (``kind="split"``) with any score and
``tune=False``; tuned RAPS, Mondrian and conformal risk control need their own passes and are refused.
"""

from __future__ import annotations

import warnings

import numpy as np

from calib.conformal import scores as _scores
from calib.conformal.quantile import conformal_quantile
from calib.conformal.split import SetSizeWarning, SplitConformal, data_fingerprint

__all__ = ["check_chunked_predictor", "draw_key", "calibration_uniforms", "set_size_extremes", "fit_from_label_scores"]


def check_chunked_predictor(predictor):
    """``predictor`` if it can be calibrated chunk by chunk (an unfitted-or-fitted :class:`SplitConformal` with
    ``tune=False``), else a ``ValueError`` naming what can."""
    if type(predictor) is not SplitConformal or predictor.tune:
        what = f"{type(predictor).__name__}(kind={getattr(predictor, 'kind', None)!r}" + (
            ", tune=True)" if getattr(predictor, "tune", False) else ")")
        raise ValueError(f"Expected a split conformal predictor (conformal=lac, aps, raps, saps or topk, tune=False) for "
                         f"logits read in chunks (data.mmap=true), got {what}; Mondrian, risk-control and tuned RAPS "
                         "predictors need the calibration probabilities in memory (data.mmap=false).")
    return predictor


def draw_key(predictor, true_label_probs, labels, n_classes):
    """The draw key ``fit`` would compute on calibration probabilities whose label entries are
    ``true_label_probs`` (n,) (None when the sets are not randomised or draws are seed-only).

    :func:`calib.conformal.split.data_fingerprint` reads only ``p[i, y_i]`` and the shape: it is given a read-only
    (n, k) view whose every entry of row i is ``true_label_probs[i]`` (stride 0 along the classes), so nothing of
    size n * k exists."""
    if not (predictor.is_randomized and predictor.fresh_draws):
        return None
    q = np.ascontiguousarray(true_label_probs, dtype=np.float64)
    view = np.lib.stride_tricks.as_strided(q, shape=(q.shape[0], int(n_classes)), strides=(q.strides[0], 0),
                                           writeable=False)
    return data_fingerprint(view, np.asarray(labels))


def calibration_uniforms(predictor, n, key):
    """The uniforms (n,) of the calibration rows at fit (stream 0), or None when the sets are not randomised."""
    return predictor._u(int(n), 0, key)


def set_size_extremes(predictor, probs, u=None):
    """``(lo, hi)`` (each (m,)): the smallest and largest score of each of these calibration rows (the rows ``fit``
    measures its set sizes on: ``0, step, 2 * step, ...`` with ``step = ceil(n / SET_SIZE_CHECK_ROWS)``), computed
    chunk by chunk so that only two numbers per row are kept."""
    return predictor.scorer.extremes(np.asarray(probs), u)


def fit_from_label_scores(predictor, label_scores, n_classes, key, *, extremes=None, warn=True):
    """Fit ``predictor`` (in place, as ``fit`` does; returns it) from the label scores of its ``n`` calibration rows.

    ``key`` is :func:`draw_key` of those rows; ``extremes`` the concatenated :func:`set_size_extremes` of the set-size
    check rows, from which the :class:`SetSizeWarning` of ``fit`` is given (none without them).
    """
    check_chunked_predictor(predictor)
    s = np.asarray(label_scores, dtype=np.float64)
    t = np.asarray(conformal_quantile(s, list(predictor.alphas), allow_infinite=predictor.allow_infinite),
                   dtype=np.float64).reshape(-1)
    state = {"n_classes": int(n_classes), "n_calibration": int(s.shape[0])}
    if isinstance(predictor._score, _scores.RAPS):
        state.update(k_reg=int(predictor.k_reg), lam=float(predictor.lam))
    if predictor._stores_draw_key():
        state["draw_key"] = int(key)
    fitted = type(predictor).from_state(predictor.get_params(), state, {"thresholds": t})
    fitted.thresholds_ = t  # the quantile itself (from_state checked it and keeps the same values)
    for attr in ("thresholds_", "score_", "draw_key_", "n_calibration_", "n_classes_"):
        predictor.__dict__[attr] = fitted.__dict__[attr]
    predictor.score_ = predictor._score  # fit keeps the configured score object (no tuning)
    if warn and extremes is not None:
        lo, hi = extremes  # as SplitConformal._set_size_rates computes them
        predictor._warn_set_sizes([(a, float(np.mean(lo > th)), float(np.mean(hi <= th)))
                                   for a, th in zip(predictor.alphas, t)])
    return predictor


def quiet_fit_from_label_scores(predictor, label_scores, n_classes, key):
    """:func:`fit_from_label_scores` without set-size warnings (a coverage curve over many alphas)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SetSizeWarning)
        return fit_from_label_scores(predictor, label_scores, n_classes, key, warn=False)
