"""Bad logits files are refused with the exception type and a message naming the file, the key or column, what
was expected and what came; good-but-unusual files load. Table-driven: one row per file.

Each row of BAD builds a file in tmp_path and returns the call that must fail; GOOD rows return the call that
must succeed and a check of the result.
"""

from __future__ import annotations

import csv
import io
import logging
import re
import zipfile

import numpy as np
import pytest
import torch

from calib import LogitsData, load_logits
from calib.datasets import synthetic

N, K = 40, 4


def _arrays(**over):
    rng = np.random.default_rng(0)
    arrays = {"logits": rng.normal(size=(N, K)).astype(np.float32), "labels": np.arange(N) % K,
              "split": (np.arange(N) >= N // 2).astype(np.int8)}
    arrays.update(over)
    return {k: v for k, v in arrays.items() if v is not None}


def npz(tmp, name="d.npz", **over):
    path = tmp / name
    np.savez(path, **_arrays(**over))
    return path


def raw(tmp, name, data):
    path = tmp / name
    path.write_bytes(data)
    return path


def csv_file(tmp, rows, header=("label", "split", "cat", "dog", "fox", "owl"), name="d.csv", tail="\n"):
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if header is not None:
        writer.writerow(header)
    writer.writerows(rows)
    path = tmp / name
    path.write_text(buf.getvalue() + tail)
    return path


def good_rows(n=N):
    return [[i % K, int(i >= n // 2), *(f"{0.1 * (i + j):.3f}" for j in range(K))] for i in range(n)]


def load(path, **kw):
    return lambda: load_logits(path, **kw)


# --- builders of bad files: tmp_path -> the call that must raise ------------------------------------------

def truncated_npz(tmp):
    path = npz(tmp)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return load(path)


def zip_with_text_member(tmp):
    path = tmp / "d.npz"
    with zipfile.ZipFile(path, "w") as zf:
        for key, a in _arrays().items():
            buf = io.BytesIO()
            np.save(buf, a)
            zf.writestr(f"{key}.npy", buf.getvalue())
        zf.writestr("readme.txt", "not an array")
    return load(path)


def zip_with_garbage_member(tmp):
    path = tmp / "d.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("logits.npy", b"garbage, no npy header")
    return load(path)


def npy_bytes_named_npz(tmp):
    path = tmp / "d.npz"
    with open(path, "wb") as fh:
        np.save(fh, _arrays()["logits"])
    return load(path)


def pickled_npz(tmp):
    meta = np.empty(1, dtype=object)
    meta[0] = {"payload": 1}
    return load(npz(tmp, meta=meta))


def npy_pair(tmp, logits=None, labels=None):
    a = _arrays()
    np.save(tmp / "logits.npy", a["logits"] if logits is None else logits, allow_pickle=True)
    if labels is not False:
        np.save(tmp / "labels.npy", a["labels"] if labels is None else labels, allow_pickle=True)
    return tmp / "logits.npy"


def truncated_npy(tmp):
    path = npy_pair(tmp)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 50])
    return load(path)


def pickled_npy(tmp):
    obj = np.empty(N, dtype=object)
    obj[:] = [{"i": i} for i in range(N)]
    return load(npy_pair(tmp, labels=obj))


def truncated_pt(tmp):
    a = _arrays()
    path = tmp / "d.pt"
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in a.items()}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return load(path)


def pt_list(tmp):
    path = tmp / "d.pt"
    torch.save([torch.zeros(3, 2)], path)
    return load(path)


class Evil:
    """Any non-tensor object: torch.load(weights_only=True) must refuse to unpickle it."""


def pt_evil(tmp):
    path = tmp / "d.pt"
    torch.save({"logits": Evil()}, path)
    return load(path)


def directory_named_npz(tmp):
    (tmp / "d.npz").mkdir()
    return load(tmp / "d.npz")


def csv_rows(mutate, header=("label", "split", "cat", "dog", "fox", "owl")):
    def build(tmp):
        rows = good_rows()
        mutate(rows)
        return load(csv_file(tmp, rows, header=header))
    return build


def _set(row, col, value):
    def mutate(rows):
        rows[row][col] = value
    return mutate


BAD = [
    # .npz files that are not (complete) npz archives
    pytest.param(truncated_npz, ValueError, r"Expected a complete \.npz archive at '.*d\.npz', got a truncated or corrupt",
                 id="npz-truncated"),
    pytest.param(lambda t: load(raw(t, "d.npz", b"hello, I am text")), ValueError,
                 r"Expected an \.npz archive .* at '.*d\.npz', got a file that is not a zip archive", id="npz-not-zip"),
    pytest.param(lambda t: load(raw(t, "d.npz", b"")), ValueError, r"Expected an \.npz archive at .*, got an empty file",
                 id="npz-empty"),
    pytest.param(npy_bytes_named_npz, ValueError, r"got a single \.npy array", id="npz-holds-npy"),
    pytest.param(zip_with_garbage_member, ValueError, r"Expected only \.npy arrays .* got member 'logits'",
                 id="npz-garbage-member"),
    pytest.param(zip_with_text_member, ValueError, r"Expected only \.npy arrays .* got member 'readme\.txt'",
                 id="npz-text-member"),
    pytest.param(pickled_npz, ValueError, r"member 'meta' is an object \(pickled\) array, which calib never unpickles",
                 id="npz-pickled-object-array"),
    # wrong keys
    pytest.param(lambda t: load(npz(t, labels=None)), ValueError, r"Expected a 'labels' array in '.*d\.npz', got keys",
                 id="npz-no-labels"),
    pytest.param(lambda t: load(npz(t, logits=None)), ValueError, r"Expected a 'logits' array in '.*', got keys",
                 id="npz-no-logits"),
    pytest.param(lambda t: load(npz(t, labels=None, label=np.arange(N) % K)), ValueError,
                 r"Expected the key 'labels' in '.*', got 'label' \(did you mean 'labels'\?\)", id="npz-key-label"),
    pytest.param(lambda t: load(npz(t, splits=np.zeros(N))), ValueError, r"got 'splits' \(did you mean 'split'\?\)",
                 id="npz-key-splits"),
    pytest.param(lambda t: load(npz(t, Groups=np.zeros(N))), ValueError, r"got 'Groups' \(did you mean 'groups'\?\)",
                 id="npz-key-Groups"),
    # wrong dtypes
    pytest.param(lambda t: load(npz(t, logits=np.full((N, K), "x"))), TypeError,
                 r"In '.*d\.npz': Expected logits with a real floating dtype, got dtype <U1", id="npz-string-logits"),
    pytest.param(lambda t: load(npz(t, logits=np.zeros((N, K), bool))), TypeError, r"real floating dtype, got dtype bool",
                 id="npz-bool-logits"),
    pytest.param(lambda t: load(npz(t, labels=np.array(["a"] * N))), TypeError, r"integer class labels, got dtype",
                 id="npz-string-labels"),
    pytest.param(lambda t: load(npz(t, split=np.array(["0"] * N))), TypeError,
                 r"Expected split values 0 \(calibration\) or 1 \(test\) as numbers, got dtype <U1", id="npz-string-split"),
    pytest.param(lambda t: load(npz(t, groups=np.zeros(N, complex))), TypeError,
                 r"Expected groups as integers or strings, got dtype complex", id="npz-complex-groups"),
    # wrong values
    pytest.param(lambda t: load(npz(t, labels=np.r_[1e20, np.zeros(N - 1)])), ValueError,
                 r"Expected labels in \[0, 3\] for 4 classes, got maximum 1e\+20\.", id="npz-label-1e20"),
    pytest.param(lambda t: load(npz(t, labels=np.array([2**63 + 5] + [0] * (N - 1), dtype=np.uint64))), ValueError,
                 r"got maximum 9223372036854775813", id="npz-label-uint64-huge"),
    pytest.param(lambda t: load(npz(t, labels=np.r_[-1e20, np.zeros(N - 1)])), ValueError,
                 r"Expected labels >= 0, got minimum -1e\+20", id="npz-label-minus-1e20"),
    pytest.param(lambda t: load(npz(t, logits=np.where(np.eye(N, K, dtype=bool), np.nan, 0.0))), ValueError,
                 r"Expected finite logits, got", id="npz-nan-logits"),
    pytest.param(lambda t: load(npz(t, split=np.full(N, 0.5))), ValueError,
                 r"Expected split values 0 \(calibration\) or 1 \(test\), got 40 other values \(e\.g\. \[0\.5\]",
                 id="npz-split-half"),
    pytest.param(lambda t: load(npz(t, split=np.r_[2, np.zeros(N - 1)])), ValueError, r"other values \(e\.g\. \[2\]",
                 id="npz-split-2"),
    pytest.param(lambda t: load(npz(t, groups=np.r_[np.nan, np.zeros(N - 1)])), ValueError,
                 r"Expected a group id on every row, got 1 NaN/inf group ids \(first rows: \[0\]\)", id="npz-groups-nan"),
    pytest.param(lambda t: load(npz(t, groups=np.array(["a", ""] * (N // 2)))), ValueError,
                 r"got 20 empty group ids", id="npz-groups-empty-string"),
    pytest.param(lambda t: load(npz(t, fallback=np.r_[7, np.zeros(N - 1, int)])), ValueError,
                 r"Expected fallback in \[0, 3\] for 4 classes, got maximum 7", id="npz-fallback-out-of-range"),
    pytest.param(lambda t: load(npz(t, class_names=np.array(["a", "b"]))), ValueError,
                 r"Expected 4 class_names \(one per logit column\), got 2", id="npz-class-names-count"),
    # wrong lengths
    pytest.param(lambda t: load(npz(t, labels=np.arange(N - 1) % K)), ValueError,
                 r"Expected labels of length 40 \(one per row of logits\), got length 39", id="npz-labels-length"),
    pytest.param(lambda t: load(npz(t, fallback=np.zeros(N - 1, int))), ValueError,
                 r"Expected 'fallback' in '.*d\.npz' of length 40 \(one class label per row of logits\), got shape \(39,\)",
                 id="npz-fallback-length"),
    pytest.param(lambda t: load(npz(t, fallback=np.int64(0))), ValueError, r"'fallback' .* got shape \(\)",
                 id="npz-fallback-scalar"),
    pytest.param(lambda t: load(npz(t, groups=np.zeros(N + 1))), ValueError,
                 r"Expected groups of shape \(40,\) \(one id per row\), got shape \(41,\)", id="npz-groups-length"),
    pytest.param(lambda t: load(npz(t, split=np.zeros(N - 2))), ValueError,
                 r"Expected split of shape \(40,\) \(one value per row\), got shape \(38,\)", id="npz-split-length"),
    pytest.param(lambda t: load(npz(t, logits=np.zeros(N))), ValueError, r"got a 1-D array of shape \(40,\)",
                 id="npz-1d-logits"),
    # .npy pairs
    pytest.param(truncated_npy, ValueError, r"Expected a complete \.npy array at '.*logits\.npy', got a truncated",
                 id="npy-truncated"),
    pytest.param(lambda t: load(raw(t, "logits.npy", b"1,2,3\n")), ValueError,
                 r"Expected a \.npy array .* \(logits\), got a file without the \.npy header", id="npy-text"),
    pytest.param(pickled_npy, ValueError, r"labels\.npy' \(labels\): it is an object \(pickled\) array", id="npy-pickled"),
    pytest.param(lambda t: load(npy_pair(t, labels=False)), FileNotFoundError,
                 r"Expected labels for '.*logits\.npy' in '.*labels\.npy' \(pass labels_path=\.\.\.\)", id="npy-no-labels"),
    pytest.param(lambda t: load(npy_pair(t), labels_path=t), FileNotFoundError,
                 r"Expected labels for .* in the file '.*', got a directory", id="npy-labels-path-dir"),
    # .pt
    pytest.param(truncated_pt, ValueError, r"Expected '.*d\.pt' to be a torch\.save file .* got an unreadable file",
                 id="pt-truncated"),
    pytest.param(pt_list, ValueError, r"Expected '.*d\.pt' to hold a dict of tensors, got list", id="pt-list"),
    pytest.param(pt_evil, ValueError, r"weights_only=True", id="pt-pickled-object"),
    # CSV values
    pytest.param(csv_rows(_set(1, 3, "abc")), ValueError,
                 r"Expected a number in column 'dog' of '.*d\.csv', got 'abc' on line 3", id="csv-bad-logit"),
    pytest.param(csv_rows(_set(0, 1, "0.5")), ValueError,
                 r"Expected 0 \(calibration\) or 1 \(test\) in column 'split' of '.*', got '0\.5' on line 2",
                 id="csv-split-half"),
    pytest.param(csv_rows(_set(4, 1, "2")), ValueError, r"column 'split' .* got '2' on line 6", id="csv-split-2"),
    pytest.param(csv_rows(_set(0, 0, "1e20")), ValueError, r"labels in \[0, 3\] for 4 classes, got maximum 1e\+20",
                 id="csv-label-1e20"),
    pytest.param(csv_rows(_set(2, 0, "")), ValueError, r"Expected a number in column 'label' .* got '' on line 4",
                 id="csv-empty-label"),
    pytest.param(csv_rows(lambda rows: rows[5].pop()), ValueError,
                 r"Expected 6 fields on every row of '.*' \(as in the header\), got 5 on line 7", id="csv-ragged-row"),
    pytest.param(csv_rows(lambda rows: None, header=("Label", "split", "cat", "dog", "fox", "owl")), ValueError,
                 r"Expected the column 'label' in '.*', got 'Label' \(did you mean 'label'\?\)", id="csv-Label-column"),
    pytest.param(csv_rows(lambda rows: None, header=("label", "splits", "cat", "dog", "fox", "owl")), ValueError,
                 r"got 'splits' \(did you mean 'split'\?\)", id="csv-splits-column"),
    pytest.param(csv_rows(lambda rows: None, header=("y", "split", "cat", "dog", "fox", "owl")), ValueError,
                 r"Expected a 'label' column in '.*', got columns", id="csv-no-label-column"),
    pytest.param(csv_rows(lambda rows: None, header=("label", "split", "cat", "cat", "fox", "owl")), ValueError,
                 r"Expected unique column names in '.*', got duplicates \['cat'\]", id="csv-duplicate-column"),
    pytest.param(csv_rows(lambda rows: None, header=("label", "split", "cat", "", "fox", "owl")), ValueError,
                 r"Expected a name for every column .* got an empty name for column 4", id="csv-empty-column-name"),
    pytest.param(lambda t: load(csv_file(t, [[i % 2, i % 2, i, i, "" if i == 3 else "g"] for i in range(10)],
                                         header=("label", "split", "a", "b", "group"))), ValueError,
                 r"Expected a group id on every row of column 'group' .* got a missing value \(''\) on line 5",
                 id="csv-missing-group"),
    pytest.param(lambda t: load(csv_file(t, [[i % 2, i % 2, i, i, "nan" if i == 2 else "g"] for i in range(10)],
                                         header=("label", "split", "a", "b", "group"))), ValueError,
                 r"got a missing value \('nan'\) on line 4", id="csv-nan-group"),
    pytest.param(lambda t: load(csv_file(t, [[i % 2, i, i, 9] for i in range(10)], header=("label", "a", "b", "fallback"))),
                 ValueError, r"Expected fallback in \[0, 1\] for 2 classes, got maximum 9", id="csv-fallback-out-of-range"),
    pytest.param(lambda t: load(csv_file(t, [[0, 1.0], [1, 2.0]], header=("label", "a"))), ValueError,
                 r"Expected at least 2 logit columns in '.*', got 1", id="csv-one-logit-column"),
    pytest.param(lambda t: load(raw(t, "d.csv", b"")), ValueError, r"Expected a header row in '.*', got an empty file",
                 id="csv-empty"),
    pytest.param(lambda t: load(csv_file(t, [])), ValueError, r"Expected at least one data row in '.*', got only the header",
                 id="csv-header-only"),
    pytest.param(lambda t: load(raw(t, "d.csv", b"\xff\xfe\x00\x81binary")), ValueError,
                 r"Expected a UTF-8 text CSV at '.*', got bytes", id="csv-binary"),
    # files that are not there, or not files
    pytest.param(lambda t: load(t / "missing.npz"), FileNotFoundError,
                 r"Expected a logits file at '.*missing\.npz', got no such file", id="missing-file"),
    pytest.param(directory_named_npz, FileNotFoundError, r"Expected a logits file at '.*d\.npz', got a directory",
                 id="directory-not-file"),
    pytest.param(lambda t: load(raw(t, "d.parquet", b"")), ValueError,
                 r"Unsupported logits file extension '\.parquet' .* valid options", id="unsupported-extension"),
    # bad arguments
    pytest.param(lambda t: load(npz(t), labels_path=t / "labels.npy"), ValueError,
                 r"Expected labels_path only with \.npy logits, got labels_path=.* for '.*d\.npz'", id="labels-path-with-npz"),
    pytest.param(lambda t: (lambda: load_logits(None)), TypeError, r"Expected path as a str or os\.PathLike, got NoneType",
                 id="path-none"),
    pytest.param(lambda t: load(npz(t), mmap="yes"), TypeError, r"Expected mmap as a bool, got str 'yes'", id="mmap-str"),
    pytest.param(lambda t: (lambda: synthetic(n=100, temperature="2")), TypeError,
                 r"Expected temperature as a real number > 0, got str '2'", id="synthetic-temperature-str"),
    pytest.param(lambda t: (lambda: synthetic(n=100, cal_fraction=1.0)), ValueError,
                 r"Expected cal_fraction in \(0, 1\), got 1\.0", id="synthetic-cal-fraction-1"),
    pytest.param(lambda t: (lambda: LogitsData(logits=np.zeros((2, 2)), labels=[0, 1], class_names="ab")), TypeError,
                 r"Expected class_names as a sequence of 2 names, got the string 'ab'", id="class-names-string"),
]


@pytest.mark.parametrize("build, exc, match", BAD)
def test_bad_file_is_refused_with_a_message_naming_it(tmp_path, build, exc, match):
    call = build(tmp_path)
    with pytest.raises(exc, match=match) as info:
        call()
    message = str(info.value)
    assert type(info.value) is exc or isinstance(info.value, exc)
    assert re.search(r"Expected|Unsupported|Refusing", message), message  # the one template: what was expected


def test_bad_table_is_large_enough():
    assert len(BAD) >= 30


# --- files that must load ---------------------------------------------------------------------------------

def csv_trailing_blank_lines(tmp):
    path = csv_file(tmp, good_rows(), tail="\n\n   \n")
    text = path.read_text().splitlines()
    text.insert(5, "")  # a blank line between rows too
    path.write_text("\n".join(text) + "\n\n")
    d = load_logits(path)
    assert d.n_samples == N and d.labels.tolist() == [i % K for i in range(N)]


def csv_split_as_floats(tmp):
    rows = good_rows()
    for row in rows:
        row[1] = f"{float(row[1]):.1f}"  # 0.0 / 1.0
        row[0] = f"{float(row[0]):.1f}"  # labels 2.0 too
    d = load_logits(csv_file(tmp, rows))
    assert d.split.dtype == np.int8 and d.split.tolist() == [int(i >= N // 2) for i in range(N)]
    assert d.labels.dtype == np.int64


def csv_with_bom_and_fallback(tmp):
    rows = [[i % 2, i % 2, 0.5 * i, -0.5 * i, f"{(i + 1) % 2}.0", "g1" if i < 5 else "g2"] for i in range(10)]
    path = csv_file(tmp, rows, header=("label", "split", "a", "b", "fallback", "group"))
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    d = load_logits(path)
    assert d.class_names == ("a", "b") and d.extras["fallback"].dtype == np.int64
    assert d.groups.tolist() == ["g1"] * 5 + ["g2"] * 5


def npz_float16_logits(tmp):
    d = load_logits(npz(tmp, logits=np.ones((N, K), np.float16)))
    assert d.logits.dtype == np.float32


def npz_int_logits(tmp):
    d = load_logits(npz(tmp, logits=np.arange(N * K).reshape(N, K)))
    assert d.logits.dtype == np.float32 and d.logits[1, 0] == K


def npz_float_split_and_labels(tmp):
    d = load_logits(npz(tmp, split=np.r_[np.zeros(N // 2), np.ones(N // 2)], labels=(np.arange(N) % K).astype(float)))
    assert d.split.tolist() == [0] * (N // 2) + [1] * (N // 2) and d.labels.dtype == np.int64


def npz_extras_kept_or_logged(tmp, caplog):
    with caplog.at_level(logging.WARNING, logger="calib.io"):
        d = load_logits(npz(tmp, probs=np.ones((N, K)) / K, temperature=np.float64(2.0), fallback=np.zeros(N)))
    assert set(d.extras) == {"probs", "fallback"} and d.extras["fallback"].dtype == np.int64
    assert "Ignoring 'temperature'" in caplog.text  # not used, not silently


def npz_integral_float_groups(tmp):
    d = load_logits(npz(tmp, groups=np.r_[np.zeros(N // 2), np.ones(N // 2)]))
    assert d.groups.shape == (N,)


def pt_bfloat16_logits(tmp):
    a = _arrays()
    torch.save({"logits": torch.from_numpy(a["logits"]).to(torch.bfloat16), "labels": torch.from_numpy(a["labels"])},
               tmp / "d.pt")
    d = load_logits(tmp / "d.pt")
    assert d.logits.dtype == np.float32


def npy_pair_mmap(tmp):
    d = load_logits(npy_pair(tmp), mmap=True)
    assert d.n_samples == N and d.split is None


GOOD = [csv_trailing_blank_lines, csv_split_as_floats, csv_with_bom_and_fallback, npz_float16_logits, npz_int_logits,
        npz_float_split_and_labels, npz_extras_kept_or_logged, npz_integral_float_groups, pt_bfloat16_logits,
        npy_pair_mmap]


@pytest.mark.parametrize("case", GOOD, ids=[f.__name__ for f in GOOD])
def test_unusual_but_valid_file_loads(tmp_path, case, caplog):
    if case is npz_extras_kept_or_logged:
        case(tmp_path, caplog)
    else:
        case(tmp_path)
