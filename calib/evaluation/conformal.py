"""The conformal stage of :func:`calib.evaluation.pipeline.fit_and_evaluate`: fit, predict, metrics section and
the data of its figures (drawn by :meth:`calib.evaluation.pipeline.PipelineResult.write`)."""

from __future__ import annotations

import numpy as np

from calib._json import to_json
from calib._validation import check_same_length
from calib.evaluation.set_metrics import LEVEL, class_coverage_pvalues, set_metrics

__all__ = ["conformal_stage", "coverage_law_kwargs"]


def coverage_law_kwargs(predictor):
    """The law of the coverage tests of :func:`calib.evaluation.set_metrics.set_metrics` for a fitted predictor,
    from its public attributes only (``kind``, ``condition``, ``stratum_sizes_``, ``groups_``,
    ``n_calibration_``, ``small_strata``):

    - Mondrian ``condition="class"``: ``class_calibration_sizes`` (each class valid by construction);
    - Mondrian ``condition="group"``: ``group_calibration_sizes`` (each group valid by construction);
    - split conformal (``split``, and ``conformal_risk_control``, whose threshold for one label per row is the
      split-conformal quantile): ``n_calibration`` (marginal Beta-binomial law);
    - anything else: no law (binomial tests given the fitted sets).
    """
    condition = getattr(predictor, "condition", None)
    if condition == "class":
        return {"class_calibration_sizes": np.asarray(predictor.stratum_sizes_, dtype=np.int64),
                "small_strata": getattr(predictor, "small_strata", "full")}
    if condition == "group":
        return {"group_calibration_sizes": {str(g): int(n) for g, n in zip(predictor.groups_.tolist(),
                                                                        predictor.stratum_sizes_.tolist())},
                "small_strata": getattr(predictor, "small_strata", "full")}
    if getattr(predictor, "kind", None) in ("split", "conformal_risk_control"):
        return {"n_calibration": int(predictor.n_calibration_)}
    return {}


def conformal_stage(predictor, cal_probs, cal_labels, test_probs, test_labels, *, cal_groups=None,
                    test_groups=None, plots=True, class_names=None):
    """Fit ``predictor`` on calibration probabilities, predict test sets, return (section, plot data).

    Parameters
    ----------
    predictor : a fresh member of ``calib.conformal.REGISTRY``
    cal_probs, test_probs : ndarray (n, k) of calibrated probabilities
    cal_labels, test_labels : ndarray (n,)
    cal_groups, test_groups : ndarray (n,), optional; required by ``condition="group"``.
    class_names : sequence of k str, optional; shown on ``class_coverage.png`` instead of the class ids.

    Returns
    -------
    section : dict
        The metrics.json "conformal" block: ``score``, ``alpha``, ``qhat`` (``null`` = infinite,
        all-classes sets; a list per stratum for Mondrian, with ``strata``), ``coverage``,
        ``coverage_test`` (exact test of H0 "coverage >= 1 - alpha"), ``mean_set_size``, ``median_set_size``,
        ``singleton_rate``, ``empty_rate``, ``min_class_coverage`` and ``class_coverage_gap`` (numbers, not
        verdicts), ``class_coverage_test`` (exact per-class tests, Holm-corrected, ``flagged`` classes),
        ``size_histogram``, ``size_stratified_coverage``, ``group_coverage`` and ``group_coverage_test`` (when
        groups exist). The law of each test follows the predictor (:func:`coverage_law_kwargs`;
        docs/statistics.md). For a list of alphas each metric is a list (one per alpha).
    plot_data : dict of file name -> :class:`calib.plotting.FigureSpec`
        ``conformal_coverage.png`` (coverage vs alpha with the exact band, :class:`CoverageCurveData`),
        ``set_size_histogram.png`` (:class:`SetSizeData`), ``class_coverage.png`` (:class:`ClassCoverageData`),
        all from :mod:`calib.plotting.conformal`; empty when ``plots`` is False. Nothing is drawn here.
    """
    from calib.conformal.split import ConformalBase

    if not isinstance(predictor, ConformalBase):
        raise TypeError(f"Expected predictor as a conformal predictor of calib.conformal.REGISTRY, got "
                        f"{type(predictor).__name__}.")
    if not isinstance(plots, bool):
        raise TypeError(f"Expected plots as a bool, got {type(plots).__name__} {plots!r}.")
    for name, labels, groups in (("cal", cal_labels, cal_groups), ("test", test_labels, test_groups)):
        if groups is not None:
            n = len(np.atleast_1d(np.asarray(labels)))
            g = np.atleast_1d(np.asarray(groups))
            check_same_length(n, f"{name}_groups", f"{name}_labels", **{f"{name}_groups": g})
    if getattr(predictor, "condition", None) == "group" and (cal_groups is None or test_groups is None):
        raise ValueError(
            "Expected cal_groups and test_groups for a group-conditional conformal predictor, got None; the data "
            "file needs a 'groups' array (or choose conformal=mondrian_class)."
        )
    predictor.fit(cal_probs, cal_labels, groups=cal_groups)
    sets = predictor.predict_set(test_probs, groups=test_groups)
    alphas = list(predictor.alphas)
    multi = isinstance(predictor.alpha, tuple)
    law = coverage_law_kwargs(predictor)
    blocks = []
    for j, a in enumerate(alphas):
        s = sets[:, :, j] if multi else sets
        blocks.append(set_metrics(s, test_labels, a, groups=test_groups, **law))
    keys = blocks[0].keys()
    section = {"kind": predictor.kind, "score": predictor.score_name, "alpha": alphas if multi else alphas[0],
               "n_calibration": int(predictor.n_calibration_)}
    for key in keys:
        vals = [b[key] for b in blocks]
        section[key] = to_json(vals if multi else vals[0])
    section["qhat"] = to_json(predictor.qhat_)  # null = infinite (all-classes sets)
    if getattr(predictor, "condition", None) is not None:
        section["condition"] = predictor.condition
        section["strata"] = (predictor.groups_.tolist() if predictor.condition == "group"
                             else list(range(predictor.n_classes_)))
        section["stratum_sizes"] = predictor.stratum_sizes_.tolist()
        section["small_strata"] = predictor.small_strata_.tolist()
    if hasattr(predictor, "k_reg_"):
        section["k_reg"], section["lam"] = int(predictor.k_reg_), float(predictor.lam_)
    plot_data = {}
    if plots:
        from calib.plotting import FigureSpec
        from calib.plotting import conformal as cplots

        curve = cplots.prepare_coverage_curve(lambda al: predictor.clone(alpha=list(al)), cal_probs, cal_labels,
                                              test_probs, test_labels, cal_groups=cal_groups,
                                              test_groups=test_groups)
        first = sets[:, :, 0] if multi else sets
        plot_data["conformal_coverage.png"] = FigureSpec(
            "conformal.plot_coverage_curve", curve, size=(5, 4),
            title=f"{predictor.kind}/{predictor.score_name}: coverage vs alpha", title_fontsize=9)
        plot_data["set_size_histogram.png"] = FigureSpec(
            "conformal.plot_set_size_histogram", cplots.prepare_set_sizes(first), size=(5, 4),
            title=f"{predictor.kind}/{predictor.score_name}: set sizes at alpha={alphas[0]:g}", title_fontsize=9)
        _, p_holm = class_coverage_pvalues(first, test_labels, alphas[0],
                                           calibration_sizes=law.get("class_calibration_sizes"))
        plot_data["class_coverage.png"] = FigureSpec(
            "conformal.plot_class_coverage", cplots.prepare_class_coverage(first, test_labels, alphas[0],
                                                                           p_holm=p_holm, level=LEVEL,
                                                                           class_names=class_names),
            size=cplots.class_coverage_figure_size(np.shape(first)[1]),
            title=f"{predictor.kind}/{predictor.score_name}: coverage per class at alpha={alphas[0]:g}",
            title_fontsize=9)
    return section, plot_data
