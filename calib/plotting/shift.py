"""Figures of the shift monitor (:mod:`calib.evaluation.monitor`): each a ``plot_*`` drawing a dict of the
monitor report's own numbers (no computation here), returning the ax.

- :func:`plot_prior_shift`: calibration class prior vs the estimated target prior, with its interval;
- :func:`plot_confidence_drift`: the calibration and target top-label confidence CDFs, with the KS test;
- :func:`plot_novelty_by_class`: share of target items flagged as unlike calibration, per predicted class;
- :func:`plot_policy_rates`: the deployed policy's rates at fit time vs predicted on the target batch.
"""

from __future__ import annotations

import numpy as np

from calib.plotting import axes

__all__ = ["plot_prior_shift", "plot_confidence_drift", "plot_novelty_by_class", "plot_policy_rates"]


def _class_ticks(ax, names, rotate):
    ax.set_xticks(np.arange(len(names)))
    ax.set_xticklabels(names, rotation=45 if rotate else 0, ha="right" if rotate else "center", fontsize=8)


def plot_prior_shift(data, *, ax=None):
    """``data``: {"class_names", "source_prior", "target_prior", "prior_low", "prior_high", "method"}."""
    names = list(data["class_names"])
    k = len(names)
    ax = axes(ax, size=(max(4.5, 0.45 * k + 1.5), 3.5))
    x = np.arange(k)
    src, tgt = np.asarray(data["source_prior"], float), np.asarray(data["target_prior"], float)
    ax.bar(x - 0.2, src, width=0.4, color="0.6", label="calibration (labels)")
    lo = np.asarray([np.nan if v is None else v for v in data["prior_low"]], float)
    hi = np.asarray([np.nan if v is None else v for v in data["prior_high"]], float)
    err = None if np.isnan(lo).any() else np.vstack([tgt - lo, hi - tgt]).clip(min=0)
    ax.bar(x + 0.2, tgt, width=0.4, color="C0", yerr=err, capsize=2,
           label=f"target, estimated ({data['method'].upper()})" + (", 95% interval" if err is not None else ""))
    _class_ticks(ax, names, rotate=k > 6 or max(len(n) for n in names) > 6)
    ax.set_ylabel("class share")
    ax.legend(fontsize=8, frameon=False)
    return ax


def plot_confidence_drift(data, *, ax=None):
    """``data``: {"calibration" (sorted confidences), "target" (confidences), "ks_p_value"}."""
    ax = axes(ax, size=(4.5, 3.5))
    for values, label, color in ((data["calibration"], "calibration", "0.4"), (data["target"], "target", "C0")):
        v = np.sort(np.asarray(values, dtype=np.float64))
        ax.step(v, np.arange(1, v.size + 1) / v.size, where="post", color=color, label=f"{label} (n={v.size})")
    ax.set_xlabel("top-label confidence (calibrated)")
    ax.set_ylabel("share of items <= x")
    ax.legend(fontsize=8, frameon=False, loc="upper left", title=f"KS p = {data['ks_p_value']:.3g}",
              title_fontsize=8)
    return ax


def plot_novelty_by_class(data, *, ax=None):
    """``data``: {"class_names", "flagged", "total", "fdr", "score"} (counts per predicted class)."""
    names = list(data["class_names"])
    k = len(names)
    ax = axes(ax, size=(max(4.5, 0.45 * k + 1.5), 3.5))
    flagged, total = np.asarray(data["flagged"], float), np.asarray(data["total"], float)
    share = np.divide(flagged, total, out=np.zeros(k), where=total > 0)
    bars = ax.bar(np.arange(k), share, color="C3")
    for b, f, t in zip(bars, flagged, total):
        if t > 0:
            ax.annotate(f"{int(f)}/{int(t)}", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center",
                        va="bottom", fontsize=7)
    _class_ticks(ax, names, rotate=k > 6 or max(len(n) for n in names) > 6)
    ax.set_ylabel("share flagged unlike calibration")
    ax.set_xlabel(f"predicted class (BH at FDR {data['fdr']:g}, score {data['score']})")
    ax.set_ylim(0, max(0.05, float(share.max()) * 1.2 if k else 0.05))
    return ax


def plot_policy_rates(data, *, ax=None):
    """``data``: {"names", "fit_time", "target"} (rates in [0, 1]; None where unknown)."""
    names = list(data["names"])
    ax = axes(ax, size=(4.5, 3.5))
    x = np.arange(len(names))
    fit = np.asarray([np.nan if v is None else v for v in data["fit_time"]], float)
    tgt = np.asarray([np.nan if v is None else v for v in data["target"]], float)
    ax.bar(x - 0.2, fit, width=0.4, color="0.6", label="fit time (calibration rows)")
    ax.bar(x + 0.2, tgt, width=0.4, color="C0", label="target batch (predicted)")
    ax.set_xticks(x)
    ax.set_xticklabels(names, fontsize=8)
    ax.set_ylabel("rate")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8, frameon=False)
    return ax
