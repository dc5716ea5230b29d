"""PickScore (Kirstain et al. 2023, ``yuvalkirstain/PickScore_v1``): a CLIP ViT-H/14 fine-tuned on Pick-a-Pic.

As its model card computes it::

    image_embs = model.get_image_features(**processor(images=...))          ; image_embs /= ‖image_embs‖
    text_embs  = model.get_text_features(**processor(text=..., padding=True, truncation=True, max_length=77))
    score      = model.logit_scale.exp() * (text_embs / ‖text_embs‖) · image_embs

with the processor of ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` (shortest side 224 bicubic, centre crop 224, CLIP
mean/std). One score per (image, its prompt); batched, on the images' device, differentiable.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from rdpo_zoo.reward_models import sources
from rdpo_zoo.reward_models.common import ModelReward, hub_path, quiet_transformers
from rdpo_zoo.reward_models.preprocess import ClipPreprocess
from rdpo_zoo.reward_models.weights import resolve

__all__ = ["ClipScoreModel", "PickScore", "features"]


def features(output) -> torch.Tensor:
    """``get_image_features``/``get_text_features``'s tensor (transformers ≥ 5 returns an output object whose
    ``pooler_output`` holds the projected features)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class ClipScoreModel(nn.Module):
    """A CLIP model scoring each image against its own prompt: ``scale × cos(image_emb, text_emb)`` with
    ``scale = logit_scale.exp()`` (PickScore) or 1 (a raw cosine, HPSv2).

    Args:
        clip: a transformers ``CLIPModel``.
        tokenizer: its tokenizer (called with ``padding``, ``truncation``, ``max_length=77``).
        preprocess: the image preparation.
        logit_scale: multiply the cosine by ``clip.logit_scale.exp()``.
        padding: ``True`` (pad to the longest prompt, PickScore's processor call) or ``"max_length"`` (77 tokens,
            open_clip's tokenizer); with CLIP's causal text encoder both give the same features.
    """

    def __init__(self, clip: nn.Module, tokenizer, preprocess: Optional[ClipPreprocess] = None,
                 logit_scale: bool = True, padding="max_length"):
        super().__init__()
        self.clip = clip
        self.tokenizer = tokenizer
        self.preprocess = preprocess or ClipPreprocess()
        self.use_logit_scale = logit_scale
        self.padding = padding

    def tokens(self, prompts: Sequence[str], device) -> dict:
        batch = self.tokenizer(list(prompts), padding=self.padding, truncation=True, max_length=77,
                               return_tensors="pt")
        return {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}

    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        dtype = next(self.clip.parameters()).dtype
        emb = features(self.clip.get_image_features(pixel_values=self.preprocess(images).to(dtype))).float()
        return emb / emb.norm(dim=-1, keepdim=True)

    def text_embeddings(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        emb = features(self.clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask)).float()
        return emb / emb.norm(dim=-1, keepdim=True)

    def score_tokens(self, images: torch.Tensor, input_ids: torch.Tensor,
                     attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Scores given token ids (``[B, L]``) instead of prompts."""
        cosine = (self.image_embeddings(images) * self.text_embeddings(input_ids, attention_mask)).sum(-1)
        if self.use_logit_scale:
            cosine = self.clip.logit_scale.float().exp() * cosine
        return cosine

    def forward(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return self.score_tokens(images, **self.tokens(prompts, images.device))


class PickScore(ModelReward):
    """PickScore: ``logit_scale.exp() × cos(image, prompt)`` of the Pick-a-Pic CLIP-H (logit units, about 15–25).

    Args:
        model: the PickScore CLIP model, a hub id or a local folder (default ``yuvalkirstain/PickScore_v1`` from the
            local cache; naming an id allows its download).
        processor: where its tokenizer and ``preprocessor_config.json`` are (default
            ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` from the local cache; only those small files are needed).
        dtype: the network's dtype.
    """

    name = "pickscore"
    unit = "PickScore (logit_scale × cosine, ~15-25)"
    # PickScore is trained as a softmax over logit_scale × cos: a difference of 1 is odds of e:1, a 73 % preference
    scale = 1.0
    differentiable = True

    def __init__(self, model: Optional[str] = None, processor: Optional[str] = None, dtype: str = "float32"):
        model_dir, processor_dir = resolve(self.name, sources.pickscore_sources(model, processor))
        from transformers import CLIPModel, CLIPTokenizer

        model_path, processor_path = hub_path(model_dir), hub_path(processor_dir)
        with quiet_transformers():
            clip = CLIPModel.from_pretrained(model_path)
            tokenizer = CLIPTokenizer.from_pretrained(processor_path)
        super().__init__(
            ClipScoreModel(clip, tokenizer, ClipPreprocess.from_config(processor_path), logit_scale=True, padding=True),
            dtype,
        )

    @classmethod
    def from_modules(cls, clip: nn.Module, tokenizer, preprocess: Optional[ClipPreprocess] = None,
                     dtype: str = "float32") -> "PickScore":
        """The reward around a given CLIP model and tokenizer (tests, notebooks): no files are read."""
        reward = cls.__new__(cls)
        ModelReward.__init__(reward, ClipScoreModel(clip, tokenizer, preprocess, logit_scale=True, padding=True), dtype)
        return reward
