"""The reward contract every reward part implements.

A reward scores decoded images given their prompts: higher is better. Estimators (final-order, x̂0, ΔQ) call
it on final images or on one-step x̂0 predictions; TailorPO-G guidance needs its differentiable form.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

__all__ = ["Reward", "RewardNotDifferentiableError"]


class RewardNotDifferentiableError(TypeError):
    """Raised when a reward without a differentiable form is asked for a gradient (e.g. for guidance)."""


class Reward:
    """Base class of rewards.

    Subclasses set ``name`` and ``scale`` and implement :meth:`score` (and :meth:`score_differentiable` where a
    gradient exists, setting ``differentiable = True``).

    Attributes:
        name: the registry name.
        scale: the typical size of a meaningful difference between two images' rewards, in the reward's unit, so
            that thresholds and sweeps can be stated per reward (SPO's gap threshold is applied to Δ/scale).
        unit: what the number means (for tables).
        differentiable: whether :meth:`score_differentiable` returns a tensor with a graph back to ``images``.
        accepts_timestep: whether the reward conditions on the diffusion timestep (a step-aware preference model,
            as SPO's); such a reward can serve directly as a step-reward estimator.
    """

    name: str = "reward"
    scale: float = 1.0
    unit: str = ""
    differentiable: bool = False
    accepts_timestep: bool = False

    def score(
        self, images: torch.Tensor, prompts: Sequence[str], timesteps: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """Rewards ``[B]`` (float32, on ``images.device``) of images ``[B, 3, H, W]`` with values in [0, 1]."""
        raise NotImplementedError

    def score_differentiable(
        self, images: torch.Tensor, prompts: Sequence[str], timesteps: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """Like :meth:`score`, with a graph back to ``images``; refuses rewards without a differentiable form."""
        raise RewardNotDifferentiableError(
            f"reward {self.name!r} has no differentiable form, so it cannot drive gradient guidance (TailorPO-G); "
            "choose a differentiable reward or turn guidance off"
        )

    def __call__(self, images: torch.Tensor, prompts: Sequence[str], timesteps=None) -> torch.Tensor:
        return self.score(images, prompts, timesteps)

    @staticmethod
    def check_images(images: torch.Tensor, prompts: Sequence[str]) -> None:
        """The shared input check: ``[B, 3, H, W]`` floating images and B prompts."""
        if not isinstance(images, torch.Tensor) or not images.is_floating_point():
            raise TypeError("images: expected a floating torch.Tensor [B, 3, H, W] with values in [0, 1]")
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images: expected shape [B, 3, H, W], got {tuple(images.shape)}")
        if len(prompts) != images.shape[0]:
            raise ValueError(f"prompts: expected {images.shape[0]} prompts (one per image), got {len(prompts)}")
