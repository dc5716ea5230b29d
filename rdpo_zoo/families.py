"""The model family seam: how one kind of diffusers pipeline is driven (denoiser, conditioning, LoRA, save/load).

A model family wraps one loaded pipeline and is the only code that knows its component names: which module is the
denoiser (``pipe.unet``, ``pipe.transformer``, …), how prompts become conditioning, how the denoiser is called, how
latents are decoded and images encoded, which modules get LoRA and how a LoRA is saved and loaded. Everything else
(:class:`rdpo_zoo.diffusion.DiffusionModel`, the rollouts, the trainer, evaluation) goes through it.

Families are parts (``rdpo_zoo.ModelFamilyPart``, hook ``register_model_families``). A model part may name its
family (``ModelPart(..., family="sdxl")``); otherwise the first registered family whose ``matches(pipe)`` is true is
used. The built-ins are ``sd`` (SD-1.5-shaped UNet pipelines, the embedded tiny model among them) and ``sdxl``.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar, Optional

import torch

__all__ = ["ModelFamily", "UNetFamily", "SDFamily", "SDXLFamily", "resolve_model_family"]

from rdpo_zoo.run_folder import LORA_WEIGHT_NAME


class ModelFamily:
    """Base of every model family: one instance wraps one loaded pipeline.

    Subclasses set ``name``, ``default_step_family`` and ``uses_cfg``, set ``self.denoiser`` in ``__init__`` and
    implement ``matches``, ``latent_shape``, ``default_resolution``, ``encode``, ``denoise``, ``decode``,
    ``encode_images`` and ``save_lora``. The rest has working defaults for peft-adapted denoisers.
    """

    name: ClassVar[str] = ""
    #: the step family a rollout uses when the method names none
    default_step_family: ClassVar[str] = "ddim"
    #: whether guidance is classifier-free (a batched call on [uncond; cond]); False for guidance-distilled models
    uses_cfg: ClassVar[bool] = True
    #: the guidance a run uses when none is asked for, where the method's (the paper's CFG 5) is wrong for the
    #: model; None: the method's
    default_guidance_scale: ClassVar[Optional[float]] = None
    #: the denoiser's module names that get LoRA when the run names none
    lora_target_modules: ClassVar[tuple] = ("to_q", "to_k", "to_v", "to_out.0")
    #: the pipeline's modules (attribute names) that are frozen and moved to the run's device, and of those the
    #: ones that stay in float32 under mixed precision
    frozen_components: ClassVar[tuple] = ()
    fp32_components: ClassVar[tuple] = ("vae",)

    denoiser: torch.nn.Module

    def __init__(self, pipe):
        self.pipe = pipe

    @classmethod
    def matches(cls, pipe) -> bool:
        """Whether this family drives ``pipe`` (used when the model part names no family)."""
        return False

    # -- shapes and devices ---------------------------------------------------------------------------------------
    #: classifier-free guidance g of the model using the family (set by ``DiffusionModel``); a family whose
    #: ``uses_cfg`` is False hands it to its network (a guidance embedding) in ``denoise``
    guidance_scale: float = 1.0

    @property
    def device(self) -> torch.device:
        """The denoiser's device (a diffusers model's own answer, else its first parameter's)."""
        device = getattr(self.denoiser, "device", None)
        return device if isinstance(device, torch.device) else next(self.denoiser.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The denoiser's compute dtype (a diffusers model's own answer, else its first parameter's)."""
        dtype = getattr(self.denoiser, "dtype", None)
        return dtype if isinstance(dtype, torch.dtype) else next(self.denoiser.parameters()).dtype

    @property
    def scheduler_config(self) -> dict:
        """The pipeline's own scheduler configuration (betas, prediction type, shift, …), for the step family."""
        return dict(self.pipe.scheduler.config)

    def latent_shape(self, resolution: int) -> tuple:
        """``(C, h, w)`` of one (unpacked) latent for images of side ``resolution``; a bad side is a ValueError."""
        raise NotImplementedError

    def default_resolution(self) -> int:
        raise NotImplementedError

    def step_options(self, resolution: int, num_steps: int) -> dict:
        """What the pipeline passes to its scheduler's ``set_timesteps`` besides the number of steps, handed to the
        step family as keyword arguments: none here; FLUX's resolution-dependent ``mu`` and its ``sigmas``
        (:mod:`rdpo_zoo.flow_families`)."""
        return {}

    def prepare(self, device, weight_dtype: torch.dtype) -> None:
        """Freeze every component and move it to ``device`` (in ``weight_dtype``, but the fp32 ones)."""
        from rdpo_zoo.quiet import quiet_loading

        for name in self.frozen_components:
            module = getattr(self.pipe, name, None)
            if module is not None:
                module.requires_grad_(False)
                with quiet_loading():  # diffusers warns on any dtype given to .to(), even with nothing to keep fp32
                    module.to(device, dtype=torch.float32 if name in self.fp32_components else weight_dtype)

    # -- the pipeline's own sampler (``rdpo_zoo.preview.sample_images``) -----------------------------------------
    #: whether the pipeline's ``__call__`` takes DDIM's ``eta`` (flow pipelines take deterministic Euler steps)
    pipeline_takes_eta: ClassVar[bool] = True

    def pipeline_call(self, latents: torch.Tensor) -> dict:
        """What the pipeline's ``__call__`` needs besides prompts, steps and guidance to start from ``latents
        [B, C, h, w]`` (a family whose pipeline packs its latents packs them here)."""
        return {"latents": latents}

    # -- the network ----------------------------------------------------------------------------------------------
    def encode(self, prompts: list, device, resolution: int):
        """``rdpo_zoo.diffusion.Conditioning`` of ``prompts`` (conditional and empty-prompt unconditional)."""
        raise NotImplementedError

    def denoise(self, denoiser, x: torch.Tensor, t: torch.Tensor, hidden: torch.Tensor, added: dict) -> torch.Tensor:
        """One network call on latents ``x [B, C, h, w]`` at timestep values ``t [B]``; returns ``o`` shaped like
        ``x``. ``denoiser`` is ``self.denoiser`` or its distributed wrapper."""
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents → images ``[B, 3, H, W]`` in [0, 1] (differentiable when called with grad enabled)."""
        raise NotImplementedError

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` in [0, 1] → latents (the encoder's mean), for offline preference pairs."""
        raise NotImplementedError

    # -- LoRA (defaults: peft on any torch module; the state dict as it is, in safetensors) -------------------------
    def add_lora(self, lora_config) -> None:
        """Put a peft LoRA adapter (``peft.LoraConfig``) named ``default`` on the denoiser (what diffusers'
        ``add_adapter`` does, for any module)."""
        from peft import inject_adapter_in_model

        inject_adapter_in_model(lora_config, self.denoiser, "default")
        self.denoiser.peft_config = {"default": lora_config}  # where peft's state-dict helpers read it

    def _lora_layers(self) -> list:
        from peft.tuners.tuners_utils import BaseTunerLayer

        return [m for m in self.denoiser.modules() if isinstance(m, BaseTunerLayer)]

    @contextmanager
    def adapters_disabled(self):
        """The base model: the denoiser with its LoRA adapters off (no second copy of the weights)."""
        layers = self._lora_layers()
        for layer in layers:
            layer.enable_adapters(False)
        try:
            yield
        finally:
            for layer in layers:
                layer.enable_adapters(True)

    def save_lora(self, folder, peft_state_dict: dict) -> None:
        """Write the LoRA (a peft state dict of the denoiser) into ``folder`` (created) in the format
        :meth:`load_lora` reads: here the state dict as it is, ``folder/LORA_WEIGHT_NAME`` in safetensors."""
        from safetensors.torch import save_file

        Path(folder).mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in peft_state_dict.items()},
                  str(Path(folder) / LORA_WEIGHT_NAME))

    def load_lora(self, folder, weight_name: str = LORA_WEIGHT_NAME) -> None:
        """Load a LoRA written by :meth:`save_lora` into the pipeline's denoiser (adding the adapter if it has
        none: the LoRA's rank is read from the file)."""
        from peft import LoraConfig
        from peft.utils import set_peft_model_state_dict
        from safetensors.torch import load_file

        state = load_file(str(Path(folder) / weight_name))
        if not self._lora_layers():
            targets = sorted({k.split(".lora_A")[0].rsplit(".", 1)[-1] for k in state if ".lora_A" in k})
            rank = next(v.shape[0] for k, v in state.items() if ".lora_A" in k)
            self.add_lora(LoraConfig(r=rank, lora_alpha=rank, target_modules=targets))
        result = set_peft_model_state_dict(self.denoiser, state)
        if getattr(result, "unexpected_keys", None):
            raise ValueError(f"LoRA {folder}: weights this denoiser does not have: {result.unexpected_keys[:5]}")


class UNetFamily(ModelFamily):
    """Latent-diffusion pipelines with a conditional UNet and a VAE (``pipe.unet``, ``pipe.vae``)."""

    frozen_components: ClassVar[tuple] = ("vae", "text_encoder", "text_encoder_2", "unet")

    def __init__(self, pipe):
        super().__init__(pipe)
        self.denoiser = pipe.unet
        self.vae = pipe.vae
        self.vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)

    def latent_shape(self, resolution: int) -> tuple:
        if resolution % self.vae_scale:
            raise ValueError(f"resolution: expected a multiple of the VAE factor {self.vae_scale}, got {resolution}")
        side = resolution // self.vae_scale
        return (self.denoiser.config.in_channels, side, side)

    def default_resolution(self) -> int:
        return self.denoiser.config.sample_size * self.vae_scale

    def denoise(self, denoiser, x, t, hidden, added):
        kwargs = {"added_cond_kwargs": added} if added else {}
        return denoiser(x, t, encoder_hidden_states=hidden.to(self.dtype), return_dict=False, **kwargs)[0]

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        scaled = latents / self.vae.config.scaling_factor
        shift = getattr(self.vae.config, "shift_factor", None)
        if shift:
            scaled = scaled + shift
        images = self.vae.decode(scaled.to(self.vae.dtype), return_dict=False)[0]
        return (images.float() / 2 + 0.5).clamp(0, 1)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        dist = self.vae.encode((images * 2 - 1).to(self.device, self.vae.dtype)).latent_dist
        return dist.mean.float() * self.vae.config.scaling_factor

    def add_lora(self, lora_config) -> None:
        self.denoiser.add_adapter(lora_config)

    @contextmanager
    def adapters_disabled(self):
        denoiser = self.denoiser
        has_adapters = bool(getattr(denoiser, "peft_config", None))
        if has_adapters:
            denoiser.disable_adapters()
        try:
            yield
        finally:
            if has_adapters:
                denoiser.enable_adapters()

    def load_lora(self, folder, weight_name: str = LORA_WEIGHT_NAME) -> None:
        from rdpo_zoo.quiet import quiet_loading

        with quiet_loading():  # our LoRA files hold the UNet's layers only, by design
            self.pipe.load_lora_weights(str(folder), weight_name=weight_name)

    def save_lora(self, folder, peft_state_dict: dict) -> None:
        from diffusers.utils import convert_state_dict_to_diffusers

        type(self.pipe).save_lora_weights(str(folder), unet_lora_layers=convert_state_dict_to_diffusers(peft_state_dict),
                                          safe_serialization=True, weight_name=LORA_WEIGHT_NAME)


class SDFamily(UNetFamily):
    """Stable Diffusion 1.5-shaped pipelines (one CLIP text encoder), the embedded tiny model among them."""

    name: ClassVar[str] = "sd"

    @classmethod
    def matches(cls, pipe) -> bool:
        return hasattr(pipe, "unet") and not hasattr(pipe, "text_encoder_2")

    def encode(self, prompts: list, device, resolution: int):
        from rdpo_zoo.conditioning import Conditioning

        cond, uncond = self.pipe.encode_prompt(prompts, device, 1, True, negative_prompt=[""] * len(prompts))
        return Conditioning(prompts, cond, uncond)


class SDXLFamily(UNetFamily):
    """Stable Diffusion XL-shaped pipelines (two text encoders; pooled text embeddings and size ids added)."""

    name: ClassVar[str] = "sdxl"

    @classmethod
    def matches(cls, pipe) -> bool:
        return hasattr(pipe, "unet") and hasattr(pipe, "text_encoder_2")

    def encode(self, prompts: list, device, resolution: int):
        from rdpo_zoo.conditioning import Conditioning

        cond, uncond, pooled, pooled_uncond = self.pipe.encode_prompt(
            prompts, device=device, num_images_per_prompt=1, do_classifier_free_guidance=True,
            negative_prompt=[""] * len(prompts),
        )
        projection_dim = int(pooled.shape[-1])
        size = (resolution, resolution)
        time_ids = self.pipe._get_add_time_ids(size, (0, 0), size, dtype=cond.dtype,
                                               text_encoder_projection_dim=projection_dim)
        time_ids = time_ids.to(device).repeat(len(prompts), 1)
        return Conditioning(prompts, cond, uncond, {"text_embeds": pooled, "time_ids": time_ids},
                            {"text_embeds": pooled_uncond, "time_ids": time_ids})


def resolve_model_family(pipe, name: Optional[str] = None, registry=None) -> ModelFamily:
    """The model family driving ``pipe``: the one called ``name``, else the first registered family whose
    ``matches(pipe)`` is true. None matching is a one-line error naming the pipeline."""
    from rdpo_zoo.registry import get_registry

    registry = registry or get_registry()
    if name is not None:
        return registry.get("model-family", name).build_family(pipe)
    parts = registry.parts("model-family")
    for part in parts:
        cls = part.load()
        if cls.matches(pipe):
            return cls(pipe)
    has = [n for n in ("unet", "transformer") if hasattr(pipe, n)]
    raise ValueError(f"model family: no family matches pipeline {type(pipe).__name__} (has "
                     f"{' and '.join(has) if has else 'no unet/transformer'}); families: "
                     f"{', '.join(p.name for p in parts) or 'none registered'}")
