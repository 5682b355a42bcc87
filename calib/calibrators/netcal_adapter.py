"""Run a netcal (Küppers et al.) calibration method by name, behind calib's contract.

netcal takes probabilities, not logits, and is a silent no-op on float32 input for some methods
(temperature scaling), so the adapter feeds it ``softmax(logits)`` in float64 (for k = 2, the
probability of class 1 as netcal's binary convention expects). netcal's progress bars and messages
(stdout and stderr) are captured and sent to the ``calib.calibrators.netcal_adapter`` logger.

Artifacts: the fitted netcal object is stored without pickle by walking its attributes; this works for
methods whose state is plain numbers, strings, numpy arrays and nested netcal binning objects
(HistogramBinning, BBQ, ENIR). Torch-based methods (TemperatureScaling, LogisticCalibration,
BetaCalibration, ...) hold torch modules and IsotonicRegression holds scikit-learn objects; their ``get_state()`` raises
``ValueError`` so that :func:`calib.artifacts.save_artifact` refuses to save them instead of pickling.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import logging
import numbers
import warnings

import numpy as np

from calib.calibrators.base import Calibrator, softmax

__all__ = ["NetcalCalibrator", "NETCAL_METHODS"]

log = logging.getLogger(__name__)

#: method name -> netcal module holding it
NETCAL_METHODS = {
    "HistogramBinning": "netcal.binning",
    "IsotonicRegression": "netcal.binning",
    "BBQ": "netcal.binning",
    "ENIR": "netcal.binning",
    "NearIsotonicRegression": "netcal.binning",
    "TemperatureScaling": "netcal.scaling",
    "LogisticCalibration": "netcal.scaling",
    "BetaCalibration": "netcal.scaling",
    "BetaCalibrationDependent": "netcal.scaling",
    "LogisticCalibrationDependent": "netcal.scaling",
}


class _LogWriter(io.TextIOBase):
    """A text stream that forwards each non-empty line to a logger (progress-bar carriage returns too)."""

    def __init__(self, level):
        self.level = level

    def write(self, s):
        for line in s.replace("\r", "\n").splitlines():
            if line.strip():
                log.log(self.level, "netcal: %s", line.strip())
        return len(s)


@contextlib.contextmanager
def _quiet():
    with contextlib.redirect_stdout(_LogWriter(logging.INFO)), contextlib.redirect_stderr(_LogWriter(logging.DEBUG)):
        yield


class NetcalCalibrator(Calibrator):
    """Adapter around a netcal calibration method (Küppers, Kronenberger, Shantia, Haselhoff,
    "Multivariate Confidence Calibration for Object Detection", CVPR Workshops 2020; netcal library).

    Parameters
    ----------
    method : str, default "HistogramBinning"
        A key of :data:`NETCAL_METHODS`.
    method_kwargs : dict or None
        Keyword arguments of the netcal constructor (e.g. ``{"bins": 15}``; ``{"method": "variational"}``
        for netcal's TemperatureScaling).

    Attributes
    ----------
    model_ : netcal object
        The fitted netcal calibrator.

    Examples
    --------
    >>> from calib.datasets import synthetic
    >>> d = synthetic(n=2000, n_classes=4, temperature=2.0, seed=0)
    >>> nc = NetcalCalibrator(method="HistogramBinning", method_kwargs={"bins": 10}).fit(d.logits, d.labels)
    >>> nc.predict_proba(d.logits).shape
    (2000, 4)
    """

    kind = "netcal"

    def __init__(self, *, method="HistogramBinning", method_kwargs=None):
        if method not in NETCAL_METHODS:
            raise ValueError(f"Unknown method {method!r}; valid options: {sorted(NETCAL_METHODS)}.")
        if method_kwargs is None:
            method_kwargs = {}
        if not isinstance(method_kwargs, dict) or not all(isinstance(k, str) for k in method_kwargs):
            raise TypeError(f"Expected method_kwargs as a dict with string keys, got {method_kwargs!r}.")
        try:
            json.dumps(method_kwargs, allow_nan=False)
        except (TypeError, ValueError):
            raise TypeError(f"Expected method_kwargs with JSON-serialisable values, got {method_kwargs!r}.") from None
        self.method = method
        self.method_kwargs = dict(method_kwargs)

    def _netcal_class(self):
        try:
            module = importlib.import_module(NETCAL_METHODS[self.method])
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError("NetcalCalibrator needs the optional dependency netcal: pip install netcal") from err
        return getattr(module, self.method)

    @staticmethod
    def _input(logits):
        p = softmax(logits.astype(np.float64))
        return p[:, 1].copy() if p.shape[1] == 2 else p

    @staticmethod
    def _output(q, k):
        q = np.asarray(q, dtype=np.float64)
        if k == 2 and q.ndim == 1:
            q = np.column_stack([1.0 - q, q])
        q = q.reshape(-1, k)
        total = q.sum(axis=1, keepdims=True)
        # Some netcal methods (ENIR, BBQ one-vs-rest) can map every class of a row to 0: such rows become
        # uniform, as for one-vs-rest isotonic calibration.
        empty = ~(total[:, 0] > 0)
        if empty.any():
            warnings.warn(f"{int(empty.sum())} rows were mapped to all-zero probabilities by netcal; "
                          "they are returned as uniform 1/k.", UserWarning, stacklevel=4)
            q[empty] = 1.0
            total[empty] = k
        return q / total

    def _fit(self, logits, labels):
        model = self._netcal_class()(**self.method_kwargs)
        with _quiet():
            model.fit(self._input(logits), labels)
        self.model_ = model

    def _predict_proba(self, logits):
        with _quiet():
            q = self.model_.transform(self._input(logits))
        return self._output(q, logits.shape[1])

    def _get_state(self):
        arrays = {}
        try:
            tree = _encode(self.model_, "model", arrays, allow_objects=True)
        except ValueError as err:
            raise ValueError(
                f"NetcalCalibrator(method={self.method!r}) cannot be stored without pickle: {err}. "
                "Only netcal methods whose state is numbers and arrays (HistogramBinning, BBQ, ENIR) "
                "can be saved as an artifact."
            ) from None
        return {"model": tree}, arrays

    def _set_state(self, state, arrays):
        self.model_ = _decode(state["model"], arrays)


def _encode(obj, path, arrays, *, allow_objects):
    """JSON tree of an object made of scalars, strings, numeric arrays, lists, dicts and netcal objects."""
    if obj is None or isinstance(obj, (bool, str)):
        return {"t": "s", "v": obj}
    if isinstance(obj, (numbers.Integral, numbers.Real)) and not isinstance(obj, np.ndarray):
        v = obj.item() if isinstance(obj, np.generic) else obj
        return {"t": "s", "v": v}
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "biuf":
            raise ValueError(f"{path} is a numpy array of dtype {obj.dtype}")
        key = f"netcal.{len(arrays)}"
        arrays[key] = obj
        return {"t": "a", "k": key}
    if isinstance(obj, (list, tuple)):
        return {"t": "l" if isinstance(obj, list) else "u",
                "v": [_encode(v, f"{path}[{i}]", arrays, allow_objects=allow_objects) for i, v in enumerate(obj)]}
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise ValueError(f"{path} is a dict with non-string keys")
        return {"t": "d", "v": {k: _encode(v, f"{path}.{k}", arrays, allow_objects=allow_objects)
                                for k, v in sorted(obj.items())}}
    cls = type(obj)
    if allow_objects and cls.__module__.startswith("netcal.") and _is_netcal_binning(cls):
        return {"t": "o", "c": f"{cls.__module__}:{cls.__qualname__}",
                "v": {k: _encode(v, f"{path}.{k}", arrays, allow_objects=True) for k, v in sorted(vars(obj).items())}}
    raise ValueError(f"{path} holds a {cls.__module__}.{cls.__qualname__} object")


def _is_netcal_binning(cls):
    return cls.__module__.startswith("netcal.binning")


def _decode(tree, arrays):
    t = tree["t"]
    if t == "s":
        return tree["v"]
    if t == "a":
        return np.asarray(arrays[tree["k"]])
    if t in ("l", "u"):
        items = [_decode(v, arrays) for v in tree["v"]]
        return items if t == "l" else tuple(items)
    if t == "d":
        return {k: _decode(v, arrays) for k, v in tree["v"].items()}
    if t == "o":
        module, _, name = tree["c"].partition(":")
        if not module.startswith("netcal.binning"):
            raise ValueError(f"Refusing to rebuild class {tree['c']!r}: only netcal.binning classes are allowed.")
        cls = getattr(importlib.import_module(module), name)
        obj = cls.__new__(cls)
        for k, v in tree["v"].items():
            setattr(obj, k, _decode(v, arrays))
        return obj
    raise ValueError(f"Unknown netcal state node type {t!r}.")
