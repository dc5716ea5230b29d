"""The embedded world: one coloured shape on a plain background, drawn procedurally, with its prompts.

Every image is 64×64 RGB in [0, 1] and shows one shape (circle, square or triangle) of one of six colours, small or
large, at a random position on one of three background colours; its prompt names the four attributes:

    "a small red circle on a white background"

The world is deterministic from a seed, makes any number of (image, prompt) pairs, and keeps a held-out split of
(colour, shape) pairs that training never sees (``OOD_PAIRS``): the out-of-distribution prompts, as the paper's
Pick-a-Pic prompts are beside its animal prompts. :func:`check` reads the attributes back from pixels; it is how the
embedded model's quality is measured (``rdpo-zoo world-check``) and what the prompt-fidelity reward smooths.

Images are 64×64 rather than smaller because JPEG compressibility (a reward of the DDPO family) is dominated by the
~0.6 kB header on tinier images; at 64×64 a flat image is ~1.0 kB and a noisy one ~5 kB.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

__all__ = [
    "IMAGE_SIZE",
    "SHAPES",
    "COLOURS",
    "BACKGROUNDS",
    "SIZES",
    "OOD_PAIRS",
    "SMALL_MAX_HALF_EXTENT",
    "Attributes",
    "Scene",
    "prompt_of",
    "parse_prompt",
    "all_prompts",
    "train_prompts",
    "ood_prompts",
    "prompt_set",
    "PROMPT_SETS",
    "sample_scenes",
    "render",
    "make_batch",
    "check",
    "evaluate",
]

IMAGE_SIZE = 64

SHAPES: Tuple[str, ...] = ("circle", "square", "triangle")

# Object colours, chosen to be far apart in RGB and from every background (the closest pair, purple on gray, is 0.44
# apart), so that the nearest-palette read-back in `check` is unambiguous on clean renders.
COLOURS: Dict[str, Tuple[float, float, float]] = {
    "red": (0.90, 0.10, 0.10),
    "orange": (1.00, 0.55, 0.05),
    "yellow": (0.95, 0.85, 0.10),
    "green": (0.10, 0.70, 0.20),
    "blue": (0.15, 0.25, 0.90),
    "purple": (0.60, 0.20, 0.80),
}

BACKGROUNDS: Dict[str, Tuple[float, float, float]] = {
    "white": (0.95, 0.95, 0.95),
    "gray": (0.50, 0.50, 0.50),
    "black": (0.05, 0.05, 0.05),
}

# Half-extent (half the bounding box's longer side) in pixels, per size word. The checker splits at 12.
SIZES: Dict[str, Tuple[float, float]] = {"small": (6.0, 10.0), "large": (14.0, 20.0)}
SMALL_MAX_HALF_EXTENT = 12.0

# (colour, shape) pairs never drawn for training: every colour, shape and background is seen in training, but these
# combinations are not, so they test composition (one pair per shape, each with a different colour).
OOD_PAIRS: Tuple[Tuple[str, str], ...] = (("green", "circle"), ("purple", "square"), ("orange", "triangle"))

_COLOUR_JITTER = 0.05  # per-channel uniform jitter of object and background colours, so colours are not 6 points
_MARGIN = 2.0  # pixels between the shape's bounding box and the image border

_PROMPT_RE = re.compile(
    r"^\s*an?\s+(?:(?P<size>\w+)\s+)?(?P<colour>\w+)\s+(?P<shape>\w+)\s+on\s+an?\s+(?P<background>\w+)\s+background\s*\.?\s*$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Attributes:
    """What a prompt asks for (or what :func:`check` reads); ``None`` where absent or unreadable."""

    shape: Optional[str]
    colour: Optional[str]
    background: Optional[str]
    size: Optional[str] = None


@dataclass(frozen=True)
class Scene:
    """One image's full description: its attributes and the exact geometry and colours it is drawn with."""

    shape: str
    colour: str
    background: str
    size: str
    cx: float  # centre, pixels from the left
    cy: float  # centre, pixels from the top
    half: float  # half-extent: radius of the circle, half-side of the square, half-base (= half-height) of the triangle
    rgb: Tuple[float, float, float]
    bg_rgb: Tuple[float, float, float]

    @property
    def prompt(self) -> str:
        return prompt_of(self.shape, self.colour, self.background, self.size)


def prompt_of(shape: str, colour: str, background: str, size: Optional[str] = None) -> str:
    """The prompt of a scene: ``"a small red circle on a white background"`` (``size`` may be omitted)."""
    for arg, value, known in (
        ("shape", shape, SHAPES),
        ("colour", colour, COLOURS),
        ("background", background, BACKGROUNDS),
    ):
        if value not in known:
            raise ValueError(f"{arg}: expected one of {sorted(known)}, got {value!r}")
    if size is not None and size not in SIZES:
        raise ValueError(f"size: expected one of {sorted(SIZES)} or None, got {size!r}")
    words = ["a"] + ([size] if size else []) + [colour, shape, "on", "a", background, "background"]
    return " ".join(words)


def parse_prompt(prompt: str) -> Attributes:
    """The attributes a world prompt asks for. Raises ``ValueError`` naming the prompt if it is not a world prompt."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt: expected a str, got {type(prompt).__name__}")
    m = _PROMPT_RE.match(prompt)
    if m is None:
        raise ValueError(
            f"prompt: {prompt!r} is not a world prompt; expected e.g. 'a small red circle on a white background'"
        )
    size, colour, shape, background = (m.group(k) and m.group(k).lower() for k in ("size", "colour", "shape", "background"))
    for arg, value, known in (
        ("shape", shape, SHAPES),
        ("colour", colour, COLOURS),
        ("background", background, BACKGROUNDS),
    ):
        if value not in known:
            raise ValueError(f"prompt: {prompt!r} names {arg} {value!r}; the world knows {sorted(known)}")
    if size is not None and size not in SIZES:
        raise ValueError(f"prompt: {prompt!r} names size {size!r}; the world knows {sorted(SIZES)}")
    return Attributes(shape=shape, colour=colour, background=background, size=size)


def all_prompts() -> List[str]:
    """Every world prompt (with a size word), in a fixed order."""
    return [
        prompt_of(shape, colour, background, size)
        for shape in SHAPES
        for colour in COLOURS
        for background in BACKGROUNDS
        for size in SIZES
    ]


def _is_ood(colour: str, shape: str) -> bool:
    return (colour, shape) in OOD_PAIRS


def train_prompts() -> List[str]:
    """The 90 prompts whose (colour, shape) pair training draws."""
    return [p for p in all_prompts() if not _is_ood(parse_prompt(p).colour, parse_prompt(p).shape)]


def ood_prompts() -> List[str]:
    """The 18 held-out prompts: their (colour, shape) pair is in ``OOD_PAIRS``, never drawn for training."""
    return [p for p in all_prompts() if _is_ood(parse_prompt(p).colour, parse_prompt(p).shape)]


PROMPT_SETS = {"train": train_prompts, "ood": ood_prompts, "all": all_prompts}


def prompt_set(name_or_path: str, option: str = "prompts") -> List[str]:
    """Prompts by set name (``train``, ``ood``, ``all``) or from a text file with one prompt per line.

    Blank lines and lines starting with ``#`` are skipped. A file's prompts need not be world prompts (a hub model's
    prompt list is fine); world rewards will refuse prompts they cannot read. A missing, empty or non-text file is a
    :class:`~rdpo_zoo.errors.UserInputError` that names ``option`` and the file.
    """
    from rdpo_zoo.errors import UserInputError

    if name_or_path in PROMPT_SETS:
        return PROMPT_SETS[name_or_path]()
    path = Path(name_or_path)
    if not path.is_file():
        raise UserInputError(
            f"{option}: expected a set name ({', '.join(PROMPT_SETS)}) or a text file of one prompt per line; "
            f"{name_or_path!r} is neither"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise UserInputError(f"{option}: {name_or_path!r} is not a UTF-8 text file (byte {error.start}); expected "
                             "one prompt per line") from None
    if "\x00" in text:
        raise UserInputError(f"{option}: {name_or_path!r} holds NUL bytes (a binary file?); expected one prompt per "
                             "line")
    prompts = [line.strip() for line in text.splitlines()]
    prompts = [p for p in prompts if p and not p.startswith("#")]
    if not prompts:
        raise UserInputError(f"{option}: the file {name_or_path!r} has no prompts (blank lines and # comments "
                             "do not count)")
    return prompts


def sample_scenes(n: int, seed: int, split: str = "train") -> List[Scene]:
    """``n`` random scenes, deterministic from ``seed``, with (colour, shape) pairs of ``split``.

    ``split`` is ``train`` (never an ``OOD_PAIRS`` pair), ``ood`` (only those) or ``all``.
    """
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n: expected a non-negative int, got {n!r}")
    if split not in ("train", "ood", "all"):
        raise ValueError(f"split: expected 'train', 'ood' or 'all', got {split!r}")
    pairs = [(c, s) for s in SHAPES for c in COLOURS]
    if split == "train":
        pairs = [p for p in pairs if p not in OOD_PAIRS]
    elif split == "ood":
        pairs = list(OOD_PAIRS)
    rng = np.random.default_rng(seed)
    backgrounds, sizes = list(BACKGROUNDS), list(SIZES)
    scenes = []
    for _ in range(n):
        colour, shape = pairs[rng.integers(len(pairs))]
        background = backgrounds[rng.integers(len(backgrounds))]
        size = sizes[rng.integers(len(sizes))]
        lo, hi = SIZES[size]
        half = float(rng.uniform(lo, hi))
        cx, cy = (float(rng.uniform(half + _MARGIN, IMAGE_SIZE - half - _MARGIN)) for _ in range(2))
        rgb = tuple(float(v) for v in np.clip(np.array(COLOURS[colour]) + rng.uniform(-_COLOUR_JITTER, _COLOUR_JITTER, 3), 0, 1))
        bg = tuple(float(v) for v in np.clip(np.array(BACKGROUNDS[background]) + rng.uniform(-_COLOUR_JITTER, _COLOUR_JITTER, 3), 0, 1))
        scenes.append(Scene(shape, colour, background, size, cx, cy, half, rgb, bg))
    return scenes


def _signed_distance(shape: str, px: torch.Tensor, py: torch.Tensor, cx, cy, half) -> torch.Tensor:
    """Signed distance in pixels (negative inside) from pixel centres to the shape's outline.

    For the triangle it is the largest signed distance to its three edge lines: exact near the edges, which is all
    the one-pixel antialiasing below reads.
    """
    dx, dy = px - cx, py - cy
    if shape == "circle":
        return torch.sqrt(dx * dx + dy * dy) - half
    if shape == "square":
        return torch.maximum(dx.abs(), dy.abs()) - half
    if shape == "triangle":
        # Apex (0, -h), base corners (±h, h): the slanted edges have outward normals (±2, -1)/√5 through the apex.
        base = dy - half
        slant = (2.0 * dx.abs() - dy - half) / 5.0**0.5
        return torch.maximum(base, slant)
    raise ValueError(f"shape: expected one of {list(SHAPES)}, got {shape!r}")


def render(scenes: Sequence[Scene]) -> torch.Tensor:
    """Images ``[B, 3, 64, 64]`` float32 in [0, 1] of ``scenes``, antialiased over one pixel."""
    coords = torch.arange(IMAGE_SIZE, dtype=torch.float32) + 0.5
    py, px = torch.meshgrid(coords, coords, indexing="ij")
    out = torch.empty(len(scenes), 3, IMAGE_SIZE, IMAGE_SIZE)
    for i, s in enumerate(scenes):
        cover = (0.5 - _signed_distance(s.shape, px, py, s.cx, s.cy, s.half)).clamp(0.0, 1.0)
        fg, bg = torch.tensor(s.rgb).view(3, 1, 1), torch.tensor(s.bg_rgb).view(3, 1, 1)
        out[i] = bg + (fg - bg) * cover
    return out


def make_batch(n: int, seed: int, split: str = "train") -> Tuple[torch.Tensor, List[str]]:
    """``n`` (image, prompt) pairs, deterministic from ``seed``: images ``[n, 3, 64, 64]`` and their prompts."""
    scenes = sample_scenes(n, seed, split)
    return render(scenes), [s.prompt for s in scenes]


# ---------------------------------------------------------------------------------------------------------------
# The pixel checker.

# A pixel belongs to the object when it is this far (Euclidean RGB) from the background's colour; every object
# colour is at least 0.44 from every background, so antialiased edge pixels with more than ~2/3 coverage count.
_OBJECT_THRESHOLD = 0.3
_MIN_OBJECT_PIXELS = 8
# Fill ratio of the object's bounding box: triangle 1/2, circle π/4 ≈ 0.785, square 1. Split halfway.
_FILL_SPLITS = (0.64, 0.89)


def _palette(names_to_rgb: Dict[str, Tuple[float, float, float]]) -> Tuple[List[str], torch.Tensor]:
    return list(names_to_rgb), torch.tensor(list(names_to_rgb.values()), dtype=torch.float32)


def _check_images_arg(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        raise TypeError("images: expected a floating torch.Tensor [B, 3, H, W] with values in [0, 1]")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images: expected shape [B, 3, H, W], got {tuple(images.shape)}")


def check(images: torch.Tensor) -> List[Attributes]:
    """Read each image's shape, colour, background and size back from its pixels.

    The background is the median of the four 3×3 corner patches; the object is every pixel far from it; the shape
    is read from the fill ratio of the object's bounding box, the colour from the median of the object's pixels, the
    size from the box's longer side. Every read is the nearest world value; an image with no object reads ``None``
    for shape, colour and size.
    """
    _check_images_arg(images)
    images = images.detach().float().cpu().clamp(0, 1)
    bg_names, bg_rgb = _palette(BACKGROUNDS)
    obj_names, obj_rgb = _palette(COLOURS)
    scale = images.shape[-1] / IMAGE_SIZE
    out = []
    for img in images:
        corners = torch.cat(
            [img[:, :3, :3], img[:, :3, -3:], img[:, -3:, :3], img[:, -3:, -3:]], dim=2
        ).reshape(3, -1)
        bg = corners.median(dim=1).values
        background = bg_names[int(torch.cdist(bg[None], bg_rgb).argmin())]
        mask = (img - bg.view(3, 1, 1)).norm(dim=0) > _OBJECT_THRESHOLD
        count = int(mask.sum())
        if count < _MIN_OBJECT_PIXELS:
            out.append(Attributes(shape=None, colour=None, background=background, size=None))
            continue
        rows, cols = mask.any(dim=1).nonzero().squeeze(1), mask.any(dim=0).nonzero().squeeze(1)
        h, w = int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
        fill = count / (h * w)
        shape = "triangle" if fill < _FILL_SPLITS[0] else ("circle" if fill < _FILL_SPLITS[1] else "square")
        colour_rgb = img[:, mask].median(dim=1).values
        colour = obj_names[int(torch.cdist(colour_rgb[None], obj_rgb).argmin())]
        size = "small" if max(h, w) / 2 / scale < SMALL_MAX_HALF_EXTENT else "large"
        out.append(Attributes(shape=shape, colour=colour, background=background, size=size))
    return out


def evaluate(images: torch.Tensor, prompts: Sequence[str]) -> Dict[str, float]:
    """Fractions of images whose checked attributes match their prompts: colour, shape, background, size (where the
    prompt has a size word), colour and shape both, and all of colour, shape and background."""
    _check_images_arg(images)
    if len(prompts) != images.shape[0]:
        raise ValueError(f"prompts: expected {images.shape[0]} prompts (one per image), got {len(prompts)}")
    asked = [parse_prompt(p) for p in prompts]
    got = check(images)
    n = len(asked)
    hits = {"colour": 0, "shape": 0, "background": 0, "both": 0, "all": 0}
    size_hits = size_n = 0
    for a, g in zip(asked, got):
        c, s, b = a.colour == g.colour, a.shape == g.shape, a.background == g.background
        hits["colour"] += c
        hits["shape"] += s
        hits["background"] += b
        hits["both"] += c and s
        hits["all"] += c and s and b
        if a.size is not None:
            size_n += 1
            size_hits += a.size == g.size
    rates = {k: v / n for k, v in hits.items()} if n else {k: float("nan") for k in hits}
    rates["size"] = size_hits / size_n if size_n else float("nan")
    rates["n"] = n
    return rates
