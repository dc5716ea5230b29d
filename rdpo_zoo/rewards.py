"""The reward contract every reward part implements.

A reward scores decoded images given their prompts: higher is better. Estimators (final-order, x̂0, ΔQ) call
it on final images or on one-step x̂0 predictions; TailorPO-G guidance needs its differentiable form.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from rdpo_zoo.errors import UserInputError

__all__ = ["Reward", "RewardNotDifferentiableError", "CombinedReward", "RewardSpecError", "parse_reward_spec",
           "split_reward_options"]


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


# ---------------------------------------------------------------------------------------------------------------
# Combined rewards: ``world-fidelity+world-aesthetic:0.5``.

class RewardSpecError(UserInputError):
    """A reward specification (``NAME[:WEIGHT]+NAME[:WEIGHT]...``) that cannot be read; the message names it."""


def parse_reward_spec(spec: str) -> list[tuple[str, float]]:
    """``"world-fidelity+world-aesthetic:0.5"`` → ``[("world-fidelity", 1.0), ("world-aesthetic", 0.5)]``.

    A plain name is one part of weight 1. Weights are finite positive numbers; a name may appear once."""
    if not isinstance(spec, str) or not spec.strip():
        raise RewardSpecError(f"reward: expected NAME or NAME[:WEIGHT]+NAME[:WEIGHT]..., got {spec!r}")
    parts: list[tuple[str, float]] = []
    for item in spec.split("+"):
        name, sep, weight_text = item.strip().partition(":")
        name = name.strip()
        if not name:
            raise RewardSpecError(f"reward: {spec!r} has an empty part; expected NAME[:WEIGHT]+NAME[:WEIGHT]...")
        weight = 1.0
        if sep:
            try:
                weight = float(weight_text)
            except ValueError:
                raise RewardSpecError(f"reward: the weight of {name!r} in {spec!r} is {weight_text.strip()!r}; "
                                      "expected a positive number") from None
            if not math.isfinite(weight) or weight <= 0:
                raise RewardSpecError(f"reward: the weight of {name!r} in {spec!r} is {weight_text.strip()!r}; "
                                      "expected a finite positive number")
        if any(name == seen for seen, _ in parts):
            raise RewardSpecError(f"reward: {name!r} appears twice in {spec!r}; give each part once with its weight")
        parts.append((name, weight))
    return parts


def split_reward_options(parts: Sequence[str], options: Optional[dict]) -> dict[str, dict]:
    """Route ``{"world-aesthetic.sharpness": v}`` to its part: ``{part: {key: value}}``. With one part a plain
    ``key`` is that part's; with several every key must name its part (``PART.KEY``)."""
    routed: dict[str, dict] = {name: {} for name in parts}
    for key, value in (options or {}).items():
        owner, dot, option = str(key).partition(".")
        if dot and owner in routed:
            routed[owner][option] = value
        elif len(parts) == 1:  # the part itself names a key it does not know
            routed[parts[0]][key] = value
        else:
            raise RewardSpecError(f"reward_options: {key!r} names no part of the combined reward; expected "
                                  f"PART.KEY=VALUE with PART one of {', '.join(parts)}")
    return routed


class CombinedReward(Reward):
    """Σ_k w_k · r_k / scale_k over its parts: each part in units of its own ``scale`` (a meaningful difference),
    so weights compare rewards of different units. Its own ``scale`` is 1 (a combined value of 1 is one
    meaningful difference of a weight-1 part). Differentiable when every part is; timestep-aware when every part is.
    """

    name = "combined"
    unit = "Σ weight · reward / scale"
    scale = 1.0

    def __init__(self, parts: Sequence[tuple[str, float, Reward]]):
        if not parts:
            raise ValueError("parts: expected at least one (name, weight, reward)")
        self.parts = [(str(n), float(w), r) for n, w, r in parts]
        self.name = "+".join(n if w == 1.0 else f"{n}:{w:g}" for n, w, _ in self.parts)
        self.differentiable = all(r.differentiable for _, _, r in self.parts)
        self.accepts_timestep = all(r.accepts_timestep for _, _, r in self.parts)

    def part_scores(self, images: torch.Tensor, prompts: Sequence[str], timesteps=None) -> dict[str, torch.Tensor]:
        """Each part's raw reward ``[B]`` (its own unit), by part name."""
        return {n: r.score(images, prompts, timesteps).float() for n, _, r in self.parts}

    def combine(self, scores: dict[str, torch.Tensor]) -> torch.Tensor:
        """The combined value of the parts' raw rewards."""
        return sum(w * scores[n] / r.scale for n, w, r in self.parts)

    def score(self, images, prompts, timesteps=None):
        return self.combine(self.part_scores(images, prompts, timesteps))

    def score_differentiable(self, images, prompts, timesteps=None):
        for n, _, r in self.parts:
            if not r.differentiable:
                raise RewardNotDifferentiableError(
                    f"reward: part {n!r} of {self.name!r} has no differentiable form, so the combination cannot "
                    "drive gradient guidance (TailorPO-G); drop that part or turn guidance off")
        return sum(w * r.score_differentiable(images, prompts, timesteps).float() / r.scale
                   for _, w, r in self.parts)
