"""Figures a reader can read (issue 16): class identity kept, empty sets and the mean set size shown, class names
wherever classes are shown, every figure titled with its data, a summary axis that one outlier does not squash,
comparison labels that cannot overlap and an axis from 0 with "nothing certified" said, and table numbers
formatted by kind. The prepared data are checked against hand-computed values; each figure is drawn (Agg) and its
labels, titles and legends read back from the axes."""

from __future__ import annotations

import math

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest

from calib.plotting import FigureSpec, render, style, with_data_name
from calib.plotting import conformal as C
from calib.plotting import results as Res
from calib.plotting import routing as Ro

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _texts(items):
    return [t.get_text() for t in items]


def _legend_texts(ax):
    leg = ax.get_legend()
    return [] if leg is None else _texts(leg.get_texts())


# --- set sizes --------------------------------------------------------------------------------------------------
def test_set_sizes_count_empty_sets_and_give_mean_and_median():
    sets = np.zeros((8, 4), dtype=bool)  # sizes by hand: 0, 0, 1, 1, 1, 2, 3, 4
    for row, size in enumerate((0, 0, 1, 1, 1, 2, 3, 4)):
        sets[row, :size] = True
    d = C.prepare_set_sizes(sets)
    assert d.histogram.tolist() == [2, 3, 1, 1, 1]
    assert (d.n, d.n_empty) == (8, 2)
    assert d.mean == 12 / 8 and d.median == 1.0  # the middle two sizes are 1 and 1
    # the median from counts matches numpy's on the sizes, for odd and even n
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 50, 51):
        sizes = rng.integers(0, 6, size=n)
        d = C.SetSizeData(np.bincount(sizes, minlength=6))
        assert d.median == float(np.median(sizes)) and d.mean == pytest.approx(float(np.mean(sizes)), rel=1e-12)


def test_set_size_histogram_shows_size_zero_and_the_mean():
    sets = np.zeros((8, 4), dtype=bool)
    for row, size in enumerate((0, 0, 1, 1, 1, 2, 3, 4)):
        sets[row, :size] = True
    ax = C.plot_set_size_histogram(C.prepare_set_sizes(sets))
    assert ax.get_xticks()[0] == 0 and ax.get_xlim()[0] < 0  # size 0 is on the axis
    assert _legend_texts(ax) == ["mean 1.50", "median 1", "sets (n=8)", "empty: 2 (25.0%)"]
    assert "2" in _texts(ax.texts)  # the empty count written over the bar
    # no empty set at all: size 0 still on the axis, its count 0 written
    ax = C.plot_set_size_histogram(np.ones((3, 2), dtype=bool))
    assert ax.get_xticks()[0] == 0 and "empty: 0 (0.0%)" in _legend_texts(ax) and "0" in _texts(ax.texts)


# --- class coverage ---------------------------------------------------------------------------------------------
def _sets_from_hits(hits, labels, k):
    sets = np.zeros((labels.size, k), dtype=bool)
    sets[np.arange(labels.size), np.where(hits, labels, (labels + 1) % k)] = True
    return sets


def _three_classes():
    labels = np.repeat(np.arange(3), 100)
    hits = np.ones(300, dtype=bool)
    hits[:40] = False      # class 0 "cat": 0.60, flagged by the exact test
    hits[100:112] = False  # class 1 "dog": 0.88
    return _sets_from_hits(hits, labels, 3), labels


def test_class_coverage_keeps_class_identity_and_names():
    sets, labels = _three_classes()
    d = C.prepare_class_coverage(sets, labels, 0.1, class_names=["cat", "dog", "ship"])
    assert d.classes.tolist() == [0, 1, 2] and d.coverage.tolist() == [0.6, 0.88, 1.0]
    assert d.names == ("cat", "dog", "ship") and d.flagged.tolist() == [True, False, False]
    # sorted by coverage, each bar still carries its class: reorder the labels and the names follow
    perm = np.array([2, 0, 1])  # class c becomes perm[c]
    names = ["dog", "ship", "cat"]  # the same names at their new ids
    d2 = C.prepare_class_coverage(sets[:, np.argsort(perm)], perm[labels], 0.1, class_names=names)
    assert d2.names == ("cat", "dog", "ship") and d2.classes.tolist() == [2, 0, 1]
    ax = C.plot_class_coverage(d)
    assert _texts(ax.get_xticklabels()) == ["cat", "dog", "ship"]
    red = [t.get_text() for t in ax.get_xticklabels() if t.get_color() == style.COLORS["flagged"]]
    assert red == ["cat"]
    assert _legend_texts(ax) == ["class coverage (test)", "flagged: Holm p <= 0.05 (1)", "1 - alpha = 0.9"]
    assert [line.get_ydata()[0] for line in ax.get_lines()] == [0.9]  # the 1 - alpha line
    # without names: the class ids
    ax = C.plot_class_coverage(C.prepare_class_coverage(sets, labels, 0.1))
    assert _texts(ax.get_xticklabels()) == ["0", "1", "2"]


def test_class_coverage_many_classes_labels_the_lowest_and_the_flagged():
    k = 60
    labels = np.repeat(np.arange(k), 50)
    hits = np.ones(labels.size, dtype=bool)
    hits[labels == 59] = False  # class 59: coverage 0, flagged, lowest
    hits[(labels == 30) & (np.arange(labels.size) % 50 < 3)] = False  # class 30: 0.94
    names = [f"c{j}" for j in range(k)]
    d = C.prepare_class_coverage(_sets_from_hits(hits, labels, k), labels, 0.1, class_names=names)
    assert d.classes[0] == 59 and d.classes[1] == 30 and d.flagged[0] and not d.flagged[1:].any()
    ax = C.plot_class_coverage(d, max_labels=10)
    shown = _texts(ax.get_xticklabels())
    assert shown[:2] == ["c59", "c30"] and len(shown) == 5  # the lowest 5 (flagged c59 among them)
    assert "labelled: the lowest 5 and the flagged" in ax.get_xlabel()


def test_class_coverage_refuses_wrong_class_names():
    sets, labels = _three_classes()
    with pytest.raises(ValueError, match=r"class_names with 3 entries \(one per class\), got length 2"):
        C.prepare_class_coverage(sets, labels, 0.1, class_names=["a", "b"])
    with pytest.raises(ValueError, match=r"class_names with 3 entries"):
        C.prepare_class_coverage(sets, labels, 0.1, class_names="abc")


# --- slices -----------------------------------------------------------------------------------------------------
def test_slices_named_by_class_with_a_legend():
    from calib.evaluation.slices import silent_failure_slices

    p = np.array([[0.9, 0.1]] * 100 + [[0.1, 0.9]] * 100)
    y = np.array([0] * 70 + [1] * 30 + [1] * 100)  # slices by true class: "dog" holds 30 silent failures of 130
    rows = silent_failure_slices(p, y, np.zeros(200, int), target=0.05, class_names=["cat", "dog"])
    d = Ro.prepare_slices(rows, target=0.05)
    assert set(d.names) == {"class=cat", "class=dog"}
    ax = Ro.plot_slices(d)
    assert set(_texts(ax.get_yticklabels())) == {"class=cat", "class=dog"}
    legend = _legend_texts(ax)
    assert legend[0] == f"flagged: above target, Holm-corrected binomial test ({int(d.flagged.sum())})"
    assert legend[1:] == ["not flagged", "target 0.05"]
    # 30 of 130 against 0.05: binomial p ~ 1e-9; "cat" has no silent failure
    assert d.flagged.tolist() == [True, False] and d.names == ("class=dog", "class=cat")
    red = [t.get_text() for t, bar in zip(ax.get_yticklabels(), ax.patches)
           if matplotlib.colors.same_color(bar.get_facecolor(), style.COLORS["flagged"])]
    assert red == ["class=dog"]


# --- titles with the data name and the pipeline's class names -------------------------------------------------
def test_with_data_name():
    spec = FigureSpec("routing.plot_risk_coverage", data=None, title="risk vs coverage")
    assert with_data_name(spec, "toy").title == "risk vs coverage — toy"
    assert with_data_name(spec, None) is spec and with_data_name(spec, "risk") is spec
    assert with_data_name(FigureSpec("routing.plot_risk_coverage", data=None), "toy").title == "toy"


def test_pipeline_threads_class_names_and_titles_every_figure(tmp_path, monkeypatch):
    import calib.plotting
    from calib.calibrators import TemperatureScaling
    from calib.conformal import SplitConformal
    from calib.datasets import synthetic
    from calib.evaluation.pipeline import _data_name, fit_and_evaluate
    from calib.io import LogitsData
    from calib.policy import RiskControlPolicy

    base = synthetic(n=3000, n_classes=3, temperature=2.0, seed=0)
    data = LogitsData(base.logits, base.labels, split=base.split, class_names=("cat", "dog", "ship"))
    cal, test = data.split_cal_test()
    result = fit_and_evaluate(cal, test, TemperatureScaling(), conformal=SplitConformal(score="lac", alpha=0.1),
                              policy=RiskControlPolicy(target_risk=0.2), n_bootstrap=20, calibration_bootstrap=0)
    assert result.plots["class_coverage.png"].data.class_names == ("cat", "dog", "ship")
    assert set(result.plots["class_coverage.png"].data.names) == {"cat", "dog", "ship"}
    assert {n for n in result.plots["silent_failure_slices.png"].data.names} <= {"class=cat", "class=dog",
                                                                                    "class=ship"}
    titles = {}

    def capture(fig, path, **kw):
        titles[path.name] = [ax.get_title() for ax in fig.axes if ax.get_title()] + (
            [fig._suptitle.get_text()] if fig._suptitle is not None else [])
        plt.close(fig)
        return path

    monkeypatch.setattr(calib.plotting, "save_figure", capture)
    assert _data_name("seed: 0\ndata:\n  name: toy_set\n") == "toy_set"
    assert _data_name("data: 3\n") is None and _data_name("{unclosed") is None and _data_name(None) is None
    result.write(tmp_path, config_yaml="seed: 0\ndata:\n  name: toy_set\n")
    assert set(titles) == {"reliability.png", *result.plots}
    for name, found in titles.items():
        assert any(t.endswith("— toy_set") for t in found), (name, found)
    assert "reliability (test part) — toy_set" in titles["reliability.png"]


# --- summary figure ---------------------------------------------------------------------------------------------
def _summary(n_configs, outlier=None):
    means = np.full((2, n_configs), 0.05)
    means[1] = 0.8
    if outlier is not None:
        means[1, outlier] = 40.0
    labels = tuple(f"calibrator=method_{j}, data=some_long_dataset_name_{j}" for j in range(n_configs))
    return Res.SummaryData(("ece", "nll"), labels, means, np.zeros((2, n_configs)),
                           (np.full(n_configs, 0.1), None), title="All runs: seed=0")


def test_summary_axis_clips_one_outlier_and_says_so():
    d = _summary(6, outlier=2)
    # ece: bars 0.05 and uncalibrated 0.1, median 0.075, none above 4 x; nll: 40 > 4 x 0.8
    assert Res.axis_limits(d) == [(pytest.approx(1.05 * 0.1), False), (pytest.approx(1.25 * 0.8), True)]
    fig = Res.plot_summary(d)
    ece_ax, nll_ax = fig.axes
    assert nll_ax.get_xlim() == (0.0, pytest.approx(1.0))
    assert "axis clipped at 1" in nll_ax.get_xlabel() and "clipped" not in ece_ax.get_xlabel()
    assert "40 ▶" in _texts(nll_ax.texts)
    assert "sweep summary: test metrics per configuration" in fig._suptitle.get_text()
    # labels once (shared axis), wrapped to lines of at most key_width (32) characters
    labels = _texts(ece_ax.get_yticklabels())
    assert len(labels) == 6 and all(len(line) <= 32 for lab in labels for line in lab.split("\n"))
    assert all(not t.get_visible() or not t.get_text() for t in nll_ax.get_yticklabels())
    assert _texts(fig.legends[0].get_texts()) == ["calibrated (mean ± std)", "uncalibrated (mean)"]


def test_summary_size_scales_with_configs_not_label_length():
    small, big = Res.plot_summary(_summary(3)), Res.plot_summary(_summary(30))
    w3, h3 = small.get_size_inches()
    w30, h30 = big.get_size_inches()
    assert abs(w3 - w30) < 0.2 and h30 > h3 * 3  # labels "method_9" vs "method_29": one character wider
    # the label column is capped: labels take at most 2.6 of the inches, the panels 3.4 each
    long = Res.SummaryData(("ece",), ("x" * 300, "y"), np.array([[0.1, 0.2]]), np.zeros((1, 2)), (None,))
    fig = Res.plot_summary(long)
    assert fig.get_size_inches()[0] <= 2.6 + 3.4
    assert all(len(line) <= 32 for line in _texts(fig.axes[0].get_yticklabels())[0].split("\n"))
    assert _texts(fig.axes[0].get_yticklabels())[0].count("\n") == 2  # at most 3 lines, the last cut with …


# --- comparison figure ------------------------------------------------------------------------------------------
def _comparison(rates, certified, labels=("resnet20", "resnet32", "resnet44")):
    n = len(labels)
    rates = np.asarray(rates, dtype=np.float64)
    curves = tuple((lab, np.linspace(0, 1, 5), np.linspace(0, 0.1, 5)) for lab in labels)
    return Ro.ComparisonData("risk_control", tuple(labels), np.array([0.921, 0.922, 0.923])[:n], rates,
                             rates, rates, curves, 0.02, tuple(certified))


def test_comparison_nothing_certified_axis_from_zero():
    d = _comparison([0.0, 0.0, 0.0], [False, False, False])
    assert d.nothing_certified
    fig = Ro.plot_comparison(d, title="models on cifar10")
    left, right = fig.axes
    assert left.get_ylim()[0] == 0 and left.get_ylim()[1] > 0
    assert any(t.startswith("nothing certified at this target") for t in _texts(left.texts))
    assert _legend_texts(left) == ["resnet20", "resnet32", "resnet44"]  # names in a legend, never overlapping
    assert fig._suptitle.get_text() == "models on cifar10"
    assert right.get_ylim()[0] == 0 and right.get_xlim() == (0.0, 1.0)


def test_comparison_certified_models_no_notice():
    d = _comparison([0.5, 0.6, 0.7], [True, True, False])
    assert not d.nothing_certified
    left = Ro.plot_comparison(d).axes[0]
    assert left.get_ylim()[0] == 0 and left.get_ylim()[1] >= 70
    assert not any("nothing certified" in t for t in _texts(left.texts))
    assert not _comparison([0.0] * 3, [None] * 3).nothing_certified  # a policy without a guarantee


# --- style ------------------------------------------------------------------------------------------------------
def test_style_applied_when_drawing_not_at_import():
    import subprocess
    import sys

    code = ("import matplotlib, calib.plotting, calib.plotting.style, calib.plotting.conformal; "
            "print(matplotlib.rcParams['font.size'], matplotlib.rcParams['axes.spines.top'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(matplotlib.rcParamsDefault["font.size"]), "True"]  # import changes nothing
    backend = matplotlib.get_backend()
    fig = render(FigureSpec("conformal.plot_set_size_histogram", C.SetSizeData(np.array([0, 2, 1])),
                            title="set sizes"))
    assert matplotlib.rcParams["font.size"] == style.RC["font.size"]
    assert fig.axes[0].get_title() == "set sizes" and matplotlib.get_backend() == backend


# --- table numbers ----------------------------------------------------------------------------------------------
def test_format_number_by_kind():
    from calib.evaluation.results import _fmt, format_number

    assert format_number(1e-5) == "1e-05" and format_number(0.0001234) == "0.000123"
    assert format_number(0.5) == "0.5000" and format_number(0.0) == "0.0000"
    assert format_number(10216, integer=True) == "10216" and format_number(2.5e7) == "2.5e+07"
    assert format_number(float("nan")) == "nan" and format_number(-math.inf) == "-inf"
    assert format_number(0.05, decimals=2) == "0.05" and format_number(0.004, decimals=2) == "0.004"
    assert _fmt(1e-5, 2e-6) == "1e-05 ± 2e-06"
    assert _fmt(0.31234, 0.0001) == "0.3123 ± 0.0001"
    assert _fmt(10216, math.nan, integer=True) == "10216"
    assert _fmt(10216.5, 0.7071, integer=True) == "10216.5 ± 0.7"


def test_summary_markdown_counts_as_integers_and_small_values_readable():
    from calib.evaluation.results import pivot_markdown, summary_markdown

    header = ["run", "calibrator", "seed", "split", "metric", "value"]
    rows = []
    for seed, (mu, n_iter) in enumerate(((1e-5, 10216), (3e-5, 10216))):
        rows += [{"run": f"r{seed}", "calibrator": "odir", "seed": str(seed), "split": "calibrator", "metric": "mu",
                  "value": mu},
                 {"run": f"r{seed}", "calibrator": "odir", "seed": str(seed), "split": "calibrator",
                  "metric": "n_iter", "value": n_iter},
                 {"run": f"r{seed}", "calibrator": "odir", "seed": str(seed), "split": "calibrated",
                  "metric": "nll", "value": 0.5 + seed / 10}]
    md = summary_markdown(header, rows)
    assert "| calibrator=odir | 2 | 2e-05 ± 1.4e-05 | 10216 ± 0.0 |" in md
    assert "| calibrator=odir | 2 | 0.5500 ± 0.0707 |" in md
    table = pivot_markdown(rows, row_key="calibrator", col_key="seed", split="calibrator", metrics=("mu", "n_iter"))
    assert table.splitlines()[2] == "| odir | 1e-05 | 10216 | 3e-05 | 10216 |"


def test_compare_tables_format_small_values():
    from calib.evaluation.compare import _fmt_ci, _num, _pct

    m = {"expected_cost": 1.2e-5, "selective_risk": 0.0, "ci": {"expected_cost": [1e-6, 3.4e-5],
                                                                "selective_risk": [0.0, 0.00004]}}
    assert _fmt_ci(m, "expected_cost", pct=False) == "1.2e-05 [1e-06, 3.4e-05]"
    assert _fmt_ci(m, "selective_risk") == "0.00 [0.00, 0.004]"
    assert _pct(0.1234) == "12.34" and _pct(-0.001, signed=True) == "-0.10" and _pct(0.02, signed=True) == "+2.00"
    assert _num(1e-5, signed=True) == "+1e-05" and _num(0.25) == "0.2500"
