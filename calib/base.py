"""The component contract shared by calibrators, conformal predictors and routing policies.

A component is built with keyword-only arguments that are validated at construction (a bad YAML value
fails at ``instantiate``, before any data are read), learns from data in ``fit`` (attributes ending in
``_``), and describes itself as plain JSON (``get_params``: the constructor's arguments; ``get_state``:
fitted scalars) plus numpy arrays, so that :mod:`calib.artifacts` stores it without pickle and the
numpy-only runtime rebuilds it through its registry with :meth:`Component.from_state`.

Prediction (``predict_proba``, ``predict_set``, ``route``) never changes the object: a fitted component
can serve concurrent requests. ``tests/test_architecture.py`` checks this for every registry entry.
"""

from __future__ import annotations

import inspect
import math
import numbers

import numpy as np

__all__ = ["Component", "NotFittedError", "StateError", "ConvergenceWarning", "FitError", "constructor_params",
           "state_scalar", "state_array", "state_error"]


class NotFittedError(ValueError, AttributeError):
    """Raised when a method that needs a fitted component is called before ``fit``."""


class StateError(ValueError):
    """Fitted state (read from an artifact, or passed to ``from_state``) that no fit could have produced."""


class ConvergenceWarning(UserWarning):
    """An iterative fit stopped at its iteration limit before meeting its tolerance (the result is usable
    but not the optimum; the message says by how much)."""


class FitError(ValueError):
    """A fit cannot produce a meaningful answer from these data (e.g. a non-finite objective or gradient);
    raised instead of returning the start value as if it were a result."""


class Component:
    """Base of every storable component.

    Subclasses set ``kind`` (the registry name), validate their arguments in a keyword-only
    ``__init__`` that stores each one under its own name, and implement ``_get_state`` / ``_set_state``
    (fitted scalars and arrays beyond ``n_classes_``). ``_fit_hint`` completes the not-fitted message.
    """

    kind: str = ""
    #: whether a fitted component predicts with numpy alone (``calib.runtime`` serves only portable ones)
    portable: bool = True
    _fit_hint = "fit(...)"
    _min_classes = 2  # the smallest n_classes a fit of this kind can produce

    def get_params(self) -> dict:
        """Constructor arguments, JSON-serialisable (what ``__init__`` was called with)."""
        return constructor_params(self)

    def clone(self, **changes):
        """A new, unfitted component with the same constructor arguments, ``changes`` applied."""
        unknown = sorted(set(changes) - set(_init_names(type(self))))
        if unknown:
            raise TypeError(f"Expected constructor arguments of {type(self).__name__}, got unknown {unknown}.")
        return type(self)(**{**{n: getattr(self, n) for n in _init_names(type(self))}, **changes})

    def get_state(self):
        """Fitted state as ``(scalars: dict, arrays: dict[str, ndarray])``."""
        self._check_fitted()
        scalars, arrays = self._get_state()
        return {"n_classes": self.n_classes_, **scalars}, arrays

    @classmethod
    def from_state(cls, params, state, arrays):
        """Rebuild a fitted component from ``get_params()`` and ``get_state()`` output.

        State is untrusted input (an artifact can be edited and its checksums recomputed): ``_set_state``
        reads every field through :func:`state_scalar` / :func:`state_array`, which pop it and check its
        type, shape, finiteness and range, and any field left over afterwards is refused, so a state
        relabelled as another kind, or with fields no fit writes, does not load. Every refusal is a
        :class:`StateError` (a ``ValueError``) naming the field, what was expected and what came.
        """
        if not isinstance(params, dict) or not isinstance(state, dict) or not isinstance(arrays, dict):
            raise StateError(f"Expected params, state and arrays of {cls.__name__} as dicts, got "
                             f"{type(params).__name__}, {type(state).__name__}, {type(arrays).__name__}.")
        obj = cls(**cls._upgrade_params(dict(params)))
        state, arrays = dict(state), dict(arrays)
        obj.n_classes_ = state_scalar(state, "n_classes", int, minimum=cls._min_classes, owner=cls)
        try:
            obj._set_state(state, arrays)
        except (KeyError, IndexError, AttributeError, TypeError) as err:  # malformed beyond what the checks name
            raise StateError(f"Malformed state of {cls.__name__}: {type(err).__name__}: {err}") from None
        if state or arrays:
            raise StateError(
                f"Unexpected state of {cls.__name__}: fields {sorted(state)} and arrays {sorted(arrays)} are not "
                "written by any fit of this kind (state of another kind, or edited)."
            )
        return obj

    # --- hooks --------------------------------------------------------------------------------------
    @classmethod
    def _upgrade_params(cls, params):
        """Parameters as stored by an older calib, renamed for this one (default: unchanged)."""
        return params

    def _get_state(self):
        return {}, {}

    def _set_state(self, state, arrays):
        pass

    @property
    def is_fitted(self):
        return hasattr(self, "n_classes_")

    def _check_fitted(self):
        if not self.is_fitted:
            raise NotFittedError(f"{type(self).__name__} is not fitted yet; call {self._fit_hint} first.")

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self._repr_params().items())
        return f"{type(self).__name__}({args})"

    def _repr_params(self):
        return self.get_params()


def _init_names(cls):
    return [name for name in inspect.signature(cls.__init__).parameters if name != "self"]


def constructor_params(obj) -> dict:
    """``{name: value}`` of every ``__init__`` argument, read from the attribute of the same name, as JSON
    types (tuples become lists, numpy scalars Python scalars)."""
    return {name: _jsonable(getattr(obj, name)) for name in _init_names(type(obj))}


def _jsonable(value):
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    return value


# --- reading untrusted state ------------------------------------------------------------------------
_MISSING = object()


def state_error(owner, key, expected, got):
    """A :class:`StateError` in the one template: "Expected state field <key> of <owner> <expected>, got <got>."
    (``owner``: a class, an instance or None), for checks :func:`state_scalar` / :func:`state_array` cannot express."""
    if owner is None:
        who = "component"
    else:
        who = owner.__name__ if isinstance(owner, type) else type(owner).__name__
    return StateError(f"Expected state field {key!r} of {who} {expected}, got {got}.")


def state_scalar(state, key, type_=float, *, minimum=None, maximum=None, exclusive=False, choices=None,
                 default=_MISSING, owner=None):
    """Pop ``state[key]`` and check it: ``type_`` is ``float`` (finite real), ``int`` (integral, not bool),
    ``bool`` or ``str``; ``minimum``/``maximum`` bound it (strictly with ``exclusive``); ``choices`` lists
    the allowed values. A missing key returns ``default`` if given, else raises :class:`StateError`.

    >>> state_scalar({"temperature": 1.5}, "temperature", minimum=0, exclusive=True)
    1.5
    """
    if key not in state:
        if default is not _MISSING:
            return default
        raise state_error(owner, key, "to be present", "a state without it")
    value = state.pop(key)
    if type_ is bool:
        if not isinstance(value, bool):
            raise state_error(owner, key, "as true/false", f"{type(value).__name__} {value!r}")
        return value
    if type_ is str:
        if not isinstance(value, str):
            raise state_error(owner, key, "as a string", f"{type(value).__name__} {value!r}")
    elif type_ is int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            if not (isinstance(value, float) and value.is_integer()):
                raise state_error(owner, key, "as an integer", f"{type(value).__name__} {value!r}")
        value = int(value)
    else:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise state_error(owner, key, "as a real number", f"{type(value).__name__} {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise state_error(owner, key, "finite", repr(value))
    if choices is not None and value not in choices:
        raise state_error(owner, key, f"in {sorted(choices)}", repr(value))
    if minimum is not None and (value < minimum or (exclusive and value == minimum)):
        raise state_error(owner, key, f"{'>' if exclusive else '>='} {minimum}", repr(value))
    if maximum is not None and (value > maximum or (exclusive and value == maximum)):
        raise state_error(owner, key, f"{'<' if exclusive else '<='} {maximum}", repr(value))
    return value


def state_array(arrays, key, *, shape=None, kind="f", finite=True, minimum=None, maximum=None, increasing=None,
                default=_MISSING, owner=None):
    """Pop ``arrays[key]`` and check it; return it as float64 (``kind="f"``), int64 (``"i"``), bool (``"b"``)
    or a fixed-width string array (``"U"``).

    ``shape`` is a tuple whose entries are ints or ``None`` (any length); ``finite`` refuses NaN/inf
    (``"allow_inf"`` lets ±inf through, e.g. conformal thresholds); ``minimum``/``maximum`` bound every
    entry; ``increasing="strict"|"weak"`` requires sorted values along the last axis.
    """
    if key not in arrays:
        if default is not _MISSING:
            return default
        raise state_error(owner, key, "(an array) to be present", "a state without it")
    a = arrays.pop(key)
    a = np.asarray(a)
    allowed = {"b": "b", "f": "biuf", "i": "biu", "U": "U"}[kind]
    if a.dtype.kind not in allowed or a.dtype.hasobject:
        what = {"b": "bool", "i": "integer", "f": "real", "U": "string"}[kind]
        raise state_error(owner, key, f"as {'an' if what[0] in 'aeiou' else 'a'} {what} array", f"dtype {a.dtype}")
    if shape is not None:
        ok = a.ndim == len(shape) and all(s is None or s == d for s, d in zip(shape, a.shape))
        if not ok:
            want = "(" + ", ".join("any" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"
            raise state_error(owner, key, f"of shape {want}", f"shape {a.shape}")
    if kind == "f":
        a = a.astype(np.float64)
        if finite:
            bad = np.isnan(a) if finite == "allow_inf" else ~np.isfinite(a)
            if bad.any():
                raise state_error(owner, key, "finite" if finite is True else "without NaN",
                                   f"{int(bad.sum())} non-finite entries")
    elif kind == "i":
        a = a.astype(np.int64)
    if a.size and kind in "fi":
        if minimum is not None and a.min() < minimum:
            raise state_error(owner, key, f"with entries >= {minimum}", f"a minimum of {a.min()!r}")
        if maximum is not None and a.max() > maximum:
            raise state_error(owner, key, f"with entries <= {maximum}", f"a maximum of {a.max()!r}")
        if increasing and a.shape[-1] > 1:
            d = np.diff(a, axis=-1)
            if (d <= 0).any() if increasing == "strict" else (d < 0).any():
                raise state_error(owner, key, f"{'strictly ' if increasing == 'strict' else ''}increasing",
                                   "values out of order")
    return a
