"""JSON numbers: the one rule for writing numbers to metrics.json, manifests and reports.

Strict JSON has no NaN or infinity, so a non-finite float is written as ``null`` (a reader sees
"undefined", never a string that parses differently in every language). numpy scalars become Python
numbers, tuples and arrays lists. Values whose sign of infinity matters (conformal thresholds) are
stored as arrays in ``arrays.npz`` instead, where IEEE floats round-trip exactly.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["json_number", "to_json"]


def json_number(value):
    """A finite float or int as a Python number; NaN and +-inf as ``None``.

    >>> json_number(np.float32(0.5)), json_number(float("inf")), json_number(np.int64(3))
    (0.5, None, 3)
    """
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    v = float(value)
    return v if math.isfinite(v) else None


def to_json(obj):
    """``obj`` with every number passed through :func:`json_number`, tuples and arrays as lists.

    >>> to_json({"q": (1.0, float("nan")), "n": np.arange(2)})
    {'q': [1.0, None], 'n': [0, 1]}
    """
    if isinstance(obj, dict):
        return {k: to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_json(obj.tolist())
    if isinstance(obj, (bool, np.bool_, int, np.integer, float, np.floating)):
        return json_number(obj)
    return obj
