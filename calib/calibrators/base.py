"""The calibrator contract shared by every entry of :data:`calib.calibrators.REGISTRY`.

A calibrator maps logits (n, k) to calibrated probabilities (n, k). Its whole fitted state is plain
JSON scalars plus numpy arrays, so that :mod:`calib.artifacts` can store it without pickle and the
deployment runtime can rebuild it with numpy alone.
"""

from __future__ import annotations

import inspect

import numpy as np

from calib._validation import check_logits

__all__ = ["Calibrator", "NotFittedError", "softmax", "constructor_params"]


class NotFittedError(ValueError, AttributeError):
    """Raised when a method that needs a fitted object is called before ``fit``."""


def softmax(logits, *, beta=1.0):
    """Row-wise ``softmax(beta * logits)`` in the input's precision (float32 stays float32), chunked.

    >>> softmax(np.array([[0.0, np.log(3.0)]])).round(6).tolist()
    [[0.25, 0.75]]
    """
    x = np.asarray(logits)
    out = np.empty(x.shape, dtype=np.result_type(x.dtype, np.float32))
    rows = _chunk_rows(x.shape[1])
    scale = out.dtype.type(beta)
    for start in range(0, x.shape[0], rows):
        block = out[start:start + rows]
        chunk = x[start:start + rows]
        np.subtract(chunk, chunk.max(axis=1, keepdims=True), out=block, casting="unsafe")
        if beta != 1.0:
            block *= scale
        np.exp(block, out=block)
        block /= block.sum(axis=1, keepdims=True)
    return out


def _chunk_rows(n_classes, target_bytes=1 << 20):
    """Rows per chunk so that one float32 chunk is about ``target_bytes`` (stays in cache)."""
    return max(16, target_bytes // (4 * max(int(n_classes), 1)))


class Calibrator:
    """Base class: keyword-only constructor, ``fit(logits, labels) -> self``, ``predict_proba(logits)``.

    Subclasses set ``kind`` (the registry name), validate their hyper-parameters in ``__init__`` and
    implement ``_fit``, ``_predict_proba``, ``get_state`` and ``_set_state``.
    """

    kind: str = ""

    # --- public API -------------------------------------------------------------------------------
    def fit(self, logits, labels):
        from calib._validation import check_logits_labels

        x, y = check_logits_labels(logits, labels)
        self._fit(x, y)
        self.n_classes_ = int(x.shape[1])
        return self

    def predict_proba(self, logits):
        """Calibrated probabilities, shape (n_samples, n_classes), rows summing to 1."""
        self._check_fitted()
        x = check_logits(logits, "logits", n_classes=self.n_classes_)
        return self._predict_proba(x)

    def get_params(self) -> dict:
        """Constructor arguments, JSON-serialisable (what ``__init__`` was called with)."""
        return constructor_params(self)

    def get_state(self):
        """Fitted state as ``(scalars: dict, arrays: dict[str, ndarray])``; both empty for stateless ones."""
        self._check_fitted()
        scalars, arrays = self._get_state()
        return {"n_classes": self.n_classes_, **scalars}, arrays

    @classmethod
    def from_state(cls, params, state, arrays):
        """Rebuild a fitted calibrator from ``get_params()`` and ``get_state()`` output."""
        obj = cls(**params)
        state = dict(state)
        obj.n_classes_ = int(state.pop("n_classes"))
        obj._set_state(state, arrays)
        return obj

    # --- hooks --------------------------------------------------------------------------------------
    def _fit(self, logits, labels):
        raise NotImplementedError

    def _predict_proba(self, logits):
        raise NotImplementedError

    def _get_state(self):
        return {}, {}

    def _set_state(self, state, arrays):
        pass

    def _check_fitted(self):
        if not hasattr(self, "n_classes_"):
            raise NotFittedError(
                f"{type(self).__name__} is not fitted yet; call fit(logits, labels) before predict_proba()."
            )

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


def constructor_params(obj) -> dict:
    """``{name: value}`` of every ``__init__`` argument, read from the attribute of the same name, as JSON
    types (tuples become lists, numpy scalars Python scalars). Shared by every artifact component."""
    sig = inspect.signature(type(obj).__init__)
    return {name: _jsonable(getattr(obj, name)) for name in sig.parameters if name != "self"}


def _jsonable(value):
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    return value
