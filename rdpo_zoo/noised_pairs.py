"""Diffusion-DPO's pairs: a preferred and a dispreferred final image, noised with the same t and the same ε.

Diffusion-DPO (Wallace et al. 2024; SalesforceAIResearch/DiffusionDPO train.py) trains on final images, not on
sampled steps: for each pair it draws t ~ U{0..999} and one ε, forms x_t^k = √ᾱ_t·x0^k + √(1 − ᾱ_t)·ε for both
images, and compares the policy's and the reference's denoising errors. In the project's one maths this is the
paired log-ratio with ``y`` = the training target (ε for ε-prediction, shared by the pair with stride 0; per branch
for v- or x0-prediction), ``a = 0`` (x_t is not read), ``b = 1``, ``σ := 1`` and the mean reduction; then the
``dpo`` loss with β = 5000 is exactly its public objective (docs/maths.md).

Pairs come from an online rollout (two images per prompt from the current policy, ranked by the reward: the
"AI feedback" variant, ``--choice_model`` in its code) or from a folder of offline preference data
(:func:`load_offline_pairs`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from rdpo_zoo.diffusion import Conditioning, DiffusionModel, host_to_device
from rdpo_zoo.rewards import Reward

__all__ = ["NoisedPairs", "rollout_noised_pairs", "load_offline_pairs", "noised_inputs"]


@dataclass
class NoisedPairs:
    """Final latents of preference pairs: ``x0`` is ``[P, 2, C, h, w]``, column 0 preferred."""

    x0: torch.Tensor
    cond: Conditioning
    values: torch.Tensor  # [P, 2] rewards of (preferred, dispreferred); NaN for offline labels

    def __len__(self) -> int:
        return self.x0.shape[0]

    def select(self, index: torch.Tensor) -> "NoisedPairs":
        host = index.cpu()
        return NoisedPairs(self.x0[host_to_device(host, self.x0.device)], self.cond.index(host),
                           self.values[host_to_device(host, self.values.device)])


def rollout_noised_pairs(model: DiffusionModel, cond: Conditioning, reward: Reward, generator: torch.Generator,
                         threshold: float = 0.0, gap_rule: str = "raw"):
    """Two independent images per prompt from the current policy, ranked by ``reward``; ties dropped."""
    from rdpo_zoo.rollout import RolloutResult, _gap_keep

    B = len(cond)
    calls_before = model.unet_calls
    both = Conditioning.cat([cond, cond])
    with torch.no_grad():
        latents = model.sample(both, generator)
        images = model.decode(latents)
        scores = reward.score(images, both.prompts).float()
    pair_scores = scores.view(2, B).T  # [B, 2]
    winner = pair_scores.argmax(1)
    gap = (pair_scores[:, 0] - pair_scores[:, 1]).abs()
    keep = _gap_keep(gap, reward.scale, threshold, gap_rule)
    grid = latents.view(2, B, *latents.shape[1:])
    sel = keep.nonzero()[:, 0]
    w, l = winner[sel], 1 - winner[sel]
    pairs = None
    if len(sel):
        pairs = NoisedPairs(torch.stack([grid[w, sel], grid[l, sel]], 1), cond.index(sel.cpu()),
                            torch.stack([pair_scores[sel, w], pair_scores[sel, l]], 1))
    stats = {"groups": B, "pairs": len(sel), "pairs_kept_fraction": len(sel) / B,
             "unet_calls": model.unet_calls - calls_before}
    return RolloutResult(latents, images, scores, both.prompts, pairs=pairs, stats=stats)


def noised_inputs(model: DiffusionModel, x0: torch.Tensor, generator: torch.Generator):
    """``(x_t [P, 2, ...], target y, t [P])`` for a batch of pairs: one t and one noise per pair, shared by its two
    images (the step family's training process); ``y`` is the shared noise ``[P, ...]`` when the target is the noise
    itself (ε-prediction), the per-branch target (v, x0, a flow velocity) ``[P, 2, ...]`` otherwise."""
    steps = model.steps
    P = x0.shape[0]
    t = steps.sample_train_timesteps(P, generator).to(x0.device)
    eps = torch.randn((P, *x0.shape[2:]), generator=generator).to(x0.device)
    noise = eps.unsqueeze(1)
    x_t = steps.add_noise(x0, noise, t)
    y = steps.training_target(x0, noise, t)
    if y is noise:  # shared by the pair: stride 0 in the kernels
        y = eps
    return x_t, y, t


def load_offline_pairs(path: str | Path, model: DiffusionModel, reward: Optional[Reward] = None) -> NoisedPairs:
    """Offline preference data: a JSONL file of ``{"prompt", "chosen", "rejected"}`` (image paths, relative to
    the file), or a folder holding ``pairs.jsonl``. Images are resized to the model's resolution and encoded with
    its VAE (the latent distribution's mean, times the scaling factor)."""
    from PIL import Image

    path = Path(path)
    if path.is_dir():
        path = path / "pairs.jsonl"
    if not path.is_file():
        raise ValueError(f"offline_pairs: expected a JSONL file (or a folder with pairs.jsonl), got {str(path)!r}")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            records.append((record["prompt"], record["chosen"], record["rejected"]))
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"offline_pairs: {path}:{number}: expected {{\"prompt\", \"chosen\", \"rejected\"}}: {error}") from None
    if not records:
        raise ValueError(f"offline_pairs: {path} holds no pairs")
    size = model.resolution

    def load(name: str) -> torch.Tensor:
        file = (path.parent / name) if not Path(name).is_absolute() else Path(name)
        if not file.is_file():
            raise ValueError(f"offline_pairs: image {str(file)!r} does not exist")
        image = Image.open(file).convert("RGB").resize((size, size), Image.BICUBIC)
        return torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(size, size, 3).permute(2, 0, 1)

    pixels = torch.stack([torch.stack([load(c), load(r)]) for _, c, r in records]).float() / 255.0  # [P, 2, 3, H, W]
    latents = []
    with torch.no_grad():
        for chunk in pixels.flatten(0, 1).split(32):
            latents.append(model.family.encode_images(chunk))
    x0 = torch.cat(latents).view(len(records), 2, *latents[0].shape[1:])
    cond = model.encode([p for p, _, _ in records])
    values = torch.full((len(records), 2), float("nan"))
    if reward is not None:
        values = reward.score(pixels.flatten(0, 1).to(model.device), [p for p, _, _ in records for _ in range(2)]).view(-1, 2)
    return NoisedPairs(x0, cond, values)
