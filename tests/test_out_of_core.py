"""Out of core (issue 14, item 1): a memory-mapped .npy run in row chunks gives the in-memory pipeline's results.

The streaming pipeline (calib.evaluation.streaming) sums in the in-memory order of operations, so the comparisons
here are exact (==), not within a tolerance: temperature, thresholds, policy guarantee, every metric of
metrics.json and the artifact (its content id) are bit for bit those of fit_and_evaluate on the same rows. Files
are small (tens of thousands of rows) and the chunks tiny (tens to hundreds of rows), so every pass crosses many
chunk boundaries, with calibration and test rows interleaved inside each chunk.
"""

from __future__ import annotations

import importlib.util
import json
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from calib.calibrators import HistogramBinning, IsotonicCalibration, TemperatureScaling
from calib.conformal import SplitConformal
from calib.evaluation.pipeline import fit_and_evaluate
from calib.evaluation.streaming import fit_and_evaluate_streaming
from calib.io import LogitsWriter, iter_row_chunks, load_logits
from calib.policy import RiskControlPolicy, ThresholdPolicy

REPO = Path(__file__).resolve().parents[1]


def _write(folder, n, k, *, dtype="float16", seed=0, margin=3.0, batch=3000, split=True):
    """Logits (n, k) written batch by batch with LogitsWriter: labels.npy and split.npy beside them."""
    rng = np.random.default_rng(seed)
    path = Path(folder) / "logits.npy"
    with LogitsWriter(path, k, dtype=dtype, overwrite=True) as w:
        for start in range(0, n, batch):
            b = min(batch, n - start)
            y = rng.integers(0, k, size=b)
            z = rng.standard_normal((b, k))
            z[np.arange(b), y] += rng.gamma(2.0, margin / 2, size=b)
            z *= 2.5  # over-confident: temperature scaling has work to do
            w.write(z, y, split=(rng.random(b) < 0.5).astype(np.int8) if split else None)
    return path


def _components(kind):
    if kind == "aps+risk":
        return TemperatureScaling(), SplitConformal(score="aps", alpha=0.1), RiskControlPolicy(target_risk=0.1)
    if kind == "lac+threshold":
        return (TemperatureScaling(), SplitConformal(score="lac", alpha=[0.05, 0.2]),
                ThresholdPolicy(target_coverage=0.7))
    if kind == "raps":
        return TemperatureScaling(), SplitConformal(score="raps", alpha=0.1), None
    if kind == "histogram":
        return HistogramBinning(multiclass="top_label"), SplitConformal(score="lac"), None
    if kind == "isotonic":
        return IsotonicCalibration(multiclass="top_label"), SplitConformal(score="aps"), ThresholdPolicy(threshold=0.5)
    return TemperatureScaling(), None, None


def _both(path, kind, chunk_rows, **kw):
    mapped = load_logits(path, mmap=True)
    assert mapped.is_mapped and mapped.logits.dtype == np.load(path, mmap_mode="r").dtype  # nothing upcast at load
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stream = fit_and_evaluate_streaming(mapped, *_components(kind)[:1], conformal=_components(kind)[1],
                                            policy=_components(kind)[2], chunk_rows=chunk_rows,
                                            calibration_bootstrap=0, n_bootstrap=300, **kw)
        whole = load_logits(path)
        cal, test = whole.split_cal_test(**kw)
        c, cf, pol = _components(kind)
        mem = fit_and_evaluate(cal, test, c, conformal=cf, policy=pol, calibration_bootstrap=0, n_bootstrap=300)
    return stream, mem


@pytest.mark.parametrize("kind,dtype,chunk_rows", [("aps+risk", "float16", 97), ("lac+threshold", "float32", 1000),
                                                   ("raps", "float64", 333), ("histogram", "float16", 500),
                                                   ("isotonic", "float16", 129)])
def test_streaming_equals_in_memory_bit_for_bit(tmp_path, kind, dtype, chunk_rows):
    path = _write(tmp_path, 8000, 40, dtype=dtype)
    stream, mem = _both(path, kind, chunk_rows)
    assert stream.metrics == mem.metrics  # every number of metrics.json, exactly (== on floats)
    assert _same(stream.calibrator.get_state(), mem.calibrator.get_state())
    assert stream.reliability == mem.reliability
    if stream.conformal is not None:
        assert np.array_equal(stream.conformal.thresholds_, mem.conformal.thresholds_)
        assert stream.conformal.draw_key_ == mem.conformal.draw_key_
        assert stream.conformal.n_calibration_ == mem.conformal.n_calibration_
    if stream.policy is not None:
        assert stream.policy.threshold_ == mem.policy.threshold_
        assert stream.policy.get_state()[0] == mem.policy.get_state()[0]
    # the figures get the same data (the stages' plot data, and the reliability panels)
    assert set(stream.plots) == set(mem.plots)
    for name, spec in mem.plots.items():
        got = stream.plots[name].data
        for field in spec.data.__dataclass_fields__:
            a, b = getattr(got, field), getattr(spec.data, field)
            if isinstance(b, np.ndarray):
                assert np.array_equal(a, b, equal_nan=b.dtype.kind == "f"), (name, field)
            else:
                assert a == b, (name, field)


@pytest.mark.slow
def test_temperature_subsample_path_and_artifact_are_identical(tmp_path):
    """n_cal > 4 * 4096: the fit starts from the strided subsample, gathered across chunks; the written run
    folders (metrics.json with the artifact's content id) are identical."""
    path = _write(tmp_path, 36_000, 8, seed=3, batch=5000)
    stream, mem = _both(path, "aps+risk", 1234)
    assert stream.metrics["n_cal"] > 4 * 4096
    assert stream.calibrator.temperature_ == mem.calibrator.temperature_
    a = stream.write(tmp_path / "stream")
    b = mem.write(tmp_path / "mem")
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    # identical run folders: metrics.json (with the artifact's content id) and every component, the reference
    # statistics (calib.shift) included
    assert ma == mb
    from calib.deploy import FittedPipeline

    pa, pb = FittedPipeline.load(a / "artifact"), FittedPipeline.load(b / "artifact")
    assert pa.reference is not None and pb.reference is not None
    for name, comp in pa.components.items():
        (sa, arr_a), (sb, arr_b) = comp.get_state(), pb.components[name].get_state()
        assert _same(sa, sb) and _same(arr_a, arr_b), name
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())


def test_stratified_split_without_split_file(tmp_path):
    path = _write(tmp_path, 6000, 12, split=False)
    assert not (tmp_path / "split.npy").exists()
    stream, mem = _both(path, "lac+threshold", 250, cal_fraction=0.3, seed=5)
    assert stream.metrics == mem.metrics and stream.metrics["n_cal"] == mem.metrics["n_cal"]


def _traced_peak(path, chunk_rows):
    data = load_logits(path, mmap=True)
    tracemalloc.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit_and_evaluate_streaming(data, TemperatureScaling(), conformal=SplitConformal(score="lac"),
                                       policy=ThresholdPolicy(target_coverage=0.8), chunk_rows=chunk_rows,
                                       calibration_bootstrap=0, n_bootstrap=50)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.slow
def test_memory_does_not_grow_with_n_times_k(tmp_path):
    """No (n, k) array: tracemalloc (numpy registers its buffers with it) sees the peak grow with n by the per-row
    vectors (measured: under 1 kB per row, whatever k), not by the logits. 8,000 more rows of 4000 classes are
    128 MB as float32; any full copy (an astype of the file, a fancy-indexed test half of it even as float16:
    32 MB, the (n_test, k) probabilities: 64 MB) grows the peak by >= 32 MB; the bound is 16 MB. Both files have
    more test rows than one block of the Brier / classwise-ECE sums (calib.metrics: 4M entries, 1048 rows at
    k = 4000), whose temporaries are bounded by that block, not by n."""
    k = 4000
    small = _write(tmp_path / "a", 4000, k, seed=1, batch=1000)
    large = _write(tmp_path / "b", 12_000, k, seed=1, batch=1000)
    _traced_peak(small, 100)  # first run: lazy imports (scipy, ...) allocate too; not counted
    growth = _traced_peak(large, 100) - _traced_peak(small, 100)
    float32_copy = (12_000 - 4000) * k * 4
    assert growth < float32_copy / 8, f"peak grew by {growth / 2**20:.1f} MiB for {float32_copy / 2**20:.0f} MiB of logits"


def test_chunk_reader_upcasts_float16_and_names_bad_rows(tmp_path):
    path = _write(tmp_path, 5000, 6)
    mm = np.load(path, mmap_mode="r")
    got = np.concatenate([b for _, b in iter_row_chunks(mm, 333)])
    assert got.dtype == np.float32 and np.array_equal(got, np.asarray(mm, dtype=np.float32))
    x = np.array(mm)
    x[4321, 2] = np.nan
    np.save(path, x)
    with pytest.raises(ValueError, match=r"NaN/inf in row 4321 .*logits.npy|logits.npy.*row 4321"):
        for _ in iter_row_chunks(np.load(path, mmap_mode="r"), 1000):
            pass


def test_side_files(tmp_path):
    path = _write(tmp_path, 3000, 5)
    labels, split = np.load(tmp_path / "labels.npy"), np.load(tmp_path / "split.npy")
    d = load_logits(path, mmap=True)
    assert np.array_equal(d.split, split) and np.array_equal(d.labels, labels)
    # the same arrays from a small .npz named by labels_path (split moved out of split.npy)
    (tmp_path / "split.npy").rename(tmp_path / "s.npy")
    np.savez(tmp_path / "meta.npz", labels=labels, split=split, groups=labels % 2)
    d2 = load_logits(path, mmap=True, labels_path=tmp_path / "meta.npz")
    assert np.array_equal(d2.split, split) and np.array_equal(d2.groups, labels % 2)
    d3 = load_logits(path, mmap=True, split_path=tmp_path / "s.npy")
    assert np.array_equal(d3.split, split)


BAD = [
    ("split-length", lambda t: np.save(t / "split.npy", np.zeros(2999, np.int8)), ValueError,
     r"Expected split in '.*split.npy' with 3000 entries \(one per row of the logits '.*logits.npy'\), got shape \(2999,\)"),
    ("split-value", lambda t: np.save(t / "split.npy", np.r_[np.zeros(2500, np.int8), 2 * np.ones(500, np.int8)]),
     ValueError, r"split values 0 \(calibration\) or 1 \(test\) in '.*split.npy', got 2 at row 2500"),
    ("labels-late", lambda t: np.save(t / "labels.npy", np.r_[np.zeros(2777, np.int64), [5], np.zeros(222, np.int64)]),
     ValueError, r"labels in \[0, 4\] \(5 classes\) in '.*labels.npy', got 5 at row 2777 \(1 such rows\)"),
    ("labels-length", lambda t: np.save(t / "labels.npy", np.zeros(10, np.int64)), ValueError,
     r"labels in '.*labels.npy' with 3000 entries"),
]


@pytest.mark.parametrize("name,edit,exc,match", BAD, ids=[b[0] for b in BAD])
def test_bad_side_files_are_refused_naming_file_and_row(tmp_path, name, edit, exc, match):
    path = _write(tmp_path, 3000, 5)
    edit(tmp_path)
    with pytest.raises(exc, match=match):
        load_logits(path, mmap=True)


# --- the CLI --------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def calibrate():
    spec = importlib.util.spec_from_file_location("calibrate_script", REPO / "experiments" / "calibrate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(calibrate, out, overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return calibrate.run(cfg, out)


def test_cli_mmap_run_equals_in_memory_run(calibrate, tmp_path):
    path = _write(tmp_path, 5000, 30)
    common = ["data=npz", f"data.path={path}", "conformal=aps", "policy=risk_control", "policy.target_risk=0.1",
              "eval.calibration_bootstrap=0", "eval.n_bootstrap=200"]
    _run(calibrate, tmp_path / "mem", common)
    _run(calibrate, tmp_path / "ooc", common + ["data.mmap=true", "+data.chunk_rows=211"])
    a = json.loads((tmp_path / "mem" / "metrics.json").read_text())
    b = json.loads((tmp_path / "ooc" / "metrics.json").read_text())
    # the artifacts differ only by the run's config (data.mmap, data.chunk_rows), which they store
    assert a.pop("artifact_id") != b.pop("artifact_id")
    assert a == b
    from calib.deploy import FittedPipeline

    pa, pb = (FittedPipeline.load(tmp_path / run / "artifact") for run in ("mem", "ooc"))
    # every component equal, bit for bit: the reference statistics (calib.shift) included
    assert pa.reference is not None and pb.reference is not None and pa.components.keys() == pb.components.keys()
    for name, comp in pa.components.items():
        (sa, arr_a), (sb, arr_b) = comp.get_state(), pb.components[name].get_state()
        assert _same(sa, sb) and _same(arr_a, arr_b), name
    assert _same(pa.reliability, pb.reliability)
    for png in ("reliability.png", "conformal_coverage.png", "set_size_histogram.png", "class_coverage.png",
                "risk_coverage.png", "completion_frontier.png", "silent_failure_slices.png"):
        assert (tmp_path / "ooc" / png).stat().st_size > 0


def _same(a, b):
    """Equal, recursively through dicts and lists, numpy arrays compared exactly."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[key], b[key]) for key in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(a, b)
    return a == b


def test_cli_nan_in_a_late_chunk_writes_nothing(calibrate, tmp_path):
    path = _write(tmp_path, 6000, 10)
    x = np.array(np.load(path, mmap_mode="r"))
    x[5555, 3] = np.inf
    np.save(path, x)
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"logits.npy.*row 5555"):
        _run(calibrate, out, ["data=npz", f"data.path={path}", "data.mmap=true", "+data.chunk_rows=500",
                              "conformal=lac"])
    assert not (out / "metrics.json").exists() and not (out / "artifact").exists()


@pytest.mark.parametrize("override,match", [("calibrator=dirichlet", r"calibrator .*\['temperature'\]"),
                                            ("calibrator=isotonic", r"got isotonic \(multiclass='ovr'\)"),
                                            ("conformal=mondrian_class", r"split conformal predictor"),
                                            ("policy=conformal_routing", r"routing policy in \['threshold'"),
                                            ("eval.procedure_resamples=5", r"procedure_resamples=0")])
def test_cli_refuses_what_cannot_stream_before_reading(calibrate, tmp_path, override, match):
    path = tmp_path / "absent.npy"  # never read: the refusal comes first
    with pytest.raises(ValueError, match=match):
        _run(calibrate, tmp_path / "run", ["data=npz", f"data.path={path}", "data.mmap=true", override])


def test_apply_streams_a_float16_file(tmp_path):
    """FittedPipeline.iter_apply on a memory-mapped float16 .npy: positioned reads chunk by chunk, the decisions of
    apply() on the whole array upcast to float32."""
    from calib.deploy import FittedPipeline

    path = _write(tmp_path, 4000, 7)
    d = load_logits(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = FittedPipeline.fit(d.logits[:2000], d.labels[:2000], calibrator=TemperatureScaling(),
                                  conformal=SplitConformal(score="aps"), policy=ThresholdPolicy(threshold=0.6))
    mm = np.load(path, mmap_mode="r")
    assert mm.dtype == np.float16
    parts = list(pipe.iter_apply(mm, chunk_rows=333))
    assert [s for s, _ in parts] == list(range(0, 4000, 333))
    whole = pipe.apply(np.asarray(mm, dtype=np.float32))
    for field in ("probs", "sets", "actions", "output"):
        assert np.array_equal(np.concatenate([getattr(p, field) for _, p in parts]), getattr(whole, field)), field


@pytest.mark.parametrize("conformal", [{"score": "aps", "randomized": False, "never_empty": False, "alpha": 0.2},
                                       {"score": "lac", "alpha": 0.01}])
def test_set_size_warnings_are_the_in_memory_ones(tmp_path, conformal):
    """The SetSizeWarning of a fit (too many empty / all-class sets on the calibration rows) is measured on the same
    rows, from two numbers per row kept chunk by chunk; the messages are the in-memory fit's."""
    from calib.conformal.split import SetSizeWarning

    path = _write(tmp_path, 6000, 20, margin=8.0 if conformal["score"] == "aps" else 0.5)
    got = {}
    for how in ("stream", "memory"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if how == "stream":
                fit_and_evaluate_streaming(load_logits(path, mmap=True), TemperatureScaling(),
                                           conformal=SplitConformal(**conformal), chunk_rows=77,
                                           calibration_bootstrap=0)
            else:
                cal, test = load_logits(path).split_cal_test()
                fit_and_evaluate(cal, test, TemperatureScaling(), conformal=SplitConformal(**conformal),
                                 calibration_bootstrap=0)
        got[how] = [str(w.message) for w in caught if issubclass(w.category, SetSizeWarning)]
    assert got["stream"] and got["stream"] == got["memory"]
