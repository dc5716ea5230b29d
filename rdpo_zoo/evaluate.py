"""Evaluation: sample a prompt set over seeds and score every image with several rewards.

Every (prompt, seed) pair is one sample; batches are formed in a fixed order and each batch's noise comes from a
generator seeded by its seed and position, so two calls with the same arguments draw the same noise: a base and a
tuned model (adapter off and on) are compared on identical initial noise and sampling noise.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from rdpo_zoo.diffusion import DiffusionModel
from rdpo_zoo.rewards import Reward

__all__ = ["sample_rewards", "summary", "save_comparison_grid", "ModelSamples", "draw_samples",
           "paired", "per_prompt_spread", "per_prompt_pixel_distance", "checker_hits", "report_rewards",
           "compare_models", "format_report", "WORLD_REWARDS", "CHECKER_FIGURES"]


def summary(values: torch.Tensor) -> dict:
    """Mean and standard error of a 1-D tensor."""
    n = values.numel()
    return {"mean": float(values.mean()), "se": float(values.std() / math.sqrt(n)) if n > 1 else float("nan"), "n": n}


def _seed(seed: int, start: int) -> int:
    return seed * 1_000_003 + start * 7919 + 17


def sample_rewards(model: DiffusionModel, prompts: Sequence[str], seeds: Sequence[int], rewards: dict[str, Reward],
                   batch_size: int = 32, reference: bool = False, keep_images: int = 0,
                   images: Optional[list] = None, progress: Optional[str] = None) -> dict[str, torch.Tensor]:
    """Rewards ``{name: [len(seeds)·len(prompts)]}`` of samples of every prompt under every seed (seed-major): the
    rewards of :func:`draw_samples`.

    ``reference=True`` samples with the LoRA adapter disabled (the base model). With ``keep_images`` > 0 the first
    that many images (``[3, H, W]`` in [0, 1], on the CPU) are appended to the list ``images``. ``progress``
    names a progress bar over the images (shown on a terminal only)."""
    if keep_images and images is None:
        raise ValueError("images: expected a list to append the kept images to when keep_images > 0")
    if not rewards:
        raise ValueError("rewards: expected at least one reward")
    from tqdm.auto import tqdm

    # disable=None: tqdm shows the bar on a terminal only (a log file gets the callers' lines instead)
    with tqdm(total=len(prompts) * len(seeds), desc=progress, unit="img", disable=None if progress else True,
              leave=False) as bar:
        drawn = draw_samples(model, prompts, seeds, rewards, batch_size, reference=reference, progress=bar.update)
    if keep_images:
        images.extend(drawn.images[:keep_images])
    return drawn.rewards


def save_comparison_grid(rows: Sequence[Sequence[torch.Tensor]], path, scale: int = 2,
                         row_labels: Optional[Sequence[str]] = None, column_labels: Optional[Sequence[str]] = None,
                         marks: Optional[Sequence[Sequence[Optional[bool]]]] = None) -> Path:
    """A PNG of image rows (e.g. base above tuned, the same prompt and noise in each column), each image
    ``[3, H, W]`` in [0, 1], enlarged ``scale`` times (nearest) so that 64×64 samples can be looked at.

    ``row_labels`` go to the left of the rows, ``column_labels`` (e.g. the prompts, wrapped) above the columns;
    ``marks[i][j]`` frames image j of row i green (True: e.g. the checker accepts it) or red (False); None: no frame.
    """
    import textwrap

    from PIL import Image, ImageDraw

    rows = [list(row) for row in rows if len(row)]
    if not rows:
        raise ValueError("rows: expected at least one non-empty row of images")
    for arg, labels, count in (("row_labels", row_labels, len(rows)), ("marks", marks, len(rows))):
        if labels is not None and len(labels) != count:
            raise ValueError(f"{arg}: expected one entry per row ({count}), got {len(labels)}")
    columns = max(len(row) for row in rows)
    _, h, w = rows[0][0].shape
    gap = 2
    canvas = torch.ones(3, len(rows) * (h + gap) - gap, columns * (w + gap) - gap)
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            canvas[:, i * (h + gap): i * (h + gap) + h, j * (w + gap): j * (w + gap) + w] = image.clamp(0, 1)
    array = (canvas.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    grid = Image.fromarray(array)
    grid = grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST)
    cell_w, cell_h, step = w * scale, h * scale, (w + gap) * scale
    line_h, chars = 11, max(4, cell_w // 6)
    wrapped = [textwrap.wrap(str(label), chars)[:4] for label in (column_labels or [])]
    top = (max((len(x) for x in wrapped), default=0) * line_h + 4) if column_labels else 0
    left = (max(len(str(x)) for x in row_labels) * 6 + 8) if row_labels else 0
    picture = Image.new("RGB", (grid.width + left, grid.height + top), "white")
    picture.paste(grid, (left, top))
    draw = ImageDraw.Draw(picture)
    for j, lines in enumerate(wrapped):
        for k, text in enumerate(lines):
            draw.text((left + j * step + 1, 2 + k * line_h), text, fill="black")
    for i, label in enumerate(row_labels or []):
        draw.text((2, top + i * (h + gap) * scale + cell_h // 2 - 5), str(label), fill="black")
    for i, row_marks in enumerate(marks or []):
        for j, ok in enumerate(row_marks):
            if ok is None:
                continue
            x0, y0 = left + j * step, top + i * (h + gap) * scale
            draw.rectangle([x0, y0, x0 + cell_w - 1, y0 + cell_h - 1], outline=(0, 170, 0) if ok else (220, 0, 0),
                           width=2)
    path = Path(path)
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")  # written whole, then renamed: never a torn PNG
    picture.save(tmp, format=Image.registered_extensions().get(path.suffix.lower(), "PNG"))
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------------------------------------------
# The base-vs-tuned report: every world reward, the pixel checker, spread and KL, paired on the same noise.

#: the world's rewards reported by every evaluation (incompressibility is −compressibility, so it is left out)
WORLD_REWARDS = ("world-fidelity", "world-aesthetic", "compressibility")
#: rewards that read the world's prompts (skipped, with a note, on prompts outside the world)
PROMPT_READING = ("world-fidelity",)
#: the checker's figures: each attribute read back from pixels, and colour, shape and background all right
CHECKER_FIGURES = ("colour", "shape", "background", "size", "all")


@dataclass
class ModelSamples:
    """One model's samples of an evaluation set (seed-major, as :func:`sample_rewards`)."""

    prompts: list
    images: torch.Tensor  # [N, 3, H, W] in [0, 1], on the CPU (averaged down to KEPT_IMAGE_SIDE when larger)
    rewards: dict  # name -> [N]
    kl: Optional[torch.Tensor] = None  # [N]: Σ_t E[log π_θ − log π_ref | x_t] along the sample's own chain
    kl_sampled: Optional[torch.Tensor] = None  # [N]: Σ_t (log π_θ − log π_ref)(x_{t-1}), the drawn step


def _has_likelihood(model: DiffusionModel, index: int) -> bool:
    from rdpo_zoo.reference import DEFAULT_MIN_SIGMA

    a, b, sigma = (float(v) for v in model.coefficients(index))
    return sigma > DEFAULT_MIN_SIGMA * max(abs(a), abs(b))


@torch.no_grad()
def draw_samples(model: DiffusionModel, prompts: Sequence[str], seeds: Sequence[int], rewards: dict[str, Reward],
                 batch_size: int = 32, reference: bool = False, kl: bool = False,
                 progress: Optional[Callable[[int], None]] = None) -> ModelSamples:
    """Samples of every prompt under every seed with the noise of :func:`sample_rewards` (so base and tuned share
    it), scored by every reward; ``progress(k)`` is called after each batch of ``k`` images.

    ``kl=True`` (the tuned model) also runs the reference (adapters disabled) at every step of the model's own chain
    and accumulates, per sample and over the steps that have a likelihood, the mean-reduced log-ratio
    ``(log π_θ − log π_ref)(x_{t−1} | x_t)`` of the drawn step (``kl_sampled``) and its expectation given x_t,
    ``b²‖o_θ − o_ref‖² / (2σ²D)`` (``kl``): the same quantity in expectation, without the sampling noise.
    """
    if not prompts:
        raise ValueError("prompts: expected at least one prompt")
    if reference and kl:
        raise ValueError("kl: the reference's KL to itself is 0; ask for it on the tuned model (reference=False)")
    images, kls, kls_sampled, scores = [], [], [], {name: [] for name in rewards}
    likelihood = [_has_likelihood(model, i) for i in range(model.num_steps)] if kl else []
    for seed in seeds:
        for start in range(0, len(prompts), batch_size):
            chunk = list(prompts[start:start + batch_size])
            generator = torch.Generator().manual_seed(_seed(int(seed), start))
            cond = model.encode(chunk)
            if reference:
                with model.reference():
                    latents = model.sample(cond, generator)
            elif not kl:
                latents = model.sample(cond, generator)
            else:  # model.sample's loop, with the reference beside it (the same generator draws)
                x = model.initial_noise(len(chunk), generator)
                total = torch.zeros(len(chunk), device=x.device)
                total_sampled = torch.zeros(len(chunk), device=x.device)
                for index in range(model.num_steps):
                    o = model.guided_output(x, index, cond)
                    children, noise = model.step(x, o, index, generator)
                    if likelihood[index]:
                        with model.reference():
                            o_ref = model.guided_output(x, index, cond)
                        _, b, sigma = (float(v) for v in model.coefficients(index))
                        shift = (b / sigma) * (o.float() - o_ref.float()).flatten(1)  # (μ_θ − μ_ref) / σ
                        total += 0.5 * shift.pow(2).mean(1)
                        total_sampled += (noise[:, 0].flatten(1) * shift + 0.5 * shift.pow(2)).mean(1)
                    x = children[:, 0]
                latents = x
                kls.append(total.float().cpu())
                kls_sampled.append(total_sampled.float().cpu())
            decoded = model.decode(latents)
            for name, reward in rewards.items():
                scores[name].append(reward.score(decoded, chunk).float().cpu())
            images.append(_kept(decoded))
            if progress is not None:
                progress(len(chunk))
    return ModelSamples(
        [p for _ in seeds for p in prompts], torch.cat(images), {k: torch.cat(v) for k, v in scores.items()},
        torch.cat(kls) if kl else None, torch.cat(kls_sampled) if kl else None)


#: the side above which kept images are averaged down (area): pixel spread and the checker read 64×64 worlds
#: exactly, and 256 samples of a 512×512 model would otherwise hold ~800 MB
KEPT_IMAGE_SIDE = 128


def _kept(images: torch.Tensor) -> torch.Tensor:
    images = images.float()
    if max(images.shape[-2:]) > KEPT_IMAGE_SIDE:
        images = torch.nn.functional.interpolate(images, size=(KEPT_IMAGE_SIDE, KEPT_IMAGE_SIDE), mode="area")
    return images.cpu()


def paired(base: torch.Tensor, tuned: torch.Tensor) -> dict:
    """``{"base", "tuned", "gain"}``: each mean ± s.e., the gain paired sample by sample."""
    return {"base": summary(base), "tuned": summary(tuned), "gain": summary(tuned - base)}


def _by_prompt(prompts: Sequence[str]) -> list[torch.Tensor]:
    groups: dict[str, list] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(p, []).append(i)
    return [torch.tensor(v) for v in groups.values() if len(v) > 1]


def per_prompt_spread(values: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
    """Per prompt (with ≥ 2 samples): the standard deviation of ``values`` over its samples."""
    return torch.stack([values[g].std() for g in _by_prompt(prompts)])


def per_prompt_pixel_distance(images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
    """Per prompt: the mean pairwise L2 distance between its samples' pixels ([0, 1] RGB): a collapse to one image
    per prompt shows as 0."""
    return torch.stack([torch.pdist(images[g].flatten(1).double()).mean().float() for g in _by_prompt(prompts)])


def _world_prompts(prompts: Sequence[str]) -> bool:
    from rdpo_zoo.world import parse_prompt

    try:
        for p in set(prompts):
            parse_prompt(p)
    except ValueError:
        return False
    return True


def checker_hits(images: torch.Tensor, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
    """Per image, 1.0 where the pixel checker reads back what the prompt asks: each of ``CHECKER_FIGURES``."""
    from rdpo_zoo.world import check, parse_prompt

    asked, got = [parse_prompt(p) for p in prompts], check(images)
    hits = {name: [] for name in CHECKER_FIGURES}
    for a, g in zip(asked, got):
        c, s, b = a.colour == g.colour, a.shape == g.shape, a.background == g.background
        hits["colour"].append(c)
        hits["shape"].append(s)
        hits["background"].append(b)
        hits["size"].append(a.size is None or a.size == g.size)
        hits["all"].append(c and s and b)
    return {k: torch.tensor(v, dtype=torch.float32) for k, v in hits.items()}


def report_rewards(registry, trained_spec: Optional[str], trained_reward: Optional[Reward], prompts: Sequence[str],
                   extra: Optional[dict] = None) -> tuple[dict, list, list]:
    """The rewards an evaluation scores: every world reward that can read ``prompts``, the trained reward (under its
    spec; a combination also part by part) and ``extra``. Returns ``(rewards, trained_names, notes)``."""
    world_ok = _world_prompts(prompts)
    rewards, trained, notes = {}, [], []
    for name in WORLD_REWARDS:
        if name in PROMPT_READING and not world_ok:
            notes.append(f"{name} skipped: the prompts are not all world prompts")
            continue
        rewards[name] = registry.get("reward", name).build({})
    if trained_spec is not None:
        parts = [(n, r) for n, _, r in getattr(trained_reward, "parts", ())]
        if not world_ok and any(n in PROMPT_READING for n, _ in parts + [(trained_spec, None)]):
            notes.append(f"trained reward {trained_spec} skipped: it reads world prompts")
        else:
            for name, reward in parts + [(trained_spec, trained_reward)]:
                rewards[name] = reward  # the trained instance, with the run's options
                trained.append(name)
    for name, reward in (extra or {}).items():
        rewards.setdefault(name, reward)
    if not world_ok:
        notes.append("checker skipped: the prompts are not all world prompts")
    return rewards, trained, notes


def compare_models(model: DiffusionModel, prompts: Sequence[str], seeds: Sequence[int], rewards: dict[str, Reward],
                   trained: Sequence[str] = (), batch_size: int = 32, compare_base: bool = True, kl: bool = True,
                   notes: Sequence[str] = (), show_progress: bool = False, keep: Optional[dict] = None) -> dict:
    """The evaluation report of a model (the tuned one: adapters on) against its base (adapters off) on the same
    noise: per reward and checker figure mean ± s.e. of each and of the paired gain; spread (per-prompt standard
    deviation of each reward, mean pairwise pixel distance within a prompt) of each and its paired change over
    prompts; the tuned model's KL to the base along its own chains. Without ``compare_base`` the model alone
    (``"model"`` entries, no KL). ``keep`` (a dict) receives the :class:`ModelSamples` under ``base``/``tuned``."""
    from tqdm.auto import tqdm

    total = len(prompts) * len(seeds) * (2 if compare_base else 1)
    bar = tqdm(total=total, desc="evaluate", unit="img", disable=not show_progress)
    try:
        tuned = draw_samples(model, prompts, seeds, rewards, batch_size, kl=kl and compare_base, progress=bar.update)
        base = (draw_samples(model, prompts, seeds, rewards, batch_size, reference=True, progress=bar.update)
                if compare_base else None)
    finally:
        bar.close()
    if keep is not None:
        keep.update(tuned=tuned, base=base)
    world_ok = _world_prompts(prompts)
    all_prompts = tuned.prompts

    def entry(b, t, spread_b=None, spread_t=None):
        row = paired(b, t) if compare_base else {"model": summary(t)}
        if spread_t is not None:
            row["spread"] = ({"base": summary(spread_b), "tuned": summary(spread_t),
                              "change": summary(spread_t - spread_b)} if compare_base else {"model": summary(spread_t)})
        return row

    report = {"n": len(all_prompts), "prompts": len(set(prompts)), "seeds": list(seeds), "compare_base": compare_base,
              "trained_on": list(trained), "notes": list(notes), "rewards": {}}
    grouped = len(_by_prompt(all_prompts)) > 0
    for name in rewards:
        t = tuned.rewards[name]
        b = base.rewards[name] if compare_base else None
        spread = (per_prompt_spread(b, all_prompts) if compare_base else None,
                  per_prompt_spread(t, all_prompts)) if grouped else (None, None)
        report["rewards"][name] = {"trained": name in trained, **entry(b, t, *spread)}
    if world_ok:
        hits_t = checker_hits(tuned.images, all_prompts)
        hits_b = checker_hits(base.images, all_prompts) if compare_base else {}
        report["checker"] = {k: entry(hits_b.get(k), v) for k, v in hits_t.items()}
    if grouped:
        report["pixel_spread"] = entry(
            per_prompt_pixel_distance(base.images, all_prompts) if compare_base else None,
            per_prompt_pixel_distance(tuned.images, all_prompts))
    if tuned.kl is not None:
        report["kl"] = {"expected": summary(tuned.kl), "sampled": summary(tuned.kl_sampled)}
    return report


def format_report(report: dict) -> list[str]:
    """The report as text lines: one row per figure, ``*`` marking what the run trained on."""
    compare = report["compare_base"]
    lines = [f"{report['n']} samples ({report['prompts']} distinct prompts, seeds {report['seeds']})"
             + (", base vs tuned on the same noise; gain paired, ± 1 s.e." if compare else "")]
    width = max([26] + [len(name) + 11 for name in report["rewards"]])
    head = f"  {'figure':<{width}} {'base':>16} {'tuned':>16} {'gain':>18}" if compare else \
        f"  {'figure':<{width}} {'model':>16}"
    lines.append(head)

    def cell(s, width=16, signed=False):
        text = f"{s['mean']:+.4f} ± {s['se']:.4f}" if signed else f"{s['mean']:.4f} ± {s['se']:.4f}"
        return f"{text:>{width}}"

    def row(label, entry):
        if compare:
            return f"  {label:<{width}} {cell(entry['base'])} {cell(entry['tuned'])} {cell(entry['gain'], 18, True)}"
        return f"  {label:<{width}} {cell(entry['model'])}"

    for name, entry in report["rewards"].items():
        lines.append(row(("* " if entry["trained"] else "  ") + name, entry))
    for name, entry in report.get("checker", {}).items():
        lines.append(row(f"  checker {name}", entry))
    for name, entry in report["rewards"].items():
        if "spread" in entry:
            s = entry["spread"]
            lines.append(row(f"  spread {name}", {"base": s.get("base"), "tuned": s.get("tuned"), "gain": s.get("change"),
                                                  "model": s.get("model")}))
    if "pixel_spread" in report:
        lines.append(row("  spread pixels (L2)", report["pixel_spread"]))
    if "kl" in report:
        lines.append(f"  {'  KL(tuned ‖ base)':<{width}} {'':>16} {cell(report['kl']['expected'])}   "
                     f"(sampled {report['kl']['sampled']['mean']:.4f} ± {report['kl']['sampled']['se']:.4f})")
    if report["trained_on"]:
        lines.append(f"  * trained on: {', '.join(report['trained_on'])}")
    lines.extend(f"  note: {note}" for note in report["notes"])
    return lines
