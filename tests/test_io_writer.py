"""calib.io.LogitsWriter: batches in, a file load_logits reads out, memory bounded by one batch, nothing half-written."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from calib.io import LogitsWriter, load_logits


def batches(n_batches=5, b=37, k=4, seed=0):
    rng = np.random.default_rng(seed)
    for i in range(n_batches):
        yield rng.standard_normal((b, k)).astype(np.float32), rng.integers(0, k, b), i


def test_npz_round_trip_with_every_key(tmp_path):
    path = tmp_path / "val.npz"
    xs, ys, gs = [], [], []
    with LogitsWriter(path, 4, class_names=["a", "b", "c", "d"]) as w:
        for x, y, i in batches():
            g = np.array([f"site{j % 3}" for j in range(len(y))])
            w.write(x, y, groups=g, split=np.arange(len(y)) % 2, fallback=(y + 1) % 4)
            xs.append(x), ys.append(y), gs.append(g)
    d = load_logits(path)
    assert d.logits.dtype == np.float32 and np.array_equal(d.logits, np.concatenate(xs))
    assert np.array_equal(d.labels, np.concatenate(ys))
    assert np.array_equal(d.groups, np.concatenate(gs))
    assert list(d.class_names) == ["a", "b", "c", "d"]
    assert np.array_equal(d.extras["fallback"], (np.concatenate(ys) + 1) % 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["val.npz"]  # no temporary left


def test_npy_with_labels_beside_it_is_memory_mappable(tmp_path):
    path = tmp_path / "logits.npy"
    xs, ys = [], []
    with LogitsWriter(path, 4, dtype="float16") as w:
        for x, y, _ in batches(k=4):
            w.write(x, y)
            xs.append(x), ys.append(y)
    d = load_logits(path, mmap=True)
    raw = np.load(path, mmap_mode="r")
    assert isinstance(raw, np.memmap) and raw.dtype == np.float16 and raw.shape == (185, 4)
    assert np.array_equal(raw, np.concatenate(xs).astype(np.float16))  # cast to the stored dtype, batch by batch
    assert np.array_equal(d.labels, np.concatenate(ys))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.npy", "logits.npy"]


def test_integer_groups_and_no_labels(tmp_path):
    path = tmp_path / "g.npz"
    with LogitsWriter(path, 3) as w:
        w.write(np.ones((4, 3)), groups=[1, 2, 3, 4])
        w.write(np.zeros((2, 3)), groups=[5, 6])
    d = load_logits(path, require_labels=False)
    assert d.labels is None and d.groups.tolist() == [1, 2, 3, 4, 5, 6]
    assert d.logits.dtype == np.float32  # float64 batches stored as float32 (the default dtype)


def test_memory_stays_one_batch(tmp_path):
    """60 batches of 1 MB: the writer's own allocations stay near one batch, not the 60 MB written."""
    x = np.zeros((2500, 100), np.float32)  # 1 MB
    y = np.zeros(2500, np.int64)
    tracemalloc.start()
    try:
        with LogitsWriter(tmp_path / "big.npz", 100) as w:
            for _ in range(60):
                w.write(x, y)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 12 * 2**20, peak
    assert load_logits(tmp_path / "big.npz").n_samples == 150_000


@pytest.mark.parametrize("bad, error, match", [
    (lambda w: w.write(np.ones((3, 5))), ValueError, r"logits with 4 classes \(as at fit\), got 5 columns"),
    (lambda w: w.write(np.array([[0, np.nan, 0, 0.0]])), ValueError, r"finite logits"),
    (lambda w: w.write(np.ones((2, 4)), labels=[0, 9]), ValueError, r"labels"),
    (lambda w: w.write(np.ones((2, 4)), labels=[0]), ValueError, r"labels of length 2"),
    (lambda w: (w.write(np.ones((2, 4)), labels=[0, 1]), w.write(np.ones((2, 4))))[1], ValueError,
     r"same arrays in every batch \(\['labels'\], as in the first\), got \[\] in batch at row 2"),
    (lambda w: w.write(np.ones((2, 4)), split=[0, 2]), ValueError, r"split as 2 values 0 \(calibration\) or 1"),
    (lambda w: (w.write(np.ones((1, 4)), groups=[1]), w.write(np.ones((1, 4)), groups=["a"]))[1], TypeError,
     r"group ids of one type"),
    (lambda w: w.close(), ValueError, r"at least one row"),
])
def test_bad_batches_abort_and_leave_nothing(tmp_path, bad, error, match):
    w = LogitsWriter(tmp_path / "x.npz", 4)
    with pytest.raises(error, match=match):
        bad(w)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="already closed"):
        w.write(np.ones((1, 4)))


def test_exception_in_the_loop_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="model crashed"):
        with LogitsWriter(tmp_path / "x.npz", 4) as w:
            w.write(np.ones((3, 4)), labels=[0, 1, 2])
            raise RuntimeError("model crashed")
    assert list(tmp_path.iterdir()) == []


def test_constructor_refusals(tmp_path):
    (tmp_path / "old.npz").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        LogitsWriter(tmp_path / "old.npz", 4)
    (tmp_path / "labels.npy").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="labels.npy"):
        LogitsWriter(tmp_path / "new.npy", 4)
    with pytest.raises(ValueError, match=r"path ending in .npz or .npy \(LogitsWriter\), got '.*x.csv'"):
        LogitsWriter(tmp_path / "x.csv", 4)
    with pytest.raises(ValueError, match=r"Unknown dtype .int8.; valid options: \[.float16., .float32., .float64.\]"):
        LogitsWriter(tmp_path / "x.npz", 4, dtype="int8")
    with pytest.raises(ValueError, match=r"n_classes >= 2"):
        LogitsWriter(tmp_path / "x.npz", 1)
    with pytest.raises(ValueError, match=r"class_names as 4 strings"):
        LogitsWriter(tmp_path / "x.npz", 4, class_names="abcd")
    with pytest.raises(ValueError, match=r"only labels beside .npy logits"):
        LogitsWriter(tmp_path / "y.npy", 4, overwrite=True).write(np.ones((1, 4)), groups=[1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.npy", "old.npz"]


def test_overwrite_replaces(tmp_path):
    (tmp_path / "x.npz").write_bytes(b"junk")
    with LogitsWriter(tmp_path / "x.npz", 2, overwrite=True) as w:
        w.write(np.array([[0.0, 1.0]]), labels=[1])
    assert load_logits(tmp_path / "x.npz").labels.tolist() == [1]


def test_a_writer_dropped_without_close_leaves_no_temporary(tmp_path):
    import gc

    w = LogitsWriter(tmp_path / "x.npz", 4)
    w.write(np.ones((2, 4)))
    assert len(list(tmp_path.iterdir())) == 1  # its temporary folder, while it lives
    del w
    gc.collect()
    assert list(tmp_path.iterdir()) == []
