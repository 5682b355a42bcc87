"""One look for every calib figure: font sizes, colours and line widths, applied when a figure is made
(:func:`calib.plotting.axes`, :func:`calib.plotting.render` and the multi-panel ``plot_*`` functions call
:func:`apply`), never at import, and never a backend choice.

``COLORS`` names the roles a colour plays across figures, so that "calibrated", "flagged", "target" and
"uncalibrated" look the same everywhere.
"""

from __future__ import annotations

__all__ = ["RC", "COLORS", "apply", "wrap_label"]

#: matplotlib rcParams set by :func:`apply` (sizes in points).
RC = {
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 7,
    "legend.title_fontsize": 7,
    "figure.titlesize": 10,
    "axes.grid": False,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.linewidth": 1.5,
    "savefig.dpi": 120,
}

#: Colours by role (matplotlib's default cycle, so plots that use C0..C9 agree).
COLORS = {
    "main": "tab:blue",        # the measured quantity (coverage, calibrated, rates)
    "flagged": "tab:red",      # what an exact test flags
    "reference": "black",      # target lines, 1 - alpha, diagonals
    "before": "tab:orange",    # uncalibrated
    "muted": "0.6",            # not distinguishable, context
    "mean": "tab:green",       # means and medians
}


def apply():
    """Set :data:`RC` in matplotlib's rcParams (idempotent); called inside drawing functions only."""
    import matplotlib

    matplotlib.rcParams.update(RC)


def wrap_label(text, width=28, max_lines=3):
    """``text`` wrapped at ``,`` / spaces to lines of about ``width`` characters, at most ``max_lines`` (the last
    ends with ``…`` when cut).

    >>> wrap_label("calibrator=temperature, data=c10lt_resnet110", width=24)
    'calibrator=temperature,\\ndata=c10lt_resnet110'
    """
    import textwrap

    lines = textwrap.wrap(str(text), width=width, break_long_words=True, break_on_hyphens=False)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: max(width - 1, 1)] + "…"
    return "\n".join(lines) or str(text)
