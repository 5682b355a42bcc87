"""Reading held-out logits: the data contract of calib.

A logits file holds ``logits`` (n, k), ``labels`` (n,) and optionally ``split`` (n,; 0 = calibration,
1 = test), ``groups`` (n,) and ``class_names`` (k,). Supported formats:

* ``.npz`` with those keys (read with ``allow_pickle=False``);
* ``.npy`` holding the logits, with the labels in a second ``.npy`` (``labels_path``; by default a file
  named ``labels.npy`` next to it);
* ``.pt`` / ``.pth``: a dict of tensors, read with ``torch.load(..., weights_only=True)``;
* ``.csv``: a header row, a ``label`` column and k logit columns (other columns named ``split`` or
  ``group`` are used as such).

Nothing is ever unpickled: an ``.npz`` with object arrays is refused.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
from pathlib import Path

import numpy as np

from calib._validation import check_fraction, check_labels, check_logits

__all__ = ["LogitsData", "load_logits", "stratified_split", "SUPPORTED_EXTENSIONS"]

log = logging.getLogger(__name__)

SUPPORTED_EXTENSIONS = (".npz", ".npy", ".pt", ".pth", ".csv")


@dataclasses.dataclass(frozen=True)
class LogitsData:
    """Held-out logits of one classifier, with labels and optional split, groups and class names.

    Attributes
    ----------
    logits : ndarray of shape (n_samples, n_classes), float32 or float64
    labels : ndarray of shape (n_samples,), int64
    split : ndarray of shape (n_samples,), int8, or None
        0 = calibration, 1 = test.
    groups : ndarray of shape (n_samples,) or None
        Slice/group ids (any integer or string values).
    class_names : tuple of str or None
    extras : dict of str to ndarray
        Any other per-row arrays found in the file (for example ``fallback``).
    """

    logits: np.ndarray
    labels: np.ndarray
    split: np.ndarray | None = None
    groups: np.ndarray | None = None
    class_names: tuple[str, ...] | None = None
    extras: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        logits = check_logits(self.logits, "logits")
        n, k = logits.shape
        labels = check_labels(self.labels, "labels", n_samples=n, n_classes=k)
        object.__setattr__(self, "logits", logits)
        object.__setattr__(self, "labels", labels)
        if self.split is not None:
            split = np.asarray(self.split)
            if split.shape != (n,):
                raise ValueError(f"Expected split of shape ({n},), got {split.shape}.")
            if split.size and not np.isin(split, (0, 1)).all():
                raise ValueError(
                    f"Expected split values 0 (calibration) or 1 (test), got values {np.unique(split)[:10].tolist()}."
                )
            object.__setattr__(self, "split", split.astype(np.int8, copy=False))
        if self.groups is not None:
            groups = np.asarray(self.groups)
            if groups.shape != (n,):
                raise ValueError(f"Expected groups of shape ({n},), got {groups.shape}.")
            if groups.dtype == object:
                raise TypeError("Expected groups as integers or strings, got an object array.")
            object.__setattr__(self, "groups", groups)
        if self.class_names is not None:
            names = tuple(str(c) for c in self.class_names)
            if len(names) != k:
                raise ValueError(f"Expected {k} class_names (one per logit column), got {len(names)}.")
            object.__setattr__(self, "class_names", names)
        for key, arr in self.extras.items():
            if np.shape(arr)[:1] != (n,):
                raise ValueError(f"Expected extra array {key!r} with {n} rows, got shape {np.shape(arr)}.")

    @property
    def n_samples(self) -> int:
        return self.logits.shape[0]

    @property
    def n_classes(self) -> int:
        return self.logits.shape[1]

    def subset(self, index) -> "LogitsData":
        """Rows selected by a boolean mask or integer index (split, groups and extras follow)."""
        def take(a):
            return None if a is None else a[index]

        return LogitsData(
            logits=self.logits[index],
            labels=self.labels[index],
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
        if self.split is not None and not resplit:
            is_cal = self.split == 0
        else:
            is_cal = stratified_split(self.labels, cal_fraction=cal_fraction, seed=seed)
            log.info("Made a stratified split: cal_fraction=%s, seed=%s", cal_fraction, seed)
        n_cal = int(is_cal.sum())
        if n_cal == 0:
            raise ValueError("Expected a non-empty calibration split (split == 0), got 0 rows.")
        if n_cal == self.n_samples:
            raise ValueError("Expected a non-empty test split (split == 1), got 0 rows.")
        return self.subset(is_cal), self.subset(~is_cal)


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


def load_logits(path, *, mmap=False, labels_path=None) -> LogitsData:
    """Read a logits file (see the module docstring for formats) into a :class:`LogitsData`.

    Parameters
    ----------
    path : str or Path
        ``.npz``, ``.npy``, ``.pt``/``.pth`` or ``.csv``.
    mmap : bool, default False
        Memory-map ``.npy`` logits instead of reading them (``.npz`` members are read: numpy cannot map
        compressed members).
    labels_path : str or Path, optional
        Labels ``.npy`` for a ``.npy`` logits file (default: ``labels.npy`` beside it).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_EXTENSIONS:
        raise ValueError(
            f"Unsupported logits file extension {path.suffix!r} for {str(path)!r}; "
            f"valid options: {list(SUPPORTED_EXTENSIONS)}."
        )
    if not path.is_file():
        raise FileNotFoundError(f"Logits file not found: {str(path)!r}.")
    if suffix == ".npz":
        arrays = _read_npz(path)
    elif suffix == ".npy":
        arrays = _read_npy(path, labels_path=labels_path, mmap=mmap)
    elif suffix in (".pt", ".pth"):
        arrays = _read_torch(path)
    else:
        arrays = _read_csv(path)
    return _from_arrays(arrays, source=str(path))


_KNOWN = ("logits", "labels", "split", "groups", "class_names")


def _from_arrays(arrays, *, source):
    for key in ("logits", "labels"):
        if key not in arrays:
            raise ValueError(
                f"Expected a {key!r} array in {source!r}, got keys {sorted(arrays)}."
            )
    names = arrays.get("class_names")
    n = np.shape(arrays["logits"])[0]
    extras = {key: np.asarray(a) for key, a in arrays.items() if key not in _KNOWN and np.ndim(a) >= 1
              and np.shape(a)[0] == n}
    return LogitsData(
        logits=arrays["logits"],
        labels=arrays["labels"],
        split=arrays.get("split"),
        groups=arrays.get("groups"),
        class_names=None if names is None else tuple(np.asarray(names).tolist()),
        extras=extras,
    )


def _read_npz(path):
    try:
        with np.load(path, allow_pickle=False) as f:
            return {key: f[key] for key in f.files}
    except ValueError as err:  # numpy: "Object arrays cannot be loaded when allow_pickle=False"
        raise ValueError(
            f"Refusing to read {str(path)!r}: it holds object (pickled) arrays, which calib never unpickles. "
            "Store plain numeric/string arrays."
        ) from err


def _read_npy(path, *, labels_path, mmap):
    labels_path = Path(labels_path) if labels_path is not None else path.with_name("labels.npy")
    if not labels_path.is_file():
        raise FileNotFoundError(
            f"Expected labels for {str(path)!r} in {str(labels_path)!r} (pass labels_path=...), file not found."
        )
    try:
        logits = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        labels = np.load(labels_path, allow_pickle=False)
    except ValueError as err:
        raise ValueError(f"Refusing to read pickled arrays from {str(path)!r} or {str(labels_path)!r}.") from err
    return {"logits": logits, "labels": labels}


def _read_torch(path):
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError for anything beyond tensors and containers
        raise ValueError(
            f"Could not read {str(path)!r} as a dict of tensors with weights_only=True: {err}"
        ) from err
    if not isinstance(obj, dict):
        raise ValueError(f"Expected {str(path)!r} to hold a dict of tensors, got {type(obj).__name__}.")
    out = {}
    for key, value in obj.items():
        if isinstance(value, torch.Tensor):
            out[key] = value.detach().cpu().numpy()
        elif isinstance(value, (list, tuple)) and key == "class_names":
            out[key] = np.asarray([str(v) for v in value])
        else:
            out[key] = np.asarray(value)
    return out


def _read_csv(path):
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"Expected a header row in {str(path)!r}, got an empty file.")
        rows = list(reader)
    header = [h.strip() for h in header]
    if "label" not in header:
        raise ValueError(f"Expected a 'label' column in {str(path)!r}, got columns {header}.")
    special = {"label": "labels", "split": "split", "group": "groups"}
    logit_cols = [i for i, h in enumerate(header) if h not in special]
    if len(logit_cols) < 2:
        raise ValueError(f"Expected at least 2 logit columns in {str(path)!r}, got {len(logit_cols)}.")
    table = np.array(rows, dtype=object) if rows else np.empty((0, len(header)), dtype=object)
    if table.ndim != 2 or table.shape[1] != len(header):
        raise ValueError(f"Expected {len(header)} fields in every row of {str(path)!r}.")
    try:
        logits = table[:, logit_cols].astype(np.float64).astype(np.float32)
        labels = table[:, header.index("label")].astype(np.float64)
    except ValueError as err:
        raise ValueError(f"Expected numeric logits and labels in {str(path)!r}: {err}") from err
    out = {"logits": logits, "labels": labels, "class_names": np.array([header[i] for i in logit_cols])}
    if "split" in header:
        out["split"] = table[:, header.index("split")].astype(np.int64)
    if "group" in header:
        out["groups"] = table[:, header.index("group")].astype(str)
    return out
