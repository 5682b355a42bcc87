"""Plots of a routing policy as compute-then-draw pairs (matplotlib imported inside ``plot_*`` only)."""

from __future__ import annotations

import dataclasses

import numpy as np

from calib.selective import risk_coverage_curve

__all__ = ["RiskCoverageData", "prepare_risk_coverage", "plot_risk_coverage", "FrontierData",
           "prepare_completion_frontier", "plot_completion_frontier", "plot_slices", "plot_comparison"]


def _axes(ax, size=(4.5, 3.5)):
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=size)
    return ax


@dataclasses.dataclass(frozen=True)
class RiskCoverageData:
    coverage: np.ndarray
    risk: np.ndarray
    chosen_coverage: float | None
    chosen_risk: float | None
    target_risk: float | None


def prepare_risk_coverage(confidence, correct, *, threshold=None, target_risk=None) -> RiskCoverageData:
    """Risk–coverage curve plus the operating point of ``threshold`` (answer when confidence >= threshold).

    >>> d = prepare_risk_coverage(np.array([0.9, 0.8, 0.7]), np.array([True, False, True]), threshold=0.85)
    >>> d.chosen_coverage, d.chosen_risk
    (0.3333333333333333, 0.0)
    """
    rc = risk_coverage_curve(confidence, correct)
    cov = risk = None
    if threshold is not None:
        c = np.asarray(confidence, dtype=np.float64)
        answered = c >= threshold
        cov = float(answered.mean())
        risk = float((~np.asarray(correct, bool)[answered]).mean()) if answered.any() else None
    return RiskCoverageData(rc.coverage, rc.risk, cov, risk, target_risk)


def plot_risk_coverage(data: RiskCoverageData, *, ax=None, label=None):
    ax = _axes(ax)
    ax.plot(data.coverage, data.risk, lw=1.5, label=label or "selective risk")
    if data.target_risk is not None:
        ax.axhline(data.target_risk, color="tab:red", ls="--", lw=1, label=f"target r = {data.target_risk:g}")
    if data.chosen_coverage is not None:
        ax.axvline(data.chosen_coverage, color="k", ls=":", lw=1)
        if data.chosen_risk is not None:
            ax.plot([data.chosen_coverage], [data.chosen_risk], "ko", ms=5, label="chosen threshold (test)")
    ax.set_xlabel("coverage (share answered)")
    ax.set_ylabel("selective risk")
    ax.set_xlim(0, 1)
    ax.legend(fontsize=7)
    return ax


@dataclasses.dataclass(frozen=True)
class FrontierData:
    escalation_rate: np.ndarray
    completion_rate: np.ndarray
    point_escalation: float | None
    point_completion: float | None


def prepare_completion_frontier(confidence, correct, *, human_accuracy, point=None) -> FrontierData:
    """Task completion vs escalation rate when escalating the least confident items first (no fallback).

    completion(i answered) = (right among the i most confident + human_accuracy * (n - i)) / n.

    >>> d = prepare_completion_frontier(np.array([0.9, 0.8]), np.array([True, False]), human_accuracy=1.0)
    >>> d.escalation_rate.tolist(), d.completion_rate.tolist()
    ([1.0, 0.5, 0.0], [1.0, 1.0, 0.5])
    """
    rc = risk_coverage_curve(confidence, correct)
    n = rc.errors.size
    i = np.arange(n + 1, dtype=np.float64)
    errors = np.r_[0.0, rc.errors]
    completion = (i - errors + human_accuracy * (n - i)) / n
    pe, pc = (None, None) if point is None else point
    return FrontierData(1.0 - i / n, completion, pe, pc)


def plot_completion_frontier(data: FrontierData, *, ax=None, label=None):
    ax = _axes(ax)
    ax.plot(data.escalation_rate, data.completion_rate, lw=1.5, label=label or "threshold sweep")
    if data.point_escalation is not None:
        ax.plot([data.point_escalation], [data.point_completion], "ko", ms=5, label="policy")
    ax.set_xlabel("escalation rate")
    ax.set_ylabel("task-completion rate")
    ax.legend(fontsize=7)
    return ax


def plot_slices(table, *, ax=None, target=None, top=20):
    """Horizontal bars of the silent-failure rate per slice (flagged slices in red)."""
    ax = _axes(ax, size=(5, 0.25 * min(len(table), top) + 1.2))
    rows = table[:top][::-1]
    names = [f"{r['slice_type']}={r['slice']}" for r in rows]
    vals = [r["silent_failure_rate"] for r in rows]
    colors = ["tab:red" if r["flagged"] else "tab:blue" for r in rows]
    ax.barh(names, vals, color=colors)
    if target is not None:
        ax.axvline(target, color="k", ls="--", lw=1, label=f"target {target:g}")
        ax.legend(fontsize=7)
    ax.set_xlabel("silent-failure rate (answered and wrong)")
    ax.tick_params(axis="y", labelsize=7)
    return ax


def _short_names(names):
    """Drop the prefix every name shares up to its last ``_`` (``cifar10_resnet20`` -> ``resnet20``)."""
    import os

    prefix = os.path.commonprefix(list(names)) if len(names) > 1 else ""
    cut = prefix.rfind("_") + 1
    return {n: n[cut:] or n for n in names}


def plot_comparison(result, policy_name, *, target_risk=None):
    """Two panels from :func:`calib.policy.compare.compare_models`: automation rate (with its CI) against
    accuracy under ``policy_name``, and every model's risk-coverage curve. Returns the figure."""
    import matplotlib.pyplot as plt

    from calib.policy.compare import check_policy_name

    rows = result["rows"]
    check_policy_name(rows, policy_name)
    short = _short_names([r["model"] for r in rows])
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for r in rows:
        m = r["policies"][policy_name]
        rate, (lo, hi) = m["automation_rate"], m["ci"]["automation_rate"]
        left.errorbar(100 * r["accuracy"], 100 * rate, yerr=[[100 * (rate - lo)], [100 * (hi - rate)]], fmt="o",
                      capsize=3)
        left.annotate(short[r["model"]], (100 * r["accuracy"], 100 * rate), fontsize=7, xytext=(3, 3),
                      textcoords="offset points")
    left.set_xlabel("test accuracy (%)")
    left.set_ylabel(f"automation rate (%) at {policy_name}")
    left.set_title("share answered automatically at the same target", fontsize=9)
    for name, rc in result["curves"].items():
        right.plot(rc.coverage, rc.risk, lw=1, label=short.get(name, name))
    if target_risk is not None:
        right.axhline(target_risk, color="k", ls="--", lw=1, label=f"r = {target_risk}")
    right.set_xlabel("coverage")
    right.set_ylabel("selective risk")
    right.set_ylim(0, None)
    right.legend(fontsize=6, ncol=2)
    right.set_title("risk-coverage (test, calibrated max-prob)", fontsize=9)
    fig.tight_layout()
    return fig
