"""ImageReward (Xu et al. 2023, ``THUDM/ImageReward``) and VP-Score (VisionPrefer's reward model, the same
architecture), rebuilt from transformers' BLIP parts and loading the official checkpoints natively.

The official model (``ImageReward/ImageReward.py``, ``models/BLIP/{blip_pretrain,vit,med}.py``)::

    image_embeds = blip.visual_encoder(preprocess(image))     # BLIP ViT-L/16 at 224: 197 tokens of 1024
    text = blip.tokenizer(prompt, padding="max_length", truncation=True, max_length=35)   # bert-base-uncased
    out  = blip.text_encoder(text.input_ids, attention_mask=text.attention_mask,
                             encoder_hidden_states=image_embeds, encoder_attention_mask=ones)  # BERT + cross-attn
    reward = (mlp(out.last_hidden_state[:, 0]) - 0.16717362830052426) / 1.0333394966054072

``mlp`` is the LAION head (768→1024→128→64→16→1, no activations). transformers' ``BlipVisionModel`` is BLIP's ViT
(pre-norm blocks, fused qkv, final LayerNorm on every token) and ``BlipTextModel`` is BLIP's ``med.py`` BERT (no
token-type embeddings, cross-attention in every layer when ``is_decoder`` is set in its config, a bidirectional mask
when called with ``is_decoder=False``), so the checkpoint loads by renaming the image tower's keys
(:func:`image_reward_to_transformers`); the text tower's keys are already the same. The image is prepared as
ImageReward's ``_transform``: ``Resize(224, bicubic)``, ``CenterCrop(224)`` (torchvision's rounding), CLIP mean/std.
"""

from __future__ import annotations

import json
import re
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from rdpo_zoo.reward_models import sources
from rdpo_zoo.reward_models.aesthetic import AestheticMLP
from rdpo_zoo.reward_models.common import ModelReward, hub_path, load_torch_file, quiet_transformers
from rdpo_zoo.reward_models.preprocess import ClipPreprocess
from rdpo_zoo.reward_models.weights import resolve

__all__ = [
    "IMAGE_REWARD_MEAN",
    "IMAGE_REWARD_STD",
    "MED_CONFIG",
    "image_reward_to_transformers",
    "ImageRewardModel",
    "load_blip_tokenizer",
    "ImageReward",
    "VPScore",
]

#: the official normalisation (``ImageReward.mean`` / ``.std``): rewards of SD 1.4 samples have mean 0, std 1
IMAGE_REWARD_MEAN = 0.16717362830052426
IMAGE_REWARD_STD = 1.0333394966054072
PROMPT_TOKENS = 35  # ``max_length`` of the official tokenizer call

#: BLIP's med_config.json as ImageReward ships it; the cross-attention width (encoder_width) is the ViT's, set in code
MED_CONFIG = {
    "hidden_act": "gelu",
    "hidden_size": 768,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-12,
    "max_position_embeddings": 512,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 0,
    "vocab_size": 30524,
    "initializer_range": 0.02,
}
#: BLIP's ViT (``create_vit('large', 224)``): what cannot be read off the weights' shapes
VIT_HEAD_WIDTH = 64  # ViT-L: 1024 / 64 = 16 heads; ViT-B: 768 / 64 = 12
VIT_LAYER_NORM_EPS = 1e-6  # timm's partial(nn.LayerNorm, eps=1e-6)

_VIT_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_VIT_BLOCK_NAMES = {
    "norm1": "layer_norm1",
    "norm2": "layer_norm2",
    "attn.qkv": "self_attn.qkv",
    "attn.proj": "self_attn.projection",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_VIT_FIXED = {
    "cls_token": "embeddings.class_embedding",
    "pos_embed": "embeddings.position_embedding",
    "patch_embed.proj.weight": "embeddings.patch_embedding.weight",
    "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
    "norm.weight": "post_layernorm.weight",
    "norm.bias": "post_layernorm.bias",
}
# parts of the checkpoint the score does not use (BLIP's contrastive projections, a saved position-id buffer)
_UNUSED = ("blip.vision_proj.", "blip.text_proj.", "blip.text_encoder.embeddings.position_ids")


def image_reward_to_transformers(
    state: Dict[str, torch.Tensor], med_config: Optional[dict] = None, vision_heads: Optional[int] = None
) -> Tuple["object", "object", Dict[str, torch.Tensor], Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
    """An official ImageReward (or VP-Score) state dict as ``(BlipVisionConfig, BlipTextConfig, vision state dict,
    text state dict, MLP state dict)`` for transformers' ``BlipVisionModel``, ``BlipTextModel`` and the LAION head.

    The ViT's sizes are read off its weights (its heads: width / 64); the text encoder's from ``med_config``
    (default :data:`MED_CONFIG`), with the vocabulary and the cross-attention width read off the weights. Every
    tensor is accounted for: keys outside BLIP's image and text encoders and the MLP, other than the unused ones
    (``blip.vision_proj``, ``blip.text_proj``), are an error.
    """
    from transformers import BlipTextConfig, BlipVisionConfig

    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    vision, text, mlp, unknown = {}, {}, {}, []
    for key, value in state.items():
        if key.startswith("blip.visual_encoder."):
            name = key[len("blip.visual_encoder."):]
            if name in _VIT_FIXED:
                vision[_VIT_FIXED[name]] = value
            elif (match := _VIT_BLOCK.match(name)) is not None:
                module, _, param = match.group(2).rpartition(".")
                if module not in _VIT_BLOCK_NAMES:
                    unknown.append(key)
                    continue
                vision[f"encoder.layers.{match.group(1)}.{_VIT_BLOCK_NAMES[module]}.{param}"] = value
            else:
                unknown.append(key)
        elif key.startswith("blip.text_encoder."):
            if key.endswith("embeddings.position_ids"):
                continue
            text[key[len("blip.text_encoder."):]] = value
        elif key.startswith("mlp.layers."):
            mlp[key[len("mlp."):]] = value
        elif not key.startswith(_UNUSED):
            unknown.append(key)
    if unknown:
        raise ValueError(f"not an ImageReward checkpoint: unknown keys {sorted(unknown)[:8]}"
                         + (f" and {len(unknown) - 8} more" if len(unknown) > 8 else ""))
    for part, what in ((vision, "blip.visual_encoder"), (text, "blip.text_encoder"), (mlp, "mlp.layers")):
        if not part:
            raise ValueError(f"not an ImageReward checkpoint: no {what}.* weights")

    width = vision["embeddings.class_embedding"].shape[-1]
    patch = vision["embeddings.patch_embedding.weight"].shape[-1]
    grid = int(round((vision["embeddings.position_embedding"].shape[1] - 1) ** 0.5))
    layers = 1 + max(int(k.split(".")[2]) for k in vision if k.startswith("encoder.layers."))
    vision_config = BlipVisionConfig(
        hidden_size=width,
        intermediate_size=vision["encoder.layers.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=layers,
        num_attention_heads=vision_heads or width // VIT_HEAD_WIDTH,
        image_size=grid * patch,
        patch_size=patch,
        hidden_act="gelu",
        layer_norm_eps=VIT_LAYER_NORM_EPS,
        attention_dropout=0.0,
    )
    med = dict(MED_CONFIG if med_config is None else med_config)
    keep = ("hidden_act", "hidden_size", "intermediate_size", "layer_norm_eps", "max_position_embeddings",
            "num_attention_heads", "num_hidden_layers", "pad_token_id", "initializer_range")
    text_config = BlipTextConfig(
        **{k: med[k] for k in keep if k in med},
        vocab_size=text["embeddings.word_embeddings.weight"].shape[0],
        encoder_hidden_size=text["encoder.layer.0.crossattention.self.key.weight"].shape[1],
        is_decoder=True,  # builds the cross-attention layers; the forward is called with is_decoder=False
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    if text_config.hidden_size != text["embeddings.word_embeddings.weight"].shape[1]:
        raise ValueError(f"med_config hidden_size {text_config.hidden_size} does not match the checkpoint's "
                         f"{text['embeddings.word_embeddings.weight'].shape[1]}")
    return vision_config, text_config, vision, text, mlp


def _load_strict(module: nn.Module, state: Dict[str, torch.Tensor], what: str) -> None:
    result = module.load_state_dict(state, strict=False)
    # buffers that are not saved (position ids) are not "missing"
    missing = [k for k in result.missing_keys if not k.endswith("position_ids")]
    if missing or result.unexpected_keys:
        raise ValueError(f"{what}: the checkpoint does not fit transformers' module: missing {missing[:8]}, "
                         f"unexpected {result.unexpected_keys[:8]}")


def load_blip_tokenizer(folder: str):
    """BLIP's tokenizer: bert-base-uncased with ``[DEC]`` as bos and ``[ENC]`` added (``init_tokenizer``); prompts
    are tokenised as ``[CLS] … [SEP]`` with bert's vocabulary, the added tokens only fix the vocabulary size."""
    from transformers import BertTokenizer

    with quiet_transformers():
        tokenizer = BertTokenizer.from_pretrained(folder)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_tokens(["[ENC]"], special_tokens=True)
    return tokenizer


class ImageRewardModel(nn.Module):
    """BLIP image encoder + BLIP text encoder with cross-attention + the LAION head, normalised:
    ``forward(images [B,3,H,W] in [0,1], prompts) -> [B]``."""

    def __init__(self, vision: nn.Module, text: nn.Module, mlp: AestheticMLP, tokenizer,
                 mean: float = IMAGE_REWARD_MEAN, std: float = IMAGE_REWARD_STD,
                 preprocess: Optional[ClipPreprocess] = None):
        super().__init__()
        self.vision = vision
        self.text = text
        self.mlp = mlp
        self.tokenizer = tokenizer
        self.mean = mean
        self.std = std
        self.preprocess = preprocess or ClipPreprocess(rounding="round")

    @classmethod
    def from_state_dict(cls, state: Dict[str, torch.Tensor], tokenizer, med_config: Optional[dict] = None,
                        vision_heads: Optional[int] = None, **kwargs) -> "ImageRewardModel":
        from transformers import BlipTextModel, BlipVisionModel

        vision_config, text_config, vision_sd, text_sd, mlp_sd = image_reward_to_transformers(
            state, med_config, vision_heads)
        with torch.device("meta"):
            vision, text = BlipVisionModel(vision_config), BlipTextModel(text_config, add_pooling_layer=False)
        vision = vision.to_empty(device="cpu")
        text = text.to_empty(device="cpu")
        _load_strict(vision, vision_sd, "BLIP image encoder")
        _load_strict(text, text_sd, "BLIP text encoder")
        text.embeddings.position_ids = torch.arange(text_config.max_position_embeddings).expand((1, -1))
        mlp = AestheticMLP(input_size=mlp_sd["layers.0.weight"].shape[1])
        mlp.load_state_dict(mlp_sd, strict=True)
        if len(tokenizer) > text_config.vocab_size:
            raise ValueError(f"tokenizer has {len(tokenizer)} tokens, the text encoder {text_config.vocab_size}")
        return cls(vision.eval(), text.eval(), mlp.eval(), tokenizer, **kwargs)

    def tokens(self, prompts: Sequence[str], device) -> Tuple[torch.Tensor, torch.Tensor]:
        batch = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=PROMPT_TOKENS,
                               return_tensors="pt")
        return batch["input_ids"].to(device), batch["attention_mask"].to(device)

    def score_tokens(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        dtype = next(self.vision.parameters()).dtype
        image_embeds = self.vision(pixel_values=self.preprocess(images).to(dtype)).last_hidden_state
        image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        out = self.text(input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=image_embeds,
                        encoder_attention_mask=image_atts, is_decoder=False)
        features = out.last_hidden_state[:, 0, :]
        rewards = self.mlp(features.to(next(self.mlp.parameters()).dtype)).squeeze(-1).float()
        return (rewards - self.mean) / self.std

    def forward(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return self.score_tokens(images, *self.tokens(prompts, images.device))


class ImageReward(ModelReward):
    """ImageReward v1.0, normalised (0 ± 1 over SD 1.4's samples): BLIP image–text features into the LAION head.

    Args:
        weights: the checkpoint, a local path or a hub file ``ORG/NAME/FILE`` (default
            ``THUDM/ImageReward/ImageReward.pt`` from the local cache).
        tokenizer: the bert-base-uncased tokenizer, a folder or hub id (default ``google-bert/bert-base-uncased``
            or ``bert-base-uncased`` from the local cache; only ``vocab.txt`` is needed).
        med_config: BLIP's ``med_config.json`` (default: ImageReward's, built in).
        dtype: the networks' dtype.
    """

    name = "image-reward"
    unit = "ImageReward (normalised: SD 1.4 samples 0 ± 1)"
    # trained as a Bradley–Terry model on the raw head output; after the official ÷ 1.033, a difference of ~1 is a
    # 73 % preference (odds e:1)
    scale = 1.0
    differentiable = True
    _vp_score = False

    def __init__(self, weights: Optional[str] = None, tokenizer: Optional[str] = None,
                 med_config: Optional[str] = None, dtype: str = "float32"):
        found = resolve(self.name, sources.image_reward_sources(weights, tokenizer, med_config, self._vp_score))
        med = None
        if med_config is not None:
            with open(hub_path(found[2])) as handle:
                med = json.load(handle)
        state = load_torch_file(hub_path(found[0]))
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        model = ImageRewardModel.from_state_dict(state, load_blip_tokenizer(hub_path(found[1])), med)
        super().__init__(model, dtype)

    @classmethod
    def from_state_dict(cls, state: Dict[str, torch.Tensor], tokenizer, dtype: str = "float32",
                        **kwargs) -> "ImageReward":
        """The reward around an official-layout state dict and a tokenizer (tests, notebooks): no files are read."""
        reward = cls.__new__(cls)
        ModelReward.__init__(reward, ImageRewardModel.from_state_dict(state, tokenizer, **kwargs), dtype)
        return reward


class VPScore(ImageReward):
    """VP-Score, VisionPrefer's reward model: ImageReward's architecture and normalisation with VisionPrefer's
    weights (trained with ImageReward's code, loaded with its ``load``).

    Args:
        weights: the VP-Score checkpoint (required: a local path, or a hub file ``ORG/NAME/FILE``).
        tokenizer, med_config, dtype: as :class:`ImageReward`.
    """

    name = "vp-score"
    unit = "VP-Score (ImageReward's normalisation)"
    scale = 1.0
    _vp_score = True
