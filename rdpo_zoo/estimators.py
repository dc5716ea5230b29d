"""The step-reward estimator contract: how a rollout turns rewards into per-step values and preference labels.

An estimator maps what a rollout measured at one step to a value per candidate; the candidate with the highest
value is preferred. What a rollout can measure:

- ``q_parent``: Q(x_t) = r(c, x̂0(x_t)), the reward of the one-step prediction of the state the candidates
  come from (``[B]`` for branching rollouts, ``[B, 2]`` for trajectory pairs, whose branches have their own x_t);
- ``q_children``: Q(x_{t-1}) = r(c, x̂0(x_{t-1})) of each candidate, ``[B, k]``;
- ``q_lookahead``: Q(x_{t-2}) of a one-step continuation of each candidate, ``[B, k]`` (only if asked for);
- ``final``: the reward of each candidate's final image, ``[B, k]`` (free for trajectory pairs; costs a completion
  of every candidate for branching rollouts).

The built-in estimators (``final-order``, ``x0-hat``, ``delta-q``) are plugins in ``rdpo_zoo.plugins``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:  # the contract itself needs no torch: plugins subclass it without importing torch at load time
    import torch

__all__ = ["Estimator", "StepMeasurements"]


@dataclass
class StepMeasurements:
    q_parent: Optional["torch.Tensor"] = None
    q_children: Optional["torch.Tensor"] = None
    q_lookahead: Optional["torch.Tensor"] = None
    final: Optional["torch.Tensor"] = None


class Estimator:
    """Base class of step-reward estimators.

    Attributes declare what the rollout must measure; :meth:`values` turns the measurements into ``[B, k]``
    values (higher is preferred) and :meth:`keep` may drop whole groups (``[B]`` mask).
    """

    name: str = "estimator"
    needs_parent: bool = False
    needs_children: bool = True
    needs_lookahead: bool = False
    needs_final: bool = False

    def values(self, m: StepMeasurements) -> torch.Tensor:
        raise NotImplementedError

    def keep(self, values: torch.Tensor, m: StepMeasurements) -> Optional[torch.Tensor]:
        """An optional ``[B]`` mask of groups to keep (``None``: keep all)."""
        return None
