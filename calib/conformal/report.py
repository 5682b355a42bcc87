"""The conformal stage of :func:`calib.pipeline.fit_and_evaluate`: fit, predict, metrics section, figures."""

from __future__ import annotations

import inspect
import math

import numpy as np

from calib.conformal.metrics import set_metrics

__all__ = ["conformal_stage"]


def _clone_with_alpha(predictor, alphas):
    sig = inspect.signature(type(predictor).__init__)
    params = {k: getattr(predictor, k) for k in sig.parameters if k != "self" and hasattr(predictor, k)}
    params["alpha"] = list(alphas)
    return type(predictor)(**params)


def _json_q(q):
    a = np.asarray(q, dtype=np.float64)
    return np.where(np.isfinite(a), a, np.nan).tolist() if a.ndim else (float(a) if math.isfinite(a) else None)


def _nan_to_none(x):
    if isinstance(x, list):
        return [_nan_to_none(v) for v in x]
    return None if isinstance(x, float) and math.isnan(x) else x


def conformal_stage(predictor, cal_probs, cal_labels, test_probs, test_labels, *, cal_groups=None,
                    test_groups=None, figures=True):
    """Fit ``predictor`` on calibration probabilities, predict test sets, return (section, figures).

    Parameters
    ----------
    predictor : a fresh member of ``calib.conformal.REGISTRY``
    cal_probs, test_probs : ndarray (n, k) of calibrated probabilities
    cal_labels, test_labels : ndarray (n,)
    cal_groups, test_groups : ndarray (n,), optional; required by ``condition="group"``.

    Returns
    -------
    section : dict
        The metrics.json "conformal" block: ``score``, ``alpha``, ``qhat`` (``null`` = infinite,
        all-classes sets; a list per stratum for Mondrian, with ``strata``), ``coverage``,
        ``mean_set_size``, ``median_set_size``, ``singleton_rate``, ``empty_rate``, ``min_class_coverage``,
        ``class_coverage_gap``, ``violating_classes``, ``size_histogram``, ``size_stratified_coverage``,
        ``group_coverage`` (when groups exist). For a list of alphas each metric is a list (one per alpha).
    figures : dict of file name -> matplotlib Figure
        ``conformal_coverage.png`` (coverage vs alpha with the exact band), ``set_size_histogram.png``,
        ``class_coverage.png``.
    """
    if getattr(predictor, "condition", None) == "group" and (cal_groups is None or test_groups is None):
        raise ValueError(
            "Expected cal_groups and test_groups for a group-conditional conformal predictor, got None; the data "
            "file needs a 'groups' array (or choose conformal=mondrian_class)."
        )
    predictor.fit(cal_probs, cal_labels, groups=cal_groups)
    sets = predictor.predict_set(test_probs, groups=test_groups)
    alphas = list(predictor.alphas)
    multi = isinstance(predictor.alpha, tuple)
    blocks = []
    for j, a in enumerate(alphas):
        s = sets[:, :, j] if multi else sets
        blocks.append(set_metrics(s, test_labels, a, groups=test_groups))
    keys = blocks[0].keys()
    section = {"kind": predictor.kind, "score": predictor.score_name, "alpha": alphas if multi else alphas[0],
               "n_calibration": int(predictor.n_calibration_)}
    for key in keys:
        vals = [b[key] for b in blocks]
        section[key] = _nan_to_none(vals if multi else vals[0])
    section["qhat"] = _json_q(predictor.qhat_)
    if getattr(predictor, "condition", None) is not None:
        section["condition"] = predictor.condition
        section["strata"] = (predictor.groups_.tolist() if predictor.condition == "group"
                             else list(range(predictor.n_classes_)))
        section["stratum_sizes"] = predictor.stratum_sizes_.tolist()
        section["small_strata"] = predictor.small_strata_.tolist()
    if hasattr(predictor, "k_reg_"):
        section["k_reg"], section["lam"] = int(predictor.k_reg_), float(predictor.lam_)
    figs = {}
    if figures:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        from calib.conformal import plots

        data = plots.prepare_coverage_curve(lambda al: _clone_with_alpha(predictor, al), cal_probs, cal_labels,
                                            test_probs, test_labels, cal_groups=cal_groups, test_groups=test_groups)
        fig, ax = plt.subplots(figsize=(5, 4))
        plots.plot_coverage_curve(data, ax=ax)
        ax.set_title(f"{predictor.kind}/{predictor.score_name}: coverage vs alpha", fontsize=9)
        figs["conformal_coverage.png"] = fig
        first = sets[:, :, 0] if multi else sets
        fig, ax = plt.subplots(figsize=(5, 4))
        plots.plot_set_size_histogram(first, ax=ax)
        ax.set_title(f"set sizes at alpha={alphas[0]:g}", fontsize=9)
        figs["set_size_histogram.png"] = fig
        fig, ax = plt.subplots(figsize=(5, 4))
        plots.plot_class_coverage(first, test_labels, alphas[0], ax=ax)
        figs["class_coverage.png"] = fig
    return section, figs
