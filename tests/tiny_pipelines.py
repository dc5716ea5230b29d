"""Tiny SD1.5-, SDXL-, SD3- and FLUX-shaped pipelines built from configs, with offline tokenizers: no download."""

from __future__ import annotations

import tempfile
from functools import lru_cache

import torch

from rdpo_zoo.rewards import Reward


@lru_cache(maxsize=1)
def tokenizer_dir() -> str:
    """The project's offline byte-level CLIP BPE (every byte is a token, plus a few words), in a temporary folder."""
    from rdpo_zoo.pretrain import build_tokenizer

    path = tempfile.mkdtemp(prefix="rdpo-tiny-tokenizer-")
    build_tokenizer(path, words=("red", "circle", "square"), max_length=16)
    return path


def _tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(tokenizer_dir(), model_max_length=16)


def _text_config(**kw):
    from transformers import CLIPTextConfig

    tokenizer = _tokenizer()
    return CLIPTextConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id, vocab_size=len(tokenizer), hidden_size=32,
                          intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, max_position_embeddings=16,
                          projection_dim=32, **kw)


def _vae(**kw):
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         norm_num_groups=8, sample_size=16, **kw)


def _scheduler(prediction_type="epsilon"):
    from diffusers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type)


def tiny_sd_pipeline(seed: int = 0, prediction_type: str = "epsilon"):
    """An SD1.5-shaped pipeline: 16×16 images, 4×8×8 latents."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8,
    )
    pipe = StableDiffusionPipeline(
        vae=_vae(), text_encoder=CLIPTextModel(_text_config()), tokenizer=_tokenizer(), unet=unet,
        scheduler=_scheduler(prediction_type), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sdxl_pipeline(seed: int = 0):
    """An SDXL-shaped pipeline (two text encoders, added text/time conditioning): 16×16 images."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=80,
        cross_attention_dim=64, norm_num_groups=8,
    )
    pipe = StableDiffusionXLPipeline(
        vae=_vae(), text_encoder=CLIPTextModel(_text_config()), text_encoder_2=CLIPTextModelWithProjection(_text_config()),
        tokenizer=_tokenizer(), tokenizer_2=_tokenizer(), unet=unet, scheduler=_scheduler(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@lru_cache(maxsize=1)
def t5_tokenizer_dir() -> str:
    """An offline T5 (Unigram) tokenizer: every lower-case letter, digit and punctuation mark is a piece, plus a few
    words, so any prompt tokenizes; in a temporary folder, loaded with ``T5TokenizerFast.from_pretrained``."""
    import json
    import os
    import string

    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import Unigram

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -3.0)]
    pieces += [("\u2581" + w, -1.0) for w in ("a", "red", "circle", "square")]
    pieces += [(c, -5.0) for c in string.ascii_lowercase + string.digits + string.punctuation]
    tokenizer = Tokenizer(Unigram(pieces, unk_id=2))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    path = tempfile.mkdtemp(prefix="rdpo-tiny-t5-tokenizer-")
    tokenizer.save(os.path.join(path, "tokenizer.json"))
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump({"model_max_length": 16, "tokenizer_class": "T5Tokenizer", "eos_token": "</s>", "pad_token": "<pad>",
                   "unk_token": "<unk>", "extra_ids": 0}, f)
    return path


def _t5(d_model: int):
    """A tiny T5 encoder and its tokenizer."""
    from transformers import T5Config, T5EncoderModel, T5TokenizerFast

    tokenizer = T5TokenizerFast.from_pretrained(t5_tokenizer_dir())
    config = T5Config(vocab_size=len(tokenizer), d_model=d_model, d_kv=8, d_ff=37, num_layers=1, num_heads=2, dropout_rate=0.0,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      decoder_start_token_id=tokenizer.pad_token_id)
    return T5EncoderModel(config).eval(), tokenizer


def _flow_scheduler(**kw):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, **kw)


#: T5 sequence length of the tiny flow pipelines (diffusers' defaults, 256 and 512, would dominate their cost)
TINY_MAX_SEQUENCE_LENGTH = 8


def tiny_sd3_pipeline(seed: int = 0, t5: bool = True):
    """An SD3-shaped pipeline (two CLIP encoders with projections, an optional T5, an MMDiT transformer with
    patch 2, a VAE with a shift factor, flow-matching Euler with SD3's static shift 3): 16×16 images, 4×8×8
    latents. ``t5=False`` leaves ``text_encoder_3`` and ``tokenizer_3`` out, as SD3 allows."""
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(seed)
    # joint_attention_dim = the two CLIP hidden sizes side by side (the pipeline pads CLIP up to T5's width)
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=1,
                                        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=64,
                                        caption_projection_dim=16, pooled_projection_dim=64, pos_embed_max_size=8)
    text_encoder_3, tokenizer_3 = _t5(64) if t5 else (None, None)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=_flow_scheduler(),
        vae=_vae(shift_factor=0.0609, scaling_factor=1.5035),
        text_encoder=CLIPTextModelWithProjection(_text_config()), tokenizer=_tokenizer(),
        text_encoder_2=CLIPTextModelWithProjection(_text_config()), tokenizer_2=_tokenizer(),
        text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_flux_pipeline(seed: int = 0):
    """A FLUX.1-shaped pipeline (CLIP pooled + T5 sequence conditioning, a transformer on 2×2-packed latents with
    rotary position ids and a guidance embedding, a VAE with a shift factor, flow-matching Euler with the
    resolution-dependent shift): 16×16 images, 4×8×8 latents packed to 16 tokens of 16 channels."""
    from diffusers import FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                         attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(2, 2, 4))
    text_encoder_2, tokenizer_2 = _t5(32)
    pipe = FluxPipeline(
        transformer=transformer,
        scheduler=_flow_scheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                                  max_image_seq_len=4096),
        vae=_vae(shift_factor=0.1159, scaling_factor=0.3611),
        text_encoder=CLIPTextModel(_text_config()), tokenizer=_tokenizer(),
        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
    )
    pipe.default_sample_size = 8  # the pipeline's default latent side (128 for FLUX.1): 16×16 images by default
    pipe.set_progress_bar_config(disable=True)
    return pipe


class RedReward(Reward):
    """Mean red minus mean green and blue: a known, differentiable reward for tests."""

    name = "test-red"
    scale = 0.05
    differentiable = True

    def score(self, images, prompts, timesteps=None):
        self.check_images(images, prompts)
        return (images[:, 0] - 0.5 * (images[:, 1] + images[:, 2])).mean((1, 2)).float()

    def score_differentiable(self, images, prompts, timesteps=None):
        return self.score(images, prompts, timesteps)
