"""One interface over diffusers text-to-image pipelines (SD 1.5-shaped and SDXL-shaped) for rollout and training.

The sampler here is written out step by step instead of calling ``pipe(...)``: the rollout needs every x_t, the
noise it drew, the guided network output and the step's Gaussian coefficients, and it branches mid-chain.
Classifier-free guidance is done as diffusers does it: one batched call on [uncond; cond], then
``o = o_u + g·(o_c − o_u)``; the policy and the reference use the same g.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Optional, Sequence

import torch

from rdpo_zoo.conditioning import Conditioning, host_to_device  # noqa: F401 (public here too)

__all__ = ["Conditioning", "DiffusionModel", "SAMPLERS", "pick_coefficients", "host_to_device"]

#: the built-in step families (``rdpo_zoo.steps``); plugins add more (``rdpo-zoo plugins --kind step-family``)
SAMPLERS = ("ddim", "ddpm")


def pick_coefficients(table: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(a, b, σ)`` as ``[P]`` host tensors: rows ``index`` of a ``[T, 3]`` host table. The fused ops check host
    coefficients on the host and copy them over without a device sync (a device ``index`` costs one sync here)."""
    return table[index.cpu()].unbind(1)


class DiffusionModel:
    """A diffusers pipeline seen as a Gaussian policy over latents, through the two seams: a model family
    (:mod:`rdpo_zoo.families`: denoiser, conditioning, decoding, LoRA) and a step family (:mod:`rdpo_zoo.steps`:
    timesteps, (a, b, σ), x̂0, the training process).

    Args:
        pipe: a diffusers text-to-image pipeline that a registered model family drives (SD 1.5- and SDXL-shaped
            built in).
        sampler: the step family's name (``"ddim"``: η as given; ``"ddpm"``: ``fixed_small``; a plugin's), or
            ``None`` for the model family's default; the pipeline's own scheduler config (betas, prediction type)
            is kept.
        eta: the step family's noise level (DDIM's η; the paper and the public D3PO/DDPO/SPO code use 1.0).
        num_steps: T, the number of sampling steps.
        guidance_scale: classifier-free guidance g (1 = off: one network call instead of two).
        resolution: image side in pixels (default: the model family's).
        family: the model family (a name, or a ``ModelFamily`` already wrapping ``pipe``); default: the first
            registered family whose ``matches(pipe)`` is true.
        registry: where the families are looked up (default: the global registry).
    """

    def __init__(
        self, pipe, sampler: Optional[str] = "ddim", eta: Optional[float] = 1.0, num_steps: int = 20,
        guidance_scale: float = 5.0, resolution: Optional[int] = None, family=None, registry=None,
    ):
        from rdpo_zoo.families import ModelFamily, resolve_model_family
        from rdpo_zoo.registry import get_registry

        if not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps: expected an integer >= 1, got {num_steps!r}")
        if guidance_scale < 1.0:
            raise ValueError(f"guidance_scale: expected a number >= 1 (1 disables guidance), got {guidance_scale!r}")
        registry = registry or get_registry()
        self.pipe = pipe
        self.family = family if isinstance(family, ModelFamily) else resolve_model_family(pipe, family, registry)
        self.denoiser = self.family.denoiser
        sampler = sampler or self.family.default_step_family
        if sampler not in registry.names("step-family"):
            raise ValueError(f"sampler: expected a step family, one of {tuple(registry.names('step-family'))}, "
                             f"got {sampler!r}")
        self.resolution = resolution or self.family.default_resolution()
        self.family.latent_shape(self.resolution)  # a resolution the family cannot make is refused here
        self.steps = registry.get("step-family", sampler).build_family(
            self.family.scheduler_config, num_steps, eta,
            schedule=self.family.step_options(self.resolution, num_steps))  # e.g. FLUX's resolution shift
        self.sampler = sampler
        self.scheduler = self.steps.scheduler
        self.eta = self.steps.eta
        self.timesteps = self.steps.timesteps.clone()
        self.num_steps = num_steps
        self.guidance_scale = float(guidance_scale)
        self.family.guidance_scale = self.guidance_scale  # a family without CFG hands it to its network
        self.unet_calls = 0  # samples evaluated by the denoiser (a CFG pair counts 2): the compute budget's unit
        self._coefficients = {}
        self._coefficient_table: Optional[torch.Tensor] = None
        self._likelihood_table: Optional[torch.Tensor] = None
        self._likelihood_coefficients = {}
        self._flow_time_table: Optional[torch.Tensor] = None

    # ----------------------------------------------------------------------------------------------- basics
    @property
    def unet(self):
        """Deprecated: the denoiser (``pipe.unet`` for UNet families)."""
        return self.denoiser

    @property
    def device(self) -> torch.device:
        return self.family.device

    @property
    def dtype(self) -> torch.dtype:
        return self.family.dtype

    @property
    def latent_shape(self) -> tuple:
        return self.family.latent_shape(self.resolution)

    def step_index(self, step: int) -> int:
        """Index into ``self.timesteps`` of the paper's step t of T (t = T is the first step, t = 1 the last)."""
        if not 1 <= step <= self.num_steps:
            raise ValueError(f"steps: expected values in [1, {self.num_steps}] (t of T = {self.num_steps}), got {step}")
        return self.num_steps - step

    def coefficient_table(self) -> torch.Tensor:
        """``[T, 3]`` float32 (a, b, σ) of every step (row i: ``self.timesteps[i]``), on the host: built once per
        scheduler, read by ``coefficients`` and ``coefficient_tensors``."""
        if self._coefficient_table is None:
            rows = [torch.stack([v.to("cpu", torch.float32).reshape(()) for v in self.steps.coefficients(index)])
                    for index in range(self.num_steps)]
            self._coefficient_table = torch.stack(rows)
        return self._coefficient_table

    def likelihood_table(self) -> torch.Tensor:
        """``[T, 3]`` (a, b, σ) as log-probabilities and log-ratios read them: the step family's
        ``likelihood_coefficients`` where it has them (CPS's public convention: σ = 1/√2, docs/flow.md), else
        :meth:`coefficient_table` itself (sampling and likelihood share the step's σ)."""
        if self._likelihood_table is None:
            own = getattr(self.steps, "likelihood_coefficients", None)
            if own is None:
                self._likelihood_table = self.coefficient_table()
            else:
                self._likelihood_table = torch.stack([
                    torch.stack([v.to("cpu", torch.float32).reshape(()) for v in own(index)])
                    for index in range(self.num_steps)])
        return self._likelihood_table

    def likelihood_coefficients(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`coefficients` as log-probabilities read them (:meth:`likelihood_table`), on the device (cached)."""
        if index not in self._likelihood_coefficients:
            self._likelihood_coefficients[index] = tuple(self.likelihood_table()[index].to(self.device).unbind())
        return self._likelihood_coefficients[index]

    def flow_time_steps(self, index: torch.Tensor) -> torch.Tensor:
        """``[P]`` float32 host tensor: each step's length |dt| in flow-matching time
        (``rdpo_zoo.schedulers.flow_time_step``), for the public KL convention; ``index`` as in
        ``coefficient_tensors``."""
        if self._flow_time_table is None:
            self._flow_time_table = torch.tensor([self.steps.flow_time_step(i) for i in range(self.num_steps)],
                                                 dtype=torch.float64).float()
        return self._flow_time_table[index.cpu().long()]

    def coefficients(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(a, b, σ)`` of the step at ``self.timesteps[index]`` as float32 scalars on the device (cached)."""
        if index not in self._coefficients:
            self._coefficients[index] = tuple(self.coefficient_table()[index].to(self.device).unbind())
        return self._coefficients[index]

    def x0_coefficients(self, index: int) -> tuple[float, float]:
        return self.steps.x0_coefficients(index)

    # ------------------------------------------------------------------------------------------- conditioning
    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> Conditioning:
        prompts = list(prompts)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompts: expected a non-empty list of strings")
        return self.family.encode(prompts, self.device, self.resolution)

    # --------------------------------------------------------------------------------------------- the network
    def guided_output(self, x: torch.Tensor, index, cond: Conditioning, denoiser=None, timesteps=None) -> torch.Tensor:
        """The guided network output o = o_u + g·(o_c − o_u), one batched network call.

        ``index`` is one step index (into ``self.timesteps``) for the whole batch or a ``[B]`` tensor of them;
        alternatively pass raw training ``timesteps`` (``[B]``, e.g. Diffusion-DPO's t ~ U{0..999}) with
        ``index=None``. ``denoiser`` overrides the network called (the trainer passes its distributed wrapper).
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
        denoiser = denoiser or self.denoiser
        if self.guidance_scale == 1.0 or not self.family.uses_cfg:
            self.unet_calls += B
            return self.family.denoise(denoiser, x, t, cond.cond, cond.added_cond)
        added = {k: torch.cat([cond.added_uncond[k], cond.added_cond[k]]) for k in cond.added_cond}
        out = self.family.denoise(denoiser, torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond.uncond, cond.cond]),
                                  added)
        self.unet_calls += 2 * B
        o_u, o_c = out.chunk(2)
        return o_u + self.guidance_scale * (o_c - o_u)

    def coefficient_tensors(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(a, b, σ)`` as ``[P]`` float32 host tensors for a ``[P]`` tensor of step indices (pass a host index:
        a device one costs a sync), as likelihoods read them (:meth:`likelihood_table`). The fused ops check host
        coefficients without a device sync."""
        return pick_coefficients(self.likelihood_table(), index)

    @contextmanager
    def reference(self):
        """The reference policy: the same denoiser with its LoRA adapters disabled (no second copy of the weights)."""
        with self.family.adapters_disabled():
            yield

    # ---------------------------------------------------------------------------------------------- sampling
    def initial_noise(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        noise = torch.randn((batch, *self.latent_shape), generator=generator, device=generator.device)
        return (noise * self.steps.init_noise_sigma).to(self.device, torch.float32)

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
        return self.family.decode(latents)

    @torch.no_grad()
    def sample(self, cond: Conditioning, generator: torch.Generator, latents: Optional[torch.Tensor] = None):
        """Plain sampling of ``len(cond)`` images: returns final latents ``[B, C, h, w]``."""
        x = self.initial_noise(len(cond), generator) if latents is None else latents
        for index in range(self.num_steps):
            o = self.guided_output(x, index, cond)
            x = self.step(x, o, index, generator)[0][:, 0]
        return x
