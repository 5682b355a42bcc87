"""Routing policies: turn calibrated probabilities (and optionally conformal sets) into per-item actions
answer / escalate / fallback, with guarantees (Learn then Test), a cost model and product metrics.

Every entry of :data:`REGISTRY` has ``kind``, ``get_params()``, ``get_state()`` and ``from_state()``, so
:mod:`calib.artifacts` stores a fitted policy as JSON + npz and rebuilds it through this table.
"""

from calib.policy.costs import CostModel
from calib.policy.guarantees import Guarantee, ltt_threshold
from calib.policy.routing import (
    ACTIONS,
    ANSWER,
    ESCALATE,
    FALLBACK,
    ConformalRoutingPolicy,
    CostPolicy,
    Decision,
    RiskControlPolicy,
    RoutingPolicy,
    ThresholdPolicy,
)

#: name -> class; the artifact loader rebuilds policies only through this table.
REGISTRY: dict[str, type[RoutingPolicy]] = {
    cls.kind: cls for cls in (ThresholdPolicy, RiskControlPolicy, ConformalRoutingPolicy, CostPolicy)
}

__all__ = ["REGISTRY", "ACTIONS", "ANSWER", "ESCALATE", "FALLBACK", "CostModel", "Decision", "Guarantee",
           "ltt_threshold", "RoutingPolicy", "ThresholdPolicy", "RiskControlPolicy", "ConformalRoutingPolicy",
           "CostPolicy"]
