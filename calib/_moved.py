"""Old import paths of modules that moved, kept working.

``MOVED`` maps an old dotted module name to its new home. :class:`_MovedFinder` (installed on
``sys.meta_path`` by ``calib/__init__.py``) answers ``import calib.policy.report`` with the module
``calib.evaluation.routing`` itself (one module object, two names), so code and notebooks written
against the old layout keep working while the old folders hold no evaluation or plotting code. The
alias is resolved only when the old name is imported: importing an algorithm package never imports
what used to live beside it.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

__all__ = ["MOVED", "install"]

#: old module -> new module (see docs/architecture.md for the layout)
MOVED = {
    "calib._threads": "calib._chunks",
    # evaluation: what an experiment needs and a deployed pipeline does not
    "calib.pipeline": "calib.evaluation.pipeline",
    "calib.results": "calib.evaluation.results",
    "calib.conformal.report": "calib.evaluation.conformal",
    "calib.conformal.metrics": "calib.evaluation.set_metrics",
    "calib.conformal.audit": "calib.evaluation.conformal_audit",
    "calib.policy.report": "calib.evaluation.routing",
    "calib.policy.product_metrics": "calib.evaluation.product_metrics",
    "calib.policy.slices": "calib.evaluation.slices",
    "calib.policy.compare": "calib.evaluation.compare",
    "calib.policy.audit": "calib.evaluation.policy_audit",
    "calib.policy.shift": "calib.evaluation.shift_report",
    # plotting: every figure
    "calib.plots": "calib.plotting.reliability",
    "calib.conformal.plots": "calib.plotting.conformal",
    "calib.policy.plots": "calib.plotting.routing",
}


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target):
        self.target = target

    def create_module(self, spec):
        module = importlib.import_module(self.target)
        self._spec = module.__spec__  # the import system overwrites __spec__ with the alias's spec
        return module

    def exec_module(self, module):
        module.__spec__ = self._spec  # already executed under its new name; keep its own spec


class _MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        new = MOVED.get(fullname)
        if new is None:
            return None
        return importlib.util.spec_from_loader(fullname, _AliasLoader(new))


def install():
    """Put the finder on ``sys.meta_path`` once (before the path finder: the old file no longer exists)."""
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _MovedFinder())
