"""Row chunking and a few worker threads: the one place that decides how a pass walks an (n, k) array.

Every hot path reads its input in row chunks sized by a number of entries (so a chunk stays in cache, or
bounds a float64 temporary), and may run chunks on worker threads for numpy kernels that release the GIL
(sorts, reductions, comparisons). Call sites choose a size from :data:`CACHE`, :data:`SORT` or
:data:`REDUCE` (each documented with why); results never depend on the thread count because every
chunk writes its own rows.

Threads: at most ``min(os.cpu_count(), 4)``; the environment variable ``CALIB_NUM_THREADS`` overrides it
(``CALIB_NUM_THREADS=1`` runs everything on the calling thread).
"""

from __future__ import annotations

import os

__all__ = ["CACHE", "FUSED", "SORT", "REDUCE", "rows_per_chunk", "row_slices", "num_threads", "map_threads",
           "map_row_chunks"]

#: bytes of one chunk that stays in a core's L2 cache between the steps of a fused pass
CACHE = 1 << 20
#: entries of one chunk of the fused conformal set/label-score passes (1 MB of float32)
FUSED = 1 << 18
#: entries of one chunk of a sorting pass (about 16 MB of float64 temporaries)
SORT = 1 << 21
#: entries of one chunk of the metric reductions (float64 accumulation)
REDUCE = 1 << 22


def rows_per_chunk(n_cols, *, entries=None, nbytes=None, itemsize=4, minimum=1):
    """Rows of ``n_cols`` columns in one chunk of ``entries`` entries, or of ``nbytes`` bytes at ``itemsize``.

    >>> rows_per_chunk(1000, entries=1 << 18), rows_per_chunk(1000, nbytes=1 << 20, minimum=16)
    (262, 262)
    """
    cols = max(int(n_cols), 1)
    if (entries is None) == (nbytes is None):
        raise TypeError("Expected exactly one of entries or nbytes.")
    rows = entries // cols if entries is not None else nbytes // (itemsize * cols)
    return max(int(minimum), int(rows))


def row_slices(n, n_cols, *, entries=None, nbytes=None, itemsize=4, minimum=1):
    """Consecutive ``slice`` objects covering ``range(n)``, each of :func:`rows_per_chunk` rows.

    >>> [(s.start, s.stop) for s in row_slices(5, 2, entries=4)]
    [(0, 2), (2, 4), (4, 5)]
    """
    rows = rows_per_chunk(n_cols, entries=entries, nbytes=nbytes, itemsize=itemsize, minimum=minimum)
    return [slice(start, min(n, start + rows)) for start in range(0, n, rows)]


def num_threads():
    """Threads calib may use: ``CALIB_NUM_THREADS`` when set, else ``min(os.cpu_count(), 4)``."""
    raw = os.environ.get("CALIB_NUM_THREADS", "").strip()
    if raw:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"Expected CALIB_NUM_THREADS as a positive integer, got {raw!r}.") from None
        if value < 1:
            raise ValueError(f"Expected CALIB_NUM_THREADS as a positive integer, got {raw!r}.")
        return value
    return min(os.cpu_count() or 1, 4)


def map_threads(fn, items):
    """``list(map(fn, items))``, on up to :func:`num_threads` threads when there is more than one item."""
    items = list(items)
    workers = min(len(items), num_threads())
    if workers <= 1:
        return [fn(i) for i in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as ex:
        return list(ex.map(fn, items))


def map_row_chunks(fn, n, n_cols, *, entries):
    """Call ``fn(row_slice)`` on every chunk of :func:`row_slices` (on worker threads when there are several)."""
    return map_threads(fn, row_slices(n, n_cols, entries=entries))
