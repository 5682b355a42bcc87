"""Shared helpers for the benchmark scripts: seeded inputs, best-of-r timing, peers that may not import."""

from __future__ import annotations

import contextlib
import io
import logging
import time

import numpy as np


def synthetic_logits(n, k, *, seed=0, temperature=2.5, dtype=np.float32):
    """Over-confident float32 logits with labels drawn from the true (tempered) softmax."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, k), dtype=np.float32) * 2.0
    labels = np.argmax(z + rng.gumbel(size=(n, k)).astype(np.float32), axis=1)
    return (temperature * z).astype(dtype), labels


def best_of(fn, repeat=3):
    """Minimum wall time of ``repeat`` calls (and the last result)."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


@contextlib.contextmanager
def quiet():
    """Route a peer's stdout chatter into logging at DEBUG level."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        yield
    if buf.getvalue():
        logging.getLogger("bench.peer").debug(buf.getvalue())


def print_table(rows, header):
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(header)]
    line = " | ".join(str(h).ljust(w) for h, w in zip(header, widths))
    print(line)
    print("-|-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(str(c).ljust(w) for c, w in zip(r, widths)))


def versions(*extra):
    """One line naming the versions that produced a table (numbers move with numpy/BLAS/torch builds)."""
    import importlib.metadata as md
    import platform

    names = ("calib", "numpy", "scipy", "torch", *extra)
    parts = []
    for name in names:
        try:
            parts.append(f"{name} {md.version(name)}")
        except md.PackageNotFoundError:
            parts.append(f"{name} absent")
    return f"Python {platform.python_version()}; " + ", ".join(parts)
