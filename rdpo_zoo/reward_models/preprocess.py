"""CLIP-style image preprocessing in torch: batched, on the images' device, differentiable.

The reward models were trained on images prepared by PIL: ``round(x·255)`` as uint8, resize of the shortest side
to 224 (bicubic, antialiased), centre crop 224×224, ``/255``, then ``(x − mean) / std`` per channel. This module
does the same on a ``[B, 3, H, W]`` float tensor in [0, 1]:

- the uint8 rounding is a straight-through step: the value is the rounded one (as the original pipelines see it),
  the gradient passes as if it were the identity, so :meth:`score` and :meth:`score_differentiable` agree;
- the resize is PIL's: its resampling weights (Keys' cubic with a = −0.5, support widened by the downscale factor,
  normalised, then rounded to PIL's 22-bit fixed point), applied as two matrix products (the width first, as PIL
  does), each pass rounded half-up to uint8 levels (straight-through) and clipped, as PIL's fixed-point passes
  are. In float64 the sums are exact, so the result is PIL's, bit for bit;
- the output size follows transformers' ``get_resize_output_image_size`` and torchvision's ``Resize`` (the short
  side to ``size``, the long side to ``int(size · long / short)``); the crop offset is ``(H − h) // 2``
  (transformers' ``center_crop``, ``rounding="floor"``) or ``round((H − h) / 2)`` (torchvision's ``CenterCrop``,
  ``rounding="round"``), which differ only for odd margins.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch

__all__ = ["OPENAI_CLIP_MEAN", "OPENAI_CLIP_STD", "ClipPreprocess", "quantize_uint8"]

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# PIL's resampling codes, as transformers' preprocessor_config.json stores them
_RESAMPLE = {2: "bilinear", 3: "bicubic"}


def quantize_uint8(images: torch.Tensor, half_up: bool = False) -> torch.Tensor:
    """``round(x·255)/255`` clamped to [0, 1] in value, the identity in gradient (straight-through). Ties go to
    even (``torch.round``, numpy: how the pipelines turn images into uint8) or up (``half_up``: PIL's resampling)."""
    x = images.clamp(0.0, 1.0) * 255.0
    rounded = (torch.floor(x + 0.5) if half_up else torch.round(x)) / 255.0
    return images + (rounded - images).detach()


_PRECISION_BITS = 32 - 8 - 2  # PIL's fixed point for 8-bit images (libImaging/Resample.c)


def _bicubic(x: np.ndarray) -> np.ndarray:
    a = -0.5
    x = np.abs(x)
    return np.where(x < 1.0, ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0,
                    np.where(x < 2.0, (((x - 5.0) * x + 8.0) * x - 4.0) * a, 0.0))


def _bilinear(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


_FILTERS = {"bicubic": (_bicubic, 2.0), "bilinear": (_bilinear, 1.0)}


@functools.lru_cache(maxsize=64)
def pil_weights(in_size: int, out_size: int, mode: str = "bicubic") -> np.ndarray:
    """PIL's resampling matrix ``[out_size, in_size]`` for an 8-bit image (``precompute_coeffs`` and
    ``normalize_coeffs_8bpc`` of Pillow's Resample.c): row ``i`` holds the weights of output pixel ``i``."""
    kernel, support = _FILTERS[mode]
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support *= filterscale
    weights = np.zeros((out_size, in_size))
    for i in range(out_size):
        center = (i + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)  # C's (int) truncates, as Python's int()
        hi = min(int(center + support + 0.5), in_size)
        w = kernel((np.arange(lo, hi) - center + 0.5) / filterscale)
        total = w.sum()
        weights[i, lo:hi] = w / total if total != 0.0 else w
    unit = float(1 << _PRECISION_BITS)
    return np.where(weights < 0, np.trunc(weights * unit - 0.5), np.trunc(weights * unit + 0.5)) / unit


@dataclass(frozen=True)
class ClipPreprocess:
    """Resize the shortest side, centre-crop, normalise.

    Attributes:
        size: the shortest side after resizing.
        crop: the crop's (height, width).
        mean, std: per channel, for ``(x − mean) / std`` on values in [0, 1].
        mode: ``"bicubic"`` (every model here) or ``"bilinear"``.
        rounding: the crop offset rule, ``"floor"`` (transformers) or ``"round"`` (torchvision).
        quantize: round to uint8 levels, first and after each resampling pass, as the original pipelines (uint8
            images, PIL) do; off, the resize is PIL's filter without its rounding.
    """

    size: int = 224
    crop: Tuple[int, int] = (224, 224)
    mean: Tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: Tuple[float, float, float] = OPENAI_CLIP_STD
    mode: str = "bicubic"
    rounding: str = "floor"
    quantize: bool = True

    def __post_init__(self):
        if self.mode not in ("bicubic", "bilinear"):
            raise ValueError(f"mode: expected 'bicubic' or 'bilinear', got {self.mode!r}")
        if self.rounding not in ("floor", "round"):
            raise ValueError(f"rounding: expected 'floor' or 'round', got {self.rounding!r}")

    @classmethod
    def from_config(cls, folder: Optional[str], **overrides) -> "ClipPreprocess":
        """From a transformers ``preprocessor_config.json`` in ``folder`` (its ``size``/``shortest_edge``,
        ``crop_size``, ``image_mean``, ``image_std``, ``resample``); the CLIP defaults where there is none."""
        settings = {}
        path = os.path.join(folder, "preprocessor_config.json") if folder else None
        if path and os.path.isfile(path):
            with open(path) as handle:
                config = json.load(handle)
            size = config.get("size", 224)
            if isinstance(size, dict):
                size = size.get("shortest_edge", size.get("height", 224))
            crop = config.get("crop_size", size)
            if isinstance(crop, dict):
                crop = (crop["height"], crop["width"])
            elif isinstance(crop, int):
                crop = (crop, crop)
            settings = dict(size=int(size), crop=tuple(int(c) for c in crop))
            if config.get("image_mean") is not None:
                settings["mean"] = tuple(float(v) for v in config["image_mean"])
            if config.get("image_std") is not None:
                settings["std"] = tuple(float(v) for v in config["image_std"])
            resample = config.get("resample", 3)
            if resample not in _RESAMPLE:
                raise ValueError(f"{path}: resample {resample} is not supported (2: bilinear, 3: bicubic)")
            settings["mode"] = _RESAMPLE[resample]
            if config.get("do_resize") is False or config.get("do_center_crop") is False:
                raise ValueError(f"{path}: resizing and centre-cropping are expected to be on (CLIP's)")
        settings.update(overrides)
        return cls(**settings)

    def output_size(self, height: int, width: int) -> Tuple[int, int]:
        """(height, width) after the shortest-side resize, as transformers and torchvision compute it."""
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.size, int(self.size * long / short)
        return (new_long, new_short) if width <= height else (new_short, new_long)

    def _pass(self, x: torch.Tensor, out_size: int, dim: int) -> torch.Tensor:
        """One of PIL's passes along ``dim`` (-1: width, -2: height) on values in [0, 255]."""
        matrix = torch.from_numpy(pil_weights(x.shape[dim], out_size, self.mode)).to(x.device, x.dtype)
        if dim == -1:
            y = torch.matmul(x, matrix.t())
        else:
            y = torch.matmul(matrix, x)
        if not self.quantize:
            return y.clamp(0.0, 255.0)
        rounded = torch.floor(y + 0.5).clamp(0.0, 255.0)  # PIL: (sum + 2^21) >> 22, clipped to [0, 255]
        return y + (rounded - y).detach()

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` in [0, 1] -> ``[B, 3, crop_h, crop_w]`` normalised, float32 (or the input's float64)."""
        x = images if images.dtype in (torch.float32, torch.float64) else images.float()
        height, width = x.shape[-2:]
        new_h, new_w = self.output_size(height, width)
        if (new_h, new_w) == (height, width):
            if self.quantize:
                x = quantize_uint8(x)
        else:
            # in [0, 255] and float64, PIL's fixed-point sums are exact (MPS has no float64: float32 there)
            work = x.to(torch.float32 if x.device.type == "mps" else torch.float64) * 255.0
            if self.quantize:
                work = work + (torch.round(work.clamp(0.0, 255.0)) - work).detach()
            if new_w != width:  # PIL resamples the width first
                work = self._pass(work, new_w, -1)
            if new_h != height:
                work = self._pass(work, new_h, -2)
            x = (work / 255.0).to(x.dtype)
        crop_h, crop_w = self.crop
        if crop_h > new_h or crop_w > new_w:
            raise ValueError(f"images of {height}×{width} resize to {new_h}×{new_w}, smaller than the {crop_h}×{crop_w} crop")
        if self.rounding == "floor":
            top, left = (new_h - crop_h) // 2, (new_w - crop_w) // 2
        else:
            top, left = int(round((new_h - crop_h) / 2.0)), int(round((new_w - crop_w) / 2.0))
        x = x[..., top : top + crop_h, left : left + crop_w]
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std
