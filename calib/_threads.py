"""A few worker threads for numpy kernels that release the GIL (sorts, reductions, comparisons).

At most ``min(os.cpu_count(), 4)`` threads; the environment variable ``CALIB_NUM_THREADS`` overrides it
(``CALIB_NUM_THREADS=1`` runs everything on the calling thread). Every work item writes its own rows, so
results never depend on scheduling.
"""

from __future__ import annotations

import os

__all__ = ["num_threads", "map_threads"]


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
