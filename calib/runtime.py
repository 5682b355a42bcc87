"""Serve a saved pipeline with numpy alone.

>>> import calib.runtime                                          # doctest: +SKIP
>>> pipe = calib.runtime.load("outputs/calibrate/<run>/artifact")  # doctest: +SKIP
>>> out = pipe.apply(logits)          # probabilities, sets, actions, reasons   # doctest: +SKIP
>>> out.explain(0)["message"]                                                    # doctest: +SKIP

``import calib.runtime`` and everything :func:`load` and :meth:`~calib.deploy.FittedPipeline.apply` do import
numpy and the standard library only (never torch, scipy, hydra, omegaconf, matplotlib or netcal;
``tests/test_runtime.py`` runs it with those imports blocked). The objects it returns are the library's own
classes, rebuilt from the artifact and validated like user input, so their outputs equal the library's bit
for bit. ``apply`` works in row chunks (bounded memory) and never changes the pipeline, so one loaded
pipeline can serve concurrent threads.
"""

from __future__ import annotations

from calib.deploy import Decisions, FittedPipeline, NotPortableError

__all__ = ["load", "FittedPipeline", "Decisions", "NotPortableError"]


def load(path, *, key=None, max_bytes=None):
    """Load the pipeline saved at ``path`` (an artifact folder) for serving.

    Raises :class:`calib.artifacts.ArtifactError` (a ``ValueError``) for a corrupted, tampered, oversized or
    newer-schema artifact, :class:`calib.artifacts.SignatureError` for a missing or wrong signature when a
    signing key is configured (``key=`` or ``CALIB_SIGNING_KEY`` / ``CALIB_SIGNING_KEY_FILE``), and
    :class:`NotPortableError` for a component that needs a third-party package to predict (netcal).
    """
    return FittedPipeline.load(path, key=key, max_bytes=max_bytes, require_portable=True)
