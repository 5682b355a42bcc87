"""One experiment's pipeline: calibrator -> (conformal predictor) -> (routing policy), fitted on the
calibration part, judged on the test part, written as metrics.json + figures + one artifact folder.

The stages (:mod:`calib.evaluation.conformal`, :mod:`calib.evaluation.routing`) return plot data only;
:meth:`PipelineResult.write` is the one place that draws (with :mod:`calib.plotting`) and saves the PNGs.

This is what ``experiments/calibrate.py`` runs; keeping it here (not in the script) lets notebooks and
tests run the same thing without Hydra.

A run folder never pairs one run's ``metrics.json`` with another run's figures or artifact: :meth:`PipelineResult.write`
first removes the previous run's outputs (``metrics.json`` first, so a run killed at any point leaves none), then
writes the figures and ``artifact/`` and ``metrics.json`` last (atomically). ``metrics.json`` carries the
``artifact_id`` of the artifact written beside it (:func:`calib.artifacts.content_id`: a digest of what the
artifact holds, deterministic, so reruns stay byte-identical): the two belong together exactly when it matches
the artifact's (:func:`calib.evaluation.results.find_jobs` checks this).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

import numpy as np

from calib import metrics as _metrics
from calib.artifacts import data_fingerprint
from calib.calibrators.base import softmax
from calib.io import LogitsData

__all__ = ["PipelineResult", "fit_and_evaluate", "procedure_intervals", "procedure_scorer", "METRIC_KEYS",
           "CALIBRATION_CI_KEYS", "RUN_FILES", "PLOT_FILES", "clear_run_folder", "guarantee_warnings",
           "label_prior_test", "warn_guarantees"]

log = logging.getLogger(__name__)

#: Keys of the "uncalibrated" / "calibrated" blocks of metrics.json.
#: ``classwise_ece_sum`` is Kull et al. (2019)'s tabulated form: summed over classes, np.digitize bins.
#: ``ece_debiased`` is Kumar et al. (2019)'s debiased l2 calibration error (equal-mass bins), ``smece`` the
#: smooth ECE of Blasiok & Nakkiran (2023) (docs/metrics.md).
METRIC_KEYS = ("accuracy", "nll", "brier", "ece", "classwise_ece", "classwise_ece_sum", "ece_mass", "mce",
               "ece_debiased", "smece")

#: Calibration metrics given a bootstrap interval in metrics.json's ``calibration_ci`` by default (smooth ECE's
#: bandwidth search costs ~3 ms per resample on 10,000 items, so it is left to
#: :func:`calib.evaluation.intervals.calibration_bootstrap` with ``metrics=CI_METRICS``).
CALIBRATION_CI_KEYS = ("accuracy", "nll", "brier", "ece", "classwise_ece", "ece_debiased")

#: Every figure a stage of this pipeline can write (reliability; conformal; routing). A re-run into a used
#: folder removes these (and only these, with :data:`RUN_FILES`) so no figure of the previous run survives
#: beside the new metrics.json; a new stage's figure names must be added here (tests check it).
PLOT_FILES = ("reliability.png", "conformal_coverage.png", "set_size_histogram.png", "class_coverage.png",
              "risk_coverage.png", "completion_frontier.png", "silent_failure_slices.png")
#: The other files of a run folder written by the pipeline or experiments/calibrate.py.
RUN_FILES = ("metrics.json", "timings.json", "report.html")


def _test_metrics(probs, labels, n_bins):
    out = _metrics.summary(probs, labels, n_bins=n_bins)
    out["classwise_ece_sum"] = _metrics.classwise_ece(probs, labels, n_bins=n_bins, binning="digitize",
                                                      reduction="sum")
    out["ece_debiased"] = _metrics.debiased_ece(probs, labels, n_bins=n_bins)
    out["smece"] = _metrics.smooth_ece(probs, labels)
    return out


@dataclasses.dataclass
class PipelineResult:
    """Fitted components, the metrics dict (the content of metrics.json), test-split probabilities (None in an
    out-of-core run, which keeps :attr:`reliability_panels` instead) and the stages' plot data (``plots``: file name -> :class:`calib.plotting.FigureSpec`, drawn by :meth:`write`)."""

    metrics: dict
    calibrator: object
    conformal: object | None
    policy: object | None
    test_labels: np.ndarray
    probs_before: np.ndarray
    probs_after: np.ndarray
    class_names: tuple | None = None
    n_bins: int = 15
    plots: dict = dataclasses.field(default_factory=dict)  # file name -> calib.plotting.FigureSpec
    reliability: dict | None = None  # calibration items' accuracy per confidence bin (calib.deploy.reliability_table)
    #: [(name, calib.plotting.reliability.ReliabilityData)] of reliability.png, when the test probabilities are not
    #: kept (the out-of-core pipeline, :mod:`calib.evaluation.streaming`: ``probs_before``/``probs_after`` None)
    reliability_panels: list | None = None
    #: calib.shift.ReferenceStats of the calibration rows (stored in the artifact for ``calib monitor``); None in
    #: an out-of-core run
    reference: object | None = None
    #: the calibration and test parts (:class:`calib.io.LogitsData`) when the caller keeps them
    #: (:func:`calib.experiment.fit` does; None out of core)
    cal: object | None = None
    test: object | None = None

    def fitted_pipeline(self):
        """The fitted chain as the :class:`calib.deploy.FittedPipeline` that :meth:`write` saves (and
        :mod:`calib.runtime` serves)."""
        from calib.deploy import FittedPipeline

        return FittedPipeline.from_parts(self.calibrator, self.conformal, self.policy, class_names=self.class_names,
                                         reliability=self.reliability, reference=self.reference)

    def write(self, out_dir, *, config_yaml=None, data_name=None):
        """Write the figures (reliability.png and :attr:`plots`), artifact/ and, last, metrics.json into ``out_dir``.

        Every figure's title names the data: ``data_name``, or (None) the ``data.name`` of ``config_yaml``
        (:func:`calib.plotting.with_data_name`).

        The previous run's outputs in ``out_dir`` are removed first (metrics.json before anything else, then
        timings.json, the figures of :data:`PLOT_FILES` and a calib ``artifact/``; no other file is touched),
        so a run that dies half-way leaves no metrics.json at all. ``metrics["artifact_id"]`` is set to the
        written artifact's :func:`calib.artifacts.content_id`.
        """
        from calib import artifacts
        from calib._atomic import write_json_atomic
        from calib.plotting import render, reliability, save_figure, with_data_name

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        unknown = sorted(set(self.plots) - set(PLOT_FILES))
        if unknown:
            log.warning("Figures %s are not in calib.evaluation.pipeline.PLOT_FILES: a later run into %s that does "
                        "not draw them will not remove them.", unknown, out_dir)
        clear_run_folder(out_dir, also=unknown)
        self.metrics.pop("artifact_id", None)  # a previous write's; set again below for this artifact
        panels = self.reliability_panels
        if panels is None:
            panels = [
                ("uncalibrated", reliability.prepare_reliability(self.probs_before, self.test_labels,
                                                                 n_bins=self.n_bins)),
                (self.calibrator.kind,
                 reliability.prepare_reliability(self.probs_after, self.test_labels, n_bins=self.n_bins)),
            ]
        data_name = data_name if data_name is not None else _data_name(config_yaml)
        fig = reliability.plot_reliability_comparison(panels, title=f"reliability (test part) — {data_name}"
                                                      if data_name else "reliability (test part)")
        save_figure(fig, out_dir / "reliability.png")
        for name, spec in self.plots.items():
            save_figure(render(with_data_name(spec, data_name)), out_dir / name)
        self.fitted_pipeline().save(out_dir / "artifact", metrics=self.metrics,
                                    data_fingerprint=self.metrics["data_fingerprint"], config_yaml=config_yaml,
                                    overwrite=True)
        self.metrics["artifact_id"] = artifacts.content_id(artifacts.read_manifest(out_dir / "artifact"))
        write_json_atomic(out_dir / "metrics.json", self.metrics)  # last: its presence means the run completed
        return out_dir


def _data_name(config_yaml):
    """``data.name`` of a run's resolved config YAML (a figure title's data name), or None."""
    if not config_yaml:
        return None
    import yaml

    try:
        cfg = yaml.safe_load(config_yaml)
    except yaml.YAMLError:  # a title is not worth failing a run for
        return None
    data = cfg.get("data") if isinstance(cfg, dict) else None
    name = data.get("name") if isinstance(data, dict) else None
    return str(name) if isinstance(name, (str, int)) and not isinstance(name, bool) and str(name) else None


#: level of the chi-square test of the class priors (calibration vs test) named as the likely cause of a violation
PRIOR_LEVEL = 0.05


def label_prior_test(cal_counts, test_counts):
    """Chi-square test of homogeneity of the label counts of the calibration and the test part (H0: both parts
    draw their labels from the same class priors): ``{"statistic", "dof", "p_value"}`` of
    :func:`scipy.stats.chi2_contingency` on the 2 x k table (classes absent from both parts dropped), or None
    when fewer than two classes occur. An asymptotic test: with tiny parts (expected counts below ~5) its p-value
    is approximate."""
    from scipy.stats import chi2_contingency

    from calib._validation import check_positive_int

    table = []
    for name, counts in (("cal_counts", cal_counts), ("test_counts", test_counts)):
        c = np.asarray(counts)
        if c.ndim != 1 or c.size == 0 or not np.issubdtype(c.dtype, np.integer) or (c < 0).any():
            raise ValueError(f"Expected {name} as a 1-D array of label counts (integers >= 0), got "
                             f"{c.dtype} of shape {c.shape}.")
        table.append(c.astype(np.int64))
    if table[0].size != table[1].size:
        raise ValueError(f"Expected cal_counts and test_counts of the same length (one count per class), got "
                         f"{table[0].size} and {table[1].size}.")
    for name, c in zip(("cal_counts", "test_counts"), table):
        check_positive_int(int(c.sum()), f"sum of {name}", minimum=1)
    t = np.stack(table)
    t = t[:, t.sum(axis=0) > 0]
    if t.shape[1] < 2:
        return None
    stat, p, dof, _ = chi2_contingency(t, correction=False)
    return {"statistic": float(stat), "dof": int(dof), "p_value": float(p)}


def _tests(block):
    return [b for b in (block if isinstance(block, list) else [block]) if isinstance(b, dict)]


def guarantee_warnings(metrics, cal_counts=None, test_counts=None):
    """One plain sentence per guarantee the test part significantly violates, from the exact tests already in
    ``metrics`` (a metrics.json dict): the conformal ``coverage_test`` with ``rejected`` (one per alpha) and a
    policy's ``test_risk_test`` with ``exceeds`` (any section holding one). Each sentence names the test and its
    p-value and says that the guarantee assumes exchangeable calibration and test rows; with the label counts of
    the two parts (``cal_counts``, ``test_counts``: one count per class) it adds the chi-square test of their
    class priors (:func:`label_prior_test`) as the likely cause when it rejects at level 0.05 (a label shift),
    or says the priors agree. Returns ``[]`` when nothing is violated. Deterministic: same metrics, same text.
    """
    if not isinstance(metrics, dict):
        raise TypeError(f"Expected metrics as a dict (the content of metrics.json), got {type(metrics).__name__}.")
    if (cal_counts is None) != (test_counts is None):
        raise ValueError("Expected cal_counts and test_counts together (or neither), got only one of them.")
    found = []
    conformal = metrics.get("conformal")
    if isinstance(conformal, dict):
        for t in _tests(conformal.get("coverage_test")):
            if t.get("rejected"):
                law = str(t.get("law", "exact")).replace("_", "-")
                found.append(f"conformal {conformal.get('kind', '')}/{conformal.get('score', '')}: test coverage "
                             f"{t['coverage']:.4g} < {1 - t['alpha']:.4g} at alpha={t['alpha']:g} (exact {law} test "
                             f"of H0 coverage >= 1 - alpha: {t['covered']} of {t['n']} test rows covered, "
                             f"p={t['p_value']:.2g})")
    for key in sorted(metrics):
        section = metrics[key]
        if not isinstance(section, dict) or not isinstance(section.get("test_risk_test"), dict):
            continue
        t = section["test_risk_test"]
        if not t.get("exceeds"):
            continue
        target = (section.get("guarantee") or {}).get("target_risk")
        certified = (section.get("guarantee") or {}).get("certified")
        risk = t["n_errors"] / t["n_answered"] if t["n_answered"] else float("nan")
        found.append(f"{key} {section.get('kind', '')}: test selective risk {risk:.4g} > target "
                     f"{target:g} (exact binomial test of H0 risk <= target: {t['n_errors']} errors in "
                     f"{t['n_answered']} answered test rows, p={t['p_value']:.2g})"
                     + (" although the calibration part certified it" if certified else ""))
    if not found:
        return []
    cause = "the guarantee assumes calibration and test rows are exchangeable"
    if cal_counts is not None:
        prior = label_prior_test(cal_counts, test_counts)
        if prior is not None and prior["p_value"] <= PRIOR_LEVEL:
            p = f"p={prior['p_value']:.2g}" if prior["p_value"] > 0 else "p<1e-300"
            cause += (f"; the class priors of the calibration and test parts differ (chi-square {prior['statistic']:.1f}"
                      f" on {prior['dof']} dof, {p}): label shift; see docs/shift.md")
        elif prior is not None:
            cause += (f"; the class priors of the two parts agree (chi-square p={prior['p_value']:.2g}), so look for "
                      "another shift between them (docs/shift.md)")
    return [f"{line}: {cause}" for line in found]


def warn_guarantees(metrics, cal_labels, test_labels, n_classes):
    """Log :func:`guarantee_warnings` of ``metrics`` (label counts from ``cal_labels`` / ``test_labels``) as
    WARNING lines and store them in ``metrics["warnings"]`` (a list, empty when nothing is violated). Called
    where :func:`fit_and_evaluate` and :func:`calib.evaluation.streaming.fit_and_evaluate_streaming` finish."""
    k = int(n_classes)
    messages = guarantee_warnings(metrics, np.bincount(np.asarray(cal_labels), minlength=k),
                                  np.bincount(np.asarray(test_labels), minlength=k))
    for line in messages:
        log.warning("%s", line)
    metrics["warnings"] = messages
    return messages


def clear_run_folder(out_dir, *, also=()):
    """Remove a previous run's outputs from ``out_dir``: metrics.json first, then timings.json, the figures
    of :data:`PLOT_FILES` (and the names in ``also``), ``artifact/`` when it is a calib artifact (holds
    manifest.json), ``monitor/`` when it is a shift-monitor report (holds monitor.json) and the temporary siblings a killed atomic write leaves (``.metrics.json.*.tmp``,
    ``.artifact.tmp-*``). Other files (the user's, Hydra's ``.hydra/`` and log) are kept. Returns the names
    removed."""
    out_dir = Path(out_dir)
    removed = []
    names = (*RUN_FILES, *PLOT_FILES, *also)
    for name in names:
        path = out_dir / name
        if path.is_file() or path.is_symlink():
            path.unlink()
            removed.append(name)
    artifact = out_dir / "artifact"
    if artifact.is_dir() and (artifact / "manifest.json").is_file():
        shutil.rmtree(artifact)
        removed.append("artifact/")
    monitor = out_dir / "monitor"
    if monitor.is_dir() and not monitor.is_symlink() and (monitor / "monitor.json").is_file():
        shutil.rmtree(monitor)  # the shift monitor's report (experiments/calibrate.py monitor.target=...)
        removed.append("monitor/")
    for name in ("artifact", "monitor", *names):  # leftovers of killed atomic writes: .<name>.<random>[.tmp]
        for path in out_dir.glob(f".{name}.*"):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path.name)
    if removed:
        log.info("Removed the previous run's outputs from %s: %s", out_dir, ", ".join(removed))
    return removed


def fit_and_evaluate(cal: LogitsData, test: LogitsData, calibrator, *, conformal=None, policy=None,
                     n_bins=15, n_bootstrap=2000, bootstrap_seed=0, calibration_bootstrap=500,
                     procedure_resamples=0) -> PipelineResult:
    """Fit ``calibrator`` (then ``conformal`` and ``policy`` when given) on ``cal``; evaluate on ``test``.

    ``n_bins`` sets the binned calibration metrics; ``n_bootstrap`` and ``bootstrap_seed`` the policy's
    confidence intervals (conditional on the calibration split: the fitted policy is held fixed).
    ``calibration_bootstrap`` resamples (0: none) give ``metrics["calibration_ci"]``: percentile 95 %
    intervals over test items of the metrics of :data:`CALIBRATION_CI_KEYS`, uncalibrated, calibrated and
    their paired difference (calibrated - uncalibrated), the fitted calibrator held fixed.
    ``procedure_resamples`` (0: none) gives ``metrics["procedure_ci"]``: each resample redraws the calibration
    and the test rows, refits clones of the calibrator, conformal predictor and policy and recomputes the
    calibrated metrics, coverage / set size and policy rates (:func:`procedure_intervals`). Both use
    ``bootstrap_seed``. Nothing is written: call :meth:`PipelineResult.write`. Inputs are validated before
    any fitting.
    """
    from calib._validation import check_positive_int

    calibration_bootstrap = check_positive_int(calibration_bootstrap, "calibration_bootstrap", minimum=0)
    procedure_resamples = check_positive_int(procedure_resamples, "procedure_resamples", minimum=0)
    if cal.n_classes != test.n_classes:
        raise ValueError(f"Expected the same number of classes in cal and test, got {cal.n_classes} and {test.n_classes}.")
    if policy is not None and getattr(policy, "needs_sets", False) and conformal is None:
        raise ValueError(
            f"Policy {policy.kind!r} routes on conformal prediction sets, but no conformal predictor is configured "
            "(conformal=none); set conformal=lac (or aps), or choose another policy."
        )
    log.info("Fitting %s on %d calibration rows", calibrator, cal.n_samples)
    calibrator.fit(cal.logits, cal.labels)
    probs_before = softmax(test.logits)
    probs_after = calibrator.predict_proba(test.logits)
    before = _test_metrics(probs_before, test.labels, n_bins)
    after = _test_metrics(probs_after, test.labels, n_bins)
    state, _ = calibrator.get_state()
    result = {
        "n_cal": cal.n_samples,
        "n_test": test.n_samples,
        "n_classes": cal.n_classes,
        "calibrator": {"kind": calibrator.kind, **{k: v for k, v in state.items() if k != "n_classes"}},
        "uncalibrated": {k: before[k] for k in METRIC_KEYS},
        "calibrated": {k: after[k] for k in METRIC_KEYS},
        "data_fingerprint": data_fingerprint(cal.logits, cal.labels),
    }
    log.info("Test ECE %.4f -> %.4f, NLL %.4f -> %.4f", before["ece"], after["ece"], before["nll"], after["nll"])
    if calibration_bootstrap:
        from calib.evaluation.intervals import calibration_bootstrap as _bootstrap

        result["calibration_ci"] = _bootstrap(
            {"uncalibrated": probs_before, "calibrated": probs_after}, test.labels,
            difference=("calibrated", "uncalibrated"), n_bins=n_bins, n_resamples=calibration_bootstrap,
            seed=bootstrap_seed, metrics=CALIBRATION_CI_KEYS)
    plots = {}
    from calib.deploy import reliability_table

    cal_probs = calibrator.predict_proba(cal.logits)  # the stages' input and the artifact's reliability table
    reliability = reliability_table(cal_probs.max(axis=1), cal_probs.argmax(axis=1) == cal.labels)
    if conformal is not None:
        from calib.evaluation.conformal import conformal_stage

        log.info("Conformal stage: %s", conformal)
        section, plot_data = conformal_stage(conformal, cal_probs, cal.labels, probs_after, test.labels,
                                        cal_groups=cal.groups, test_groups=test.groups,
                                        class_names=cal.class_names)
        result["conformal"] = section
        plots.update(plot_data)
    if policy is not None:
        from calib.evaluation.routing import policy_stage

        log.info("Policy stage: %s", policy)
        sections, plot_data = policy_stage(policy, cal_probs, cal.labels, probs_after, test.labels,
                                      conformal=conformal, cal_extras=cal.extras, test_extras=test.extras,
                                      cal_groups=cal.groups, test_groups=test.groups,
                                      n_resamples=n_bootstrap, seed=bootstrap_seed, class_names=cal.class_names)
        result.update(sections)
        plots.update(plot_data)
    if procedure_resamples:
        result["procedure_ci"] = procedure_intervals(cal, test, calibrator, conformal=conformal, policy=policy,
                                                     n_bins=n_bins, n_resamples=procedure_resamples,
                                                     seed=bootstrap_seed)
    warn_guarantees(result, cal.labels, test.labels, cal.n_classes)
    from calib.deploy import FittedPipeline

    reference = FittedPipeline.from_parts(calibrator, conformal, policy, reliability=reliability).attach_reference(
        cal.logits, cal.labels, probs=cal_probs, fallback=cal.extras.get("fallback"), groups=cal.groups).reference
    return PipelineResult(result, calibrator, conformal, policy, test.labels, probs_before, probs_after,
                          class_names=cal.class_names, n_bins=n_bins, plots=plots, reliability=reliability,
                          reference=reference)


#: Calibrated test metrics recomputed by the procedure-level interval (cheap ones).
PROCEDURE_METRIC_KEYS = ("accuracy", "nll", "brier", "ece")
#: Policy rates recomputed by the procedure-level interval.
PROCEDURE_RATE_KEYS = ("automation_rate", "escalation_rate", "fallback_rate", "selective_risk",
                       "task_completion_rate", "expected_cost")


def _take(a, idx):
    return None if a is None else np.asarray(a)[idx]


def procedure_scorer(cal: LogitsData, test: LogitsData, calibrator, *, conformal=None, policy=None, n_bins=15):
    """The ``fit_and_score(cal_idx, test_idx)`` of this pipeline for
    :func:`calib.evaluation.intervals.procedure_bootstrap`: fit fresh clones (``.clone()``: the constructor
    arguments, nothing fitted) of ``calibrator``, ``conformal`` and ``policy`` on the calibration rows
    ``cal_idx`` and return the metrics of the test rows ``test_idx``: the calibrated
    :data:`PROCEDURE_METRIC_KEYS`, ``coverage`` and ``mean_set_size`` (first alpha) with a conformal predictor,
    and :data:`PROCEDURE_RATE_KEYS` with a policy (its cost model, fallback and groups as in the pipeline)."""
    from calib.evaluation.product_metrics import metrics_from_counts, outcome_cells
    from calib.evaluation.routing import _fallback

    def fit_and_score(cal_idx, test_idx):
        cal_y, test_y = cal.labels[cal_idx], test.labels[test_idx]
        cal_g, test_g = _take(cal.groups, cal_idx), _take(test.groups, test_idx)
        c = calibrator.clone().fit(cal.logits[cal_idx], cal_y)
        probs = c.predict_proba(test.logits[test_idx])
        out = {"accuracy": _metrics.accuracy(probs, test_y), "nll": _metrics.negative_log_likelihood(probs, test_y),
               "brier": _metrics.brier_score(probs, test_y),
               "ece": _metrics.expected_calibration_error(probs, test_y, n_bins=n_bins)}
        cal_probs = c.predict_proba(cal.logits[cal_idx]) if (conformal is not None or policy is not None) else None
        cf = None
        if conformal is not None:
            cf = conformal.clone().fit(cal_probs, cal_y, groups=cal_g)
            sets = cf.predict_set(probs, groups=test_g)
            first = sets[:, :, 0] if sets.ndim == 3 else sets
            out["coverage"] = float(np.mean(first[np.arange(test_y.size), test_y]))
            out["mean_set_size"] = float(np.mean(first.sum(axis=1)))
        if policy is not None:
            pol = policy.clone()
            needs = getattr(pol, "needs_sets", False)
            cal_sets = cf.predict_set(cal_probs, groups=cal_g) if needs else None
            test_sets = sets if needs else None
            if needs and cal_sets.ndim == 3:
                cal_sets, test_sets = cal_sets[:, :, 0], test_sets[:, :, 0]
            cal_fb = _take(_fallback(cal.extras, cal.n_samples, "calibration"), cal_idx)
            test_fb = _take(_fallback(test.extras, test.n_samples, "test"), test_idx)
            pol.fit(cal_probs, cal_y, sets=cal_sets, fallback=cal_fb, groups=cal_g)
            d = pol.route(probs, sets=test_sets, fallback=test_fb)
            cells = outcome_cells(d.actions.astype(np.int64), d.prediction, test_y, d.fallback)
            rates = metrics_from_counts(np.bincount(cells, minlength=12), pol.cost_model)
            out.update({k: rates[k] for k in PROCEDURE_RATE_KEYS})
        return out

    return fit_and_score


def procedure_intervals(cal: LogitsData, test: LogitsData, calibrator, *, conformal=None, policy=None, n_bins=15,
                        n_resamples=200, seed=0, confidence_level=0.95):
    """Procedure-level percentile intervals of this pipeline (:func:`procedure_scorer` resampled by
    :func:`calib.evaluation.intervals.procedure_bootstrap`): what refitting everything on a new calibration
    set and judging it on a new test set of the same sizes gives. ``calibrator``, ``conformal`` and
    ``policy`` are only cloned, never refitted in place. Returns the ``procedure_ci`` block of metrics.json."""
    from calib.evaluation.intervals import procedure_bootstrap

    log.info("Procedure-level interval: %d resamples, each refitting %s", n_resamples,
             ", ".join(type(x).__name__ for x in (calibrator, conformal, policy) if x is not None))
    scorer = procedure_scorer(cal, test, calibrator, conformal=conformal, policy=policy, n_bins=n_bins)
    return procedure_bootstrap(scorer, cal.n_samples, test.n_samples, n_resamples=n_resamples,
                               confidence_level=confidence_level, seed=seed)
