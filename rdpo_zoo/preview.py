"""Sample a pipeline for a list of prompts, score the images with every reward that applies, and draw a captioned
grid: what ``rdpo-zoo sample`` does, as functions."""

from __future__ import annotations

import textwrap
from typing import Dict, List, Optional, Sequence

import torch

from rdpo_zoo import world

__all__ = ["cycle_prompts", "pipeline_sampler", "sample_images", "score_images", "caption_grid"]


def cycle_prompts(prompts: Sequence[str], n: int) -> List[str]:
    """``n`` prompts taken in order from ``prompts``, starting again at the first when they run out."""
    if n < 1:
        raise ValueError(f"n: expected a positive number of images, got {n!r}")
    if not prompts:
        raise ValueError("prompts: the prompt set is empty")
    return [prompts[i % len(prompts)] for i in range(n)]


def pipeline_sampler(family, eta: Optional[float] = None) -> dict:
    """``{"sampler", "eta"}`` of a model family's pipeline sampler: DDIM at η = ``eta`` (default 1), or a flow
    pipeline's deterministic Euler steps, which take no η (one given is refused)."""
    from rdpo_zoo.errors import UserInputError

    if family.pipeline_takes_eta:
        return {"sampler": "ddim", "eta": 1.0 if eta is None else eta}
    if eta is not None:
        raise UserInputError(f"eta: a {family.name} pipeline samples with deterministic Euler steps and takes no η; "
                             f"leave it unset (got {eta!r})")
    return {"sampler": "euler", "eta": None}


def sample_images(pipe, prompts: Sequence[str], seed: int = 0, steps: int = 20, eta: Optional[float] = None,
                  guidance_scale: float = 3.0, batch_size: int = 64) -> torch.Tensor:
    """Images ``[N, 3, H, W]`` float32 in [0, 1] on the CPU, one per prompt, from the pipeline's own sampler (``steps``
    steps): DDIM at η = ``eta`` (default 1) for SD-shaped pipelines, the deterministic Euler steps of SD3/FLUX-shaped
    ones (which take no ``eta``); deterministic from ``seed``."""
    if steps < 1:
        raise ValueError(f"steps: expected a positive int, got {steps!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    from rdpo_zoo.families import resolve_model_family

    family = resolve_model_family(pipe)
    sampler = pipeline_sampler(family, eta)
    noise = {} if sampler["eta"] is None else {"eta": sampler["eta"]}
    latent_shape = family.latent_shape(family.default_resolution())
    gen = torch.Generator(device="cpu").manual_seed(seed)
    out = []
    for i in range(0, len(prompts), batch_size):
        chunk = list(prompts[i : i + batch_size])
        # Initial latents from a CPU generator, so the same seed gives the same images on every device.
        latents = torch.randn((len(chunk), *latent_shape), generator=gen).to(pipe.device, family.dtype)
        step_gen = torch.Generator(device=pipe.device).manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))
        images = pipe(chunk, num_inference_steps=steps, guidance_scale=guidance_scale, generator=step_gen,
                      output_type="pt", **noise, **family.pipeline_call(latents)).images
        out.append(images.float().cpu())
    return torch.cat(out)


def score_images(images: torch.Tensor, prompts: Sequence[str], rewards: Optional[Dict[str, object]] = None):
    """Per-image rewards ``{name: [N] list}`` for every reward that applies (rewards that need world prompts are
    skipped when a prompt is not one), and the checker's reading of each image when all prompts are world prompts.

    Returns ``(scores, checks, skipped)``: ``checks`` is a list of dicts or ``None``; ``skipped`` maps each skipped
    reward to the reason.
    """
    from rdpo_zoo.image_rewards import WORLD_REWARDS

    rewards = rewards if rewards is not None else {name: cls() for name, cls in WORLD_REWARDS.items()}
    scores, skipped = {}, {}
    for name, reward in rewards.items():
        try:
            scores[name] = [float(v) for v in reward.score(images, list(prompts))]
        except ValueError as err:  # a world reward given a prompt it cannot read
            skipped[name] = str(err)
    checks = None
    try:
        asked = [world.parse_prompt(p) for p in prompts]
    except ValueError:
        asked = None
    if asked is not None:
        got = world.check(images)
        checks = [
            {"read": vars(g), "colour_right": a.colour == g.colour, "shape_right": a.shape == g.shape,
             "background_right": a.background == g.background}
            for a, g in zip(asked, got)
        ]
    return scores, checks, skipped


def caption_grid(images: torch.Tensor, captions: Sequence[str], columns: int = 4, cell: int = 128):
    """A PIL image: the images upscaled to ``cell`` pixels (nearest, so pixels stay visible) in a grid of
    ``columns``, each with its caption wrapped underneath."""
    from PIL import Image, ImageDraw, ImageFont

    if images.shape[0] != len(captions):
        raise ValueError(f"captions: expected {images.shape[0]} captions, got {len(captions)}")
    font = ImageFont.load_default()
    wrapped = [textwrap.wrap(c, width=max(8, cell // 6)) or [""] for c in captions]
    line_h = 12
    text_h = line_h * max(len(w) for w in wrapped) + 4
    n = images.shape[0]
    columns = max(1, min(columns, n))
    rows = (n + columns - 1) // columns
    grid = Image.new("RGB", (columns * cell, rows * (cell + text_h)), "white")
    draw = ImageDraw.Draw(grid)
    arr = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    for i in range(n):
        x0, y0 = (i % columns) * cell, (i // columns) * (cell + text_h)
        grid.paste(Image.fromarray(arr[i]).resize((cell, cell), Image.NEAREST), (x0, y0))
        for j, line in enumerate(wrapped[i]):
            draw.text((x0 + 2, y0 + cell + 2 + j * line_h), line, fill="black", font=font)
    return grid
