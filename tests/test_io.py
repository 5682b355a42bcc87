"""Data contract: formats, splits, and bad input (clear errors, never unpickle)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from calib import LogitsData, load_logits, stratified_split
from calib.datasets import load, synthetic


@pytest.fixture
def small():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(40, 4)).astype(np.float32)
    labels = np.arange(40) % 4
    split = (np.arange(40) >= 20).astype(np.int8)
    return logits, labels, split


def test_npz_round_trip(tmp_path, small):
    logits, labels, split = small
    groups = np.array(["a", "b"] * 20)
    fallback = labels[::-1].copy()
    np.savez(tmp_path / "d.npz", logits=logits, labels=labels, split=split, groups=groups,
             class_names=np.array(["w", "x", "y", "z"]), fallback=fallback)
    d = load_logits(tmp_path / "d.npz")
    assert np.array_equal(d.logits, logits) and d.logits.dtype == np.float32
    assert np.array_equal(d.labels, labels) and d.labels.dtype == np.int64
    assert np.array_equal(d.split, split)
    assert d.groups.tolist() == groups.tolist()
    assert d.class_names == ("w", "x", "y", "z")
    assert np.array_equal(d.extras["fallback"], fallback)


def test_npy_pair_and_mmap(tmp_path, small):
    logits, labels, _ = small
    np.save(tmp_path / "logits.npy", logits)
    np.save(tmp_path / "labels.npy", labels)
    d = load_logits(tmp_path / "logits.npy", mmap=True)
    assert np.array_equal(d.logits, logits) and d.split is None
    np.save(tmp_path / "y.npy", labels)
    d2 = load_logits(tmp_path / "logits.npy", labels_path=tmp_path / "y.npy")
    assert np.array_equal(d2.labels, labels)


def test_npy_without_labels_file(tmp_path, small):
    np.save(tmp_path / "z.npy", small[0])
    with pytest.raises(FileNotFoundError, match="labels_path"):
        load_logits(tmp_path / "z.npy")


def test_pt_dict_of_tensors(tmp_path, small):
    logits, labels, split = small
    torch.save({"logits": torch.from_numpy(logits), "labels": torch.from_numpy(labels),
                "split": torch.from_numpy(split)}, tmp_path / "d.pt")
    d = load_logits(tmp_path / "d.pt")
    assert np.array_equal(d.logits, logits) and np.array_equal(d.split, split)


class Evil:
    """Any non-tensor object: torch.load(weights_only=True) must refuse to unpickle it."""


def test_pt_with_arbitrary_object_is_refused(tmp_path):
    torch.save({"logits": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="weights_only=True"):
        load_logits(tmp_path / "evil.pt")


def test_csv(tmp_path, small):
    logits, labels, split = small
    with open(tmp_path / "d.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["label", "split", "cat", "dog", "fox", "owl"])
        for y, s, row in zip(labels, split, logits):
            w.writerow([y, s, *[repr(float(v)) for v in row]])
    d = load_logits(tmp_path / "d.csv")
    assert np.array_equal(d.logits, logits)
    assert np.array_equal(d.labels, labels) and np.array_equal(d.split, split)
    assert d.class_names == ("cat", "dog", "fox", "owl")


def test_unknown_extension(tmp_path):
    (tmp_path / "x.parquet").write_bytes(b"")
    with pytest.raises(ValueError, match=r"Unsupported logits file extension '\.parquet'.*valid options"):
        load_logits(tmp_path / "x.parquet")


def test_pickle_bearing_npz_is_refused(tmp_path, small):
    obj = np.empty(1, dtype=object)
    obj[0] = {"payload": 1}
    np.savez(tmp_path / "p.npz", logits=small[0], labels=small[1], meta=obj)
    with pytest.raises(ValueError, match="never unpickles"):
        load_logits(tmp_path / "p.npz")


def test_missing_key(tmp_path, small):
    np.savez(tmp_path / "m.npz", logits=small[0])
    with pytest.raises(ValueError, match=r"Expected a 'labels' array"):
        load_logits(tmp_path / "m.npz")


@pytest.mark.parametrize(
    "logits, labels, match",
    [
        (np.array([[0.0, np.nan], [1.0, 2.0]]), [0, 1], "finite logits.*NaN/inf"),
        (np.array([[0.0, np.inf], [1.0, 2.0]]), [0, 1], "finite logits"),
        (np.zeros(4), [0, 1, 0, 1], r"shape \(n_samples, n_classes\), got a 1-D array of shape \(4,\)"),
        (np.zeros((2, 2, 2)), [0, 1], r"got an array of shape \(2, 2, 2\)"),
        (np.zeros((3, 1)), [0, 0, 0], "at least 2 classes"),
        (np.zeros((3, 2)), [0, 1, 2], r"labels in \[0, 1\] for 2 classes, got maximum 2"),
        (np.zeros((3, 2)), [0, -1, 1], "labels >= 0, got minimum -1"),
        (np.zeros((3, 2)), [0.0, 1.5, 1.0], "fractional part"),
        (np.zeros((3, 2)), [0, 1], r"labels of length 3 .* got length 2"),
    ],
)
def test_bad_input_messages(logits, labels, match):
    with pytest.raises(ValueError, match=match):
        LogitsData(logits=np.asarray(logits), labels=np.asarray(labels))


def test_string_labels_are_a_type_error():
    with pytest.raises(TypeError, match="integer class labels, got dtype"):
        LogitsData(logits=np.zeros((2, 2)), labels=np.array(["a", "b"]))


def test_integral_float_labels_are_accepted():
    d = LogitsData(logits=np.zeros((2, 2), np.float32), labels=np.array([0.0, 1.0]))
    assert d.labels.dtype == np.int64


def test_split_values_checked():
    with pytest.raises(ValueError, match="split values 0 .* or 1"):
        LogitsData(logits=np.zeros((2, 2)), labels=[0, 1], split=np.array([0, 2]))


def test_empty_calibration_or_test_split():
    d = LogitsData(logits=np.zeros((4, 2)), labels=[0, 1, 0, 1], split=np.ones(4, np.int8))
    with pytest.raises(ValueError, match="non-empty calibration split"):
        d.split_cal_test()
    d = LogitsData(logits=np.zeros((4, 2)), labels=[0, 1, 0, 1], split=np.zeros(4, np.int8))
    with pytest.raises(ValueError, match="non-empty test split"):
        d.split_cal_test()


def test_stratified_split_fractions_and_determinism():
    labels = np.repeat(np.arange(5), [100, 50, 20, 7, 1])
    mask = stratified_split(labels, cal_fraction=0.3, seed=4)
    per_class = np.bincount(labels[mask], minlength=5)
    assert per_class.tolist() == [30, 15, 6, 2, 1]  # round(0.3 * n_c), at least one row per class
    assert np.array_equal(mask, stratified_split(labels, cal_fraction=0.3, seed=4))
    assert not np.array_equal(mask, stratified_split(labels, cal_fraction=0.3, seed=5))
    with pytest.raises(ValueError, match=r"cal_fraction in \(0, 1\), got 1.5"):
        stratified_split(labels, cal_fraction=1.5)


def test_split_cal_test_uses_file_split_unless_resplit():
    d = synthetic(n=1000, n_classes=4, seed=0)
    cal, test = d.split_cal_test()
    assert cal.n_samples == 500 and np.array_equal(cal.logits, d.logits[:500])
    cal2, _ = d.split_cal_test(resplit=True, cal_fraction=0.25, seed=1)
    assert abs(cal2.n_samples - 250) <= 4


def test_builtin_dataset():
    d = load("c10lt_resnet110")
    assert d.logits.shape == (20216, 10) and d.logits.dtype == np.float32
    assert int((d.split == 0).sum()) == 10216
    # The test part is the balanced CIFAR-10 test set: 1,000 per class.
    assert np.bincount(d.labels[d.split == 1]).tolist() == [1000] * 10
    with pytest.raises(ValueError, match="Unknown builtin dataset 'nope'; valid options"):
        load("nope")


# --- labels optional for applying (load_logits(..., require_labels=False)) ------------------------------
def test_unlabelled_files_read_with_require_labels_false(tmp_path, small):
    logits = small[0]
    np.savez(tmp_path / "u.npz", logits=logits, groups=np.array(["a", "b"] * 20), fallback=np.arange(40) % 4)
    d = load_logits(tmp_path / "u.npz", require_labels=False)
    assert d.labels is None and np.array_equal(d.logits, logits)
    assert d.groups.tolist() == ["a", "b"] * 20 and d.extras["fallback"].tolist() == (np.arange(40) % 4).tolist()
    sub = d.subset(np.arange(5))
    assert sub.labels is None and np.array_equal(sub.logits, logits[:5])

    np.save(tmp_path / "alone.npy", logits)  # no labels.npy beside it
    d = load_logits(tmp_path / "alone.npy", mmap=True, require_labels=False)
    assert d.labels is None and isinstance(d.logits, np.memmap) and np.array_equal(d.logits, logits)

    with open(tmp_path / "u.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["cat", "dog", "fox", "owl"])
        for row in logits:
            w.writerow([repr(float(v)) for v in row])
    d = load_logits(tmp_path / "u.csv", require_labels=False)
    assert d.labels is None and np.array_equal(d.logits, logits) and d.class_names == ("cat", "dog", "fox", "owl")

    torch.save({"logits": torch.from_numpy(logits)}, tmp_path / "u.pt")
    assert load_logits(tmp_path / "u.pt", require_labels=False).labels is None


def test_present_labels_still_read_and_checked_without_requirement(tmp_path, small):
    logits, labels, _ = small
    np.savez(tmp_path / "d.npz", logits=logits, labels=labels)
    assert np.array_equal(load_logits(tmp_path / "d.npz", require_labels=False).labels, labels)
    np.savez(tmp_path / "bad.npz", logits=logits, labels=np.full(40, 7))
    with pytest.raises(ValueError, match=r"labels in \[0, 3\] for 4 classes, got maximum 7"):
        load_logits(tmp_path / "bad.npz", require_labels=False)
    np.savez(tmp_path / "typo.npz", logits=logits, label=labels)  # a misspelt key is never silently dropped
    with pytest.raises(ValueError, match=r"got 'label' \(did you mean 'labels'\?\)"):
        load_logits(tmp_path / "typo.npz", require_labels=False)
    np.save(tmp_path / "x.npy", logits)
    with pytest.raises(FileNotFoundError, match="nope.npy"):  # an explicit labels file must exist
        load_logits(tmp_path / "x.npy", labels_path=tmp_path / "nope.npy", require_labels=False)
    with pytest.raises(TypeError, match="Expected require_labels as a bool, got str 'no'"):
        load_logits(tmp_path / "x.npy", require_labels="no")


def test_required_labels_messages_unchanged(tmp_path, small):
    np.savez(tmp_path / "m.npz", logits=small[0])
    with pytest.raises(ValueError, match=r"Expected a 'labels' array in '.*m\.npz', got keys \['logits'\]"):
        load_logits(tmp_path / "m.npz", require_labels=True)
    (tmp_path / "c.csv").write_text("cat,dog\n1.0,2.0\n")
    with pytest.raises(ValueError, match=r"Expected a 'label' column in '.*c\.csv', got columns \['cat', 'dog'\]"):
        load_logits(tmp_path / "c.csv")


def test_split_without_labels():
    logits = np.zeros((4, 2), np.float32)
    d = LogitsData(logits=logits, labels=None, split=np.array([0, 0, 1, 1]))
    cal, test = d.split_cal_test()
    assert cal.n_samples == 2 and cal.labels is None and test.n_samples == 2
    with pytest.raises(ValueError, match="Expected labels for a stratified calibration/test split.*resplit=True"):
        d.split_cal_test(resplit=True)
    with pytest.raises(ValueError, match="Expected labels for a stratified calibration/test split.*no split"):
        LogitsData(logits=logits, labels=None).split_cal_test()


# --- one's own key and column names (issue 16): logits_key, labels_key, ..., label_column, ... ----------------


def test_npz_and_pt_keys_can_be_named(tmp_path, small):
    logits, labels, split = small
    groups = np.arange(40) % 3
    np.savez(tmp_path / "own.npz", scores=logits, y=labels, fold=split, site=groups)
    d = load_logits(tmp_path / "own.npz", logits_key="scores", labels_key="y", split_key="fold", groups_key="site")
    np.testing.assert_array_equal(d.logits, logits)
    np.testing.assert_array_equal(d.labels, labels)
    np.testing.assert_array_equal(d.split, split)
    np.testing.assert_array_equal(d.groups, groups)
    assert d.extras == {}  # the renamed arrays are not also kept as extras
    torch.save({"out": torch.from_numpy(logits), "target": torch.from_numpy(labels)}, tmp_path / "own.pt")
    d = load_logits(tmp_path / "own.pt", logits_key="out", labels_key="target")
    np.testing.assert_array_equal(d.logits, logits)
    np.testing.assert_array_equal(d.labels, labels)
    # None and the standard name mean the standard name
    np.savez(tmp_path / "std.npz", logits=logits, labels=labels)
    d = load_logits(tmp_path / "std.npz", logits_key=None, labels_key="labels", split_key=None)
    np.testing.assert_array_equal(d.labels, labels)


def test_named_key_beats_the_standard_one_and_names_may_swap(tmp_path, small):
    logits, labels, _ = small
    other = logits[:, ::-1].copy()
    np.savez(tmp_path / "two.npz", logits=logits, logits_ema=other, labels=labels)
    d = load_logits(tmp_path / "two.npz", logits_key="logits_ema")
    np.testing.assert_array_equal(d.logits, other)
    assert "logits_ema" not in d.extras and "logits" not in d.extras
    np.savez(tmp_path / "swapped.npz", logits=labels, labels=logits)  # a file written with the names swapped
    d = load_logits(tmp_path / "swapped.npz", logits_key="labels", labels_key="logits")
    np.testing.assert_array_equal(d.logits, logits)
    np.testing.assert_array_equal(d.labels, labels)


def test_csv_columns_can_be_named(tmp_path, small):
    logits, labels, split = small
    path = tmp_path / "own.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["target", "fold", "site", "cat", "dog", "fox", "owl"])
        for i in range(40):
            w.writerow([labels[i], split[i], "ab"[i % 2], *(f"{v:.6f}" for v in logits[i])])
    d = load_logits(path, label_column="target", split_column="fold", group_column="site")
    assert list(d.class_names) == ["cat", "dog", "fox", "owl"]
    np.testing.assert_array_equal(d.labels, labels)
    np.testing.assert_array_equal(d.split, split)
    assert d.groups.tolist() == ["ab"[i % 2] for i in range(40)]
    np.testing.assert_allclose(d.logits, logits, atol=5e-7)


def test_labels_npz_of_npy_logits_takes_the_key_names(tmp_path, small):
    logits, labels, split = small
    np.save(tmp_path / "logits.npy", logits)
    np.savez(tmp_path / "side.npz", y=labels, fold=split)
    d = load_logits(tmp_path / "logits.npy", labels_path=tmp_path / "side.npz", labels_key="y", split_key="fold")
    np.testing.assert_array_equal(d.labels, labels)
    np.testing.assert_array_equal(d.split, split)


def test_key_and_column_name_errors_name_the_argument_and_what_is_there(tmp_path, small):
    logits, labels, _ = small
    np.savez(tmp_path / "own.npz", scores=logits, y=labels)
    src = str(tmp_path / "own.npz")
    cases = [
        (dict(), ValueError, f"Expected a 'logits' array in {src!r}, got keys ['scores', 'y']; to read another key as "
                             "the logits, pass logits_key=<its name>."),
        (dict(logits_key="scores", labels_key="yy"), ValueError,
         f"Expected a 'yy' array in {src!r} (labels_key='yy'), got keys ['scores', 'y']."),
        (dict(logits_key="scores", labels_key="scores"), ValueError,
         "Expected distinct names for logits_key and labels_key, got 'scores' for both."),
        (dict(logits_key="scores", labels_key="y", label_column="y"), ValueError,
         f"Expected array names of a .npz/.pt file for {src!r}, got label_column='y'; *_column names columns of a "
         ".csv."),
        (dict(logits_key=3), TypeError, "Expected logits_key as a non-empty str (or None for the standard name), "
                                        "got int 3."),
        (dict(split_key=""), TypeError, "Expected split_key as a non-empty str (or None for the standard name), "
                                        "got str ''."),
    ]
    for kw, exc, message in cases:
        with pytest.raises(exc) as info:
            load_logits(tmp_path / "own.npz", **kw)
        assert str(info.value) == message, kw
    path = tmp_path / "d.csv"
    path.write_text("label,y,cat,dog\n0,1,0.1,0.2\n1,0,0.3,0.1\n")
    for kw, message in [
        (dict(label_column="yy"), f"Expected a column 'yy' in {str(path)!r} (label_column='yy'), got columns "
                                  "['label', 'y', 'cat', 'dog']."),
        (dict(label_column="y"), f"Expected no 'label' column beside label_column='y' in {str(path)!r}, got one: it "
                                 "would be read as a class's logits; rename or drop it."),
        (dict(labels_key="y"), f"Expected column names for a .csv (label_column, split_column, group_column), got "
                               f"labels_key='y' for {str(path)!r}; *_key names arrays of .npz/.pt files."),
    ]:
        with pytest.raises(ValueError) as info:
            load_logits(path, **kw)
        assert str(info.value) == message, kw
    path.write_text("y,cat,dog\n0,0.1,0.2\n")
    with pytest.raises(ValueError) as info:
        load_logits(path)
    assert str(info.value) == (f"Expected a 'label' column in {str(path)!r}, got columns ['y', 'cat', 'dog']; to read "
                               "another column as the labels, pass label_column=<its name>.")
    np.save(tmp_path / "l.npy", logits)
    for kw, message in [
        (dict(labels_key="y"), f"Expected labels_key='y' only with a labels .npz (labels_path=<file>.npz) for the .npy "
                               f"logits {str(tmp_path / 'l.npy')!r}, got no labels_path."),
        (dict(logits_key="s"), f"Expected no logits_key or column name for {str(tmp_path / 'l.npy')!r}, got "
                               "logits_key='s'; a .npy holds one array (labels_key, split_key, groups_key name the "
                               "arrays of a labels .npz)."),
    ]:
        with pytest.raises(ValueError) as info:
            load_logits(tmp_path / "l.npy", **kw)
        assert str(info.value) == message, kw
