"""Guarded instantiation of experiment configs (hydra is imported lazily).

Only ``_target_`` values inside the ``calib`` package are instantiated, so a config cannot make calib
call arbitrary code. Artifacts never go through this path: they are rebuilt from their registries.
"""

from __future__ import annotations

__all__ = ["instantiate"]


def _targets(node, where=""):
    from omegaconf import DictConfig, ListConfig

    if isinstance(node, DictConfig):
        for key, value in node.items_ex(resolve=False):
            if key == "_target_":
                yield where or "<root>", value
            else:
                yield from _targets(value, f"{where}.{key}" if where else str(key))
    elif isinstance(node, ListConfig):
        for i, value in enumerate(node):
            yield from _targets(value, f"{where}[{i}]")


def instantiate(node, **kwargs):
    """``hydra.utils.instantiate`` for configs whose every ``_target_`` starts with ``calib.``.

    A ``ValueError``/``TypeError``/``OSError`` raised by the target itself (a bad argument, a missing
    file) is re-raised as itself, with the config node noted, rather than wrapped in Hydra's
    ``InstantiationException``: callers and tests see the error type calib documents.
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate as _instantiate

    for where, target in _targets(node):
        if not isinstance(target, str) or not target.startswith("calib."):
            raise ValueError(f"Expected _target_ inside the calib package at {where}, got {target!r}.")
    try:
        return _instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, (ValueError, TypeError, OSError)):
            cause.add_note(str(err).splitlines()[0] + (f" ({err.full_key})" if getattr(err, "full_key", "") else ""))
            raise cause from None
        raise
