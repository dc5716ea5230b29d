"""Pretraining of ``tiny-flow``: an SD3-shaped flow-matching pipeline of the embedded world, on the CPU.

The pipeline is a diffusers ``StableDiffusion3Pipeline`` without its T5 encoder:

- ``vae`` and the two ``tokenizer``s are the embedded ``tiny`` model's, frozen and reused (64×64×3 ↔ 4×16×16);
  the VAE's config gets the latents' ``shift_factor`` (their mean) and ``scaling_factor`` = 1 / their std, measured
  on 256 of the world's images, as SD3 normalises its latents.
- ``text_encoder`` and ``text_encoder_2``: two small ``CLIPTextModelWithProjection`` trained jointly with the
  transformer, as the tiny UNet's recipe trains its encoder (a random frozen encoder leaves the denoiser to decode
  arbitrary features; docs/world.md).
- ``transformer``: a small ``SD3Transformer2DModel`` (MMDiT; patch 2, so 8×8 image tokens), trained with the
  rectified-flow objective: x_σ = (1 − σ)·x0 + σ·ε, target velocity ε − x0, σ drawn logit-normal as SD3's paper,
  denoiser timestep 1000·σ.
- ``scheduler``: ``FlowMatchEulerDiscreteScheduler`` with a static ``shift`` (the config's ``shift``).

SD3's pipeline appends ``max_sequence_length`` all-zero "T5" tokens to the prompt when it has no T5 encoder. All
those tokens are identical, so their number only shifts their attention weight by log(count); the transformer is
trained with a count drawn from ``t5_pad_lengths`` at each step, so that any small ``max_sequence_length`` (≤ the
largest trained, 32 by default) samples the model it was trained to be.

Everything else is :mod:`rdpo_zoo.pretrain`'s: batches are a function of (seed, stage, step), checkpoints are
written to a temporary file and renamed, EMA snapshots every ``snapshot_every`` steps, a run resumes where it
stopped. The run directory holds ``config.json``, ``tokenizer/``, ``vae/`` (the frozen VAE with its latent
normalisation), ``latents.pt`` (the encoded images), ``transformer.ckpt``, ``snapshots/step-N/{transformer,text_encoder,text_encoder_2}``,
``log.jsonl``. :func:`export` writes a ``StableDiffusion3Pipeline`` folder from it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import torch

from rdpo_zoo import world
from rdpo_zoo.pretrain import _atomic_save, _check_resumable, _Log, _lr, _save_snapshot, _snapshot_dir, _step_seed

__all__ = ["FlowPretrainConfig", "is_flow_run", "run", "build_pipeline", "export", "sample_images", "FLOW_STAGE"]

FLOW_STAGE = 3  # the stage number in the batch seeds: distinct from the tiny model's VAE (1) and UNet (2) stages
_TEXT_ENCODERS = ("text_encoder", "text_encoder_2")
POOLED_CHOICES = ("text", "none")


@dataclass
class FlowPretrainConfig:
    """What ``tiny-flow`` is and how it is trained. The committed ``rdpo_zoo/embedded/pretrain_tiny_flow.json`` is
    the instance that made the shipped weights."""

    seed: int = field(default=0, metadata={"help": "seed of the data, the noise and the initial weights"})
    threads: int = field(default=1, metadata={"help": "torch CPU threads"})
    base_model: str = field(default="tiny", metadata={"help": "whose VAE and tokenizer are reused: 'tiny' or a "
                                                              "StableDiffusionPipeline folder"})
    # text encoders (two, as SD3's pipeline asks for)
    text_hidden: int = field(default=64, metadata={"help": "hidden size of each CLIPTextModelWithProjection"})
    text_layers: int = field(default=2, metadata={"help": "layers of each text encoder"})
    text_heads: int = field(default=4, metadata={"help": "attention heads of each text encoder"})
    text_projection: int = field(default=64, metadata={"help": "pooled projection size of each text encoder"})
    pooled: str = field(default="text", metadata={
        "help": "the transformer's pooled text vector: 'text' (the encoders' projections, as SD3) or 'none' (the "
                "projections fixed at zero, in training and in the exported pipeline: every attribute of the prompt "
                "must come through attention, not through the adaptive norms' global vector)"})
    # transformer
    layers: int = field(default=6, metadata={"help": "MMDiT blocks"})
    heads: int = field(default=4, metadata={"help": "attention heads"})
    head_dim: int = field(default=24, metadata={"help": "size of each head; the width is heads * head_dim"})
    patch_size: int = field(default=2, metadata={"help": "latent patch size (16×16 latents -> (16/p)² tokens)"})
    # training
    latent_pool: int = field(default=8192, metadata={
        "help": "world images encoded once by the frozen VAE (posterior mean and std kept); each step draws its batch "
                "from them and samples the latents afresh"})
    steps: int = field(default=4500, metadata={"help": "optimisation steps"})
    batch: int = field(default=32, metadata={"help": "batch size"})
    lr: float = field(default=1e-3, metadata={"help": "peak AdamW learning rate"})
    lr_min: float = field(default=1e-4, metadata={"help": "final learning rate of the cosine decay"})
    warmup_steps: int = field(default=200, metadata={"help": "linear warm-up steps"})
    prompt_dropout: float = field(default=0.1, metadata={"help": "fraction of prompts replaced by '' (for CFG)"})
    ema_decay: float = field(default=0.999, metadata={"help": "EMA decay of transformer and text-encoder weights"})
    logit_mean: float = field(default=0.0, metadata={"help": "mean of the logit-normal σ distribution (SD3)"})
    logit_std: float = field(default=1.0, metadata={"help": "std of the logit-normal σ distribution (SD3)"})
    t5_pad_lengths: Tuple[int, ...] = field(default=(0, 2, 8, 32), metadata={
        "help": "counts of the all-zero T5 tokens the pipeline appends (max_sequence_length), one drawn per step"})
    shift: float = field(default=1.0, metadata={"help": "the sampling scheduler's static shift (not used in training)"})
    # bookkeeping
    checkpoint_every: int = field(default=100, metadata={"help": "steps between resumable checkpoints"})
    snapshot_every: int = field(default=250, metadata={"help": "steps between kept EMA snapshots"})
    log_every: int = field(default=25, metadata={"help": "steps between log lines"})

    def __post_init__(self):
        self.t5_pad_lengths = tuple(int(n) for n in self.t5_pad_lengths)
        for name in ("latent_pool", "text_hidden", "text_layers", "text_heads", "text_projection", "layers", "heads", "head_dim",
                     "patch_size", "steps", "batch", "checkpoint_every", "snapshot_every", "log_every", "threads"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}: expected a positive int, got {getattr(self, name)!r}")
        if self.pooled not in POOLED_CHOICES:
            raise ValueError(f"pooled: expected one of {POOLED_CHOICES}, got {self.pooled!r}")
        if not self.t5_pad_lengths or min(self.t5_pad_lengths) < 0:
            raise ValueError(f"t5_pad_lengths: expected non-negative ints, got {self.t5_pad_lengths!r}")
        if not 0.0 <= self.prompt_dropout < 1.0:
            raise ValueError(f"prompt_dropout: expected a value in [0, 1), got {self.prompt_dropout!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay: expected a value in [0, 1), got {self.ema_decay!r}")
        if self.logit_std <= 0 or self.shift <= 0:
            raise ValueError(f"logit_std, shift: expected positive values, got {self.logit_std!r}, {self.shift!r}")

    @classmethod
    def from_json(cls, path) -> "FlowPretrainConfig":
        data = json.loads(Path(path).read_text())
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"config: unknown keys {unknown} in {path}; known: {sorted(known)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)


# ---------------------------------------------------------------------------------------------------------------
# Components.


def _base_folder(cfg: FlowPretrainConfig) -> Path:
    if cfg.base_model == "tiny":
        from rdpo_zoo.embedded import tiny_path

        return tiny_path()
    folder = Path(cfg.base_model).expanduser()
    if not (folder / "vae" / "config.json").is_file() or not (folder / "tokenizer").is_dir():
        raise ValueError(f"base_model: expected 'tiny' or a pipeline folder with vae/ and tokenizer/, got {cfg.base_model!r}")
    return folder


def scheduler_config(cfg: FlowPretrainConfig) -> dict:
    return dict(num_train_timesteps=1000, shift=cfg.shift)


def _make_text_encoder(cfg: FlowPretrainConfig, tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    return CLIPTextModelWithProjection(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=cfg.text_hidden,
            intermediate_size=4 * cfg.text_hidden,
            num_hidden_layers=cfg.text_layers,
            num_attention_heads=cfg.text_heads,
            projection_dim=cfg.text_projection,
            max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )


def _make_transformer(cfg: FlowPretrainConfig, vae_config):
    from diffusers import SD3Transformer2DModel

    latent = vae_config["sample_size"] // 2 ** (len(vae_config["block_out_channels"]) - 1)
    if latent % cfg.patch_size:
        raise ValueError(f"patch_size: {cfg.patch_size} does not divide the {latent}×{latent} latents")
    width = cfg.heads * cfg.head_dim
    return SD3Transformer2DModel(
        sample_size=latent,
        patch_size=cfg.patch_size,
        in_channels=vae_config["latent_channels"],
        out_channels=vae_config["latent_channels"],
        num_layers=cfg.layers,
        attention_head_dim=cfg.head_dim,
        num_attention_heads=cfg.heads,
        # The pipeline concatenates the two encoders' token features (and pads them to this width).
        joint_attention_dim=2 * cfg.text_hidden,
        caption_projection_dim=width,
        pooled_projection_dim=2 * cfg.text_projection,
        pos_embed_max_size=latent // cfg.patch_size,
        qk_norm="rms_norm",  # SD3.5's: keeps the attention logits bounded at a high learning rate
    )


def _prepare_vae(cfg: FlowPretrainConfig, run_dir: Path, log: _Log):
    """The frozen VAE with SD3's latent normalisation in its config (``shift_factor`` = mean, ``scaling_factor`` =
    1 / std of the latents of the pool's first 256 images), written once to ``run_dir/vae``; and the latent pool."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(_base_folder(cfg) / "vae").eval().requires_grad_(False)
    pool = _latent_pool(cfg, run_dir, vae, log)
    final = run_dir / "vae"
    if not (final / "config.json").exists():
        mean, std = pool["mean"][:256], pool["std"][:256]
        z = mean + std * torch.randn(mean.shape, generator=torch.Generator().manual_seed(cfg.seed))
        vae.register_to_config(shift_factor=float(z.mean()), scaling_factor=float(1.0 / z.std()))
        tmp = run_dir / "vae.tmp"
        vae.save_pretrained(tmp, safe_serialization=True)
        os.replace(tmp, final)
    return AutoencoderKL.from_pretrained(final).eval().requires_grad_(False), pool


def _latent_pool(cfg: FlowPretrainConfig, run_dir: Path, vae, log: _Log):
    """The frozen VAE's posteriors (mean, std) of ``latent_pool`` world images from the ``train`` prompts, and their
    prompts; encoded once (chunk c's images seeded by (seed, stage, c)) and kept in ``run_dir/latents.pt``.

    Encoding is the dearest part of a step (~0.6 s of ~1.5 s at batch 32 on one thread), so a step reads its
    images' posteriors instead; sampling from a cached posterior is distributed exactly as encoding the image again.
    """
    path = run_dir / "latents.pt"
    if path.exists():
        pool = torch.load(path, weights_only=False)
        if len(pool["prompts"]) == cfg.latent_pool:
            return pool
    t0, means, stds, prompts = time.time(), [], [], []
    chunk = 256
    with torch.no_grad():
        for c in range(0, cfg.latent_pool, chunk):
            images, names = world.make_batch(min(chunk, cfg.latent_pool - c), _step_seed(cfg, FLOW_STAGE + 1, c),
                                             split="train")
            posterior = vae.encode(images * 2 - 1).latent_dist
            means.append(posterior.mean)
            stds.append(posterior.std)
            prompts += list(names)
    pool = {"mean": torch.cat(means), "std": torch.cat(stds), "prompts": prompts}
    _atomic_save(pool, path)
    log(stage="flow", event="latent pool", images=len(prompts), seconds=round(time.time() - t0, 1))
    return pool


def _assemble(vae, tokenizer, text_encoders, transformer, cfg: FlowPretrainConfig):
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(**scheduler_config(cfg)),
        vae=vae,
        text_encoder=text_encoders[0],
        tokenizer=tokenizer,
        text_encoder_2=text_encoders[1],
        tokenizer_2=tokenizer,
        text_encoder_3=None,
        tokenizer_3=None,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ---------------------------------------------------------------------------------------------------------------
# Training.


def _train(cfg: FlowPretrainConfig, run_dir: Path, log: _Log, deadline: float) -> bool:
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(run_dir / "tokenizer"))
    vae, pool = _prepare_vae(cfg, run_dir, log)
    torch.manual_seed(cfg.seed + 1)
    text_encoders = [_make_text_encoder(cfg, tokenizer) for _ in _TEXT_ENCODERS]
    if cfg.pooled == "none":  # pooled = projection(EOS feature) = 0 exactly, here and in the saved encoders
        for encoder in text_encoders:
            torch.nn.init.zeros_(encoder.text_projection.weight)
            encoder.text_projection.requires_grad_(False)
    transformer = _make_transformer(cfg, vae.config)
    # The pipeline's own encode_prompt builds the conditioning, so training sees exactly what sampling will.
    pipe = _assemble(vae, tokenizer, text_encoders, transformer, cfg)
    modules = {"transformer": transformer, **dict(zip(_TEXT_ENCODERS, text_encoders))}
    params = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-4)
    ckpt_path = run_dir / "transformer.ckpt"
    step = 0
    if ckpt_path.exists():
        state = torch.load(ckpt_path, weights_only=False)
        for name, module in modules.items():
            module.load_state_dict(state[name])
        opt.load_state_dict(state["opt"])
        for e, v in zip(ema, state["ema"]):
            e.copy_(v)
        step = state["step"]
        log(stage="flow", event="resume", step=step)
    if step >= cfg.steps:
        return True
    for module in modules.values():
        module.train()
    shift, scale = vae.config.shift_factor, vae.config.scaling_factor
    t0, losses = time.time(), []
    while step < cfg.steps:
        seed = _step_seed(cfg, FLOW_STAGE, step)
        gen = torch.Generator().manual_seed(seed)
        idx = torch.randint(len(pool["prompts"]), (cfg.batch,), generator=gen)
        prompts = [pool["prompts"][i] for i in idx.tolist()]
        drop = torch.rand(len(prompts), generator=gen) < cfg.prompt_dropout
        prompts = ["" if d else p for p, d in zip(prompts, drop.tolist())]
        pad = cfg.t5_pad_lengths[int(torch.randint(len(cfg.t5_pad_lengths), (1,), generator=gen))]
        z = pool["mean"][idx] + pool["std"][idx] * torch.randn(pool["mean"][idx].shape, generator=gen)
        x0 = (z - shift) * scale
        noise = torch.randn(x0.shape, generator=gen)
        sigma = torch.sigmoid(cfg.logit_mean + cfg.logit_std * torch.randn(len(prompts), generator=gen))
        s = sigma.view(-1, 1, 1, 1)
        noisy = (1 - s) * x0 + s * noise
        for g in opt.param_groups:
            g["lr"] = _lr(step, cfg.steps, cfg.lr, cfg.lr_min, cfg.warmup_steps)
        hidden, _, pooled, _ = pipe.encode_prompt(prompts, prompts, None, do_classifier_free_guidance=False,
                                                  max_sequence_length=pad, device=torch.device("cpu"))
        pred = transformer(hidden_states=noisy, timestep=1000 * sigma, encoder_hidden_states=hidden,
                           pooled_projections=pooled).sample
        loss = (pred - (noise - x0)).pow(2).mean()
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
            log(stage="flow", step=step, loss=sum(losses) / len(losses), lr=opt.param_groups[0]["lr"],
                s_per_step=(time.time() - t0) / len(losses))
            t0, losses = time.time(), []
        if step % cfg.snapshot_every == 0 or step == cfg.steps:
            _save_snapshot(run_dir / "snapshots" / f"step-{step}", modules, params, ema)
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            _atomic_save({**{n: m.state_dict() for n, m in modules.items()}, "opt": opt.state_dict(), "ema": ema,
                          "step": step}, ckpt_path)
            if time.time() > deadline and step < cfg.steps:
                log(stage="flow", event="time limit", step=step)
                return False
    log(stage="flow", event="done", step=step)
    return True


def run(cfg: FlowPretrainConfig, run_dir, max_minutes: float = 60.0) -> bool:
    """Run (or resume) the pretraining in ``run_dir`` for at most ``max_minutes``; returns whether it is done.
    A run stops at the first checkpoint after the time limit; running it again resumes there."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    # The step count may be raised to continue a finished run; anything else but bookkeeping changes what the
    # checkpoints mean. The sampling shift is not part of training.
    _check_resumable(cfg, run_dir, free=("steps", "threads", "log_every", "checkpoint_every", "snapshot_every", "shift"))
    if not (run_dir / "tokenizer" / "vocab.json").exists():
        shutil.copytree(_base_folder(cfg) / "tokenizer", run_dir / "tokenizer", dirs_exist_ok=True)
    log = _Log(run_dir / "log.jsonl")
    log(event="start", max_minutes=max_minutes)
    return _train(cfg, run_dir, log, time.time() + 60.0 * max_minutes)


# ---------------------------------------------------------------------------------------------------------------
# From a run to a pipeline.


def is_flow_run(run_dir) -> bool:
    """Whether ``run_dir`` is a run of this module (rather than of :mod:`rdpo_zoo.pretrain`), by its config."""
    path = Path(run_dir) / "config.json"
    return path.is_file() and "t5_pad_lengths" in json.loads(path.read_text())


def build_pipeline(run_dir, snapshot: Optional[int] = None, shift: Optional[float] = None):
    """A ``StableDiffusion3Pipeline`` (fp32) from a run's VAE, tokenizer and EMA snapshot (the latest by default);
    ``shift`` overrides the scheduler's."""
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    run_dir = Path(run_dir)
    cfg = FlowPretrainConfig.from_json(run_dir / "config.json")
    if shift is not None:
        cfg.shift = shift
    snap = _snapshot_dir(run_dir, snapshot)
    return _assemble(
        AutoencoderKL.from_pretrained(run_dir / "vae"),
        CLIPTokenizer.from_pretrained(str(run_dir / "tokenizer")),
        [CLIPTextModelWithProjection.from_pretrained(snap / name) for name in _TEXT_ENCODERS],
        SD3Transformer2DModel.from_pretrained(snap / "transformer"),
        cfg,
    )


def export(run_dir, out_dir, snapshot: Optional[int] = None, shift: Optional[float] = None) -> Path:
    """Write the ``StableDiffusion3Pipeline`` folder of a run's snapshot (safetensors), plus the config that made it
    (``pretrain_config.json``); the folder is replaced atomically. ``shift`` overrides the scheduler's.

    The transformer and the VAE are stored in fp16 (diffusers upcasts them to the requested dtype, fp32 by default);
    the text encoders stay fp32 (~0.6 MB each) because transformers loads a model in its stored dtype, and a plain
    ``from_pretrained`` would then feed fp16 embeddings to an fp32 transformer (as :func:`rdpo_zoo.pretrain.export`).
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    snap = _snapshot_dir(run_dir, snapshot)
    pipe = build_pipeline(run_dir, int(snap.name.split("-")[1]), shift=shift)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    pipe.transformer.to(torch.float16)
    pipe.vae.to(torch.float16)
    pipe.save_pretrained(tmp, safe_serialization=True)
    for name in ("vocab.json", "merges.txt"):  # as pretrain.export: the slow tokenizer reads these
        for tok in ("tokenizer", "tokenizer_2"):
            shutil.copy(run_dir / "tokenizer" / name, tmp / tok / name)
    cfg = json.loads((run_dir / "config.json").read_text())
    if shift is not None:
        cfg["shift"] = shift
    (tmp / "pretrain_config.json").write_text(json.dumps({**cfg, "exported_snapshot": snap.name}, indent=2) + "\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir


# ---------------------------------------------------------------------------------------------------------------
# Measuring: the diffusers pipeline's own Euler sampler (``rdpo-zoo world-check`` reads its images with the
# world's checker).


def sample_images(pipe, prompts: Sequence[str], seed: int = 0, steps: int = 20, guidance_scale: float = 3.0,
                  max_sequence_length: Optional[int] = None, batch_size: int = 64) -> torch.Tensor:
    """Images ``[N, 3, H, W]`` float32 in [0, 1], one per prompt, from ``StableDiffusion3Pipeline``'s Euler ODE
    sampler (``steps`` steps, CFG ``guidance_scale``), deterministic from ``seed``. ``max_sequence_length``: the zero
    T5 tokens (default tiny-flow's, :data:`rdpo_zoo.embedded.TINY_FLOW_T5_TOKENS`)."""
    from rdpo_zoo.embedded import TINY_FLOW_T5_TOKENS

    if max_sequence_length is None:
        max_sequence_length = getattr(pipe, "rdpo_max_sequence_length", TINY_FLOW_T5_TOKENS)
    if steps < 1:
        raise ValueError(f"steps: expected a positive int, got {steps!r}")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    cfg = pipe.transformer.config
    out = []
    for i in range(0, len(prompts), batch_size):
        chunk = list(prompts[i : i + batch_size])
        latents = torch.randn((len(chunk), cfg.in_channels, cfg.sample_size, cfg.sample_size), generator=gen)
        images = pipe(chunk, num_inference_steps=steps, guidance_scale=guidance_scale, max_sequence_length=max_sequence_length,
                      latents=latents.to(pipe.device, pipe.transformer.dtype), output_type="pt").images
        out.append(images.float().cpu())
    return torch.cat(out)
