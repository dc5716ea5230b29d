"""Rewards computed from pixels: JPEG (in)compressibility for any model, and the embedded world's prompt fidelity and
aesthetic-like score.

All take images ``[B, 3, H, W]`` with values in [0, 1] (values outside are clamped) and return ``[B]`` float32 on the
images' device. ``scale`` is the standard deviation of the reward over the embedded base model's samples of the
``train`` prompts (256 samples, DDIM 20 steps, η = 1, CFG 3, seed 0; ``rdpo-zoo sample --prompts train -n 256``
reports it as ``std_rewards``; recorded in docs/world.md), rounded, so ``Δreward / scale`` is comparable across
rewards.
"""

from __future__ import annotations

import io
import math
from typing import Dict, Sequence, Tuple

import numpy as np
import torch

from rdpo_zoo import world
from rdpo_zoo.rewards import Reward

__all__ = [
    "JpegCompressibility",
    "JpegIncompressibility",
    "WorldFidelity",
    "WorldAesthetic",
    "jpeg_kilobytes",
    "WORLD_REWARDS",
    "make_reward",
]


def jpeg_kilobytes(images: torch.Tensor, quality: int = 95) -> torch.Tensor:
    """JPEG size in kB (1000 bytes) of each image, encoded as DDPO's and D3PO's code does:
    ``round(x * 255)`` as uint8, PIL JPEG at ``quality``. Returns ``[B]`` float32 on the images' device."""
    from PIL import Image

    arr = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    sizes = []
    for a in arr:
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(a)).save(buf, format="JPEG", quality=quality)
        sizes.append(buf.tell() / 1000.0)
    return torch.tensor(sizes, dtype=torch.float32, device=images.device)


class JpegCompressibility(Reward):
    """Negative JPEG size in kB at quality 95 (DDPO's ``jpeg_compressibility``). Any model, any image size; no
    differentiable form (JPEG's quantisation has no useful gradient)."""

    name = "compressibility"
    unit = "-kB (JPEG q95)"
    scale = 0.3
    differentiable = False

    def __init__(self, quality: int = 95):
        if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 95:
            raise ValueError(f"quality: expected an int JPEG quality in [1, 95], got {quality!r}")
        self.quality = quality

    def score(self, images, prompts, timesteps=None):
        self.check_images(images, prompts)
        return -jpeg_kilobytes(images, self.quality)


class JpegIncompressibility(JpegCompressibility):
    """JPEG size in kB at quality 95 (DDPO's ``jpeg_incompressibility``): the opposite of ``compressibility``."""

    name = "incompressibility"
    unit = "kB (JPEG q95)"

    def score(self, images, prompts, timesteps=None):
        self.check_images(images, prompts)
        return jpeg_kilobytes(images, self.quality)


# ---------------------------------------------------------------------------------------------------------------
# Soft image features shared by the world rewards: every one is a smooth function of the pixels.

_OBJECT_THRESHOLD = 0.3  # as world.check: distance (RGB) from the background above which a pixel is the object
_MASK_SOFTNESS = 0.1  # half-width of the linear ramp that makes that threshold soft
_COLOUR_TEMPERATURE = 0.02  # squared RGB distance; palette entries are >= 0.19 apart in d², a clean render's d² <= 0.01
_SHAPE_TEMPERATURE = 0.03  # IoU units; the right template fits a clean render ~0.1 better than the next
_EPS = 1e-6


def _ramp(v: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    return ((v - lo) / (hi - lo)).clamp(0.0, 1.0)


def _soft_features(images: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Background colour (mean of the four 3×3 corner patches), soft object mask, object colour, area, centroid."""
    x = images.float().clamp(0, 1)
    b, _, h, w = x.shape
    corners = torch.cat([x[:, :, :3, :3], x[:, :, :3, -3:], x[:, :, -3:, :3], x[:, :, -3:, -3:]], dim=3)
    bg = corners.flatten(2).mean(dim=2)  # [B, 3]
    # Soft membership of the object: a linear ramp of the distance from the background (0 below 0.2, 1 above 0.4; a
    # sigmoid's tails would put a floor under every background pixel and drag the centroid to the centre), gated by
    # the same ramp, lower, on a 3×3 box-filtered copy, so that isolated noisy pixels (η = 1 sampling leaves some)
    # do not count while the object's own corners, seen by their neighbours, do.
    dist = torch.sqrt((x - bg[:, :, None, None]).pow(2).sum(dim=1) + _EPS)  # [B, H, W]
    smooth = torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    dist_smooth = torch.sqrt((smooth - bg[:, :, None, None]).pow(2).sum(dim=1) + _EPS)
    mask = _ramp(dist, _OBJECT_THRESHOLD - _MASK_SOFTNESS, _OBJECT_THRESHOLD + _MASK_SOFTNESS) * _ramp(
        dist_smooth, 0.5 * (_OBJECT_THRESHOLD - _MASK_SOFTNESS), 0.5 * (_OBJECT_THRESHOLD + _MASK_SOFTNESS)
    )
    area = mask.sum(dim=(1, 2))  # [B]
    colour = (x * mask[:, None]).sum(dim=(2, 3)) / (area[:, None] + _EPS)
    ys = torch.arange(h, device=x.device, dtype=x.dtype) + 0.5
    xs = torch.arange(w, device=x.device, dtype=x.dtype) + 0.5
    cy = (mask.sum(dim=2) * ys).sum(dim=1) / (area + _EPS)
    cx = (mask.sum(dim=1) * xs).sum(dim=1) / (area + _EPS)
    return {"x": x, "bg": bg, "mask": mask, "area": area, "colour": colour, "cx": cx, "cy": cy, "ys": ys, "xs": xs}


def _palette_probability(rgb: torch.Tensor, palette: Dict[str, Tuple[float, float, float]], names: Sequence[str]):
    """Softmax over the palette of -d²/T, read at each row's named entry: a smooth "is this colour the asked one"."""
    keys = list(palette)
    pal = torch.tensor([palette[k] for k in keys], dtype=rgb.dtype, device=rgb.device)
    logits = -(rgb[:, None, :] - pal[None]).pow(2).sum(dim=2) / _COLOUR_TEMPERATURE
    idx = torch.tensor([keys.index(n) for n in names], device=rgb.device)
    return torch.softmax(logits, dim=1).gather(1, idx[:, None]).squeeze(1)


def _template_ious(f: Dict[str, torch.Tensor]) -> torch.Tensor:
    """Soft IoU ``[B, 3]`` of the object mask with a circle, a square and a triangle of the mask's area placed at its
    centroid (the order of ``world.SHAPES``)."""
    mask, area = f["mask"], f["area"].clamp_min(1.0)
    py, px = f["ys"].view(1, -1, 1), f["xs"].view(1, 1, -1)
    cx, cy = f["cx"].view(-1, 1, 1), f["cy"].view(-1, 1, 1)
    ious = []
    for shape in world.SHAPES:
        # Half-extent giving the same area: circle πh², square 4h², triangle (base 2h, height 2h) 2h².
        half = {"circle": torch.sqrt(area / math.pi), "square": torch.sqrt(area) / 2, "triangle": torch.sqrt(area / 2)}[shape]
        # The triangle's centroid sits h/3 below its box centre; place the template by centroids.
        ccy = cy - half.view(-1, 1, 1) / 3 if shape == "triangle" else cy
        sd = world._signed_distance(shape, px, py, cx, ccy, half.view(-1, 1, 1))
        # The renderer's own one-pixel coverage, so a clean render fits its template almost exactly.
        template = (0.5 - sd).clamp(0.0, 1.0)
        inter = (mask * template).sum(dim=(1, 2))
        ious.append(inter / (mask.sum(dim=(1, 2)) + template.sum(dim=(1, 2)) - inter + _EPS))
    return torch.stack(ious, dim=1)


def _parse_all(prompts: Sequence[str]):
    return [world.parse_prompt(p) for p in prompts]


class WorldFidelity(Reward):
    """Prompt fidelity in the embedded world: the mean of three soft probabilities that the image shows the asked
    background, object colour and shape, each a softmax over the world's alternatives:

    - background: the corners' mean colour against the background palette (``-d²/0.02``);
    - colour: the soft object mask's mean colour against the object palette (``-d²/0.02``);
    - shape: soft IoU of the object mask with each shape's template of the same area at the same centroid
      (``IoU/0.03``).

    In [0, 1]: ~1 for a clean render of the prompt, ~2/3 with one attribute wrong. Prompts must be world prompts
    (the size word is not scored). Differentiable; :meth:`score` is the same computation without a graph.
    """

    name = "world-fidelity"
    unit = "mean probability of asked background, colour, shape"
    scale = 0.3
    differentiable = True

    def score_differentiable(self, images, prompts, timesteps=None):
        self.check_images(images, prompts)
        asked = _parse_all(prompts)
        f = _soft_features(images)
        p_bg = _palette_probability(f["bg"], world.BACKGROUNDS, [a.background for a in asked])
        p_colour = _palette_probability(f["colour"], world.COLOURS, [a.colour for a in asked])
        logits = _template_ious(f) / _SHAPE_TEMPERATURE
        idx = torch.tensor([world.SHAPES.index(a.shape) for a in asked], device=images.device)
        p_shape = torch.softmax(logits, dim=1).gather(1, idx[:, None]).squeeze(1)
        return (p_bg + p_colour + p_shape) / 3

    def score(self, images, prompts, timesteps=None):
        with torch.no_grad():
            return self.score_differentiable(images, prompts, timesteps).detach()


class WorldAesthetic(Reward):
    """An aesthetic-like score of the embedded world, indifferent to the prompt: the mean of

    - contrast: distance between the object's and the background's mean colours, ÷ √3 (the largest possible);
    - centring: ``exp(-r² / (2 (W/6)²))`` with r the object centroid's distance from the image centre;
    - sharpness: ``tanh(Σ g² / (Σ g · (c + 0.1)))``, g the per-pixel gradient magnitude and c the contrast: an edge
      of width w gives ~1/w, so blur lowers it, and noise (many small gradients) lowers it too.

    In [0, 1]. The world draws positions uniformly, so the base model is far from centring its objects, and the
    contrast term prefers some colour pairs (red on white) that prompts may not ask for. Differentiable;
    :meth:`score` is the same computation without a graph.
    """

    name = "world-aesthetic"
    unit = "mean of contrast, centring, sharpness in [0, 1]"
    scale = 0.12
    differentiable = True

    def score_differentiable(self, images, prompts, timesteps=None):
        self.check_images(images, prompts)
        return sum(self.components(images).values()) / 3

    def components(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The three terms, each ``[B]`` in [0, 1]."""
        f = _soft_features(images)
        x = f["x"]
        _, _, h, w = x.shape
        c = torch.sqrt((f["colour"] - f["bg"]).pow(2).sum(dim=1) + _EPS)
        contrast = c / math.sqrt(3)
        r2 = (f["cx"] - w / 2).pow(2) + (f["cy"] - h / 2).pow(2)
        centring = torch.exp(-r2 / (2 * (w / 6) ** 2))
        gx = x[:, :, :-1, 1:] - x[:, :, :-1, :-1]
        gy = x[:, :, 1:, :-1] - x[:, :, :-1, :-1]
        g = torch.sqrt(gx.pow(2).sum(dim=1) + gy.pow(2).sum(dim=1) + _EPS)
        ratio = g.pow(2).sum(dim=(1, 2)) / (g.sum(dim=(1, 2)) * (c + 0.1) + _EPS)
        sharpness = torch.tanh(ratio)
        return {"contrast": contrast, "centring": centring, "sharpness": sharpness}

    def score(self, images, prompts, timesteps=None):
        with torch.no_grad():
            return self.score_differentiable(images, prompts, timesteps).detach()


WORLD_REWARDS = {
    r.name: r for r in (JpegCompressibility, JpegIncompressibility, WorldFidelity, WorldAesthetic)
}


def make_reward(name: str) -> Reward:
    """A reward of this module by name (the plugin registry, when present, is the general way)."""
    if name not in WORLD_REWARDS:
        raise ValueError(f"reward: unknown name {name!r}; known: {sorted(WORLD_REWARDS)}")
    return WORLD_REWARDS[name]()
