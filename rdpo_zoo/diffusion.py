"""One interface over diffusers text-to-image pipelines (SD 1.5-shaped and SDXL-shaped) for rollout and training.

The sampler here is written out step by step instead of calling ``pipe(...)``: the rollout needs every x_t, the
noise it drew, the guided network output and the step's Gaussian coefficients, and it branches mid-chain.
Classifier-free guidance is done as diffusers does it: one batched call on [uncond; cond], then
``o = o_u + g·(o_c − o_u)``; the policy and the reference use the same g.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from rdpo_zoo.schedulers import step_coefficients, x0_coefficients

__all__ = ["Conditioning", "DiffusionModel", "SAMPLERS", "pick_coefficients", "host_to_device"]

SAMPLERS = ("ddim", "ddpm")


def host_to_device(tensor: torch.Tensor, device) -> torch.Tensor:
    """``tensor`` (a host tensor: an index, a few coefficients) on ``device`` without a device sync: a blocking
    host-to-device copy synchronises the stream, so the copy is non-blocking, from pinned memory on CUDA (the
    caching host allocator keeps the block until the copy is done)."""
    device = torch.device(device)
    if tensor.device == device:
        return tensor
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def pick_coefficients(table: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(a, b, σ)`` as ``[P]`` host tensors: rows ``index`` of a ``[T, 3]`` host table. The fused ops check host
    coefficients on the host and copy them over without a device sync (a device ``index`` costs one sync here)."""
    return table[index.cpu()].unbind(1)


@dataclass
class Conditioning:
    """Text conditioning of B samples: conditional and unconditional embeddings (and SDXL's added conditions)."""

    prompts: list[str]
    cond: torch.Tensor  # [B, L, E]
    uncond: torch.Tensor  # [B, L, E]
    added_cond: dict[str, torch.Tensor] = field(default_factory=dict)  # SDXL: text_embeds, time_ids (cond)
    added_uncond: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.cond.shape[0]

    def index(self, index: torch.Tensor | Sequence[int]) -> "Conditioning":
        index = torch.as_tensor(index, dtype=torch.long)
        moved = {}

        def pick(t):  # the index goes to each device once, without a sync
            if t.device not in moved:
                moved[t.device] = host_to_device(index, t.device)
            return t[moved[t.device]]

        return Conditioning(
            [self.prompts[i] for i in index.tolist()], pick(self.cond), pick(self.uncond),
            {k: pick(v) for k, v in self.added_cond.items()}, {k: pick(v) for k, v in self.added_uncond.items()},
        )

    def repeat_interleave(self, n: int) -> "Conditioning":
        return self.index(torch.arange(len(self)).repeat_interleave(n))

    @staticmethod
    def cat(parts: Sequence["Conditioning"]) -> "Conditioning":
        return Conditioning(
            [p for part in parts for p in part.prompts],
            torch.cat([p.cond for p in parts]), torch.cat([p.uncond for p in parts]),
            {k: torch.cat([p.added_cond[k] for p in parts]) for k in parts[0].added_cond},
            {k: torch.cat([p.added_uncond[k] for p in parts]) for k in parts[0].added_uncond},
        )

    def to(self, device) -> "Conditioning":
        move = lambda d: {k: v.to(device) for k, v in d.items()}  # noqa: E731
        return Conditioning(self.prompts, self.cond.to(device), self.uncond.to(device), move(self.added_cond),
                            move(self.added_uncond))


class DiffusionModel:
    """A diffusers pipeline seen as a Gaussian policy over latents.

    Args:
        pipe: a ``StableDiffusionPipeline``-like (unet, vae, text_encoder, tokenizer, scheduler) or an SDXL pipeline.
        sampler: ``"ddim"`` (η as given) or ``"ddpm"`` (``fixed_small``); the pipeline's own scheduler config
            (betas, prediction type) is kept, with x̂0 clipping off (it breaks the affine step).
        eta: DDIM's η; the paper and the public D3PO/DDPO/SPO code use 1.0.
        num_steps: T, the number of sampling steps.
        guidance_scale: classifier-free guidance g (1 = off: one UNet call instead of two).
        resolution: image side in pixels (default: the UNet's sample size × the VAE factor).
    """

    def __init__(
        self, pipe, sampler: str = "ddim", eta: float = 1.0, num_steps: int = 20, guidance_scale: float = 5.0,
        resolution: Optional[int] = None,
    ):
        from diffusers import DDIMScheduler, DDPMScheduler

        if sampler not in SAMPLERS:
            raise ValueError(f"sampler: expected one of {SAMPLERS}, got {sampler!r}")
        if not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps: expected an integer >= 1, got {num_steps!r}")
        if guidance_scale < 1.0:
            raise ValueError(f"guidance_scale: expected a number >= 1 (1 disables guidance), got {guidance_scale!r}")
        self.pipe = pipe
        self.unet, self.vae = pipe.unet, pipe.vae
        self.is_sdxl = hasattr(pipe, "text_encoder_2")
        config = dict(pipe.scheduler.config)
        if sampler == "ddim":
            self.scheduler = DDIMScheduler.from_config(config, clip_sample=False, thresholding=False,
                                                       set_alpha_to_one=False)
            self.eta = float(eta)
        else:
            self.scheduler = DDPMScheduler.from_config(config, clip_sample=False, thresholding=False,
                                                       variance_type="fixed_small")
            self.eta = None
        self.sampler = sampler
        self.scheduler.set_timesteps(num_steps)
        self.timesteps = self.scheduler.timesteps.clone()
        self.num_steps = num_steps
        self.guidance_scale = float(guidance_scale)
        self.vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.resolution = resolution or self.unet.config.sample_size * self.vae_scale
        if self.resolution % self.vae_scale:
            raise ValueError(f"resolution: expected a multiple of the VAE factor {self.vae_scale}, got {self.resolution}")
        self.unet_calls = 0  # samples evaluated by the UNet (a CFG pair counts 2): the compute budget's unit
        self._coefficients = {}
        self._coefficient_table: Optional[torch.Tensor] = None

    # ----------------------------------------------------------------------------------------------- basics
    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        side = self.resolution // self.vae_scale
        return (self.unet.config.in_channels, side, side)

    def step_index(self, step: int) -> int:
        """Index into ``self.timesteps`` of the paper's step t of T (t = T is the first step, t = 1 the last)."""
        if not 1 <= step <= self.num_steps:
            raise ValueError(f"steps: expected values in [1, {self.num_steps}] (t of T = {self.num_steps}), got {step}")
        return self.num_steps - step

    def coefficient_table(self) -> torch.Tensor:
        """``[T, 3]`` float32 (a, b, σ) of every step (row i: ``self.timesteps[i]``), on the host: built once per
        scheduler, read by ``coefficients`` and ``coefficient_tensors``."""
        if self._coefficient_table is None:
            rows = [torch.stack([v.to("cpu", torch.float32).reshape(())
                                 for v in step_coefficients(self.scheduler, int(t), eta=self.eta)])
                    for t in self.timesteps]
            self._coefficient_table = torch.stack(rows)
        return self._coefficient_table

    def flow_time_steps(self, index: torch.Tensor) -> torch.Tensor:
        """``[P]`` float32 host tensor: each step's length |dt| in flow-matching time
        (``rdpo_zoo.schedulers.flow_time_step``), for the public KL convention; ``index`` as in
        ``coefficient_tensors``."""
        from rdpo_zoo.schedulers import flow_time_step

        table = torch.stack([flow_time_step(self.scheduler, int(t)).reshape(()) for t in self.timesteps]).float()
        return table[index.cpu().long()]

    def coefficients(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(a, b, σ)`` of the step at ``self.timesteps[index]`` as float32 scalars on the device (cached)."""
        if index not in self._coefficients:
            self._coefficients[index] = tuple(self.coefficient_table()[index].to(self.device).unbind())
        return self._coefficients[index]

    def x0_coefficients(self, index: int) -> tuple[float, float]:
        p_x, p_o = x0_coefficients(self.scheduler, int(self.timesteps[index]))
        return float(p_x), float(p_o)

    # ------------------------------------------------------------------------------------------- conditioning
    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> Conditioning:
        prompts = list(prompts)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompts: expected a non-empty list of strings")
        if self.is_sdxl:
            cond, uncond, pooled, pooled_uncond = self.pipe.encode_prompt(
                prompts, device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=True,
                negative_prompt=[""] * len(prompts),
            )
            projection_dim = int(pooled.shape[-1])
            size = (self.resolution, self.resolution)
            time_ids = self.pipe._get_add_time_ids(size, (0, 0), size, dtype=cond.dtype,
                                                   text_encoder_projection_dim=projection_dim)
            time_ids = time_ids.to(self.device).repeat(len(prompts), 1)
            return Conditioning(prompts, cond, uncond, {"text_embeds": pooled, "time_ids": time_ids},
                                {"text_embeds": pooled_uncond, "time_ids": time_ids})
        cond, uncond = self.pipe.encode_prompt(
            prompts, self.device, 1, True, negative_prompt=[""] * len(prompts)
        )
        return Conditioning(prompts, cond, uncond)

    # --------------------------------------------------------------------------------------------- the network
    def guided_output(self, x: torch.Tensor, index, cond: Conditioning, unet=None, timesteps=None) -> torch.Tensor:
        """The guided network output o = o_u + g·(o_c − o_u), one batched UNet call.

        ``index`` is one step index (into ``self.timesteps``) for the whole batch or a ``[B]`` tensor of them;
        alternatively pass raw training ``timesteps`` (``[B]``, e.g. Diffusion-DPO's t ~ U{0..999}) with
        ``index=None``. ``unet`` overrides the network called (the trainer passes its distributed wrapper).
        Gradients flow when called outside ``torch.no_grad``.
        """
        B = x.shape[0]
        if len(cond) != B:
            raise ValueError(f"cond: expected conditioning for {B} samples, got {len(cond)}")
        if timesteps is None:
            t = self.timesteps.to(self.device)[torch.as_tensor(index, device=self.device)]
        else:
            t = torch.as_tensor(timesteps, device=self.device)
        t = t.expand(B) if t.dim() == 0 else t
        x = x.to(self.dtype)
        unet = unet or self.unet
        if self.guidance_scale == 1.0:
            self.unet_calls += B
            return self._unet(unet, x, t, cond.cond, cond.added_cond)
        added = {k: torch.cat([cond.added_uncond[k], cond.added_cond[k]]) for k in cond.added_cond}
        out = self._unet(unet, torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond.uncond, cond.cond]), added)
        self.unet_calls += 2 * B
        o_u, o_c = out.chunk(2)
        return o_u + self.guidance_scale * (o_c - o_u)

    def _unet(self, unet, x, t, hidden, added):
        kwargs = {"added_cond_kwargs": added} if added else {}
        return unet(x, t, encoder_hidden_states=hidden.to(self.dtype), return_dict=False, **kwargs)[0]

    def coefficient_tensors(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(a, b, σ)`` as ``[P]`` float32 host tensors for a ``[P]`` tensor of step indices (pass a host index:
        a device one costs a sync). The fused ops check host coefficients without a device sync."""
        return pick_coefficients(self.coefficient_table(), index)

    @contextmanager
    def reference(self):
        """The reference policy: the same UNet with its LoRA adapters disabled (no second copy of the weights)."""
        disable = getattr(self.unet, "disable_adapters", None)
        has_adapters = bool(getattr(self.unet, "peft_config", None))
        if has_adapters:
            disable()
        try:
            yield
        finally:
            if has_adapters:
                self.unet.enable_adapters()

    # ---------------------------------------------------------------------------------------------- sampling
    def initial_noise(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        noise = torch.randn((batch, *self.latent_shape), generator=generator, device=generator.device)
        return (noise * self.scheduler.init_noise_sigma).to(self.device, torch.float32)

    def step(self, x: torch.Tensor, o: torch.Tensor, index: int, generator: torch.Generator, n: int = 1):
        """Draw ``n`` children of each state: ``x_{t-1} = a·x_t + b·o + σ·ξ``. Returns ``(children, noise)`` of
        shape ``[B, n, ...]`` (n = 1 is plain sampling). The noise is returned so log-probs come for free."""
        a, b, sigma = self.coefficients(index)
        mean = a * x.float() + b * o.float()
        noise = torch.randn((x.shape[0], n, *x.shape[1:]), generator=generator, device=generator.device)
        noise = noise.to(x.device)
        return mean.unsqueeze(1) + sigma * noise, noise

    def x0(self, x: torch.Tensor, o: torch.Tensor, index: int) -> torch.Tensor:
        """The one-step prediction x̂0(x_t) = p_x·x_t + p_o·o (Tweedie for ε-prediction)."""
        p_x, p_o = self.x0_coefficients(index)
        return p_x * x.float() + p_o * o.float()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents → images ``[B, 3, H, W]`` in [0, 1] (differentiable when called with grad enabled)."""
        scaled = latents / self.vae.config.scaling_factor
        shift = getattr(self.vae.config, "shift_factor", None)
        if shift:
            scaled = scaled + shift
        images = self.vae.decode(scaled.to(self.vae.dtype), return_dict=False)[0]
        return (images.float() / 2 + 0.5).clamp(0, 1)

    @torch.no_grad()
    def sample(self, cond: Conditioning, generator: torch.Generator, latents: Optional[torch.Tensor] = None):
        """Plain sampling of ``len(cond)`` images: returns final latents ``[B, C, h, w]``."""
        x = self.initial_noise(len(cond), generator) if latents is None else latents
        for index in range(self.num_steps):
            o = self.guided_output(x, index, cond)
            x = self.step(x, o, index, generator)[0][:, 0]
        return x
