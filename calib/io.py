"""Reading held-out logits: the data contract of calib.

A logits file holds ``logits`` (n, k), ``labels`` (n,) and optionally ``split`` (n,; 0 = calibration,
1 = test), ``groups`` (n,), ``fallback`` (n,; the fallback's class label per row, used by routing
policies) and ``class_names`` (k,). Supported formats:

* ``.npz`` with those keys (read with ``allow_pickle=False``);
* ``.npy`` holding the logits, with the labels in a second ``.npy`` (``labels_path``; by default a file
  named ``labels.npy`` next to it) or in a small ``.npz`` named by ``labels_path`` (with any of ``split``,
  ``groups``, ``fallback``), and the split in ``split.npy`` next to it when that file exists (or
  ``split_path``). With ``mmap=True`` the logits stay on disk (float16, float32 or float64; finiteness is
  checked chunk by chunk by :func:`iter_row_chunks`, which the out-of-core pipeline reads them with);
* ``.pt`` / ``.pth``: a dict of tensors, read with ``torch.load(..., weights_only=True)``;
* ``.csv``: a header row, a ``label`` column and k logit columns (other columns named ``split``,
  ``group`` or ``fallback`` are used as such); blank lines are ignored.

Labels are required to fit or evaluate. To apply a fitted pipeline to new items (``calib apply``) pass
``require_labels=False``: a file without ``labels`` (an ``.npz`` / ``.pt`` without the key, a ``.npy`` without a
labels file, a CSV without a ``label`` column) then gives a :class:`LogitsData` with ``labels=None``; labels
that are present are still read and checked.

Nothing is ever unpickled: an ``.npz`` with object arrays is refused. Nothing is dropped silently either:

* a truncated, empty or non-zip ``.npz`` (or a non-``.npy`` ``.npy``) is refused naming the file;
* a key that looks like a misspelt known key (``label``, ``splits``, ``group``, ``Labels``, ...) is refused,
  since reading on without it would give a different answer (a random split instead of the file's own, no
  groups, ...); so is a CSV column named like that (it would otherwise be read as a class's logits);
* ``fallback`` must hold one class label per row; ``groups`` one id per row, without NaN or empty ids;
* ``split`` values must be 0 or 1 (``0.0`` / ``1.0`` are accepted);
* any other key is kept in :attr:`LogitsData.extras` when it has one entry per row, and otherwise ignored
  with a warning in the log that names it.

Every refusal is a ``ValueError``, ``TypeError`` or ``FileNotFoundError`` whose message names the file.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import logging
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from calib._validation import as_array, check_fraction, check_labels, check_logits

__all__ = ["LogitsData", "LogitsWriter", "load_logits", "stratified_split", "iter_row_chunks", "is_mapped",
           "SUPPORTED_EXTENSIONS", "PER_ROW_KEYS", "MAPPED_DTYPES"]

log = logging.getLogger(__name__)

SUPPORTED_EXTENSIONS = (".npz", ".npy", ".pt", ".pth", ".csv")

#: Extra keys with a meaning: they must hold one entry per row (``fallback``: class labels).
PER_ROW_KEYS = ("fallback",)

_KNOWN = ("logits", "labels", "split", "groups", "class_names")
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip with members / an empty zip


def _num(value):
    """A label value as the user wrote it: an int when it is one (and fits), else the float's repr."""
    v = value.item() if isinstance(value, np.generic) else value
    if isinstance(v, float):
        return int(v) if v.is_integer() and abs(v) < 2**53 else v
    return v


def _check_groups(groups, n):
    groups = as_array(groups, "groups")
    if groups.shape != (n,):
        raise ValueError(f"Expected groups of shape ({n},) (one id per row), got shape {groups.shape}.")
    if groups.dtype == object:
        raise TypeError("Expected groups as integers or strings, got an object array.")
    if groups.dtype.kind not in "biufUS":
        raise TypeError(f"Expected groups as integers or strings, got dtype {groups.dtype}.")
    if groups.dtype.kind == "f":
        bad = ~np.isfinite(groups)
        if bad.any():
            raise ValueError(
                f"Expected a group id on every row, got {int(bad.sum())} NaN/inf group ids "
                f"(first rows: {np.flatnonzero(bad)[:5].tolist()})."
            )
    if groups.dtype.kind in "US":
        bad = np.char.str_len(np.char.strip(groups)) == 0
        if bad.any():
            raise ValueError(
                f"Expected a group id on every row, got {int(bad.sum())} empty group ids "
                f"(first rows: {np.flatnonzero(bad)[:5].tolist()})."
            )
    return groups


@dataclasses.dataclass(frozen=True)
class LogitsData:
    """Held-out logits of one classifier, with labels and optional split, groups and class names.

    Attributes
    ----------
    logits : ndarray of shape (n_samples, n_classes), float32 or float64
    labels : ndarray of shape (n_samples,), int64, or None
        None only for data read with ``load_logits(..., require_labels=False)`` (or built so): such data can
        be applied to, not fitted on; :meth:`split_cal_test` then needs the file's own ``split``.
    split : ndarray of shape (n_samples,), int8, or None
        0 = calibration, 1 = test (integral floats 0.0 / 1.0 are accepted).
    groups : ndarray of shape (n_samples,) or None
        Slice/group ids (any integer or string values; NaN and empty ids are refused).
    class_names : tuple of str or None
    extras : dict of str to ndarray
        Any other per-row arrays found in the file; ``fallback`` (the fallback's class label per row) is
        checked as labels and stored as int64.
    """

    logits: np.ndarray
    labels: np.ndarray | None
    split: np.ndarray | None = None
    groups: np.ndarray | None = None
    class_names: tuple[str, ...] | None = None
    extras: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        logits = _check_mapped(self.logits) if is_mapped(self.logits) else check_logits(self.logits, "logits")
        n, k = logits.shape
        labels = None if self.labels is None else check_labels(self.labels, "labels", n_samples=n, n_classes=k)
        object.__setattr__(self, "logits", logits)
        object.__setattr__(self, "labels", labels)
        if self.split is not None:
            split = as_array(self.split, "split")
            if split.shape != (n,):
                raise ValueError(f"Expected split of shape ({n},) (one value per row), got shape {split.shape}.")
            if split.dtype.kind not in "biuf":
                raise TypeError(f"Expected split values 0 (calibration) or 1 (test) as numbers, got dtype {split.dtype}.")
            bad = ~np.isin(split, (0, 1))
            if bad.any():
                raise ValueError(
                    f"Expected split values 0 (calibration) or 1 (test), got {int(bad.sum())} other values "
                    f"(e.g. {[_num(v) for v in np.unique(split[bad])[:10]]}; first rows: {np.flatnonzero(bad)[:5].tolist()})."
                )
            object.__setattr__(self, "split", split.astype(np.int8, copy=False))
        if self.groups is not None:
            object.__setattr__(self, "groups", _check_groups(self.groups, n))
        if self.class_names is not None:
            if isinstance(self.class_names, str):
                raise TypeError(f"Expected class_names as a sequence of {k} names, got the string {self.class_names!r}.")
            raw = np.asarray(self.class_names)
            if raw.ndim != 1:
                raise ValueError(f"Expected class_names as a 1-D list of {k} names, got shape {raw.shape}.")
            names = tuple(str(c) for c in raw.tolist())
            if len(names) != k:
                raise ValueError(f"Expected {k} class_names (one per logit column), got {len(names)}.")
            object.__setattr__(self, "class_names", names)
        if not isinstance(self.extras, dict):
            raise TypeError(f"Expected extras as a dict of per-row arrays, got {type(self.extras).__name__}.")
        extras = {}
        for key, arr in self.extras.items():
            if key in PER_ROW_KEYS:
                arr = check_labels(arr, key, n_samples=n, n_classes=k)
            elif np.shape(arr)[:1] != (n,):
                raise ValueError(f"Expected extra array {key!r} with {n} rows (one per row), got shape {np.shape(arr)}.")
            extras[key] = arr
        object.__setattr__(self, "extras", extras)

    @property
    def n_samples(self) -> int:
        return self.logits.shape[0]

    @property
    def is_mapped(self) -> bool:
        """Whether :attr:`logits` is a memory-mapped ``.npy`` file read lazily (``load_logits(mmap=True)``): its
        finiteness is then checked chunk by chunk by :func:`iter_row_chunks`, and its dtype (float16 too) kept."""
        return is_mapped(self.logits)

    @property
    def n_classes(self) -> int:
        return self.logits.shape[1]

    def subset(self, index) -> "LogitsData":
        """Rows selected by a boolean mask or integer index (split, groups and extras follow)."""
        def take(a):
            return None if a is None else a[index]

        return LogitsData(
            logits=self.logits[index],
            labels=take(self.labels),
            split=take(self.split),
            groups=take(self.groups),
            class_names=self.class_names,
            extras={key: a[index] for key, a in self.extras.items()},
        )

    def split_cal_test(self, *, cal_fraction=0.5, seed=0, resplit=False):
        """Return ``(calibration, test)`` parts.

        The file's own ``split`` is used when present, unless ``resplit`` is true; otherwise a seeded
        stratified split puts ``cal_fraction`` of each class into calibration.
        """
        is_cal = self.calibration_mask(cal_fraction=cal_fraction, seed=seed, resplit=resplit)
        return self.subset(is_cal), self.subset(~is_cal)

    def calibration_mask(self, *, cal_fraction=0.5, seed=0, resplit=False):
        """The boolean mask (n,) of calibration rows that :meth:`split_cal_test` uses (nothing is copied: the
        streaming pipeline selects the rows chunk by chunk)."""
        if self.split is not None and not resplit:
            is_cal = self.split == 0
        else:
            if self.labels is None:
                raise ValueError("Expected labels for a stratified calibration/test split, got data without labels "
                                 "(read with require_labels=False) and " + ("resplit=True." if self.split is not None
                                                                           else "no split."))
            is_cal = stratified_split(self.labels, cal_fraction=cal_fraction, seed=seed)
            log.info("Made a stratified split: cal_fraction=%s, seed=%s", cal_fraction, seed)
        n_cal = int(is_cal.sum())
        if n_cal == 0:
            raise ValueError("Expected a non-empty calibration split (split == 0), got 0 rows.")
        if n_cal == self.n_samples:
            raise ValueError("Expected a non-empty test split (split == 1), got 0 rows.")
        return is_cal


# --- memory-mapped logits, read in row chunks -------------------------------------------------------------
#: dtypes a memory-mapped logits file may hold; each chunk is upcast to float32 (float16) or kept (float32/64).
#: numpy has no bfloat16: store bfloat16 logits as float16 or float32 (a .pt file of bfloat16 tensors is read
#: whole and upcast exactly).
MAPPED_DTYPES = ("float16", "float32", "float64")
#: rows per chunk of :func:`iter_row_chunks` when none is given: about 8 MiB of float32 per chunk
DEFAULT_CHUNK_BYTES = 8 << 20


def is_mapped(x) -> bool:
    """Whether ``x`` is a whole memory-mapped ``.npy`` array (what ``np.load(..., mmap_mode="r")`` returns), read
    lazily by :func:`iter_row_chunks` with positioned reads of its file."""
    import mmap

    return (isinstance(x, np.memmap) and isinstance(x.base, mmap.mmap) and x.ndim == 2 and x.flags.c_contiguous
            and getattr(x, "filename", None) is not None)


def _check_mapped(x):
    """Shape and dtype of memory-mapped logits (nothing is read: finiteness is checked chunk by chunk)."""
    where = f" in {str(x.filename)!r}"
    if x.shape[1] < 2:
        raise ValueError(f"Expected logits with at least 2 classes (columns){where}, got shape {x.shape}.")
    if x.shape[0] == 0:
        raise ValueError(f"Expected logits with at least one row{where}, got shape {x.shape}.")
    if x.dtype.name not in MAPPED_DTYPES:
        raise TypeError(f"Expected memory-mapped logits{where} as one of {list(MAPPED_DTYPES)} (numpy has no bfloat16: "
                        f"store bfloat16 logits as float16 or float32), got dtype {x.dtype}.")
    return x


def chunk_rows_for(n_classes, chunk_rows=None):
    """Rows per chunk: ``chunk_rows`` when given (an integer >= 1), else about :data:`DEFAULT_CHUNK_BYTES` of
    float32."""
    from calib._validation import check_positive_int

    if chunk_rows is not None:
        return check_positive_int(chunk_rows, "chunk_rows")
    return max(1, DEFAULT_CHUNK_BYTES // (4 * int(n_classes)))


def iter_row_chunks(logits, chunk_rows=None, *, start=0, stop=None):
    """Yield ``(first_row, block)`` over rows ``start:stop`` of ``logits`` in chunks of ``chunk_rows`` rows.

    ``block`` is a C-ordered float32 array (float16 is upcast exactly, chunk by chunk; float64 stays float64).
    A memory-mapped file (:func:`is_mapped`) is read with positioned reads of its file, never through the
    mapping: pages touched through a mapping count in the process's resident set until the kernel reclaims
    them, so reading a 2 GB file that way shows a 2 GB peak RSS; a read into a chunk buffer keeps it at one
    chunk. Each chunk of such a file is checked for NaN/inf; the error names the file and the first bad row.
    Other arrays (already validated in memory) are sliced.
    """
    n, k = logits.shape
    stop = n if stop is None else int(stop)
    rows = chunk_rows_for(k, chunk_rows)
    if not is_mapped(logits):
        for a in range(int(start), stop, rows):
            block = logits[a:min(a + rows, stop)]
            yield a, np.ascontiguousarray(block, dtype=np.float32 if block.dtype != np.float64 else np.float64)
        return
    dtype = logits.dtype
    row_bytes = k * dtype.itemsize
    out_dtype = np.float64 if dtype == np.float64 else np.float32
    buf = np.empty((min(rows, max(stop - int(start), 0)), k), dtype=dtype)
    with open(logits.filename, "rb") as fh:
        for a in range(int(start), stop, rows):
            b = min(a + rows, stop)
            view = buf[:b - a]
            fh.seek(logits.offset + a * row_bytes)
            got = fh.readinto(memoryview(view).cast("B"))
            if got != (b - a) * row_bytes:
                raise ValueError(f"Expected {b - a} rows of logits at row {a} of {str(logits.filename)!r}, got a "
                                 f"truncated file ({got} of {(b - a) * row_bytes} bytes).")
            block = view.astype(out_dtype) if dtype != out_dtype else view.copy()
            if not np.isfinite(np.add.reduce(block, axis=1, dtype=np.float64)).all():
                bad = ~np.isfinite(block)
                rows_bad = np.flatnonzero(bad.any(axis=1))
                if rows_bad.size:
                    raise ValueError(
                        f"Expected finite logits in {str(logits.filename)!r}, got NaN/inf in row {a + int(rows_bad[0])} "
                        f"({int(bad.sum())} entries in rows {a}-{b - 1}; first rows: {(a + rows_bad[:5]).tolist()}).")
            yield a, block


def stratified_split(labels, *, cal_fraction=0.5, seed=0):
    """Boolean mask of calibration rows: ``round(cal_fraction * n_c)`` rows of each class c, seeded.

    Classes with a single row go to calibration. Deterministic for a given (labels, cal_fraction, seed).

    >>> mask = stratified_split(np.array([0, 0, 1, 1, 1, 1]), cal_fraction=0.5, seed=0)
    >>> int(mask.sum()), int(mask[:2].sum()), int(mask[2:].sum())
    (3, 1, 2)
    """
    cal_fraction = check_fraction(cal_fraction, "cal_fraction")
    y = check_labels(labels, "labels")
    rng = np.random.default_rng(seed)
    order = rng.permutation(y.shape[0])
    # Stable sort by class keeps the random order within each class.
    by_class = order[np.argsort(y[order], kind="stable")]
    counts = np.bincount(y)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    n_cal = np.maximum(np.round(counts * cal_fraction).astype(np.int64), np.minimum(counts, 1))
    rank = np.arange(y.shape[0]) - np.repeat(starts, counts)
    mask = np.zeros(y.shape[0], dtype=bool)
    mask[by_class] = rank < np.repeat(n_cal, counts)
    return mask


def _check_file(path, what):
    if path.is_dir():
        raise FileNotFoundError(f"Expected {what} at {str(path)!r}, got a directory.")
    if not path.is_file():
        raise FileNotFoundError(f"Expected {what} at {str(path)!r}, got no such file.")


#: The standard array names of .npz/.pt files and the load_logits argument that renames each.
KEY_ARGS = {"logits": "logits_key", "labels": "labels_key", "split": "split_key", "groups": "groups_key"}
#: The standard special CSV columns and the load_logits argument that renames each.
COLUMN_ARGS = {"label": "label_column", "split": "split_column", "group": "group_column"}


def _check_name(value, name):
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise TypeError(f"Expected {name} as a non-empty str (or None for the standard name), got "
                        f"{type(value).__name__} {value!r}.")
    return value


def _names(given, standard_args):
    """{standard name: name in the file} from the renaming arguments (None = the standard name); two roles
    may not share one name."""
    names = {std: (given[arg] if given[arg] is not None else std) for std, arg in standard_args.items()}
    seen = {}
    for std, name in names.items():
        if name in seen:
            raise ValueError(f"Expected distinct names for {standard_args[seen[name]]} and {standard_args[std]}, got "
                             f"{name!r} for both.")
        seen[name] = std
    return names


def _std(arg, standard_args):
    return next(std for std, a in standard_args.items() if a == arg)


def _rename_arrays(arrays, names, *, source):
    """Arrays of a file under calib's standard keys: ``names`` maps each standard key to the file's key."""
    renamed = {std: key for std, key in names.items() if key != std}
    if not renamed:
        return arrays
    used = set(renamed.values())
    out = {k: v for k, v in arrays.items() if k not in used and k not in renamed}
    for std, key in renamed.items():
        arg = KEY_ARGS[std]
        if key not in arrays:
            raise ValueError(f"Expected a {key!r} array in {source!r} ({arg}={key!r}), got keys {sorted(arrays)}.")
        if std in arrays and std not in used:  # logits and logits_ema in one file: the one named is read
            log.info("Reading %r of %s as the %s (%s=%r); its %r array is not used.", key, source, std, arg, key, std)
        out[std] = arrays[key]
    return out


def load_logits(path, *, mmap=False, labels_path=None, require_labels=True, split_path=None, logits_key=None,
                labels_key=None, split_key=None, groups_key=None, label_column=None, split_column=None,
                group_column=None) -> LogitsData:
    """Read a logits file (see the module docstring for formats) into a :class:`LogitsData`.

    Parameters
    ----------
    path : str or Path
        ``.npz``, ``.npy``, ``.pt``/``.pth`` or ``.csv``.
    mmap : bool, default False
        Memory-map ``.npy`` logits instead of reading them (other formats are read whole; a log line
        says so).
    labels_path : str or Path, optional
        Labels ``.npy`` for a ``.npy`` logits file (default: ``labels.npy`` beside it); refused for
        other formats, which hold their labels. A small ``.npz`` here holds the per-row arrays of the
        ``.npy`` logits: ``labels`` and any of ``split``, ``groups``, ``fallback`` (and ``class_names``).
    split_path : str or Path, optional
        The calibration/test ``split`` (0/1 per row) of a ``.npy`` logits file (default: ``split.npy``
        beside it when that file exists, as :class:`LogitsWriter` writes it); refused for other formats.
    logits_key, labels_key, split_key, groups_key : str, optional
        The names of the arrays in an ``.npz`` or ``.pt`` file (and, except ``logits_key``, in the labels
        ``.npz`` of ``labels_path``) when they are not the standard ``logits``, ``labels``, ``split``,
        ``groups`` (None = the standard name). A named key must be in the file; the standard name may then not
        be there too (two candidates for one role).
    label_column, split_column, group_column : str, optional
        The special columns of a ``.csv`` when they are not ``label``, ``split``, ``group`` (None = the
        standard name); every other column is a class's logit.
    require_labels : bool, default True
        With False, a file without labels is read with ``labels=None`` (for applying a fitted pipeline):
        no ``labels`` key, no ``labels.npy`` beside a ``.npy`` (an explicit ``labels_path`` must still
        exist), no ``label`` CSV column. Labels that are present are read and checked as usual.

    Raises
    ------
    FileNotFoundError
        ``path`` (or the labels file) does not exist or is a directory.
    ValueError, TypeError
        An unsupported extension, an unreadable (truncated, empty, wrong-format) file, missing or
        misspelt keys, or contents that break the data contract; the message names the file.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"Expected path as a str or os.PathLike, got {type(path).__name__} {path!r}.")
    if not isinstance(mmap, (bool, np.bool_)):
        raise TypeError(f"Expected mmap as a bool, got {type(mmap).__name__} {mmap!r}.")
    if labels_path is not None and not isinstance(labels_path, (str, os.PathLike)):
        raise TypeError(f"Expected labels_path as a str or os.PathLike, got {type(labels_path).__name__} {labels_path!r}.")
    if not isinstance(require_labels, (bool, np.bool_)):
        raise TypeError(f"Expected require_labels as a bool, got {type(require_labels).__name__} {require_labels!r}.")
    require_labels = bool(require_labels)
    given = {name: _check_name(value, name) for name, value in (
        ("logits_key", logits_key), ("labels_key", labels_key), ("split_key", split_key), ("groups_key", groups_key),
        ("label_column", label_column), ("split_column", split_column), ("group_column", group_column))}
    keys, columns = _names(given, KEY_ARGS), _names(given, COLUMN_ARGS)
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_EXTENSIONS:
        raise ValueError(
            f"Unsupported logits file extension {path.suffix!r} for {str(path)!r}; "
            f"valid options: {list(SUPPORTED_EXTENSIONS)}."
        )
    _check_file(path, "a logits file")
    if split_path is not None and not isinstance(split_path, (str, os.PathLike)):
        raise TypeError(f"Expected split_path as a str or os.PathLike, got {type(split_path).__name__} {split_path!r}.")
    if split_path is not None and suffix != ".npy":
        raise ValueError(f"Expected split_path only with .npy logits, got split_path={str(split_path)!r} for "
                         f"{str(path)!r} ({suffix} files hold their own split).")
    if labels_path is not None and suffix != ".npy":
        raise ValueError(
            f"Expected labels_path only with .npy logits, got labels_path={str(labels_path)!r} for {str(path)!r} "
            f"({suffix} files hold their own labels)."
        )
    if suffix == ".csv":
        wrong = [f"{arg}={given[arg]!r}" for arg in KEY_ARGS.values() if given[arg] not in (None, _std(arg, KEY_ARGS))]
        if wrong:
            raise ValueError(f"Expected column names for a .csv ({', '.join(COLUMN_ARGS.values())}), got "
                             f"{', '.join(wrong)} for {str(path)!r}; *_key names arrays of .npz/.pt files.")
    else:
        wrong = [f"{arg}={given[arg]!r}" for arg in COLUMN_ARGS.values()
                 if given[arg] not in (None, _std(arg, COLUMN_ARGS))]
        if suffix == ".npy" and given["logits_key"] not in (None, "logits"):
            wrong.append(f"logits_key={given['logits_key']!r}")
        if wrong:
            raise ValueError(
                f"Expected {'array names of a .npz/.pt file' if suffix != '.npy' else 'no logits_key or column name'} "
                f"for {str(path)!r}, got {', '.join(wrong)}"
                + ("; *_column names columns of a .csv." if suffix != ".npy" else
                   "; a .npy holds one array (labels_key, split_key, groups_key name the arrays of a labels .npz).")
            )
    if mmap and suffix != ".npy":
        log.info("mmap=True applies to .npy logits only; reading %s whole.", path)
    if suffix == ".npz":
        arrays = _rename_arrays(_read_npz(path), keys, source=str(path))
    elif suffix == ".npy":
        arrays = _read_npy(path, labels_path=labels_path, mmap=mmap, require_labels=require_labels,
                           split_path=split_path, keys=keys)
    elif suffix in (".pt", ".pth"):
        arrays = _rename_arrays(_read_torch(path), keys, source=str(path))
    else:
        arrays = _read_csv(path, require_labels=require_labels, columns=columns)
    return _from_arrays(arrays, source=str(path), require_labels=require_labels)


def _near_known(key, candidates, *, fuzzy=True):
    """The known key that ``key`` looks like a misspelling of (another case, a plural s; with ``fuzzy``, a
    close spelling), or None."""
    low = key.lower()
    for cand in candidates:
        if low == cand or low.rstrip("s") == cand.rstrip("s"):
            return cand
    if not fuzzy:
        return None
    match = difflib.get_close_matches(low, candidates, n=1, cutoff=0.8)
    return match[0] if match else None


def _from_arrays(arrays, *, source, require_labels=True):
    known = _KNOWN + PER_ROW_KEYS
    for key in arrays:
        if key in known:
            continue
        near = _near_known(key, known)
        if near is not None:
            raise ValueError(
                f"Expected the key {near!r} in {source!r}, got {key!r} (did you mean {near!r}?); rename it: "
                f"calib reads only {list(known)} and would otherwise ignore it."
            )
    for key in ("logits", "labels") if require_labels else ("logits",):
        if key not in arrays:
            raise ValueError(
                f"Expected a {key!r} array in {source!r}, got keys {sorted(arrays)}; to read another key as the "
                f"{key}, pass {KEY_ARGS[key]}=<its name>."
            )
    n = np.shape(arrays["logits"])[0] if np.ndim(arrays["logits"]) >= 1 else None
    extras = {}
    for key, a in arrays.items():
        if key in _KNOWN:
            continue
        shape = np.shape(a)
        if key in PER_ROW_KEYS:
            if n is not None and shape != (n,):
                raise ValueError(
                    f"Expected {key!r} in {source!r} of length {n} (one class label per row of logits), "
                    f"got shape {shape}."
                )
            extras[key] = np.asarray(a)
        elif n is not None and len(shape) >= 1 and shape[0] == n:
            extras[key] = np.asarray(a)
        else:
            log.warning("Ignoring %r in %s: shape %s is not one entry per row (%s rows); calib does not use it.",
                        key, source, shape, n)
    names = arrays.get("class_names")
    try:
        return LogitsData(
            logits=arrays["logits"],
            labels=arrays.get("labels"),
            split=arrays.get("split"),
            groups=arrays.get("groups"),
            class_names=None if names is None else np.asarray(names),
            extras=extras,
        )
    except TypeError as err:
        raise TypeError(f"In {source!r}: {err}") from err
    except ValueError as err:
        raise ValueError(f"In {source!r}: {err}") from err


def _head(path, n=8):
    with open(path, "rb") as fh:
        return fh.read(n)


def _corrupt(what, path, err):
    return ValueError(f"Expected {what} {str(path)!r}, got a truncated or corrupt file ({type(err).__name__}: {err}).")


def _is_pickle_refusal(err):
    text = str(err)
    return isinstance(err, ValueError) and ("allow_pickle" in text or "Object arrays" in text or "pickled" in text)


def _read_npz(path):
    head = _head(path)
    if not head:
        raise ValueError(f"Expected an .npz archive at {str(path)!r}, got an empty file (0 bytes).")
    if head.startswith(_NPY_MAGIC):
        raise ValueError(
            f"Expected an .npz archive (a zip of .npy arrays) at {str(path)!r}, got a single .npy array; "
            "name it .npy (with labels.npy beside it) or save it with np.savez(logits=..., labels=...)."
        )
    if not head.startswith(_ZIP_MAGIC):
        raise ValueError(
            f"Expected an .npz archive (a zip of .npy arrays) at {str(path)!r}, got a file that is not a zip "
            f"archive (it starts with {head!r})."
        )
    try:
        npz = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as err:
        raise _corrupt("a complete .npz archive at", path, err) from err
    out = {}
    with npz as f:
        for key in f.files:
            try:
                value = f[key]
            except ValueError as err:  # numpy: "Object arrays cannot be loaded when allow_pickle=False"
                if _is_pickle_refusal(err):
                    raise ValueError(
                        f"Refusing to read {str(path)!r}: its member {key!r} is an object (pickled) array, which "
                        "calib never unpickles. Store plain numeric/string arrays."
                    ) from err
                raise _corrupt(f"a readable member {key!r} in", path, err) from err
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as err:
                raise _corrupt(f"a readable member {key!r} in", path, err) from err
            if not isinstance(value, np.ndarray):
                raise ValueError(
                    f"Expected only .npy arrays in the .npz {str(path)!r}, got member {key!r} that is not one "
                    f"({len(value)} bytes without the .npy header)."
                )
            out[key] = value
    return out


def _load_npy(path, *, mmap, what):
    head = _head(path)
    if not head.startswith(_NPY_MAGIC):
        raise ValueError(
            f"Expected a .npy array (written by np.save) at {str(path)!r} ({what}), got "
            + ("an empty file (0 bytes)." if not head else f"a file without the .npy header (it starts with {head!r}).")
        )
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as err:
        if _is_pickle_refusal(err):
            raise ValueError(
                f"Refusing to read {str(path)!r} ({what}): it is an object (pickled) array, which calib never unpickles."
            ) from err
        raise _corrupt("a complete .npy array at", path, err) from err
    except (EOFError, OSError) as err:
        raise _corrupt("a complete .npy array at", path, err) from err


_SIDE_KEYS = ("labels", "split", "groups", "fallback", "class_names")


def _side_rows(a, key, n, side, logits_path):
    """A per-row side array of a .npy logits file: one entry per row, labels and fallback in range (the error
    names the side file and the first bad row)."""
    if np.ndim(a) < 1 or np.shape(a)[0] != n or (key != "groups" and np.ndim(a) != 1):
        raise ValueError(f"Expected {key} in {str(side)!r} with {n} entries (one per row of the logits "
                         f"{str(logits_path)!r}), got shape {np.shape(a)}.")
    return a


def _check_side_labels(a, key, k, side):
    a = np.asarray(a)
    if a.dtype.kind in "iuf" and a.size:
        with np.errstate(invalid="ignore"):
            bad = ~((a >= 0) & (a < k) & (a == np.round(a)) if a.dtype.kind == "f" else (a >= 0) & (a < k))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ValueError(f"Expected {key} in [0, {k - 1}] ({k} classes) in {str(side)!r}, got {_num(a[row])} "
                             f"at row {row} ({int(bad.sum())} such rows).")
    return a


def _read_npy(path, *, labels_path, mmap, require_labels=True, split_path=None, keys=None):
    renamed = sorted(f"{KEY_ARGS[std]}={key!r}" for std, key in (keys or {}).items() if key != std)
    side_npz = labels_path is not None and Path(labels_path).suffix.lower() == ".npz"
    if renamed and not side_npz:
        raise ValueError(f"Expected {', '.join(renamed)} only with a labels .npz (labels_path=<file>.npz) for the .npy "
                         f"logits {str(path)!r}, got " + (f"labels_path={str(labels_path)!r}." if labels_path is not None
                                                          else "no labels_path."))
    logits = _load_npy(path, mmap=mmap, what="logits")
    n = np.shape(logits)[0] if np.ndim(logits) >= 1 else 0
    k = np.shape(logits)[1] if np.ndim(logits) == 2 else None
    out = {"logits": logits}
    if side_npz:
        side = Path(labels_path)
        _check_file(side, f"the labels .npz of {str(path)!r}")
        arrays = _rename_arrays(_read_npz(side), keys or {}, source=str(side))
        unknown = sorted(set(arrays) - set(_SIDE_KEYS))
        if unknown:
            raise ValueError(f"Expected only {list(_SIDE_KEYS)} in the side file {str(side)!r} of {str(path)!r}, got "
                             f"{unknown}.")
        if "labels" not in arrays and require_labels:
            raise ValueError(f"Expected a 'labels' array in {str(side)!r} (labels of {str(path)!r}), got keys "
                             f"{sorted(arrays)}.")
        for key, a in arrays.items():
            if key != "class_names":
                _side_rows(a, key, n, side, path)
            if key in ("labels", "fallback") and k is not None:
                _check_side_labels(a, key, k, side)
            out[key] = a
        side_split = "split" in arrays
    else:
        side_split = False
        if labels_path is None and not require_labels and not path.with_name("labels.npy").exists():
            pass
        else:
            labels_path = Path(labels_path) if labels_path is not None else path.with_name("labels.npy")
            if labels_path.is_dir():
                raise FileNotFoundError(f"Expected labels for {str(path)!r} in the file {str(labels_path)!r}, got a "
                                        "directory.")
            if not labels_path.is_file():
                raise FileNotFoundError(
                    f"Expected labels for {str(path)!r} in {str(labels_path)!r} (pass labels_path=...), file not found."
                )
            labels = _load_npy(labels_path, mmap=False, what="labels")
            if mmap:  # a file too large to read whole: say which side file is wrong, and where
                _side_rows(labels, "labels", n, labels_path, path)
                if k is not None:
                    _check_side_labels(labels, "labels", k, labels_path)
            out["labels"] = labels
    if split_path is not None or (not side_split and path.with_name("split.npy").is_file()):
        if side_split:
            raise ValueError(f"Expected the split of {str(path)!r} in one place, got split_path={str(split_path)!r} and "
                             f"a 'split' array in {str(labels_path)!r}.")
        sp = Path(split_path) if split_path is not None else path.with_name("split.npy")
        _check_file(sp, f"the split of {str(path)!r}")
        split = _load_npy(sp, mmap=False, what="split")
        _side_rows(split, "split", n, sp, path)
        if split.dtype.kind in "biuf" and not np.isin(split, (0, 1)).all():
            row = int(np.flatnonzero(~np.isin(split, (0, 1)))[0])
            raise ValueError(f"Expected split values 0 (calibration) or 1 (test) in {str(sp)!r}, got {_num(split[row])} "
                             f"at row {row}.")
        log.info("Read the calibration/test split of %s from %s", path, sp)
        out["split"] = split
    return out


def _read_torch(path):
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError for anything beyond tensors and containers
        raise ValueError(
            f"Expected {str(path)!r} to be a torch.save file of a dict of tensors (read with weights_only=True, "
            f"nothing is unpickled), got an unreadable file: {type(err).__name__}: {err}"
        ) from err
    if not isinstance(obj, dict):
        raise ValueError(f"Expected {str(path)!r} to hold a dict of tensors, got {type(obj).__name__}.")
    out = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise TypeError(f"Expected string keys in the dict of {str(path)!r}, got {type(key).__name__} {key!r}.")
        if isinstance(value, torch.Tensor):
            out[key] = as_array(value, key)  # bfloat16 upcast to float32 (numpy has none)
        elif isinstance(value, (list, tuple)) and key == "class_names":
            out[key] = np.asarray([str(v) for v in value])
        else:
            arr = np.asarray(value)
            if arr.dtype == object:
                raise TypeError(
                    f"Expected {key!r} in {str(path)!r} as a tensor, a number or a list of numbers/strings, "
                    f"got {type(value).__name__}."
                )
            out[key] = arr
    return out


# --- CSV -----------------------------------------------------------------------------------------------

_CSV_SPECIAL = {"label": "labels", "split": "split", "group": "groups", "fallback": "fallback"}


def _csv_numbers(values, column, lines, path):
    """float64 values of one CSV column; a bad cell is reported with its line."""
    try:
        return np.array(values, dtype=np.float64)
    except ValueError:
        for value, line in zip(values, lines):
            try:
                float(value)
            except ValueError:
                raise ValueError(
                    f"Expected a number in column {column!r} of {str(path)!r}, got {value!r} on line {line}."
                ) from None
        raise


def _read_csv(path, *, require_labels=True, columns=None):
    src = str(path)
    names = columns or {}
    label_col, split_col, group_col = (names.get(c, c) for c in ("label", "split", "group"))
    special = {label_col: "labels", split_col: "split", group_col: "groups", "fallback": "fallback"}
    header, rows, lines = None, [], []
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:  # -sig: a BOM would rename the first column
            reader = csv.reader(fh)
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue  # blank lines (a trailing newline, spacing) are not rows
                if header is None:
                    header = [h.strip() for h in row]
                    continue
                rows.append(row)
                lines.append(reader.line_num)
    except UnicodeDecodeError as err:
        raise ValueError(f"Expected a UTF-8 text CSV at {src!r}, got bytes that are not text ({err}).") from err
    except csv.Error as err:
        raise ValueError(f"Expected a well-formed CSV at {src!r}, got: {err}.") from err
    if header is None:
        raise ValueError(f"Expected a header row in {src!r}, got an empty file.")
    for i, name in enumerate(header):
        if not name:
            raise ValueError(f"Expected a name for every column of {src!r}, got an empty name for column {i + 1} "
                             f"(header: {header}).")
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise ValueError(f"Expected unique column names in {src!r}, got duplicates {dupes}.")
    for std, col in (("label", label_col), ("split", split_col), ("group", group_col)):
        if col != std and col not in header:
            raise ValueError(f"Expected a column {col!r} in {src!r} ({COLUMN_ARGS[std]}={col!r}), got columns {header}.")
        if col != std and std in header:
            raise ValueError(f"Expected no {std!r} column beside {COLUMN_ARGS[std]}={col!r} in {src!r}, got one: it would "
                             "be read as a class's logits; rename or drop it.")
    for name in header:
        if name in special:
            continue
        near = _near_known(name, tuple(special), fuzzy=False)  # class names are free words
        if near is not None:
            raise ValueError(
                f"Expected the column {near!r} in {src!r}, got {name!r} (did you mean {near!r}?); rename it: "
                f"columns other than {list(special)} are read as logits."
            )
    if label_col not in header and require_labels:
        raise ValueError(f"Expected a {label_col!r} column in {src!r}, got columns {header}; to read another column "
                         "as the labels, pass label_column=<its name>.")
    logit_cols = [i for i, h in enumerate(header) if h not in special]
    if len(logit_cols) < 2:
        raise ValueError(f"Expected at least 2 logit columns in {src!r}, got {len(logit_cols)}.")
    for row, line in zip(rows, lines):
        if len(row) != len(header):
            raise ValueError(
                f"Expected {len(header)} fields on every row of {src!r} (as in the header), got {len(row)} on line {line}."
            )
    if not rows:
        raise ValueError(f"Expected at least one data row in {src!r}, got only the header.")
    columns = list(zip(*rows))
    logits = np.stack([_csv_numbers(columns[i], header[i], lines, path) for i in logit_cols], axis=1)
    out = {
        "logits": logits.astype(np.float32),
        "class_names": np.array([header[i] for i in logit_cols]),
    }
    if label_col in header:
        out["labels"] = _csv_numbers(columns[header.index(label_col)], label_col, lines, path)
    if split_col in header:
        raw = columns[header.index(split_col)]
        split = _csv_numbers(raw, split_col, lines, path)
        bad = np.flatnonzero(~np.isin(split, (0, 1)))
        if bad.size:
            raise ValueError(
                f"Expected 0 (calibration) or 1 (test) in column {split_col!r} of {src!r}, got {raw[bad[0]]!r} on line "
                f"{lines[bad[0]]} ({bad.size} such rows)."
            )
        out["split"] = split.astype(np.int8)
    if group_col in header:
        groups = np.array([g.strip() for g in columns[header.index(group_col)]])
        missing = np.flatnonzero((np.char.str_len(groups) == 0) | (np.char.lower(groups) == "nan"))
        if missing.size:
            raise ValueError(
                f"Expected a group id on every row of column {group_col!r} of {src!r}, got a missing value "
                f"({columns[header.index(group_col)][missing[0]]!r}) on line {lines[missing[0]]} ({missing.size} such rows)."
            )
        out["groups"] = groups
    if "fallback" in header:
        out["fallback"] = _csv_numbers(columns[header.index("fallback")], "fallback", lines, path)
    return out


# --- writing logits batch by batch ---------------------------------------------------------------------
_HEADER_BYTES = 128  # fixed .npy header (format 1.0), rewritten in place with the final shape at close
_WRITER_KEYS = ("labels", "groups", "split", "fallback")


def _npy_header(dtype, shape):
    """A format-1.0 ``.npy`` header of exactly :data:`_HEADER_BYTES` bytes."""
    body = "{'descr': %r, 'fortran_order': False, 'shape': %r, }" % (np.lib.format.dtype_to_descr(dtype), tuple(shape))
    pad = _HEADER_BYTES - 10 - len(body) - 1
    if pad < 0:
        raise ValueError(f"Expected a .npy header of at most {_HEADER_BYTES} bytes, got dtype {dtype} shape {shape}.")
    body = body + " " * pad + "\n"
    return b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body.encode("latin1")


class LogitsWriter:
    """Write a logits file batch by batch, as an evaluation loop produces it, without holding it in memory.

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "val.npz")
    >>> with LogitsWriter(path, n_classes=3) as w:
    ...     for _ in range(4):
    ...         w.write(np.zeros((5, 3), np.float32), labels=np.arange(5) % 3)
    >>> load_logits(path).logits.shape
    (20, 3)

    ``path`` ends in ``.npz`` (logits, and whichever of labels, groups, split, fallback the batches carry, plus
    ``class_names``: the contract of :func:`load_logits`) or ``.npy`` (the logits, memory-mappable by
    ``load_logits(path, mmap=True)``, with the labels in ``labels.npy`` beside it, where ``load_logits`` looks
    for them, and the split, when batches carry one, in ``split.npy`` beside it, where ``load_logits`` looks for
    it too; groups and fallback need ``.npz``). Each batch streams to a temporary file beside ``path``
    (a ``.npy`` with a fixed-size header rewritten at the end), so memory stays one batch whatever the total;
    string group ids, which need the widest id to fix their width, are kept in memory (one string per row).
    ``dtype`` (float16, float32 (default) or float64) is what the logits are stored as: each batch is cast to
    it. Every batch is validated (k columns, finite logits, labels in range, the same keys as the first
    batch); a batch that fails aborts the writer (a file with a silently missing batch would mislead). Nothing
    appears at ``path`` until :meth:`close` (or the end of a ``with`` block) succeeds; an error, or an
    exception inside the ``with`` block, removes every temporary file. An existing file is
    refused unless ``overwrite=True``.
    """

    def __init__(self, path, n_classes, *, dtype="float32", class_names=None, overwrite=False):
        import tempfile

        from calib._validation import check_choice, check_positive_int

        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"Expected path as a str or os.PathLike, got {type(path).__name__} {path!r:.80}.")
        self.path = Path(path)
        self.format = self.path.suffix.lower()
        if self.format not in (".npz", ".npy"):
            raise ValueError(f"Expected path ending in .npz or .npy (LogitsWriter), got {str(self.path)!r}.")
        self.n_classes = check_positive_int(n_classes, "n_classes", minimum=2)
        try:
            name = np.dtype(dtype).name
        except TypeError:
            name = dtype
        self.dtype = np.dtype(check_choice(name, "dtype", ("float16", "float32", "float64")))
        if class_names is not None:
            if isinstance(class_names, (str, bytes)) or len(class_names) != self.n_classes:
                raise ValueError(f"Expected class_names as {self.n_classes} strings, got {class_names!r:.80}.")
            class_names = np.array([str(c) for c in class_names])
        self.class_names = class_names
        # a stale split.npy beside .npy logits would be read as their split: refused (or replaced) as well
        targets = [self.path] + ([self.path.with_name("labels.npy"), self.path.with_name("split.npy")]
                                 if self.format == ".npy" else [])
        for t in targets:
            if (t.exists() or t.is_symlink()) and not overwrite:
                raise FileExistsError(f"Expected no file at {str(t)!r} (LogitsWriter output), got one; pass "
                                      "overwrite=True to replace it.")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.writing-", dir=self.path.parent))
        import shutil
        import weakref

        # a writer dropped without close() or abort() removes its temporary folder when collected
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(self._tmp), True)
        self._files = {}  # key -> [file handle, dtype, rows]
        self._strings = None  # string group ids (list of arrays)
        self._keys = None
        self.n_rows = 0
        self._closed = False

    # --- writing ------------------------------------------------------------------------------------
    def write(self, logits, labels=None, *, groups=None, split=None, fallback=None):
        """Append one batch: logits (b, k) and, optionally, labels, groups, split (0/1), fallback (b,)."""
        from calib._validation import check_labels

        if self._closed:
            raise ValueError(f"Expected an open LogitsWriter, got one already closed ({str(self.path)!r}).")
        try:
            x = check_logits(logits, "logits", n_classes=self.n_classes)
            b = x.shape[0]
            given = {"labels": labels, "groups": groups, "split": split, "fallback": fallback}
            keys = tuple(k for k in _WRITER_KEYS if given[k] is not None)
            if self._keys is None:
                if self.format == ".npy" and set(keys) - {"labels", "split"}:
                    raise ValueError(f"Expected only labels beside .npy logits (and a split, in split.npy), got "
                                     f"{sorted(set(keys) - {'labels', 'split'})}; write a .npz to keep groups or fallback.")
                self._keys = keys
            elif keys != self._keys:
                raise ValueError(f"Expected the same arrays in every batch ({list(self._keys)}, as in the first), got "
                                 f"{list(keys)} in batch at row {self.n_rows}.")
            out = {"logits": x.astype(self.dtype, copy=False)}
            if labels is not None:
                out["labels"] = check_labels(labels, "labels", n_samples=b, n_classes=self.n_classes).astype(np.int64)
            if fallback is not None:
                out["fallback"] = check_labels(fallback, "fallback", n_samples=b,
                                               n_classes=self.n_classes).astype(np.int64)
            if split is not None:
                s = as_array(split, "split")
                if s.shape != (b,) or s.dtype.kind not in "biuf" or not np.isin(s, (0, 1)).all():
                    raise ValueError(f"Expected split as {b} values 0 (calibration) or 1 (test), got dtype {s.dtype} "
                                     f"shape {s.shape}.")
                out["split"] = s.astype(np.int8)
            if groups is not None:
                g = _check_groups(groups, b)
                if g.dtype.kind in "US":
                    if self.n_rows and self._strings is None:
                        raise TypeError("Expected group ids of one type in every batch, got strings after integers.")
                    self._strings = (self._strings or []) + [g.astype(str)]
                else:
                    if self._strings is not None:
                        raise TypeError("Expected group ids of one type in every batch, got integers after strings.")
                    out["groups"] = g.astype(np.int64)
            for key, a in out.items():
                self._append(key, np.ascontiguousarray(a))
            self.n_rows += b
        except BaseException:
            self.abort()
            raise

    def _append(self, key, a):
        entry = self._files.get(key)
        if entry is None:
            fh = open(self._tmp / f"{key}.npy", "wb")
            fh.write(_npy_header(a.dtype, (0, *a.shape[1:])))
            entry = self._files[key] = [fh, a.dtype, 0, a.shape[1:]]
        entry[0].write(memoryview(a).cast("B"))
        entry[2] += a.shape[0]

    # --- finishing ----------------------------------------------------------------------------------
    def close(self):
        """Finish the files and move them into place; returns ``path``."""
        if self._closed:
            return self.path
        try:
            if self.n_rows == 0:
                raise ValueError(f"Expected at least one row written to {str(self.path)!r}, got none.")
            parts = {}
            for key, (fh, dtype, rows, trailing) in self._files.items():
                fh.seek(0)
                fh.write(_npy_header(dtype, (rows, *trailing)))
                fh.flush()
                os.fsync(fh.fileno())
                fh.close()
                parts[key] = self._tmp / f"{key}.npy"
            if self._strings is not None:
                np.save(self._tmp / "groups.npy", np.concatenate(self._strings), allow_pickle=False)
                parts["groups"] = self._tmp / "groups.npy"
            if self.class_names is not None:
                np.save(self._tmp / "class_names.npy", self.class_names, allow_pickle=False)
                parts["class_names"] = self._tmp / "class_names.npy"
            if self.format == ".npy":
                for key in ("labels", "split"):
                    side = self.path.with_name(f"{key}.npy")
                    if key in parts:
                        os.replace(parts[key], side)
                    elif key == "split" and (side.exists() or side.is_symlink()):
                        side.unlink()  # overwrite=True (checked at open): a stale split must not pair with these logits
                os.replace(parts["logits"], self.path)
            else:
                tmp_zip = self._tmp / "out.npz"
                with zipfile.ZipFile(tmp_zip, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
                    for key, part in parts.items():  # streamed member by member (no array in memory)
                        with open(part, "rb") as src, zf.open(f"{key}.npy", "w", force_zip64=True) as dst:
                            for block in iter(lambda: src.read(1 << 22), b""):
                                dst.write(block)
                with open(tmp_zip, "rb+") as fh:
                    os.fsync(fh.fileno())
                os.replace(tmp_zip, self.path)
        except BaseException:
            self.abort()
            raise
        self._closed = True
        self._cleanup()
        return self.path

    def abort(self):
        """Drop everything written so far (nothing appears at ``path``)."""
        for fh, *_ in self._files.values():
            try:
                fh.close()
            except OSError:
                pass
        self._files = {}
        self._closed = True
        self._cleanup()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False
