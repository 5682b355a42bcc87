"""Reliability diagrams and confidence histograms: ``prepare_reliability`` returns a frozen dataclass of
arrays (no matplotlib), ``plot_*`` draws it on an ``ax`` and returns the ``ax``. matplotlib is imported
inside the drawing functions only, so ``import calib`` stays light.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from calib._validation import check_probs_labels
from calib.metrics import calibration_bins
from calib.plotting import axes, save_figure

__all__ = ["ReliabilityData", "prepare_reliability", "prepare_reliability_rows", "plot_reliability", "plot_confidence_histogram",
           "plot_reliability_comparison", "save_figure"]


@dataclasses.dataclass(frozen=True)
class ReliabilityData:
    """Per-bin statistics of top-label confidence (equal-width bins ``(lo, hi]``)."""

    bin_edges: np.ndarray
    bin_count: np.ndarray
    bin_confidence: np.ndarray
    bin_accuracy: np.ndarray
    ece: float
    accuracy: float
    mean_confidence: float


def prepare_reliability(probs, labels, *, n_bins=15) -> ReliabilityData:
    """Bin top-label confidence and correctness.

    >>> d = prepare_reliability(np.array([[0.9, 0.1], [0.6, 0.4]]), np.array([0, 1]), n_bins=2)
    >>> d.bin_count.tolist(), round(d.ece, 6)
    ([0, 2], 0.25)
    """
    p, y = check_probs_labels(probs, labels)
    pred = p.argmax(axis=1)
    conf = np.take_along_axis(p, pred[:, None], axis=1)[:, 0].astype(np.float64)
    return prepare_reliability_rows(conf, pred == y, n_bins=n_bins)


def prepare_reliability_rows(confidence, correct, *, n_bins=15) -> ReliabilityData:
    """:func:`prepare_reliability` from each row's top-label confidence and correctness (what an out-of-core run
    keeps instead of the (n, k) probabilities; the same data for the same rows).

    >>> prepare_reliability_rows(np.array([0.9, 0.6]), np.array([False, False]), n_bins=2).bin_count.tolist()
    [0, 2]
    """
    conf = np.asarray(confidence, dtype=np.float64)
    hit = np.asarray(correct)
    count, mean_conf, acc = calibration_bins(conf, hit, n_bins=n_bins)
    filled = count > 0
    ece = float(np.sum(np.abs(acc[filled] - mean_conf[filled]) * count[filled]) / len(conf))
    return ReliabilityData(np.linspace(0, 1, n_bins + 1), count, mean_conf, acc, ece,
                           float(hit.mean()), float(conf.mean()))


def plot_reliability(data: ReliabilityData, *, ax=None, title=None):
    """Reliability diagram: accuracy per confidence bin against the diagonal, gaps shaded."""
    ax = axes(ax, size=(4, 4))
    edges = data.bin_edges
    width = np.diff(edges)
    filled = data.bin_count > 0
    ax.bar(edges[:-1][filled], data.bin_accuracy[filled], width=width[filled], align="edge",
           color="#4C72B0", edgecolor="white", label="accuracy")
    gap_lo = np.minimum(data.bin_accuracy, data.bin_confidence)[filled]
    gap = np.abs(data.bin_accuracy - data.bin_confidence)[filled]
    ax.bar(edges[:-1][filled], gap, bottom=gap_lo, width=width[filled], align="edge",
           color="#DD8452", alpha=0.5, edgecolor="#DD8452", label="gap")
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy")
    ax.text(0.04, 0.93, f"ECE {100 * data.ece:.2f}%", transform=ax.transAxes)
    if title:
        ax.set_title(title)
    ax.legend(loc="lower right", fontsize="small")
    return ax


def plot_confidence_histogram(data: ReliabilityData, *, ax=None):
    """Share of samples per confidence bin, with mean confidence and accuracy marked."""
    ax = axes(ax, size=(4, 4))
    edges = data.bin_edges
    total = max(int(data.bin_count.sum()), 1)
    ax.bar(edges[:-1], data.bin_count / total, width=np.diff(edges), align="edge", color="#8C8C8C",
           edgecolor="white")
    ax.axvline(data.accuracy, color="#4C72B0", lw=1.5, label=f"accuracy {data.accuracy:.3f}")
    ax.axvline(data.mean_confidence, color="#C44E52", lw=1.5, ls="--",
               label=f"mean conf. {data.mean_confidence:.3f}")
    ax.set(xlim=(0, 1), xlabel="confidence", ylabel="share of samples")
    ax.legend(loc="upper left", fontsize="small")
    return ax


def plot_reliability_comparison(panels, *, fig=None, title=None):
    """Reliability diagrams with confidence histograms beneath, one column per ``(title, data)`` pair; ``title``:
    the figure's title (what and which data)."""
    import matplotlib.pyplot as plt

    from calib.plotting import style

    style.apply()
    panels = list(panels)
    if fig is None:
        fig = plt.figure(figsize=(4 * len(panels), 5.5 if title is None else 5.8))
    if title is not None:
        fig.suptitle(title)
    grid = fig.add_gridspec(2, len(panels), height_ratios=(3, 1.2), hspace=0.35)
    for col, (name, data) in enumerate(panels):
        plot_reliability(data, ax=fig.add_subplot(grid[0, col]), title=name)
        plot_confidence_histogram(data, ax=fig.add_subplot(grid[1, col]))
    return fig

