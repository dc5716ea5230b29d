"""Step-wise best-of-N (the RDPO paper's Table 4): at each step draw N candidates from x_t, keep the best by a
step-reward estimator, continue from it; report the final reward beside plain sampling with the same seeds.

It measures an estimator without any training: a better step reward picks better continuations. The same prompts
and seeds serve every estimator and the plain baseline (the initial noise is the same; later noise differs because
the choices differ). ``final-order`` needs every candidate completed to x_0 at every step: it is offered, with its
cost in UNet evaluations stated in the result.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from rdpo_zoo.diffusion import DiffusionModel
from rdpo_zoo.estimators import Estimator
from rdpo_zoo.rewards import Reward

__all__ = ["best_of_n"]


def _summary(values: torch.Tensor) -> dict:
    n = values.numel()
    return {"mean": float(values.mean()), "se": float(values.std() / math.sqrt(n)) if n > 1 else float("nan")}


def best_of_n(
    model: DiffusionModel,
    prompts: Sequence[str],
    reward: Reward,
    estimators: dict[str, Estimator],
    n: int,
    seeds: Sequence[int] = (0,),
    steps: Optional[Sequence[int]] = None,
    batch_size: int = 8,
) -> dict:
    """Final rewards of plain sampling and of step-wise best-of-``n`` under each estimator.

    Args:
        prompts, seeds: every (prompt, seed) pair is one sample, the same for every row of the table.
        steps: the steps (t of T) at which to choose among candidates; default every step.
        batch_size: samples per batch (each expands to n candidates for the UNet).

    Returns a dict with one row per method: mean ± s.e. of the final reward, the paired gain over plain sampling
    (mean ± s.e.), and the UNet evaluations per sample.
    """
    from rdpo_zoo.rollout import rollout_branching

    if not isinstance(n, int) or n < 2:
        raise ValueError(f"n: expected an integer >= 2 candidates per step, got {n!r}")
    if not prompts:
        raise ValueError("prompts: expected at least one prompt")
    steps = list(steps) if steps is not None else list(range(model.num_steps, 0, -1))
    samples = [(p, s) for s in seeds for p in prompts]
    rows: dict[str, list] = {"plain": []}
    calls: dict[str, int] = {"plain": 0}
    for name in estimators:
        rows[name], calls[name] = [], 0
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        chunk_prompts = [p for p, _ in chunk]
        seed = chunk[0][1] * 1_000_003 + start
        with torch.no_grad():
            cond = model.encode(chunk_prompts)
            before = model.unet_calls
            latents = model.sample(cond, torch.Generator().manual_seed(seed))
            calls["plain"] += model.unet_calls - before
            rows["plain"].append(reward.score(model.decode(latents), chunk_prompts).float().cpu())
        for name, estimator in estimators.items():
            before = model.unet_calls
            result = rollout_branching(model, cond, reward, estimator, steps, torch.Generator().manual_seed(seed),
                                       k=n, continue_from="winner", store_pairs=False)
            calls[name] += model.unet_calls - before
            rows[name].append(result.final_rewards.float().cpu())
    finals = {name: torch.cat(values) for name, values in rows.items()}
    table = {}
    for name, values in finals.items():
        table[name] = {**_summary(values), "gain": _summary(values - finals["plain"]),
                       "unet_calls_per_sample": calls[name] / len(samples)}
    return {"reward": reward.name, "n": n, "samples": len(samples), "prompts": len(prompts), "seeds": list(seeds),
            "steps": steps, "methods": table}
