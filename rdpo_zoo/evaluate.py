"""Evaluation: sample a prompt set over seeds and score every image with several rewards.

Every (prompt, seed) pair is one sample; batches are formed in a fixed order and each batch's noise comes from a
generator seeded by its seed and position, so two calls with the same arguments draw the same noise: a base and a
tuned model (adapter off and on) are compared on identical initial noise and sampling noise.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from rdpo_zoo.diffusion import DiffusionModel
from rdpo_zoo.rewards import Reward

__all__ = ["sample_rewards", "summary", "evaluate_rewards"]


def summary(values: torch.Tensor) -> dict:
    """Mean and standard error of a 1-D tensor."""
    n = values.numel()
    return {"mean": float(values.mean()), "se": float(values.std() / math.sqrt(n)) if n > 1 else float("nan"), "n": n}


def _seed(seed: int, start: int) -> int:
    return seed * 1_000_003 + start * 7919 + 17


@torch.no_grad()
def sample_rewards(model: DiffusionModel, prompts: Sequence[str], seeds: Sequence[int], rewards: dict[str, Reward],
                   batch_size: int = 32, reference: bool = False) -> dict[str, torch.Tensor]:
    """Rewards ``{name: [len(seeds)·len(prompts)]}`` of samples of every prompt under every seed (seed-major).

    ``reference=True`` samples with the LoRA adapter disabled (the base model)."""
    if not prompts:
        raise ValueError("prompts: expected at least one prompt")
    if not rewards:
        raise ValueError("rewards: expected at least one reward")
    scores: dict[str, list] = {name: [] for name in rewards}
    for seed in seeds:
        for start in range(0, len(prompts), batch_size):
            chunk = list(prompts[start:start + batch_size])
            generator = torch.Generator().manual_seed(_seed(int(seed), start))
            cond = model.encode(chunk)
            if reference:
                with model.reference():
                    latents = model.sample(cond, generator)
            else:
                latents = model.sample(cond, generator)
            images = model.decode(latents)
            for name, reward in rewards.items():
                scores[name].append(reward.score(images, chunk).float().cpu())
    return {name: torch.cat(values) for name, values in scores.items()}


def evaluate_rewards(model: DiffusionModel, prompts: Sequence[str], seeds: Sequence[int], rewards: dict[str, Reward],
                     batch_size: int = 32, compare_base: bool = False) -> dict:
    """A table: per reward, mean ± s.e. over prompts × seeds (and, with ``compare_base``, the base model's and the
    paired gain)."""
    tuned = sample_rewards(model, prompts, seeds, rewards, batch_size)
    table = {name: {"tuned" if compare_base else "model": summary(values)} for name, values in tuned.items()}
    if compare_base:
        base = sample_rewards(model, prompts, seeds, rewards, batch_size, reference=True)
        for name in rewards:
            table[name]["base"] = summary(base[name])
            table[name]["gain"] = summary(tuned[name] - base[name])
    return {"prompts": len(prompts), "seeds": list(seeds), "samples": len(prompts) * len(seeds), "rewards": table}
