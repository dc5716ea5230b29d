"""Pretraining of the embedded tiny text-to-image model from the world's data, on the CPU.

Two stages, each resumable from its own checkpoint (written to a temporary file and renamed, so a run killed at any
moment loses at most ``checkpoint_every`` steps):

1. ``vae``: a two-level ``AutoencoderKL`` (64×64×3 images -> 4×16×16 latents), reconstruction loss plus a tiny KL
   term as Stable Diffusion's; then frozen, and its latent scaling factor set to 1 / std of the latents.
2. ``unet``: a ``UNet2DConditionModel`` (ε-prediction, cosine noise schedule) trained on those latents together with
   a small ``CLIPTextModel``. The text encoder is trained jointly, with 10 % of prompts replaced by the empty prompt
   so that classifier-free guidance works: a random frozen encoder would leave the UNet to decode arbitrary
   features, and ``../shared/ENV-NOTES.md``'s probe measured the joint recipe learning colour and shape in an hour.
   Exponential moving averages of both are kept; snapshots of them are saved every ``snapshot_every`` steps, so that
   the exported model can be chosen by measured quality (``rdpo-zoo pretrain eval``).

Every batch is a pure function of (seed, stage, step): the world's images are drawn with a seed derived from them,
and so are the noise and timesteps, so a resumed run sees exactly the data an uninterrupted one would have.

The run directory holds ``config.json``, ``tokenizer/``, ``vae.ckpt`` then ``vae/`` (final), ``unet.ckpt``,
``snapshots/step-N/``, ``log.jsonl``. :func:`export` writes a ``StableDiffusionPipeline`` folder from it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from rdpo_zoo import world

__all__ = ["PretrainConfig", "build_tokenizer", "run", "export", "build_pipeline", "world_check", "VOCABULARY"]

# Every word the world's prompts use (plus "an"); the tokenizer makes each a single token.
VOCABULARY: Tuple[str, ...] = tuple(
    ["a", "an", "on", "background"] + list(world.SIZES) + list(world.SHAPES) + list(world.COLOURS) + list(world.BACKGROUNDS)
)


@dataclass
class PretrainConfig:
    """What the embedded model is and how it is trained. The committed ``rdpo_zoo/embedded/pretrain_tiny.json``
    is the instance that made the shipped weights."""

    seed: int = field(default=0, metadata={"help": "seed of the data, the noise and the initial weights"})
    threads: int = field(default=2, metadata={"help": "torch CPU threads"})
    # VAE
    vae_block_out_channels: Tuple[int, ...] = field(default=(32, 64, 64), metadata={"help": "one level per entry; 3 -> 4x downsampling"})
    vae_steps: int = field(default=1400, metadata={"help": "VAE optimisation steps"})
    vae_batch: int = field(default=16, metadata={"help": "VAE batch size"})
    vae_lr: float = field(default=1e-3, metadata={"help": "VAE AdamW learning rate (cosine to 10 %)"})
    vae_kl_weight: float = field(default=1e-6, metadata={"help": "KL weight, as Stable Diffusion's autoencoder"})
    # text encoder
    text_hidden: int = field(default=64, metadata={"help": "CLIPTextModel hidden size = UNet cross-attention dim"})
    text_layers: int = field(default=2, metadata={"help": "CLIPTextModel layers"})
    text_heads: int = field(default=4, metadata={"help": "CLIPTextModel attention heads"})
    max_length: int = field(default=16, metadata={"help": "tokenizer model_max_length (world prompts take <= 10)"})
    # UNet
    unet_block_out_channels: Tuple[int, ...] = field(default=(32, 64, 64), metadata={"help": "UNet widths per level"})
    unet_steps: int = field(default=3000, metadata={"help": "UNet optimisation steps"})
    unet_batch: int = field(default=32, metadata={"help": "UNet batch size"})
    unet_lr: float = field(default=1e-3, metadata={"help": "peak AdamW learning rate"})
    unet_lr_min: float = field(default=1e-4, metadata={"help": "final learning rate of the cosine decay"})
    warmup_steps: int = field(default=200, metadata={"help": "linear warm-up steps"})
    prompt_dropout: float = field(default=0.1, metadata={"help": "fraction of prompts replaced by '' (for CFG)"})
    ema_decay: float = field(default=0.999, metadata={"help": "EMA decay of UNet and text-encoder weights"})
    beta_schedule: str = field(default="squaredcos_cap_v2", metadata={"help": "noise schedule (cosine)"})
    # bookkeeping
    checkpoint_every: int = field(default=100, metadata={"help": "steps between resumable checkpoints"})
    snapshot_every: int = field(default=500, metadata={"help": "steps between kept EMA snapshots"})
    log_every: int = field(default=25, metadata={"help": "steps between log lines"})

    def __post_init__(self):
        self.vae_block_out_channels = tuple(self.vae_block_out_channels)
        self.unet_block_out_channels = tuple(self.unet_block_out_channels)
        for name in ("vae_steps", "vae_batch", "unet_steps", "unet_batch", "checkpoint_every", "snapshot_every", "threads"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}: expected a positive int, got {getattr(self, name)!r}")
        if not 0.0 <= self.prompt_dropout < 1.0:
            raise ValueError(f"prompt_dropout: expected a value in [0, 1), got {self.prompt_dropout!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay: expected a value in [0, 1), got {self.ema_decay!r}")

    @classmethod
    def from_json(cls, path) -> "PretrainConfig":
        data = json.loads(Path(path).read_text())
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"config: unknown keys {unknown} in {path}; known: {sorted(known)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)


# ---------------------------------------------------------------------------------------------------------------
# The tokenizer: a byte-level BPE in CLIP's format, made offline for the world's words.


def _bytes_to_unicode() -> Dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def build_tokenizer(out_dir, words: Sequence[str] = VOCABULARY, max_length: int = 16):
    """Write ``vocab.json``, ``merges.txt`` and ``tokenizer_config.json`` for a ``CLIPTokenizer`` that has every
    byte (so any text tokenizes) and every word of ``words`` as one token; return the loaded tokenizer.

    Each word gets the chain of merges that builds it left to right. Global merge ranks can make one word's merge
    pre-empt another's ("la" of "large" inside "black"), so words that do not come out whole have their chains moved
    to the front until all do.
    """
    from transformers import CLIPTokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    chains: Dict[str, List[Tuple[str, str]]] = {}
    for w in words:
        symbols = list(w[:-1]) + [w[-1] + "</w>"]
        chain, cur = [], symbols[0]
        for s in symbols[1:]:
            chain.append((cur, s))
            cur += s
        chains[w] = chain
    order = list(words)
    for _ in range(4 * len(words)):
        merges: List[Tuple[str, str]] = []
        for w in order:
            merges += [m for m in chains[w] if m not in merges]
        vocab = chars + [c + "</w>" for c in chars]
        vocab += [a + b for a, b in merges if a + b not in vocab]
        vocab += ["<|startoftext|>", "<|endoftext|>"]
        (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
        (out / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
        (out / "tokenizer_config.json").write_text(
            json.dumps({"model_max_length": max_length, "tokenizer_class": "CLIPTokenizer", "do_lower_case": True}, indent=2)
        )
        tok = CLIPTokenizer.from_pretrained(str(out))
        split = [w for w in words if len(tok(w, add_special_tokens=False).input_ids) != 1]
        if not split:
            return tok
        order = split + [w for w in order if w not in split]
    raise RuntimeError(f"build_tokenizer: could not make {split} single tokens")


# ---------------------------------------------------------------------------------------------------------------
# Components.


def _scheduler_config(cfg: PretrainConfig) -> dict:
    # clip_sample=False, set_alpha_to_one=False and steps_offset=1: the affine Gaussian step needs no x̂0 clipping,
    # and the last step keeps a non-zero variance (see DESIGN.md and ENV-NOTES.md).
    return dict(
        num_train_timesteps=1000,
        beta_schedule=cfg.beta_schedule,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )


def _make_vae(cfg: PretrainConfig):
    from diffusers import AutoencoderKL

    n = len(cfg.vae_block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=cfg.vae_block_out_channels,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=world.IMAGE_SIZE,
    )


def _make_text_encoder(cfg: PretrainConfig, tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=cfg.text_hidden,
            intermediate_size=4 * cfg.text_hidden,
            num_hidden_layers=cfg.text_layers,
            num_attention_heads=cfg.text_heads,
            max_position_embeddings=cfg.max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )


def _make_unet(cfg: PretrainConfig):
    from diffusers import UNet2DConditionModel

    n = len(cfg.unet_block_out_channels)
    latent = world.IMAGE_SIZE // 2 ** (len(cfg.vae_block_out_channels) - 1)
    return UNet2DConditionModel(
        sample_size=latent,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=cfg.unet_block_out_channels,
        # Cross-attention on the lower levels only, as the ENV-NOTES probe that learned colour and shape: at the
        # full 16×16 level it more than doubles the step time (0.68 against ~0.3 s at batch 32).
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        cross_attention_dim=cfg.text_hidden,
        attention_head_dim=8,
        norm_num_groups=16,
    )


def _atomic_save(obj, path: Path) -> None:
    from rdpo_zoo.checkpoints import atomic_save  # the trainer's crash-safe writes, one copy

    atomic_save(obj, path)


def _step_seed(cfg: PretrainConfig, stage: int, step: int) -> int:
    return (cfg.seed * 1_000_003 + stage * 10_000_019 + step) % (2**63)


def _lr(step: int, total: int, peak: float, floor: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * p))


class _Log:
    def __init__(self, path: Path):
        self.path = path

    def __call__(self, **record):
        record["time"] = round(time.time(), 1)
        line = json.dumps(record)
        with open(self.path, "a") as f:
            f.write(line + "\n")
        print(line, flush=True)


# ---------------------------------------------------------------------------------------------------------------
# Stage 1: the autoencoder.


def _train_vae(cfg: PretrainConfig, run_dir: Path, log: _Log, deadline: float) -> bool:
    """Train (or resume) the VAE; write ``vae/`` when done. Returns whether the stage is complete."""
    final = run_dir / "vae"
    if (final / "config.json").exists():
        return True
    torch.manual_seed(cfg.seed)
    vae = _make_vae(cfg)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    ckpt_path = run_dir / "vae.ckpt"
    step = 0
    if ckpt_path.exists():
        state = torch.load(ckpt_path, weights_only=False)
        vae.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
        log(stage="vae", event="resume", step=step)
    vae.train()
    t0, losses = time.time(), []
    while step < cfg.vae_steps:
        seed = _step_seed(cfg, 1, step)
        images, _ = world.make_batch(cfg.vae_batch, seed, split="all")
        x = images * 2 - 1
        for g in opt.param_groups:
            g["lr"] = _lr(step, cfg.vae_steps, cfg.vae_lr, 0.1 * cfg.vae_lr, 50)
        posterior = vae.encode(x).latent_dist
        z = posterior.sample(generator=torch.Generator().manual_seed(seed))
        recon = vae.decode(z).sample
        # L1 keeps flat colours exact; MSE pulls the edges; the KL only keeps the latents bounded.
        loss = (recon - x).abs().mean() + (recon - x).pow(2).mean() + cfg.vae_kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        step += 1
        if step % cfg.log_every == 0:
            log(stage="vae", step=step, loss=sum(losses) / len(losses), s_per_step=(time.time() - t0) / len(losses))
            t0, losses = time.time(), []
        if step % cfg.checkpoint_every == 0 or step == cfg.vae_steps:
            _atomic_save({"model": vae.state_dict(), "opt": opt.state_dict(), "step": step}, ckpt_path)
            if time.time() > deadline and step < cfg.vae_steps:
                log(stage="vae", event="time limit", step=step)
                return False
    # Freeze: measure the reconstructions with the checker and the latents' spread, then write the final folder.
    vae.eval()
    with torch.no_grad():
        images, prompts = world.make_batch(256, _step_seed(cfg, 9, 0), split="all")
        z = vae.encode(images * 2 - 1).latent_dist.sample(generator=torch.Generator().manual_seed(cfg.seed))
        recon = ((vae.decode(z).sample + 1) / 2).clamp(0, 1)
        rates = world.evaluate(recon, prompts)
        scaling = float(1.0 / z.std())
    vae.register_to_config(scaling_factor=scaling)
    tmp = run_dir / "vae.tmp"
    vae.save_pretrained(tmp, safe_serialization=True)
    os.replace(tmp, final)
    log(stage="vae", event="done", step=step, scaling_factor=scaling, recon_mse=float((recon - images).pow(2).mean()), recon_check=rates)
    return True


# ---------------------------------------------------------------------------------------------------------------
# Stage 2: UNet and text encoder.


def _tokenize(tokenizer, prompts: Sequence[str]) -> torch.Tensor:
    # Exactly as StableDiffusionPipeline.encode_prompt tokenizes (pad to model_max_length), so training and
    # sampling see the same ids, the empty negative prompt included.
    return tokenizer(
        list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


def _train_unet(cfg: PretrainConfig, run_dir: Path, log: _Log, deadline: float) -> bool:
    from diffusers import AutoencoderKL, DDIMScheduler
    from transformers import CLIPTokenizer

    from rdpo_zoo.steps import DDIMFamily

    tokenizer = CLIPTokenizer.from_pretrained(str(run_dir / "tokenizer"))
    vae = AutoencoderKL.from_pretrained(run_dir / "vae").eval().requires_grad_(False)
    scheduler = DDIMScheduler(**_scheduler_config(cfg))
    torch.manual_seed(cfg.seed + 1)
    unet, text_encoder = _make_unet(cfg), _make_text_encoder(cfg, tokenizer)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=1e-4)
    ckpt_path = run_dir / "unet.ckpt"
    step = 0
    if ckpt_path.exists():
        state = torch.load(ckpt_path, weights_only=False)
        unet.load_state_dict(state["unet"])
        text_encoder.load_state_dict(state["text_encoder"])
        opt.load_state_dict(state["opt"])
        for e, v in zip(ema, state["ema"]):
            e.copy_(v)
        step = state["step"]
        log(stage="unet", event="resume", step=step)
    if step >= cfg.unet_steps:
        return True
    unet.train()
    text_encoder.train()
    forward = DDIMFamily(dict(scheduler.config), 1)  # the training (noising) process of the schedule
    empty_ids = _tokenize(tokenizer, [""])
    t0, losses = time.time(), []
    while step < cfg.unet_steps:
        seed = _step_seed(cfg, 2, step)
        gen = torch.Generator().manual_seed(seed)
        images, prompts = world.make_batch(cfg.unet_batch, seed, split="train")
        ids = _tokenize(tokenizer, prompts)
        drop = torch.rand(len(prompts), generator=gen) < cfg.prompt_dropout
        ids[drop] = empty_ids
        with torch.no_grad():
            latents = vae.encode(images * 2 - 1).latent_dist.sample(generator=gen) * vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(prompts),), generator=gen)
        noisy = forward.add_noise(latents, noise, t)
        for g in opt.param_groups:
            g["lr"] = _lr(step, cfg.unet_steps, cfg.unet_lr, cfg.unet_lr_min, cfg.warmup_steps)
        hidden = text_encoder(ids)[0]
        pred = unet(noisy, t, hidden).sample
        loss = (pred - noise).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        d = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - d)
        losses.append(loss.item())
        if step % cfg.log_every == 0:
            log(stage="unet", step=step, loss=sum(losses) / len(losses), lr=opt.param_groups[0]["lr"],
                s_per_step=(time.time() - t0) / len(losses))
            t0, losses = time.time(), []
        if step % cfg.snapshot_every == 0 or step == cfg.unet_steps:
            _save_snapshot(run_dir / "snapshots" / f"step-{step}", {"unet": unet, "text_encoder": text_encoder}, params, ema)
        if step % cfg.checkpoint_every == 0 or step == cfg.unet_steps:
            _atomic_save(
                {"unet": unet.state_dict(), "text_encoder": text_encoder.state_dict(), "opt": opt.state_dict(),
                 "ema": ema, "step": step},
                ckpt_path,
            )
            if time.time() > deadline and step < cfg.unet_steps:
                log(stage="unet", event="time limit", step=step)
                return False
    log(stage="unet", event="done", step=step)
    return True


def _save_snapshot(path: Path, modules: Dict[str, torch.nn.Module], params, ema) -> None:
    """Save the EMA weights of ``modules`` as diffusers/transformers folders (one per name, e.g. ``unet/``,
    ``text_encoder/``), atomically; ``params`` are the modules' trained parameters and ``ema`` their averages."""
    import copy

    backup = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, e in zip(params, ema):
            p.copy_(e)
    try:
        tmp = path.with_name(path.name + ".tmp")
        for name, module in modules.items():
            copy.deepcopy(module).eval().save_pretrained(tmp / name, safe_serialization=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            import shutil

            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        with torch.no_grad():
            for p, b in zip(params, backup):
                p.copy_(b)


def _check_resumable(cfg, run_dir: Path, free: Sequence[str]) -> None:
    """If ``run_dir`` already holds a run, refuse a config that differs from its saved one outside the fields
    ``free``; then write ``cfg`` as the run's ``config.json``. ``cfg`` is a dataclass with ``from_json``/``to_json``."""
    cfg_path = run_dir / "config.json"
    if cfg_path.exists():
        saved = type(cfg).from_json(cfg_path)
        for f in dataclasses.fields(cfg):
            if f.name not in free and getattr(saved, f.name) != getattr(cfg, f.name):
                raise ValueError(
                    f"config: {f.name} is {getattr(cfg, f.name)!r} but the run in {run_dir} was made with "
                    f"{getattr(saved, f.name)!r}; use a new run directory"
                )
    cfg_path.write_text(cfg.to_json())


def run(cfg: PretrainConfig, run_dir, max_minutes: float = 60.0) -> bool:
    """Run (or resume) pretraining in ``run_dir`` for at most ``max_minutes``; returns whether both stages are done.

    A run stops at the first checkpoint after the time limit; running it again resumes there.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    # The step counts may be raised to continue a finished run, and the bookkeeping may change; anything else
    # would change what the checkpoints mean.
    _check_resumable(cfg, run_dir, free=("vae_steps", "unet_steps", "threads", "log_every", "checkpoint_every",
                                         "snapshot_every"))
    if not (run_dir / "tokenizer" / "vocab.json").exists():
        build_tokenizer(run_dir / "tokenizer", max_length=cfg.max_length)
    log = _Log(run_dir / "log.jsonl")
    deadline = time.time() + 60.0 * max_minutes
    log(event="start", max_minutes=max_minutes)
    if not _train_vae(cfg, run_dir, log, deadline):
        return False
    return _train_unet(cfg, run_dir, log, deadline)


# ---------------------------------------------------------------------------------------------------------------
# From a run to a pipeline.


def _snapshot_dir(run_dir: Path, snapshot: Optional[int]) -> Path:
    snaps = sorted((run_dir / "snapshots").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    snaps = [p for p in snaps if not p.name.endswith(".tmp")]
    if not snaps:
        raise FileNotFoundError(f"run_dir: {run_dir} has no snapshots yet")
    if snapshot is None:
        return snaps[-1]
    path = run_dir / "snapshots" / f"step-{snapshot}"
    if not path.is_dir():
        raise ValueError(f"snapshot: no step-{snapshot} in {run_dir}/snapshots; have {[p.name for p in snaps]}")
    return path


def build_pipeline(run_dir, snapshot: Optional[int] = None, dtype=torch.float32):
    """A ``StableDiffusionPipeline`` from a run's VAE, tokenizer and EMA snapshot (the latest by default)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    run_dir = Path(run_dir)
    cfg = PretrainConfig.from_json(run_dir / "config.json")
    snap = _snapshot_dir(run_dir, snapshot)
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL.from_pretrained(run_dir / "vae"),
        text_encoder=CLIPTextModel.from_pretrained(snap / "text_encoder"),
        tokenizer=CLIPTokenizer.from_pretrained(str(run_dir / "tokenizer")),
        unet=UNet2DConditionModel.from_pretrained(snap / "unet"),
        scheduler=DDIMScheduler(**_scheduler_config(cfg)),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    # The run stores fp32; cast only when asked (diffusers warns about any cast after loading).
    return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)


def export(run_dir, out_dir, snapshot: Optional[int] = None, fp16: bool = True) -> Path:
    """Write the pipeline folder (``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``,
    ``scheduler/``) from a run's snapshot, plus the config that made it; the folder is replaced atomically.

    Weights are safetensors. With ``fp16`` the UNet's and the VAE's are stored in fp16 (diffusers upcasts them to the
    requested dtype, fp32 by default, on load); the text encoder stays fp32 (0.5 MB) because transformers loads a
    model in its stored dtype, and a plain ``from_pretrained`` would then feed fp16 embeddings to an fp32 UNet.
    """
    import shutil

    from safetensors.torch import load_file, save_file

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    snap = _snapshot_dir(run_dir, snapshot)
    pipe = build_pipeline(run_dir, int(snap.name.split("-")[1]))
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    pipe.save_pretrained(tmp, safe_serialization=True)
    if fp16:
        for weights in list((tmp / "unet").glob("*.safetensors")) + list((tmp / "vae").glob("*.safetensors")):
            state = {k: v.half() if v.is_floating_point() else v for k, v in load_file(weights).items()}
            save_file(state, weights, metadata={"format": "pt"})
    # The slow CLIPTokenizer (and transformers 4) read the byte-level BPE files, not tokenizer.json: ship both.
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(run_dir / "tokenizer" / name, tmp / "tokenizer" / name)
    cfg = json.loads((run_dir / "config.json").read_text())
    (tmp / "pretrain_config.json").write_text(json.dumps({**cfg, "exported_snapshot": snap.name}, indent=2) + "\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir


def world_check(pipe, n: int = 256, prompts: str = "train", seed: int = 0, steps: int = 20, eta: float = 1.0,
                guidance_scale: float = 3.0, batch_size: int = 64) -> Dict[str, float]:
    """Sample ``n`` images for prompts cycled from the set ``prompts`` (DDIM, ``steps`` steps, η = ``eta``, CFG
    ``guidance_scale``) and return the checker's rates (:func:`rdpo_zoo.world.evaluate`)."""
    if n < 1:
        raise ValueError(f"n: expected a positive int, got {n!r}")
    names = world.prompt_set(prompts)
    chosen = [names[i % len(names)] for i in range(n)]
    images = []
    gen = torch.Generator(device=pipe.device).manual_seed(seed)
    for i in range(0, n, batch_size):
        out = pipe(chosen[i : i + batch_size], num_inference_steps=steps, eta=eta, guidance_scale=guidance_scale,
                   generator=gen, output_type="pt")
        images.append(out.images.float().cpu())
    return world.evaluate(torch.cat(images), chosen)
