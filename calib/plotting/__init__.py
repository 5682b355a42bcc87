"""Every figure of calib, as compute-then-draw pairs: ``prepare_*`` returns a frozen dataclass of arrays
(testable, no matplotlib), ``plot_*`` draws it on an ``ax`` and returns the ``ax``.

Modules: ``reliability`` (reliability diagrams, confidence histograms), ``conformal`` (coverage vs alpha,
set sizes, class coverage), ``routing`` (risk-coverage, completion frontier, slices, model comparison),
``results`` (the sweep summary figure), ``shift`` (the shift monitor); ``style`` (the one look: font sizes,
colours; applied when a figure is made, never at import).

This package never imports matplotlib at module level and never chooses a backend: scripts do
(``MPLBACKEND`` or ``matplotlib.use``). Evaluation stages return :class:`FigureSpec` values (the data of
one figure file); :func:`render` draws one and :func:`save_figure` writes it.
"""

from __future__ import annotations

import dataclasses
import importlib

__all__ = ["axes", "save_figure", "FigureSpec", "render", "with_data_name"]


def axes(ax=None, size=(4, 4)):
    """``ax`` itself, or the axes of a new ``size`` figure when ``ax`` is None (calib's style applied:
    :mod:`calib.plotting.style`)."""
    from calib.plotting import style

    style.apply()
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=size)
    return ax


def save_figure(fig, path, *, dpi=120, bbox_inches="tight"):
    """Save atomically (temp file + rename) and close the figure; returns the path."""
    import os
    from pathlib import Path

    import matplotlib.pyplot as plt

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fig.savefig(tmp, dpi=dpi, bbox_inches=bbox_inches, format=path.suffix.lstrip(".") or "png")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
        plt.close(fig)
    return path


@dataclasses.dataclass(frozen=True)
class FigureSpec:
    """One single-panel figure as data: ``draw`` names a ``plot_*`` function of :mod:`calib.plotting`
    (``"<module>.<function>"``, e.g. ``"conformal.plot_coverage_curve"``), called as
    ``draw(data, ax=ax, **kwargs)`` on a new ``size`` figure; then ``title`` (font size
    ``title_fontsize``) and, with ``tight_layout``, ``fig.tight_layout()``.

    >>> FigureSpec("routing.plot_risk_coverage", data=None).size
    (5, 4)
    """

    draw: str
    data: object
    kwargs: dict = dataclasses.field(default_factory=dict)
    size: tuple = (5, 4)
    title: str | None = None
    title_fontsize: float | None = None
    tight_layout: bool = False

    def __post_init__(self):
        module, _, name = self.draw.rpartition(".")
        if not module or not name.startswith("plot_"):
            raise ValueError(f"Expected draw as '<module>.plot_<name>' of calib.plotting, got {self.draw!r}.")

    def function(self):
        """The drawing function ``draw`` names."""
        module, _, name = self.draw.rpartition(".")
        return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def with_data_name(spec: FigureSpec, data_name):
    """``spec`` with `` — <data_name>`` appended to its title (the title becomes the data name when it had none);
    ``spec`` itself when ``data_name`` is None or empty, or already in the title."""
    if not data_name:
        return spec
    name = str(data_name)
    if spec.title is None:
        return dataclasses.replace(spec, title=name)
    if name in spec.title:
        return spec
    return dataclasses.replace(spec, title=f"{spec.title} — {name}")


def render(spec: FigureSpec):
    """Draw ``spec`` on a new figure (calib's style, :mod:`calib.plotting.style`) and return the figure (save it
    with :func:`save_figure`)."""
    import matplotlib.pyplot as plt

    from calib.plotting import style

    style.apply()
    draw = spec.function()
    fig, ax = plt.subplots(figsize=spec.size)
    draw(spec.data, ax=ax, **spec.kwargs)
    if spec.title is not None:
        ax.set_title(spec.title, **({} if spec.title_fontsize is None else {"fontsize": spec.title_fontsize}))
    if spec.tight_layout:
        fig.tight_layout()
    return fig
