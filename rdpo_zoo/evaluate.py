"""Evaluation: sample a prompt set over seeds and score every image with several rewards.

Every (prompt, seed) pair is one sample; batches are formed in a fixed order and each batch's noise comes from a
generator seeded by its seed and position, so two calls with the same arguments draw the same noise: a base and a
tuned model (adapter off and on) are compared on identical initial noise and sampling noise.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import torch

from rdpo_zoo.diffusion import DiffusionModel
from rdpo_zoo.rewards import Reward

__all__ = ["sample_rewards", "summary", "evaluate_rewards", "save_comparison_grid"]


def summary(values: torch.Tensor) -> dict:
    """Mean and standard error of a 1-D tensor."""
    n = values.numel()
    return {"mean": float(values.mean()), "se": float(values.std() / math.sqrt(n)) if n > 1 else float("nan"), "n": n}


def _seed(seed: int, start: int) -> int:
    return seed * 1_000_003 + start * 7919 + 17


@torch.no_grad()
def sample_rewards(model: DiffusionModel, prompts: Sequence[str], seeds: Sequence[int], rewards: dict[str, Reward],
                   batch_size: int = 32, reference: bool = False, keep_images: int = 0,
                   images: Optional[list] = None, progress: Optional[str] = None) -> dict[str, torch.Tensor]:
    """Rewards ``{name: [len(seeds)·len(prompts)]}`` of samples of every prompt under every seed (seed-major).

    ``reference=True`` samples with the LoRA adapter disabled (the base model). With ``keep_images`` > 0 the first
    that many images (``[3, H, W]`` in [0, 1], on the CPU) are appended to the list ``images``. ``progress``
    names a progress bar over the batches (shown on a terminal only)."""
    if keep_images and images is None:
        raise ValueError("images: expected a list to append the kept images to when keep_images > 0")
    if not prompts:
        raise ValueError("prompts: expected at least one prompt")
    if not rewards:
        raise ValueError("rewards: expected at least one reward")
    from tqdm.auto import tqdm

    scores: dict[str, list] = {name: [] for name in rewards}
    batches = [(seed, start) for seed in seeds for start in range(0, len(prompts), batch_size)]
    # disable=None: tqdm shows the bar on a terminal only (a log file gets the callers' lines instead)
    for seed, start in tqdm(batches, desc=progress, unit="batch", disable=None if progress else True, leave=False):
        chunk = list(prompts[start:start + batch_size])
        generator = torch.Generator().manual_seed(_seed(int(seed), start))
        cond = model.encode(chunk)
        if reference:
            with model.reference():
                latents = model.sample(cond, generator)
        else:
            latents = model.sample(cond, generator)
        decoded = model.decode(latents)
        for name, reward in rewards.items():
            scores[name].append(reward.score(decoded, chunk).float().cpu())
        if keep_images > len(images or ()):
            images.extend(decoded[: keep_images - len(images)].float().cpu())
    return {name: torch.cat(values) for name, values in scores.items()}


def evaluate_rewards(model: DiffusionModel, prompts: Sequence[str], seeds: Sequence[int], rewards: dict[str, Reward],
                     batch_size: int = 32, compare_base: bool = False, progress: bool = False) -> dict:
    """A table: per reward, mean ± s.e. over prompts × seeds (and, with ``compare_base``, the base model's and the
    paired gain)."""
    tuned = sample_rewards(model, prompts, seeds, rewards, batch_size,
                           progress=("tuned" if compare_base else "model") if progress else None)
    table = {name: {"tuned" if compare_base else "model": summary(values)} for name, values in tuned.items()}
    if compare_base:
        base = sample_rewards(model, prompts, seeds, rewards, batch_size, reference=True,
                              progress="base" if progress else None)
        for name in rewards:
            table[name]["base"] = summary(base[name])
            table[name]["gain"] = summary(tuned[name] - base[name])
    return {"prompts": len(prompts), "seeds": list(seeds), "samples": len(prompts) * len(seeds), "rewards": table}


def save_comparison_grid(rows: Sequence[Sequence[torch.Tensor]], path, scale: int = 2) -> Path:
    """A PNG of image rows (e.g. base above tuned, the same prompt and noise in each column), each image
    ``[3, H, W]`` in [0, 1], enlarged ``scale`` times (nearest) so that 64×64 samples can be looked at."""
    from PIL import Image

    rows = [list(row) for row in rows if len(row)]
    if not rows:
        raise ValueError("rows: expected at least one non-empty row of images")
    columns = max(len(row) for row in rows)
    _, h, w = rows[0][0].shape
    gap = 2
    canvas = torch.ones(3, len(rows) * (h + gap) - gap, columns * (w + gap) - gap)
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            canvas[:, i * (h + gap): i * (h + gap) + h, j * (w + gap): j * (w + gap) + w] = image.clamp(0, 1)
    array = (canvas.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    picture = Image.fromarray(array)
    picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    path = Path(path)
    picture.save(path)
    return path
