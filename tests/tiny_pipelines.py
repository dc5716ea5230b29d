"""Tiny SD1.5- and SDXL-shaped pipelines built from configs, with an offline tokenizer: no download."""

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


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         norm_num_groups=8, sample_size=16)


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
