"""Input checks shared by every public entry point.

Every check raises ``ValueError`` or ``TypeError`` with one template: the argument's name, what was
expected, and what came. Nothing here imports torch: tensors are recognised by duck typing and converted
with ``.detach().cpu().numpy()``.
"""

from __future__ import annotations

import numbers
import warnings

import numpy as np

from calib import _chunks as chunking
from calib._chunks import map_threads, num_threads, rows_per_chunk

__all__ = [
    "as_array",
    "check_logits",
    "check_probs",
    "check_labels",
    "check_logits_labels",
    "check_probs_labels",
    "check_fraction",
    "check_positive_int",
    "check_choice",
    "check_same_length",
    "check_binary",
    "check_group_ids",
    "warn_if_probabilities",
]


_ELEMENTS_PER_THREAD = 1 << 22  # below ~16 MB of float32 per thread, starting threads costs more than it saves


def as_array(x, name):
    """Return ``x`` as a numpy array; torch tensors (any device) are copied to host memory."""
    if isinstance(x, np.ma.MaskedArray):
        raise TypeError(
            f"Expected {name} as a plain array, got a masked array ({int(np.ma.count_masked(x))} masked entries); "
            "masked values would be read as they are stored: fill them (x.filled(...)) or drop the masked rows."
        )
    if isinstance(x, np.ndarray):
        return x
    if type(x).__module__.split(".")[0] == "torch" and hasattr(x, "detach"):
        x = x.detach()
        if str(getattr(x, "dtype", "")) in ("torch.bfloat16", "torch.float8_e4m3fn", "torch.float8_e5m2"):
            x = x.float()  # numpy has no bfloat16: upcast exactly to float32
        return x.cpu().numpy()
    if isinstance(x, (list, tuple)) or np.isscalar(x) or isinstance(x, np.generic):
        return np.asarray(x)
    if hasattr(x, "__array__"):
        return np.asarray(x)
    raise TypeError(f"Expected {name} as a numpy array or torch tensor, got {type(x).__name__}.")


def _all_finite(x):
    # One cheap float64 reduction instead of an (n, k) boolean temporary; the sum of finite float32 or
    # float64 values in float64 cannot overflow for any array that fits in memory unless values are near
    # float64's own limit, in which case the exact check below decides.
    total = np.add.reduce(x, axis=None, dtype=np.float64)
    return bool(np.isfinite(total)) or bool(np.isfinite(x).all())


def check_logits(logits, name="logits", *, n_classes=None):
    """Validate a 2-D float array of shape (n_samples, n_classes) with k >= 2 and finite entries.

    float32 and float64 inputs keep their dtype; integer or float16 inputs are promoted to float32.
    """
    x = as_array(logits, name)
    if x.ndim == 1:
        raise ValueError(
            f"Expected {name} of shape (n_samples, n_classes), got a 1-D array of shape {x.shape}; for one "
            "binary score z per row pass np.stack([np.zeros_like(z), z], axis=1) (class 1 has logit z)."
        )
    if x.ndim != 2:
        raise ValueError(f"Expected {name} of shape (n_samples, n_classes), got an array of shape {x.shape}.")
    if x.shape[1] < 2:
        raise ValueError(f"Expected {name} with at least 2 classes (columns), got shape {x.shape}.")
    if x.shape[0] == 0:
        raise ValueError(f"Expected {name} with at least one row, got shape {x.shape}.")
    if n_classes is not None and x.shape[1] != n_classes:
        raise ValueError(
            f"Expected {name} with {n_classes} classes (as at fit), got {x.shape[1]} columns."
        )
    if x.dtype.kind == "b" or x.dtype.kind not in "fiu":
        raise TypeError(f"Expected {name} with a real floating dtype, got dtype {x.dtype}.")
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float32)
    if not _all_finite(x):
        bad = ~np.isfinite(x)
        rows = np.flatnonzero(bad.any(axis=1))
        raise ValueError(
            f"Expected finite {name}, got {int(bad.sum())} NaN/inf entries (first rows: {rows[:5].tolist()})."
        )
    return x


def check_probs(probs, name="probs", *, n_classes=None, atol=1e-4, return_argmax=False, on_chunk=None):
    """Validate probabilities: shape (n, k), finite, entries >= 0, rows summing to 1 within ``atol``.

    One chunked pass computes the row sums, the minimum and (with ``return_argmax``) each row's argmax,
    so validating costs about one read of the array; large arrays are read by :func:`calib._chunks.num_threads`
    threads, each over its own contiguous rows. ``on_chunk(start, block)``, when given, is called on each
    chunk while it is in cache, so a caller can fuse its own work into the same pass (it may run on worker
    threads and must only write rows ``start:start + len(block)``; its results are discarded by the caller
    if validation then fails). Returns ``p`` or ``(p, argmax)``.
    """
    p = as_array(probs, name)
    if p.ndim != 2 or p.shape[1] < 2 or p.shape[0] == 0:
        p = check_logits(p, name, n_classes=n_classes)  # raises the shape error
    if n_classes is not None and p.shape[1] != n_classes:
        raise ValueError(f"Expected {name} with {n_classes} classes (as at fit), got {p.shape[1]} columns.")
    if p.dtype.kind not in "fiu" or p.dtype.kind == "b":
        raise TypeError(f"Expected {name} with a real floating dtype, got dtype {p.dtype}.")
    if p.dtype not in (np.float32, np.float64):
        p = p.astype(np.float32)
    n, k = p.shape
    rows = rows_per_chunk(k, nbytes=chunking.CACHE, itemsize=p.itemsize, minimum=16)  # stays in L2 between steps
    row_sums = np.empty(n, dtype=p.dtype)
    argmax = np.empty(n, dtype=np.int64) if return_argmax else None

    minimum = np.minimum.reduce  # == block.min(), without its Python wrapper (called once per chunk)

    def scan(span):  # one worker's contiguous rows, a cache-sized chunk at a time
        lo = np.inf
        for start in range(span[0], span[1], rows):
            stop = min(start + rows, span[1])
            block = p[start:stop]
            np.einsum("ij->i", block, out=row_sums[start:stop])  # SIMD reduction
            low = minimum(block, axis=None)
            if low < lo:  # == lo = min(lo, low): a NaN minimum is skipped (the row sums report it)
                lo = low
            if return_argmax:
                argmax[start:stop] = block.argmax(axis=1)
            if on_chunk is not None:
                on_chunk(start, block)
        return lo

    # The pass is memory-bound; on large inputs a few threads (numpy releases the GIL) read it faster.
    workers = min(num_threads(), max(1, n * k // _ELEMENTS_PER_THREAD), -(-n // rows))
    edges = [n * i // workers // rows * rows for i in range(workers)] + [n]
    lo = min(map_threads(scan, zip(edges[:-1], edges[1:])))
    if not np.isfinite(row_sums).all():
        bad = np.flatnonzero(~np.isfinite(row_sums))
        raise ValueError(f"Expected finite {name}, got NaN/inf entries (first rows: {bad[:5].tolist()}).")
    if lo < 0:
        raise ValueError(f"Expected {name} in [0, 1], got a minimum of {float(lo):.6g}.")
    err = np.abs(row_sums.astype(np.float64) - 1.0)
    # Rows of float32 probabilities carry up to ~k rounding errors of their own.
    if err.max() > atol + k * float(np.finfo(p.dtype).eps):
        i = int(err.argmax())
        raise ValueError(
            f"Expected rows of {name} summing to 1 (tolerance {atol}), got row {i} summing to "
            f"{row_sums[i]:.6g}; pass logits to a calibrator, or renormalise the rows first."
        )
    return (p, argmax) if return_argmax else p


def check_labels(labels, name="labels", *, n_samples=None, n_classes=None, rows_of="logits"):
    """Validate integer class labels of shape (n,) in [0, n_classes); integral floats are accepted."""
    y = as_array(labels, name)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"Expected {name} of shape (n_samples,), got an array of shape {y.shape}.")
    if n_samples is not None and y.shape[0] != n_samples:
        raise ValueError(
            f"Expected {name} of length {n_samples} (one per row of {rows_of}), got length {y.shape[0]}."
        )
    if y.dtype.kind == "b" or y.dtype.kind not in "fiu":
        raise TypeError(f"Expected integer class {name}, got dtype {y.dtype}.")
    if y.dtype.kind == "f":
        if not np.isfinite(y).all():
            raise ValueError(f"Expected integer class {name}, got NaN or inf.")
        frac = y != np.round(y)
        if frac.any():
            raise ValueError(
                f"Expected integer class {name}, got {int(frac.sum())} values with a fractional part "
                f"(e.g. {y[frac][0]!r})."
            )
    if y.size:  # range checked in the input's own dtype: a cast first would wrap 1e20 or 2**63 into nonsense
        lo, hi = y.min(), y.max()
        show = (lambda v: f"{float(v):g}") if y.dtype.kind == "f" else (lambda v: str(int(v)))
        if lo < 0:
            raise ValueError(f"Expected {name} >= 0, got minimum {show(lo)}.")
        if n_classes is not None and hi >= n_classes:
            raise ValueError(
                f"Expected {name} in [0, {n_classes - 1}] for {n_classes} classes, got maximum {show(hi)}."
            )
        if hi > np.iinfo(np.int64).max // 2:
            raise ValueError(f"Expected {name} as class indices, got maximum {show(hi)}.")
    return y.astype(np.int64, copy=False)


def check_logits_labels(logits, labels, *, n_classes=None, warn_missing=True):
    """Validate a (logits, labels) pair; warn when some class never occurs in ``labels``."""
    x = check_logits(logits, "logits", n_classes=n_classes)
    y = check_labels(labels, "labels", n_samples=x.shape[0], n_classes=x.shape[1])
    if warn_missing:
        _warn_missing_classes(y, x.shape[1])
    return x, y


def check_probs_labels(probs, labels, *, n_classes=None, return_argmax=False):
    """Validate a (probs, labels) pair; with ``return_argmax`` also return each row's argmax."""
    out = check_probs(probs, "probs", n_classes=n_classes, return_argmax=return_argmax)
    p = out[0] if return_argmax else out
    y = check_labels(labels, "labels", n_samples=p.shape[0], n_classes=p.shape[1], rows_of="probs")
    return (p, y, out[1]) if return_argmax else (p, y)


def _warn_missing_classes(y, k):
    counts = np.bincount(y, minlength=k)
    missing = np.flatnonzero(counts == 0)
    if missing.size:
        warnings.warn(
            f"{missing.size} of {k} classes never occur in labels (e.g. {missing[:10].tolist()}); "
            "the fit cannot learn anything class-specific for them.",
            UserWarning,
            stacklevel=4,  # _warn_missing_classes <- check_logits_labels <- fit <- caller
        )


def check_fraction(value, name, *, inclusive=False):
    """A real number in (0, 1) (or [0, 1] with ``inclusive``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"Expected {name} as a real number, got {type(value).__name__} {value!r}.")
    v = float(value)
    ok = (0.0 <= v <= 1.0) if inclusive else (0.0 < v < 1.0)
    if not ok:
        interval = "[0, 1]" if inclusive else "(0, 1)"
        raise ValueError(f"Expected {name} in {interval}, got {value!r}.")
    return v


def check_positive_int(value, name, *, minimum=1):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"Expected {name} as an integer >= {minimum}, got {type(value).__name__} {value!r}.")
    if value < minimum:
        raise ValueError(f"Expected {name} >= {minimum}, got {value!r}.")
    return int(value)


def check_choice(value, name, options):
    if value not in options:
        raise ValueError(f"Unknown {name} {value!r}; valid options: {sorted(options)}.")
    return value


def check_same_length(n, name, length_of="logits", **arrays):
    """Each of ``arrays`` (name -> array or None) has ``n`` rows, as ``length_of`` does."""
    for key, a in arrays.items():
        if a is not None and len(a) != n:
            raise ValueError(f"Expected {key} of length {n} (one per row of {length_of}), got length {len(a)}.")


def warn_if_probabilities(x, name="logits"):
    """Warn when ``x`` passed as logits looks like softmax output (entries in [0, 1], rows summing to 1).

    A calibrator fitted on probabilities as if they were logits learns a meaningless map (temperature
    scaling returns T ~ 0.37 on them) without any error; this catches the common mix-up. One chunked pass.
    """
    n, k = x.shape
    rows = rows_per_chunk(k, nbytes=chunking.CACHE, itemsize=x.itemsize, minimum=16)
    for start in range(0, n, rows):
        block = x[start:start + rows]
        if block.min() < 0 or block.max() > 1 or np.abs(block.sum(axis=1, dtype=np.float64) - 1).max() > 1e-3:
            return False
    warnings.warn(
        f"{name} look like probabilities (every entry in [0, 1], every row summing to 1); calibrators expect "
        "logits (pre-softmax scores). Pass log(probs) if only probabilities are available.",
        UserWarning,
        stacklevel=3,
    )
    return True


def check_binary(x, name):
    """A boolean array, or integers that are all 0/1 (returned as bool); floats are refused (0.7 is not a
    verdict, and reading it as True certifies what was never checked)."""
    x = as_array(x, name)
    if x.dtype == bool:
        return x
    if x.dtype.kind not in "iu":
        raise TypeError(f"Expected {name} as booleans (or 0/1 integers), got dtype {x.dtype}.")
    ok = (x == 0) | (x == 1)
    if not ok.all():
        raise ValueError(f"Expected {name} as booleans (or 0/1 integers), got values {np.unique(x[~ok])[:5].tolist()}.")
    return x.astype(bool)


def check_group_ids(groups, n, name="groups", length_of="logits"):
    """Group ids of shape (n,): integers, strings, booleans or finite floats, never objects; a NaN id would
    form a group that no later row can match."""
    g = as_array(groups, name)
    if g.dtype == object or g.dtype.kind not in "biufUS":
        raise TypeError(f"Expected {name} as integers or strings, got dtype {g.dtype}.")
    if g.shape != (n,):
        raise ValueError(f"Expected {name} of length {n} (one per row of {length_of}), got shape {g.shape}.")
    if g.dtype.kind == "f" and not np.isfinite(g).all():
        bad = ~np.isfinite(g)
        raise ValueError(f"Expected finite {name}, got {int(bad.sum())} NaN/inf entries (first rows: "
                         f"{np.flatnonzero(bad)[:5].tolist()}).")
    return g
