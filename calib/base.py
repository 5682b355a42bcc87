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

import numpy as np

__all__ = ["Component", "NotFittedError", "constructor_params"]


class NotFittedError(ValueError, AttributeError):
    """Raised when a method that needs a fitted component is called before ``fit``."""


class Component:
    """Base of every storable component.

    Subclasses set ``kind`` (the registry name), validate their arguments in a keyword-only
    ``__init__`` that stores each one under its own name, and implement ``_get_state`` / ``_set_state``
    (fitted scalars and arrays beyond ``n_classes_``). ``_fit_hint`` completes the not-fitted message.
    """

    kind: str = ""
    _fit_hint = "fit(...)"

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
        """Rebuild a fitted component from ``get_params()`` and ``get_state()`` output."""
        obj = cls(**cls._upgrade_params(dict(params)))
        state = dict(state)
        obj.n_classes_ = int(state.pop("n_classes"))
        obj._set_state(state, dict(arrays))
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
