"""Model families of the flow-matching transformers: SD3 / SD3.5 (``sd3``) and FLUX.1 (``flux``).

Both denoise with ``pipe.transformer`` (the module LoRA goes on) and predict the flow velocity ``v``; the rollout
steps them with a flow step family (``flow-sde`` by default). What each adds to the seam
(:mod:`rdpo_zoo.families`):

- SD3: the sequence embedding (two CLIP encoders side by side, then T5) plus the *pooled projections* (the two CLIP
  pooled outputs), both for the prompt and for the empty prompt: classifier-free guidance as for SD.
- FLUX: latents are packed into 2×2 patches before the transformer and unpacked after it (``denoise`` takes and
  returns unpacked ``[B, C, h, w]`` latents, like every other family), the transformer also gets the text and
  image position ids and the guidance scale through its *guidance embedding*: FLUX.1 is guidance-distilled, so
  there is no CFG (``uses_cfg = False``: one network call per sample).
- Both decode with the VAE's ``shift_factor``; FLUX's sigma schedule depends on the resolution (the pipeline's
  ``calculate_shift``), which :meth:`FlowTransformerFamily.step_options` hands to the step family.

Every call is made the way the diffusers pipelines make it (``StableDiffusion3Pipeline.__call__``,
``FluxPipeline.__call__``); the tests check ``denoise`` against those calls.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Optional

import torch

from rdpo_zoo.errors import UserInputError
from rdpo_zoo.families import ModelFamily, UNetFamily
from rdpo_zoo.run_folder import LORA_WEIGHT_NAME

__all__ = ["FlowTransformerFamily", "SD3Family", "FluxFamily"]


class FlowTransformerFamily(ModelFamily):
    """Latent flow-matching pipelines with a transformer denoiser, a VAE with a shift factor and T5 text
    conditioning (``pipe.transformer``, ``pipe.vae``).

    Args:
        pipe: the pipeline.
        max_sequence_length: T5 tokens per prompt. Default: the pipeline's own default (SD3 256, FLUX 512),
            capped at the T5 tokenizer's ``model_max_length``; a model part may set it for the pipeline it
            builds (``pipe.rdpo_max_sequence_length``). Without T5 (SD3 loaded with ``text_encoder_3=None``) the
            pipeline still appends this many zero embeddings, so a small value is cheaper.
    """

    default_step_family: ClassVar[str] = "flow-sde"
    # Flow-GRPO's LoRA targets (``scripts/train_sd3.py``): the attention projections of the image and the text
    # stream (FLUX's single blocks have only the image ones)
    lora_target_modules: ClassVar[tuple] = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
                                            "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj",
                                            "attn.to_add_out")
    frozen_components: ClassVar[tuple] = ("vae", "text_encoder", "text_encoder_2", "text_encoder_3", "transformer")
    fp32_components: ClassVar[tuple] = ("vae",)
    #: the pipeline's ``max_sequence_length`` default
    pipeline_max_sequence_length: ClassVar[int] = 256
    #: the pipeline attribute holding the T5 tokenizer
    t5_tokenizer: ClassVar[str] = "tokenizer_3"
    #: the diffusers pipeline class this family is shaped after (for error messages)
    pipeline_class: ClassVar[str] = ""
    #: whether the pipeline passes its own sigmas linspace(1, 1/T, T) to ``set_timesteps`` (FLUX) or none (SD3)
    flux_sigmas: ClassVar[bool] = False

    def __init__(self, pipe, max_sequence_length: Optional[int] = None):
        if getattr(pipe, "transformer", None) is None or getattr(pipe, "vae", None) is None:
            raise UserInputError(f"model family {self.name!r}: pipeline {type(pipe).__name__} has no transformer "
                                 f"and VAE (expected a {self.pipeline_class}-shaped pipeline)")
        super().__init__(pipe)
        self.denoiser = pipe.transformer
        self.vae = pipe.vae
        self.vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.guidance_scale = 1.0  # DiffusionModel sets the rollout's g
        if max_sequence_length is None:
            max_sequence_length = getattr(pipe, "rdpo_max_sequence_length", None)
        if max_sequence_length is None:
            max_sequence_length = self.pipeline_max_sequence_length
            tokenizer = getattr(pipe, self.t5_tokenizer, None)
            if tokenizer is not None:
                max_sequence_length = min(max_sequence_length, int(tokenizer.model_max_length))
        if not isinstance(max_sequence_length, int) or not 1 <= max_sequence_length <= 512:
            raise UserInputError(f"max_sequence_length: expected an integer in [1, 512], got {max_sequence_length!r}")
        self.max_sequence_length = max_sequence_length

    def _latent_multiple(self) -> int:
        """The latent grid's side must be a multiple of this: the transformer's patch (SD3), the 2×2 packing (FLUX)."""
        raise NotImplementedError

    def latent_shape(self, resolution: int) -> tuple:
        multiple = self.vae_scale * self._latent_multiple()
        if not isinstance(resolution, int) or resolution < multiple or resolution % multiple:
            raise ValueError(f"resolution: expected a positive multiple of {multiple} (the VAE factor "
                             f"{self.vae_scale} × the latent patch {self._latent_multiple()}), got {resolution!r}")
        side = resolution // self.vae_scale
        return (self._latent_channels(), side, side)

    def _latent_channels(self) -> int:
        raise NotImplementedError

    # -- the step family's schedule -------------------------------------------------------------------------------
    def image_seq_len(self, resolution: int) -> int:
        """Image tokens the transformer sees at ``resolution`` (what ``calculate_shift`` reads)."""
        _, h, w = self.latent_shape(resolution)
        patch = self._latent_multiple()
        return (h // patch) * (w // patch)

    def step_options(self, resolution: int, num_steps: int) -> dict:
        """What the pipeline passes to ``scheduler.set_timesteps`` besides the number of steps: ``mu`` (the
        pipeline's ``calculate_shift`` of the image tokens) when the scheduler shifts by resolution
        (``use_dynamic_shifting``: FLUX), and FLUX's own ``sigmas``; nothing for SD3's static ``shift``."""
        from rdpo_zoo.flow_steps import resolution_shift_options

        options = resolution_shift_options(self.scheduler_config, num_steps, self.image_seq_len(resolution),
                                           flux_sigmas=self.flux_sigmas)
        return {k: v for k, v in options.items() if v is not None}

    pipeline_takes_eta: ClassVar[bool] = False

    def pipeline_call(self, latents: torch.Tensor) -> dict:
        return {"latents": latents, "max_sequence_length": self.max_sequence_length}

    # -- the network ----------------------------------------------------------------------------------------------
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        scaled = latents / self.vae.config.scaling_factor + (self.vae.config.shift_factor or 0.0)
        images = self.vae.decode(scaled.to(self.vae.dtype), return_dict=False)[0]
        return (images.float() / 2 + 0.5).clamp(0, 1)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        dist = self.vae.encode((images * 2 - 1).to(self.vae.device, self.vae.dtype)).latent_dist
        return (dist.mean.float() - (self.vae.config.shift_factor or 0.0)) * self.vae.config.scaling_factor

    # -- LoRA -----------------------------------------------------------------------------------------------------
    # diffusers' transformers carry its adapter API (PeftAdapterMixin) as its UNets do: the same adapter calls, so
    # pipe.load_lora_weights and the trainer's adapter see one adapter
    add_lora = UNetFamily.add_lora
    adapters_disabled = UNetFamily.adapters_disabled
    load_lora = UNetFamily.load_lora

    def save_lora(self, folder, peft_state_dict: dict) -> None:
        # transformer LoRA files keep peft's key names (lora_A/lora_B), as diffusers' SD3/FLUX LoRA scripts save
        # them (no conversion to the old UNet format)
        Path(folder).mkdir(parents=True, exist_ok=True)
        type(self.pipe).save_lora_weights(str(folder), transformer_lora_layers=peft_state_dict,
                                          safe_serialization=True, weight_name=LORA_WEIGHT_NAME)


class SD3Family(FlowTransformerFamily):
    """Stable Diffusion 3 / 3.5-shaped pipelines: MMDiT transformer, two CLIP encoders and an optional T5."""

    name: ClassVar[str] = "sd3"
    uses_cfg: ClassVar[bool] = True
    pipeline_class: ClassVar[str] = "StableDiffusion3Pipeline"
    pipeline_max_sequence_length: ClassVar[int] = 256
    t5_tokenizer: ClassVar[str] = "tokenizer_3"

    @classmethod
    def matches(cls, pipe) -> bool:
        config = getattr(getattr(pipe, "transformer", None), "config", None)
        return hasattr(pipe, "text_encoder_3") and hasattr(config, "pooled_projection_dim")

    def _latent_multiple(self) -> int:
        return int(self.denoiser.config.patch_size)

    def _latent_channels(self) -> int:
        return int(self.denoiser.config.in_channels)

    def default_resolution(self) -> int:
        return int(self.denoiser.config.sample_size) * self.vae_scale

    def encode(self, prompts: list, device, resolution: int):
        from rdpo_zoo.diffusion import Conditioning

        cond, uncond, pooled, pooled_uncond = self.pipe.encode_prompt(
            prompts, None, None, device=device, num_images_per_prompt=1, do_classifier_free_guidance=True,
            negative_prompt=[""] * len(prompts), max_sequence_length=self.max_sequence_length,
        )
        return Conditioning(prompts, cond, uncond, {"pooled_projections": pooled},
                            {"pooled_projections": pooled_uncond})

    def denoise(self, denoiser, x, t, hidden, added):
        return denoiser(hidden_states=x.to(self.dtype), timestep=t, encoder_hidden_states=hidden.to(self.dtype),
                        pooled_projections=added["pooled_projections"].to(self.dtype), return_dict=False)[0]


class FluxFamily(FlowTransformerFamily):
    """FLUX.1-shaped pipelines: a transformer on 2×2-packed latents with rotary position ids, CLIP pooled and T5
    sequence conditioning, and (FLUX.1-dev) a guidance embedding instead of classifier-free guidance."""

    name: ClassVar[str] = "flux"
    uses_cfg: ClassVar[bool] = False
    # FluxPipeline's default: FLUX.1-dev is guidance-distilled, the value enters its guidance embedding, and CFG's 5
    # is outside what the model was distilled to follow well
    default_guidance_scale: ClassVar[Optional[float]] = 3.5
    pipeline_class: ClassVar[str] = "FluxPipeline"
    pipeline_max_sequence_length: ClassVar[int] = 512
    t5_tokenizer: ClassVar[str] = "tokenizer_2"
    flux_sigmas: ClassVar[bool] = True

    @classmethod
    def matches(cls, pipe) -> bool:
        config = getattr(getattr(pipe, "transformer", None), "config", None)
        return hasattr(config, "guidance_embeds") and hasattr(config, "axes_dims_rope")

    def _latent_multiple(self) -> int:
        return 2  # FluxPipeline._pack_latents: 2×2 patches

    def _latent_channels(self) -> int:
        return int(self.denoiser.config.in_channels) // 4

    def default_resolution(self) -> int:
        return int(self.pipe.default_sample_size) * self.vae_scale

    def pipeline_call(self, latents: torch.Tensor) -> dict:
        from diffusers import FluxPipeline

        B, C, h, w = latents.shape  # FluxPipeline takes its latents packed, its size from height/width
        return {**super().pipeline_call(FluxPipeline._pack_latents(latents, B, C, h, w)),
                "height": h * self.vae_scale, "width": w * self.vae_scale}

    def encode(self, prompts: list, device, resolution: int):
        from rdpo_zoo.diffusion import Conditioning

        cond, pooled, _ = self.pipe.encode_prompt(prompts, prompts, device=device, num_images_per_prompt=1,
                                                  max_sequence_length=self.max_sequence_length)
        # no CFG: the empty prompt's encoding is kept only so that every Conditioning has the same fields
        uncond, pooled_uncond, _ = self.pipe.encode_prompt([""], [""], device=device, num_images_per_prompt=1,
                                                           max_sequence_length=self.max_sequence_length)
        B = len(prompts)
        return Conditioning(prompts, cond, uncond.expand(B, -1, -1).clone(), {"pooled_projections": pooled},
                            {"pooled_projections": pooled_uncond.expand(B, -1).clone()})

    def denoise(self, denoiser, x, t, hidden, added):
        from diffusers import FluxPipeline

        B, C, h, w = x.shape
        dtype = self.dtype
        packed = FluxPipeline._pack_latents(x.to(dtype), B, C, h, w)
        img_ids = FluxPipeline._prepare_latent_image_ids(B, h // 2, w // 2, x.device, dtype)
        txt_ids = torch.zeros(hidden.shape[1], 3, device=x.device, dtype=dtype)
        guidance = None
        if self.denoiser.config.guidance_embeds:
            guidance = torch.full((B,), self.guidance_scale, device=x.device, dtype=torch.float32)
        out = denoiser(hidden_states=packed, timestep=t.to(dtype) / 1000, guidance=guidance,
                       pooled_projections=added["pooled_projections"].to(dtype),
                       encoder_hidden_states=hidden.to(dtype), txt_ids=txt_ids, img_ids=img_ids,
                       return_dict=False)[0]
        # FluxPipeline._unpack_latents, from the latent grid (it takes the pixel size)
        out = out.view(B, h // 2, w // 2, C, 2, 2).permute(0, 3, 1, 4, 2, 5)
        return out.reshape(B, C, h, w)
