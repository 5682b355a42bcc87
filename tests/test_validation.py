"""The threaded validation pass: same answers on one thread or several, every bad entry found."""

from __future__ import annotations

import numpy as np
import pytest

import calib._chunks as chunking
import calib._validation as V
from calib.calibrators import softmax
from calib.conformal import SplitConformal


@pytest.fixture
def tiny_thread_threshold(monkeypatch):
    """Make a 2,000 x 10 array count as large: chunks of 40 rows, split over worker threads."""
    monkeypatch.setattr(V, "_ELEMENTS_PER_THREAD", 1000)
    monkeypatch.setattr(chunking, "CACHE", 40 * 10 * 4)
    return monkeypatch


def _probs(n=2000, k=10, seed=0):
    rng = np.random.default_rng(seed)
    return softmax(rng.normal(scale=2.0, size=(n, k))).astype(np.float32), rng.integers(0, k, n)


def test_threaded_pass_equals_single_thread(tiny_thread_threshold):
    p, y = _probs()
    seen = np.zeros(p.shape[0], dtype=np.int64)

    def count(start, block):
        seen[start:start + block.shape[0]] += 1

    results = {}
    spans = []
    real_map = V.map_threads

    def recording_map(fn, items):
        spans.append(list(items))
        return real_map(fn, spans[-1])

    tiny_thread_threshold.setattr(V, "map_threads", recording_map)
    for threads in ("1", "3"):
        tiny_thread_threshold.setenv("CALIB_NUM_THREADS", threads)
        seen[:] = 0
        _, argmax = V.check_probs(p, return_argmax=True, on_chunk=count)
        assert (seen == 1).all()  # every row visited exactly once
        sets = SplitConformal(score="lac", alpha=0.1).fit(p, y).predict_set(p)
        results[threads] = (argmax, sets)
    # check_probs, fit and predict_set each split the rows: one span, then three
    assert [len(s) for s in spans] == [1, 1, 1, 3, 3, 3]
    assert spans[3] == [(0, 640), (640, 1320), (1320, 2000)]  # chunk-aligned, contiguous, covering
    assert np.array_equal(results["1"][0], p.argmax(axis=1))
    assert np.array_equal(results["1"][0], results["3"][0])
    assert np.array_equal(results["1"][1], results["3"][1])


@pytest.mark.parametrize("row", [0, 999, 1000, 1999])  # first/last row of each worker's span
@pytest.mark.parametrize("bad, match", [
    ("nan", "finite probs"), ("negative", r"in \[0, 1\]"), ("sum", "summing to 1"),
])
def test_threaded_pass_finds_bad_entry_in_any_span(tiny_thread_threshold, row, bad, match):
    tiny_thread_threshold.setenv("CALIB_NUM_THREADS", "2")
    p, _ = _probs()
    if bad == "nan":
        p[row, 3] = np.nan
    elif bad == "negative":
        p[row, 3] -= 0.5
        p[row, 4] += 0.5  # row still sums to 1: only the minimum catches it
    else:
        p[row, 3] += 0.01
    with pytest.raises(ValueError, match=match):
        V.check_probs(p)


@pytest.mark.parametrize("raw", ["0", "-2", "two"])
def test_bad_thread_count_names_the_variable(monkeypatch, raw):
    monkeypatch.setenv("CALIB_NUM_THREADS", raw)
    from calib._chunks import num_threads

    with pytest.raises(ValueError, match=f"CALIB_NUM_THREADS as a positive integer, got '{raw}'"):
        num_threads()


@pytest.mark.parametrize("score, kw", [("aps", dict(randomized=True)), ("raps", dict(k_reg=2, lam=0.1)),
                                       ("saps", dict(weight=0.2)), ("topk", {}), ("lac", {})])
def test_conformal_chunks_on_threads_give_the_same_sets(monkeypatch, score, kw):
    monkeypatch.setattr(chunking, "FUSED", 37 * 10)  # 37-row chunks: many, spread over threads
    p, y = _probs(n=1500, k=10, seed=2)
    p = p.astype(np.float64)
    out = {}
    for threads in ("1", "3"):
        monkeypatch.setenv("CALIB_NUM_THREADS", threads)
        sc = SplitConformal(score=score, alpha=[0.1, 0.3], **kw).fit(p[:700], y[:700])
        out[threads] = (sc.qhat_, sc.predict_set(p[700:]))
    assert np.array_equal(out["1"][0], out["3"][0])
    assert np.array_equal(out["1"][1], out["3"][1])


@pytest.mark.parametrize("labels,match", [
    (np.full(3, 1e20), r"got maximum 1e\+20\."),
    (np.array([2**63 + 5], dtype=np.uint64), r"got maximum 9223372036854775813\."),
    (np.array([5, 1, -2]), r"labels >= 0, got minimum -2\."),
    (np.array([-0.0, 1.0, -3.0]), r"labels >= 0, got minimum -3\."),
])
def test_label_range_messages_report_the_value_that_came(labels, match):
    from calib._validation import check_labels

    with pytest.raises(ValueError, match=match):
        check_labels(labels, n_samples=len(labels), n_classes=3)


def test_masked_one_d_and_bfloat16_inputs():
    from calib._validation import check_logits, check_probs_labels

    x = np.ma.masked_array(np.zeros((3, 2)), mask=[[0, 1], [0, 0], [0, 0]])
    with pytest.raises(TypeError, match=r"logits as a plain array, got a masked array \(1 masked entries\)"):
        check_logits(x)
    with pytest.raises(ValueError, match=r"np\.stack\(\[np\.zeros_like\(z\), z\], axis=1\)"):
        check_logits(np.zeros(5))
    with pytest.raises(ValueError, match=r"one per row of probs"):
        check_probs_labels(np.full((3, 2), 0.5), [0, 1])
    torch = pytest.importorskip("torch")
    t = torch.tensor([[1.5, -2.25], [0.125, 3.0]], dtype=torch.bfloat16)
    out = check_logits(t)
    assert out.dtype == np.float32 and out.tolist() == [[1.5, -2.25], [0.125, 3.0]]  # exactly representable
