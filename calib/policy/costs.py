"""Cost model of a routing decision: what a wrong answer, an escalation and a wrong fallback cost, how
accurate and how slow the person who takes escalations is.

Units are free (money, minutes of rework, ...) but must be the same for every cost. Time is in seconds
by convention.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import numpy as np

__all__ = ["CostModel", "as_cost_model"]


def _nonneg(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"Expected {name} as a real number >= 0, got {type(value).__name__} {value!r}.")
    v = float(value)
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"Expected {name} >= 0 (finite), got {value!r}.")
    return v


@dataclasses.dataclass(frozen=True)
class CostModel:
    """Costs and handling times of the three actions (keyword-only, validated).

    Parameters
    ----------
    wrong_answer : float, default 1.0
        Cost of a wrong final output (a silent failure; also a human error on an escalation).
    escalation : float, default 0.2
        Cost of handing one item to a person (on top of the person's possible error).
    wrong_fallback : float, default 1.0
        Cost of a wrong output from the fallback logic.
    human_accuracy : float in [0, 1], default 0.98
        Probability that the person's answer on an escalated item is right.
    human_time, model_time, fallback_time : float >= 0, default 60.0, 0.0, 0.0
        Handling time of one item per route (seconds).

    Expected cost per item of each action, given the calibrated probability ``p_pred`` of the model's
    label and ``p_fb`` of the fallback's label::

        answer   : (1 - p_pred) * wrong_answer
        escalate : escalation + (1 - human_accuracy) * wrong_answer
        fallback : (1 - p_fb) * wrong_fallback

    >>> CostModel(wrong_answer=1.0, escalation=0.1).action_costs(np.array([0.95, 0.5]), None).round(3).tolist()
    [[0.05, 0.12, inf], [0.5, 0.12, inf]]
    """

    wrong_answer: float = 1.0
    escalation: float = 0.2
    wrong_fallback: float = 1.0
    human_accuracy: float = 0.98
    human_time: float = 60.0
    model_time: float = 0.0
    fallback_time: float = 0.0

    def __post_init__(self):
        for f in dataclasses.fields(self):
            if f.name == "human_accuracy":
                continue
            object.__setattr__(self, f.name, _nonneg(getattr(self, f.name), f"costs.{f.name}"))
        h = self.human_accuracy
        if isinstance(h, bool) or not isinstance(h, numbers.Real):
            raise TypeError(f"Expected costs.human_accuracy as a real number in [0, 1], got {type(h).__name__} {h!r}.")
        if not 0.0 <= float(h) <= 1.0:
            raise ValueError(f"Expected costs.human_accuracy in [0, 1], got {h!r}.")
        object.__setattr__(self, "human_accuracy", float(h))

    def to_dict(self):
        return dataclasses.asdict(self)

    @property
    def escalation_cost(self):
        """Expected cost of one escalation: handling cost plus the person's expected error cost."""
        return self.escalation + (1.0 - self.human_accuracy) * self.wrong_answer

    def action_costs(self, p_pred, p_fallback):
        """Expected cost of (answer, escalate, fallback) per item, shape (n, 3); inf where no fallback."""
        p_pred = _probabilities(p_pred, "p_pred")
        p_fb = None if p_fallback is None else _probabilities(p_fallback, "p_fallback", n=p_pred.size)
        out = np.empty((p_pred.size, 3))
        out[:, 0] = (1.0 - p_pred) * self.wrong_answer
        out[:, 1] = self.escalation_cost
        out[:, 2] = np.inf if p_fb is None else (1.0 - p_fb) * self.wrong_fallback
        return out


def _probabilities(x, name, n=None):
    """A 1-D float64 array of probabilities in [0, 1] (of length ``n`` when given)."""
    from calib._validation import as_array

    a = as_array(x, name)
    if a.dtype.kind not in "fiu" or a.dtype.kind == "b":
        raise TypeError(f"Expected {name} as probabilities (real numbers in [0, 1]), got dtype {a.dtype}.")
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"Expected {name} of shape (n,), got shape {a.shape}.")
    if n is not None and a.size != n:
        raise ValueError(f"Expected {name} of length {n} (one per entry of p_pred), got length {a.size}.")
    bad = ~((a >= 0) & (a <= 1 + 1e-3))  # NaN fails both; rows summing to 1 within tolerance may exceed 1 a little
    if bad.any():
        raise ValueError(f"Expected {name} in [0, 1], got {int(bad.sum())} entries outside it or NaN "
                         f"(e.g. {float(a[bad][0])!r}).")
    return a


def as_cost_model(costs):
    """A :class:`CostModel` from None (defaults), a mapping of its fields, or a CostModel."""
    if costs is None:
        return CostModel()
    if isinstance(costs, CostModel):
        return costs
    if hasattr(costs, "items"):
        valid = [f.name for f in dataclasses.fields(CostModel)]
        unknown = sorted(set(costs) - set(valid))
        if unknown:
            raise ValueError(f"Unknown cost fields {unknown}; valid options: {sorted(valid)}.")
        return CostModel(**dict(costs))
    raise TypeError(f"Expected costs as a mapping or CostModel, got {type(costs).__name__}.")
