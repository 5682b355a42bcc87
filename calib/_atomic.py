"""Atomic file writes: write to a temporary sibling, then rename over the target."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from calib._json import to_json

__all__ = ["write_bytes_atomic", "write_text_atomic", "write_json_atomic", "umask"]


def umask():
    """The process umask, read without changing it where the system allows (``/proc/self/status``)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, only where /proc is missing)
    os.umask(mask)
    return mask


def write_bytes_atomic(path, data):
    """Write ``data`` to ``path`` through a temporary sibling renamed over it (fsynced; the process umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~umask())  # mkstemp makes 0600; results are read like the rest of the run
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_text_atomic(path, text):
    """:func:`write_bytes_atomic` of ``text`` in UTF-8."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path, obj):
    """Strict JSON (non-finite numbers as ``null``, :func:`calib._json.to_json`) with sorted keys and a
    trailing newline: the same object always gives the same bytes."""
    return write_text_atomic(path, json.dumps(to_json(obj), indent=2, sort_keys=True, allow_nan=False) + "\n")
