"""The calibrator contract shared by every entry of :data:`calib.calibrators.REGISTRY`
(:class:`calib.base.Component` with ``fit(logits, labels)`` and ``predict_proba(logits)``).

A calibrator maps logits (n, k) to calibrated probabilities (n, k). Its whole fitted state is plain
JSON scalars plus numpy arrays, so that :mod:`calib.artifacts` can store it without pickle and the
deployment runtime can rebuild it with numpy alone.
"""

from __future__ import annotations

import numpy as np

from calib import _chunks as chunking
from calib._validation import check_logits, check_logits_labels, warn_if_probabilities
from calib.base import Component, NotFittedError, constructor_params, state_error  # noqa: F401  (state_error re-exported)

__all__ = ["Calibrator", "NotFittedError", "softmax", "constructor_params", "state_error", "check_option"]


def check_option(value, name, options):
    """``value`` if it is one of the strings ``options``, else ``TypeError`` (not a string) or ``ValueError``,
    in the template "Expected <name> as one of [...], got ..."."""
    if not isinstance(value, str):
        raise TypeError(f"Expected {name} as one of {list(options)}, got {type(value).__name__} {value!r:.80}.")
    if value not in options:
        raise ValueError(f"Expected {name} as one of {list(options)}, got {value!r:.80}.")
    return value


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
        with np.errstate(over="ignore"):  # a row range beyond the dtype gives -inf: probability exactly 0
            np.subtract(chunk, chunk.max(axis=1, keepdims=True), out=block, casting="unsafe")
        if beta != 1.0:
            block *= scale
        np.exp(block, out=block)
        block /= block.sum(axis=1, keepdims=True)
    return out


def _chunk_rows(n_classes):
    """Rows per chunk so that one float32 chunk stays in cache (:data:`calib._chunks.CACHE`)."""
    return chunking.rows_per_chunk(n_classes, nbytes=chunking.CACHE, minimum=16)


class Calibrator(Component):
    """Base class: keyword-only constructor, ``fit(logits, labels) -> self``, ``predict_proba(logits)``.

    Subclasses set ``kind`` (the registry name), validate their hyper-parameters in ``__init__`` and
    implement ``_fit``, ``_predict_proba``, ``_get_state`` and ``_set_state`` (:class:`calib.base.Component`).
    """

    _fit_hint = "fit(logits, labels) before predict_proba()"
    #: whether the calibrator has ``fit_chunked(blocks, n, n_classes, dtype, subsample=None)``: a fit on calibration
    #: rows read block by block (logits files larger than memory, :mod:`calib.evaluation.streaming`)
    supports_chunked_fit = False

    def fit(self, logits, labels):
        """Fit on calibration logits (n, k) and integer labels (n,); returns ``self``.

        Any array-like works: float16 and integer logits are promoted to float32 (exactly), torch tensors
        (bfloat16 upcast exactly) are copied to host memory, and views, Fortran-order arrays and memmaps
        are read as one C-ordered copy, so the fit depends on the values only, never on the layout.
        Warns (``UserWarning``) when the logits look like softmax probabilities.
        """
        x, y = check_logits_labels(logits, labels)
        x = np.ascontiguousarray(x)  # a no-op for C-ordered input; results never depend on memory layout
        warn_if_probabilities(x, "logits")
        self._fit(x, y)
        self.n_classes_ = int(x.shape[1])
        return self

    def predict_proba(self, logits):
        """Calibrated probabilities, shape (n_samples, n_classes), rows summing to 1."""
        self._check_fitted()
        x = np.ascontiguousarray(check_logits(logits, "logits", n_classes=self.n_classes_))
        return self._predict_proba(x)

    def _fit(self, logits, labels):
        raise NotImplementedError

    def _top_label_chunked(self, blocks, n_classes):
        """Top-label confidence and correctness (each (1, n), as a top-label ``_fit`` computes them) of the
        calibration rows delivered block by block; sets ``n_classes_``."""
        conf, hit = [], []
        for x, y in blocks():
            p = softmax(x)
            top = p.argmax(axis=1)
            conf.append(p[np.arange(p.shape[0]), top])
            hit.append(top == y)
        self.n_classes_ = int(n_classes)
        return np.concatenate(conf)[None, :], np.concatenate(hit)[None, :]

    def _predict_proba(self, logits):
        raise NotImplementedError
