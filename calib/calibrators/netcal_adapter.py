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
import inspect
import io
import json
import logging
import math
import numbers
import warnings

import numpy as np

from calib.base import StateError
from calib.calibrators.base import Calibrator, softmax, state_error

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


def _accepted_kwargs(cls):
    """Keyword arguments a netcal class's constructor uses: the named parameters of its ``__init__`` and, while
    an ``__init__`` passes ``**kwargs`` on, of its netcal base classes'."""
    names = []
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or not klass.__module__.startswith("netcal"):
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        names += [p.name for p in params
                  if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in names]
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return names


@contextlib.contextmanager
def _quiet():
    with contextlib.redirect_stdout(_LogWriter(logging.INFO)), contextlib.redirect_stderr(_LogWriter(logging.DEBUG)):
        yield


#: Seconds per 1,000 rows per class of netcal's slow methods (one-vs-rest on k > 2), measured on one core of a
#: 2-core machine on the embedded c10lt_resnet110 (10,108 rows x 10 classes: BBQ ~12 s, ENIR ~31 s); a start
#: line states the expected fit time from them (docs/experiments.md, "How long the presets take").
SLOW_METHOD_SECONDS = {"BBQ": 0.12, "ENIR": 0.31}


class _FitProgress:
    """A start line for netcal's slow fits (INFO, ``calib.calibrators.netcal_adapter``) with the expected time,
    then a line every ``EVERY`` seconds while the fit runs (netcal itself prints nothing) and one at the end;
    silent for the fast methods. The ticker is a daemon thread that only logs; it never touches the fit."""

    EVERY = 10.0

    def __init__(self, method, n, k):
        self.method, self.n, self.k = method, int(n), int(k)
        self.rate = SLOW_METHOD_SECONDS.get(method)
        self._stop = self._thread = None

    def __enter__(self):
        if self.rate is None:
            return self
        import threading
        import time

        classes = 1 if self.k == 2 else self.k
        expected = self.rate * self.n / 1000.0 * classes
        log.info("Fitting netcal %s on %d rows x %d classes: expect ~%.2g s on one core (no progress from netcal "
                 "itself; a line every %g s)", self.method, self.n, self.k, expected, self.EVERY)
        self._t0 = time.monotonic()
        self._stop = threading.Event()

        def tick():
            while not self._stop.wait(self.EVERY):
                log.info("netcal %s: fitting, %.0f s so far (expected ~%.2g s)", self.method,
                         time.monotonic() - self._t0, expected)

        self._thread = threading.Thread(target=tick, name=f"netcal-{self.method}-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._thread is not None:
            import time

            self._stop.set()
            self._thread.join()
            log.info("netcal %s: fitted in %.1f s", self.method, time.monotonic() - self._t0)
        return False


class NetcalCalibrator(Calibrator):
    """Adapter around a netcal calibration method (Küppers, Kronenberger, Shantia, Haselhoff,
    "Multivariate Confidence Calibration for Object Detection", CVPR Workshops 2020; netcal library).

    Parameters
    ----------
    method : str, default "HistogramBinning"
        A key of :data:`NETCAL_METHODS`.
    method_kwargs : dict or None
        Keyword arguments of the netcal constructor (e.g. ``{"bins": 15}``; ``{"method": "variational"}``
        for netcal's TemperatureScaling). Keys the netcal class does not name in its constructor (or its
        netcal base classes', which netcal's scaling methods reach through ``**kwargs`` and otherwise drop
        silently) raise ``TypeError`` listing the accepted ones; checking them imports netcal.

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
    portable = False  # predicting calls the rebuilt netcal object: calib.runtime (numpy only) cannot serve it

    def __init__(self, *, method="HistogramBinning", method_kwargs=None):
        if not isinstance(method, str):
            raise TypeError(f"Expected method as a string, one of {sorted(NETCAL_METHODS)}, got "
                            f"{type(method).__name__} {method!r:.100}.")
        if method not in NETCAL_METHODS:
            raise ValueError(f"Expected method as one of {sorted(NETCAL_METHODS)}, got {method!r:.100}.")
        if method_kwargs is None:
            method_kwargs = {}
        if not isinstance(method_kwargs, dict) or not all(isinstance(k, str) for k in method_kwargs):
            raise TypeError(f"Expected method_kwargs as a dict with string keys, got {method_kwargs!r:.200}.")
        try:
            json.dumps(method_kwargs, allow_nan=False)
        except (TypeError, ValueError):
            raise TypeError(f"Expected method_kwargs with JSON-serialisable values, got {method_kwargs!r:.200}.") from None
        self.method = method
        accepted = _accepted_kwargs(self._netcal_class())
        unknown = sorted(set(method_kwargs) - set(accepted))
        if unknown:
            # netcal's scaling methods take **kwargs and drop what they do not know: a typo would be ignored
            raise TypeError(f"Expected method_kwargs accepted by netcal's {method} ({sorted(accepted)}), got unknown "
                            f"keys {unknown}.")
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
    def _output(q, k, n=None, method="netcal"):
        q = np.asarray(q, dtype=np.float64)
        if k == 2 and q.ndim == 1:
            q = np.column_stack([1.0 - q, q])
        if q.ndim != 2 or q.shape[1] != k or (n is not None and q.shape[0] != n):
            want = f"({'n' if n is None else n}, {k})"
            raise ValueError(f"Expected probabilities of shape {want} from netcal's {method}, got shape {q.shape}.")
        if not np.isfinite(q).all():
            rows = np.flatnonzero(~np.isfinite(q).all(axis=1))
            raise ValueError(f"Expected finite probabilities from netcal's {method}, got {rows.size} rows with NaN/inf "
                             f"(first rows: {rows[:5].tolist()}).")
        if q.min() < 0:
            raise ValueError(f"Expected probabilities >= 0 from netcal's {method}, got a minimum of {q.min():.6g}.")
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
        x = self._input(logits)
        with _FitProgress(self.method, logits.shape[0], logits.shape[1]), _quiet():
            model.fit(x, labels)
        self.model_ = model

    def _predict_proba(self, logits):
        with _quiet():
            q = self.model_.transform(self._input(logits))
        return self._output(q, logits.shape[1], logits.shape[0], self.method)

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
        cls = type(self)
        if "model" not in state:
            raise state_error(cls, "model", "to be present", "a state without it")
        used = set()
        model = _decode(state.pop("model"), arrays, used, "model")
        for key in used:
            arrays.pop(key)
        expected = self._netcal_class()
        if type(model) is not expected:
            raise state_error(cls, "model", f"as a fitted netcal {expected.__module__}.{expected.__qualname__} "
                              f"(method={self.method!r})", f"{type(model).__module__}.{type(model).__qualname__}")
        self.model_ = model
        # The tree is netcal's own private state: rather than re-derive netcal's invariants, run the rebuilt
        # model on a probe (uniform and one-hot-leaning rows) and refuse a model that fails or answers nonsense.
        k = self.n_classes_
        probe = np.vstack([np.zeros((1, k)), 4.0 * np.eye(k)]).astype(np.float32)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._predict_proba(probe)
        except Exception as err:  # noqa: BLE001 - netcal code on untrusted data: any failure means the state is unusable
            raise state_error(cls, "model", f"as a netcal {self.method} that calibrates {k}-class inputs",
                              f"a model failing on a probe input ({type(err).__name__}: {err})") from None


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


_MAX_DEPTH = 64  # netcal's binning objects nest a few levels; a deeper tree was not written by _encode


def _decode(tree, arrays, used, path, depth=0):
    """Rebuild what :func:`_encode` wrote; every refusal is a :class:`calib.base.StateError` naming the path.
    ``used`` collects the array keys read (the caller pops them, so unreferenced arrays are refused)."""
    def bad(expected, got):
        return StateError(f"Expected state field {path!r} of NetcalCalibrator {expected}, got {got}.")

    if depth > _MAX_DEPTH:
        raise bad(f"nested at most {_MAX_DEPTH} levels deep", "a deeper tree")
    if not isinstance(tree, dict) or tree.get("t") not in ("s", "a", "l", "u", "d", "o"):
        raise bad("as a node {'t': 's'|'a'|'l'|'u'|'d'|'o', ...}", f"{tree!r:.100}")
    t = tree["t"]
    if t == "s":
        v = tree.get("v")
        if not (v is None or isinstance(v, (bool, str, int, float))):
            raise bad("as a scalar (null, bool, number or string)", f"{type(v).__name__}")
        if isinstance(v, float) and not math.isfinite(v):
            raise bad("finite", repr(v))
        return v
    if t == "a":
        key = tree.get("k")
        if not isinstance(key, str) or key not in arrays:
            raise bad("as a reference to a stored array", f"{key!r:.100} (no such array)")
        a = np.asarray(arrays[key])
        if a.dtype.kind not in "biuf":
            raise bad("as a numeric array", f"dtype {a.dtype}")
        if a.dtype.kind == "f" and np.isnan(a).any():
            raise bad("without NaN", f"{int(np.isnan(a).sum())} NaN entries in {key!r}")
        used.add(key)
        return a
    v = tree.get("v")
    if t in ("l", "u"):
        if not isinstance(v, list):
            raise bad("as a list of nodes", f"{type(v).__name__}")
        items = [_decode(x, arrays, used, f"{path}[{i}]", depth + 1) for i, x in enumerate(v)]
        return items if t == "l" else tuple(items)
    if not isinstance(v, dict) or not all(isinstance(k, str) for k in v):
        raise bad("as a table of nodes", f"{type(v).__name__}")
    items = {k: _decode(x, arrays, used, f"{path}.{k}", depth + 1) for k, x in v.items()}
    if t == "d":
        return items
    module, _, name = str(tree.get("c")).partition(":")
    if not module.startswith("netcal.binning"):
        raise bad("as a netcal.binning class", f"class {tree.get('c')!r:.100} (refused: only netcal.binning classes "
                  "are rebuilt)")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        cls = None
    if not (isinstance(cls, type) and _is_netcal_binning(cls)):
        raise bad("as a netcal.binning class", f"{tree.get('c')!r:.100}, which is not one")
    obj = cls.__new__(cls)
    for k, x in items.items():
        setattr(obj, k, x)
    return obj
