"""The shift monitor: a fitted pipeline (its artifact's reference statistics) vs an unlabeled serving batch.

:func:`monitor_batch` answers, from the artifact alone (no calibration data, no target labels):

- **prior shift** — the estimated target class prior (EM or BBSE from the reference, with a bootstrap interval)
  and its total variation from the calibration prior;
- **accuracy** — the estimated target accuracy (ATC and average confidence, with intervals) vs calibration;
- **drift** — KS on top-label confidence, chi-square on predicted-class shares (p-values);
- **policy** — the deployed policy's automation / escalation / fallback rates on the batch vs at fit time
  (a test of homogeneity of the action counts), and its predicted silent-failure rate (answered items'
  calibrated error probability, and the same after prior correction) vs the fit-time rate;
- **novelty** — a conformal p-value per item against the reference (energy or max-logit score), the items
  Benjamini–Hochberg flags at ``fdr`` and their share per predicted class.

**Alarms.** Each alarm is a test with a p-value or a stated interval rule:

- ``drift_confidence`` (KS), ``drift_predicted_class`` (chi-square), ``policy_actions`` (homogeneity of
  the action counts, fit time vs batch) and ``novelty`` (Simes' global test of "no item is unlike
  calibration", ``min_j m p_(j) / j``, which is exactly "BH at that level flags something"): fire when the
  Holm-adjusted p-value over these four is below ``alpha`` (family-wise error <= alpha when nothing shifted
  and the rows are independent);
- ``accuracy_drop``: fires when the upper end of the ATC interval (level ``confidence``) lies below the
  calibration accuracy minus ``accuracy_tolerance``: a one-sided bootstrap test at level
  ``(1 - confidence) / 2``. It covers sampling noise only; ATC's own bias under the shift at hand is not
  covered (docs/shift.md measures it).

``MonitorResult.alarm`` is True when any fires (``calib monitor`` then exits 1).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from calib._json import to_json

__all__ = ["MonitorResult", "MissingReferenceError", "monitor_batch", "MONITOR_SCHEMA", "REFIT_HINT"]

#: version of monitor.json's layout
MONITOR_SCHEMA = 1
#: how to get an artifact with reference statistics
REFIT_HINT = ("refit with calib >= 0.3.0 to store them: `python experiments/calibrate.py ...` writes them into its "
              "artifact/, or in Python `FittedPipeline.fit(...)` / `pipe.attach_reference(cal_logits, cal_labels)` "
              "then `pipe.save(path)`")
_ACTIONS = ("automation", "escalation", "fallback")


class MissingReferenceError(ValueError):
    """The pipeline (artifact) has no reference statistics to monitor against."""


@dataclasses.dataclass
class MonitorResult:
    """What :func:`monitor_batch` returns: ``report`` (the JSON-ready dict written as ``monitor.json``),
    ``plots`` (file name -> :class:`calib.plotting.FigureSpec`), ``alarm`` (any alarm fired)."""

    report: dict
    plots: dict

    @property
    def alarm(self) -> bool:
        return bool(self.report["alarm"])

    def summary(self) -> list:
        """A few plain lines for a terminal or a log."""
        r = self.report
        ls, acc = r["label_shift"], r["accuracy"]["atc"]
        lines = [
            f"{r['n_target']} target rows vs {r['reference']['n_calibration']} calibration rows "
            f"({r['reference']['n_classes']} classes)",
            f"prior shift: total variation {ls['total_variation']:.3f} between the calibration prior and the "
            f"estimated target prior ({ls['method']})",
            f"accuracy: estimated {acc['estimate']:.3f} [{_f(acc['low'])}, {_f(acc['high'])}] (ATC) vs "
            f"{r['accuracy']['calibration_accuracy']:.3f} at calibration",
        ]
        if r.get("policy"):
            p = r["policy"]
            lines.append("policy: " + ", ".join(f"{a} {_pct(p['target'][a])} (fit {_pct(p['fit_time'].get(a))})"
                                                for a in _ACTIONS)
                         + f"; predicted silent failures {_pct(p['predicted_silent_failure_rate'])}, prior-corrected "
                           f"{_pct(p['predicted_silent_failure_rate_prior_corrected'])} (fit "
                           f"{_pct(p['fit_time'].get('silent_failure'))})")
        nv = r["novelty"]
        lines.append(f"novelty: {nv['n_flagged']} of {r['n_target']} items flagged unlike calibration "
                     f"(BH at FDR {nv['fdr']:g}, score {nv['score']})")
        for a in r["alarms"]:
            p = f"p_holm {a['p_holm']:.3g}" if a.get("p_holm") is not None else a["rule"]
            lines.append(f"{'ALARM' if a['fired'] else 'ok   '} {a['name']}: {p} - {a['what']}")
        return lines

    def write(self, out_dir, *, overwrite=False):
        """Write ``monitor.json`` and the figures into ``out_dir`` (a new folder; ``overwrite`` replaces an
        existing one). Everything is written in a temporary sibling folder first and moved into place when
        complete: an error leaves nothing half-written."""
        from calib._atomic import umask, write_json_atomic
        from calib.plotting import render, save_figure

        out = Path(out_dir)
        if out.exists() and not out.is_dir():
            raise FileExistsError(f"Expected the monitor output as a folder path, got the file {str(out)!r}.")
        if out.exists() and not overwrite:
            raise FileExistsError(f"Expected a new output folder, got {str(out)!r}, which exists (pass "
                                  "overwrite=True / --overwrite to replace it).")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
        try:
            os.chmod(tmp, 0o777 & ~umask())
            for name, spec in self.plots.items():
                save_figure(render(spec), tmp / name)
            write_json_atomic(tmp / "monitor.json", self.report)
            old = None
            if out.exists():
                old = out.with_name(f".{out.name}.old-{os.getpid()}")
                os.replace(out, old)
            os.replace(tmp, out)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return out


def _f(v):
    return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.3f}"


def _pct(v):
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _homogeneity(table, *, n_permutations, seed):
    """Chi-square test of homogeneity of a (2, c) count table: (statistic, p, how); a conditional Monte Carlo
    p-value when an expected count is below 5 (as :func:`calib.shift.drift_tests`)."""
    from scipy.stats import chi2

    from calib.shift.monitor import _chi2_homogeneity

    table = np.asarray(table, dtype=np.int64)
    table = table[:, table.sum(axis=0) > 0]
    c = table.shape[1]
    if c < 2:
        return 0.0, 1.0, "a single action in both: nothing to compare"
    stat = float(_chi2_homogeneity(table))
    expected_min = float((table.sum(axis=1, keepdims=True) * table.sum(axis=0) / table.sum()).min())
    if expected_min >= 5:
        return stat, float(chi2.sf(stat, c - 1)), f"chi-square, {c - 1} df"
    rng = np.random.default_rng(seed)
    m = int(table[1].sum())
    tgt = rng.multivariate_hypergeometric(table.sum(axis=0), m, size=n_permutations)
    sims = _chi2_homogeneity(np.stack([table.sum(axis=0) - tgt, tgt], axis=1))
    p = float((1 + np.count_nonzero(sims >= stat * (1 - 1e-12))) / (n_permutations + 1))
    return stat, p, f"conditional Monte Carlo, {n_permutations} tables (smallest expected count {expected_min:.2g})"


def simes_pvalue(pvalues):
    """Simes' global p-value ``min_j m p_(j) / j`` (1 for none): "BH at level a rejects something" iff it is <= a."""
    p = np.sort(np.asarray(pvalues, dtype=np.float64))
    if p.size == 0:
        return 1.0
    return float(min(1.0, np.min(p * p.size / np.arange(1, p.size + 1))))


def monitor_batch(pipeline, target_logits, *, alpha=0.05, fdr=0.1, novelty_score="energy", label_shift="em",
                  confidence=0.95, n_bootstrap=200, accuracy_tolerance=0.05, seed=0, groups=None, fallback=None,
                  n_flagged_listed=20) -> MonitorResult:
    """Compare an unlabeled target batch with the reference statistics of a fitted pipeline (module docstring).

    Parameters
    ----------
    pipeline : :class:`calib.deploy.FittedPipeline` with ``reference`` (``FittedPipeline.load(path)``);
        without one: :class:`MissingReferenceError`, saying how to refit.
    target_logits : (m, k) logits of the same model on the serving batch, ``m >= 20``.
    alpha : family-wise level of the alarms. fdr : Benjamini–Hochberg level of the flagged items.
    novelty_score : ``"energy"`` or ``"max_logit"``. label_shift : ``"em"`` or ``"bbse"`` (BBSE falls back
        to EM, saying so, when the stored confusion matrix is ill-conditioned).
    confidence, n_bootstrap, seed : the intervals of the prior and accuracy estimates.
    accuracy_tolerance : the drop of estimated accuracy below calibration accuracy that raises an alarm.
    groups, fallback : per-row arrays the deployed policy needs (as :meth:`FittedPipeline.apply`).
    """
    from calib._validation import check_choice, check_fraction, check_positive_int
    from calib.deploy import FittedPipeline
    from calib.plotting import FigureSpec
    from calib.shift import (adjust_probs, benjamini_hochberg, drift_tests, estimate_accuracy, estimate_label_shift,
                             flagged_by_class, novelty_pvalues)
    from calib.shift.label_shift import MIN_TARGET_ROWS
    from calib.stats import holm_adjust

    if not isinstance(pipeline, FittedPipeline):
        raise TypeError(f"Expected pipeline as a calib.deploy.FittedPipeline (FittedPipeline.load(path)), got "
                        f"{type(pipeline).__name__}.")
    ref = pipeline.reference
    if ref is None:
        raise MissingReferenceError(f"Expected a pipeline with reference statistics to monitor against, got one "
                                    f"without (an artifact of schema 2 or older, or built from parts without attach_reference); "
                                    f"{REFIT_HINT}.")
    alpha = check_fraction(alpha, "alpha")
    fdr = check_fraction(fdr, "fdr")
    confidence = check_fraction(confidence, "confidence")
    check_choice(novelty_score, "novelty_score", ("energy", "max_logit"))
    check_choice(label_shift, "label_shift", ("em", "bbse"))
    n_bootstrap = check_positive_int(n_bootstrap, "n_bootstrap", minimum=0)
    n_flagged_listed = check_positive_int(n_flagged_listed, "n_flagged_listed", minimum=0)
    tol = _check_tolerance(accuracy_tolerance)
    x = pipeline._check_logits(target_logits)
    m, k = x.shape
    if m < MIN_TARGET_ROWS:
        raise ValueError(f"Expected target_logits with at least {MIN_TARGET_ROWS} rows to monitor a {k}-class "
                         f"pipeline, got {m}; collect a larger serving batch (below ~100 rows every interval is "
                         "wide).")
    names = [str(n) for n in pipeline.class_names_or_indices()]
    d = pipeline.apply(x, groups=groups, fallback=fallback)
    probs = d.probs

    est = estimate_label_shift(target_probs=probs, reference=ref, method=label_shift, confidence=confidence,
                               n_bootstrap=n_bootstrap, seed=seed, on_singular="em")
    tv = est.total_variation(est.source_prior)
    label_section = {
        "method": est.method, "total_variation": tv, "source_prior": est.source_prior.tolist(),
        "target_prior": est.target_prior.tolist(), "prior_low": est.prior_low.tolist(),
        "prior_high": est.prior_high.tolist(), "weights": est.weights.tolist(), "confidence": confidence,
        "condition_number": est.condition_number, "notes": list(est.notes),
        "what": "estimated class prior of the batch under the label-shift assumption (p(x | y) unchanged); the "
                "interval covers sampling noise only",
    }
    atc = estimate_accuracy(target_probs=probs, reference=ref, method="atc", confidence=confidence,
                            n_bootstrap=n_bootstrap, seed=seed)
    avg = estimate_accuracy(target_probs=probs, reference=ref, method="average_confidence", confidence=confidence,
                            n_bootstrap=n_bootstrap, seed=seed)
    accuracy_section = {
        "calibration_accuracy": ref.accuracy_,
        "atc": {"estimate": atc.estimate, "low": atc.low, "high": atc.high, "threshold": atc.threshold,
                "notes": list(atc.notes)},
        "average_confidence": {"estimate": avg.estimate, "low": avg.low, "high": avg.high, "notes": list(avg.notes)},
        "confidence": confidence,
        "what": "accuracy of the model's top label on the batch, estimated without labels; intervals cover "
                "sampling noise, not the method's bias under the shift at hand",
    }
    drift = drift_tests(target_probs=probs, reference=ref, alpha=alpha, seed=seed)

    policy_section = None
    tests = [(row["test"], row["p_value"], row["what"]) for row in drift]
    if pipeline.policy is not None:
        counts_t = np.bincount(d.actions, minlength=3)[:3]
        fit = dict(ref.rates_)
        target_rates = {a: float(c / m) for a, c in zip(_ACTIONS, counts_t)}
        answered = d.actions == 0
        conf_out = np.where(answered, d.confidence, 0.0).astype(np.float64)
        predicted_sf = float(np.sum(np.where(answered, 1.0 - conf_out, 0.0)) / m)
        try:
            padj = adjust_probs(probs, est.weights)
            label = np.where(answered, d.output, 0)
            adj_sf = float(np.sum(np.where(answered, 1.0 - padj[np.arange(m), label], 0.0)) / m)
        except ValueError:
            adj_sf = None
        policy_section = {"kind": pipeline.policy.kind, "fit_time": fit, "target": target_rates,
                          "predicted_silent_failure_rate": predicted_sf,
                          "predicted_silent_failure_rate_prior_corrected": adj_sf,
                          "what": "rates of the deployed policy on this batch (automation, escalation, fallback "
                                  "are counted; silent failures are predicted from the calibrated confidence of "
                                  "the answered items, and after prior correction) vs on the calibration rows"}
        if all(a in fit for a in _ACTIONS):
            counts_c = np.rint(np.array([fit[a] for a in _ACTIONS]) * ref.n_calibration_).astype(np.int64)
            stat, p, how = _homogeneity(np.stack([counts_c, counts_t]), n_permutations=2000, seed=seed)
            policy_section["actions_test"] = {"statistic": stat, "p_value": p, "how": how}
            tests.append(("policy_actions", p, f"the policy's action shares differ between fit time and this batch "
                                               f"({how})"))
        else:
            policy_section["actions_test"] = None

    pv = novelty_pvalues(target_logits=x, reference=ref, score=novelty_score)
    flags = benjamini_hochberg(pv, fdr=fdr)
    fl, tot = flagged_by_class(flags, probs)
    order = np.argsort(pv, kind="stable")
    listed = [int(i) for i in order[:n_flagged_listed] if flags[i]]
    simes = simes_pvalue(pv)
    novelty_section = {
        "score": novelty_score, "fdr": fdr, "n_flagged": int(flags.sum()), "share_flagged": float(flags.mean()),
        "global_p_value": simes, "exact": bool(ref.exact_),
        "by_predicted_class": [{"class": names[j], "flagged": int(fl[j]), "total": int(tot[j]),
                                "share": float(fl[j] / tot[j]) if tot[j] else None} for j in range(k)],
        "flagged_items": [{"row": i, "p_value": float(pv[i]), "predicted": names[int(d.label[i])],
                           "confidence": float(d.confidence[i])} for i in listed],
        "what": "conformal p-value of each item against the calibration rows' novelty scores; flagged = "
                "Benjamini-Hochberg discoveries at the FDR (a score of the model's logits: it finds items the "
                "model is unsure about, not every new category)",
    }
    tests.append(("novelty", simes, "some items are unlike every calibration item (Simes' global test of the "
                                    "novelty p-values)"))

    holm = holm_adjust(np.array([t[1] for t in tests]))
    names_map = {"ks_confidence": "drift_confidence", "chi2_predicted_class": "drift_predicted_class"}
    alarms = [{"name": names_map.get(t[0], t[0]), "p_value": float(t[1]), "p_holm": float(h),
               "fired": bool(h < alpha), "rule": f"Holm-adjusted p < {alpha:g}", "what": t[2]}
              for t, h in zip(tests, holm)]
    drop_fired = bool(np.isfinite(atc.high) and atc.high < ref.accuracy_ - tol)
    alarms.append({"name": "accuracy_drop", "p_value": None, "p_holm": None, "fired": drop_fired,
                   "rule": f"ATC {confidence:.0%} interval below calibration accuracy - {tol:g}",
                   "what": f"estimated accuracy {atc.estimate:.3f} [{_f(atc.low)}, {_f(atc.high)}] vs "
                           f"{ref.accuracy_:.3f} at calibration"})

    from calib import __version__

    report = to_json({
        "schema": MONITOR_SCHEMA, "calib_version": __version__, "n_target": m, "alpha": alpha,
        "alarm": any(a["fired"] for a in alarms), "alarms": alarms,
        "reference": {"n_calibration": ref.n_calibration_, "n_classes": k, "exact": bool(ref.exact_),
                      "class_names": names},
        "label_shift": label_section, "accuracy": accuracy_section, "drift": drift, "policy": policy_section,
        "novelty": novelty_section,
    })
    plots = {
        "prior_shift.png": FigureSpec("shift.plot_prior_shift", {"class_names": names, **label_section},
                                      title=f"class prior: calibration vs serving batch (m={m})", title_fontsize=9,
                                      size=(max(4.5, 0.45 * k + 1.5), 3.5), tight_layout=True),
        "confidence_drift.png": FigureSpec("shift.plot_confidence_drift",
                                           {"calibration": ref.confidence_, "target": d.confidence,
                                            "ks_p_value": drift[0]["p_value"]},
                                           title="top-label confidence: calibration vs serving batch",
                                           title_fontsize=9, size=(4.5, 3.5), tight_layout=True),
        "novelty_by_class.png": FigureSpec("shift.plot_novelty_by_class",
                                           {"class_names": names, "flagged": fl, "total": tot, "fdr": fdr,
                                            "score": novelty_score},
                                           title=f"items unlike calibration: {int(flags.sum())} of {m}",
                                           title_fontsize=9, size=(max(4.5, 0.45 * k + 1.5), 3.5),
                                           tight_layout=True),
    }
    if policy_section is not None:
        plots["policy_rates.png"] = FigureSpec(
            "shift.plot_policy_rates",
            {"names": [*_ACTIONS, "silent failure"],
             "fit_time": [policy_section["fit_time"].get(a) for a in (*_ACTIONS, "silent_failure")],
             "target": [*(policy_section["target"][a] for a in _ACTIONS), predicted_sf]},
            title=f"policy {policy_section['kind']}: fit time vs serving batch", title_fontsize=9, size=(4.5, 3.5),
            tight_layout=True)
    return MonitorResult(report, plots)


def _check_tolerance(value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or not 0 <= value < 1:
        raise ValueError(f"Expected accuracy_tolerance as a number in [0, 1), got {value!r}.")
    return float(value)
