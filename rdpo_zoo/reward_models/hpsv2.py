"""Human Preference Score v2 / v2.1 (Wu et al. 2023, ``tgxs002/HPSv2``): an open_clip ViT-H-14 fine-tuned on HPD v2.

hpsv2's ``score`` loads ``HPS_v2{,.1}_compressed.pt`` (``checkpoint["state_dict"]``) into open_clip's ViT-H-14 and
returns the raw cosine of the normalised image and text features (no logit scale)::

    image_features, text_features = model(image, tokenizer([prompt]))   # both L2-normalised
    hps = diag(image_features @ text_features.T)

The image goes through open_clip's eval transform: ``Resize(224, bicubic)`` of the shortest side,
``CenterCrop(224)`` (torchvision's: a rounded offset), ``ToTensor``, CLIP mean/std.

open_clip cannot be installed beside this stack (it needs torchvision, which needs another torch; see
docs/rewards.md), so the default backend converts the checkpoint to transformers' ``CLIPModel``: the two
architectures are the same network (pre-norm transformer, exact GELU for ViT-H-14, CLS-token pooling with
``ln_post`` and ``proj`` for images, the EOT token with ``ln_final`` and ``text_projection`` for text, causal text
attention); only the names and the packing of q/k/v differ (:func:`open_clip_to_transformers`). Where open_clip
is installed, ``backend="open_clip"`` runs the checkpoint in open_clip itself.
"""

from __future__ import annotations

import re
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from rdpo_zoo.reward_models import sources
from rdpo_zoo.reward_models.common import ModelReward, hub_path, load_torch_file, quiet_transformers
from rdpo_zoo.reward_models.pickscore import ClipScoreModel
from rdpo_zoo.reward_models.preprocess import ClipPreprocess
from rdpo_zoo.reward_models.weights import resolve

__all__ = ["open_clip_to_transformers", "load_hps_state_dict", "OpenClipScoreModel", "HPSv2", "BACKENDS"]

BACKENDS = ("transformers", "open_clip")

# open_clip's ViT-H-14 (model_configs/ViT-H-14.json): what cannot be read off the weights' shapes
VIT_H14_HEAD_WIDTH = 80  # vision heads = width / head_width = 1280 / 80 = 16
TEXT_HEAD_WIDTH = 64  # open_clip's text heads for ViT-H-14: 16 at width 1024

_BLOCK = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$")
_BLOCK_NAMES = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
    "attn.out_proj": "self_attn.out_proj",
}


def load_hps_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """The open_clip state dict of an HPS checkpoint (``{"state_dict": ...}`` as hpsv2 saves it, a bare state dict,
    or safetensors), without a DDP ``module.`` prefix."""
    state = load_torch_file(path)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def _count_blocks(state: Dict[str, torch.Tensor], prefix: str) -> int:
    indices = {int(m.group(2)) for k in state if (m := _BLOCK.match(k)) and (m.group(1) or "") == prefix}
    if not indices or indices != set(range(len(indices))):
        raise ValueError(f"expected {prefix}transformer.resblocks.0..N-1 in the open_clip state dict")
    return len(indices)


def open_clip_to_transformers(
    state: Dict[str, torch.Tensor], vision_heads: Optional[int] = None, text_heads: Optional[int] = None,
    hidden_act: str = "gelu",
) -> Tuple["object", Dict[str, torch.Tensor]]:
    """An open_clip ``CLIP`` state dict (ViT image tower, standard text tower) as a transformers ``CLIPConfig``
    and ``CLIPModel`` state dict.

    Sizes are read off the shapes; the head counts are not in the weights and default to ViT-H-14's (head width
    80 for images, 64 for text). ``hidden_act`` is ``"gelu"`` (open_clip's default, ViT-H-14) or ``"quick_gelu"``
    (OpenAI's models). Every tensor is used: a key this function does not know is an error.
    """
    from transformers import CLIPConfig

    state = dict(state)
    state.pop("attn_mask", None)  # open_clip's causal mask buffer (not persistent in recent versions)
    state.pop("visual.attn_mask", None)
    v_width = state["visual.class_embedding"].shape[-1]
    patch = state["visual.conv1.weight"].shape[-1]
    grid = int(round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5))
    t_width = state["token_embedding.weight"].shape[1]
    embed_dim = state["visual.proj"].shape[1]
    if state["text_projection"].shape != (t_width, embed_dim):
        raise ValueError(f"text_projection: expected shape {(t_width, embed_dim)}, got {tuple(state['text_projection'].shape)}")
    if vision_heads is None:
        vision_heads = v_width // VIT_H14_HEAD_WIDTH if v_width % VIT_H14_HEAD_WIDTH == 0 else v_width // 64
    if text_heads is None:
        text_heads = t_width // TEXT_HEAD_WIDTH
    config = CLIPConfig(
        projection_dim=embed_dim,
        text_config=dict(
            vocab_size=state["token_embedding.weight"].shape[0],
            hidden_size=t_width,
            intermediate_size=state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
            num_hidden_layers=_count_blocks(state, ""),
            num_attention_heads=text_heads,
            max_position_embeddings=state["positional_embedding"].shape[0],
            hidden_act=hidden_act,
            layer_norm_eps=1e-5,
            # open_clip pools the text at argmax(token id), the end-of-text token: transformers does the same
            # for eos_token_id == 2 (its legacy rule), whatever the vocabulary
            bos_token_id=0,
            eos_token_id=2,
            pad_token_id=1,
        ),
        vision_config=dict(
            hidden_size=v_width,
            intermediate_size=state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
            num_hidden_layers=_count_blocks(state, "visual."),
            num_attention_heads=vision_heads,
            image_size=grid * patch,
            patch_size=patch,
            hidden_act=hidden_act,
            layer_norm_eps=1e-5,
        ),
    )
    out: Dict[str, torch.Tensor] = {}
    fixed = {
        "visual.class_embedding": "vision_model.embeddings.class_embedding",
        "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
        "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
        "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
        "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
        "visual.ln_post.weight": "vision_model.post_layernorm.weight",
        "visual.ln_post.bias": "vision_model.post_layernorm.bias",
        "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
        "positional_embedding": "text_model.embeddings.position_embedding.weight",
        "ln_final.weight": "text_model.final_layer_norm.weight",
        "ln_final.bias": "text_model.final_layer_norm.bias",
        "logit_scale": "logit_scale",
    }
    for key, value in state.items():
        if key in fixed:
            out[fixed[key]] = value.reshape(()) if key == "logit_scale" else value
        elif key == "visual.proj":
            out["visual_projection.weight"] = value.t().contiguous()  # x @ proj == Linear with weight proj.T
        elif key == "text_projection":
            out["text_projection.weight"] = value.t().contiguous()
        elif (match := _BLOCK.match(key)) is not None:
            tower = "vision_model" if match.group(1) else "text_model"
            layer, name = match.group(2), match.group(3)
            base = f"{tower}.encoder.layers.{layer}."
            if name in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = name.rsplit("_", 1)[1]  # weight or bias: nn.MultiheadAttention packs q, k, v in one
                for part, chunk in zip(("q", "k", "v"), value.chunk(3, dim=0)):
                    out[f"{base}self_attn.{part}_proj.{kind}"] = chunk.contiguous()
                continue
            module, _, param = name.rpartition(".")
            if module not in _BLOCK_NAMES:
                raise ValueError(f"open_clip key {key!r}: {module!r} has no transformers counterpart (not a ViT CLIP?)")
            out[f"{base}{_BLOCK_NAMES[module]}.{param}"] = value
        else:
            raise ValueError(f"open_clip key {key!r} has no transformers counterpart (not a standard ViT CLIP?)")
    return config, out


def clip_from_open_clip(state: Dict[str, torch.Tensor], **kwargs) -> nn.Module:
    """A transformers ``CLIPModel`` holding an open_clip state dict (strictly: every parameter loaded)."""
    from transformers import CLIPModel

    config, converted = open_clip_to_transformers(state, **kwargs)
    with torch.device("meta"):
        model = CLIPModel(config)
    model.load_state_dict(converted, strict=True, assign=True)
    for module in model.modules():  # non-persistent buffers (position ids) were created on the meta device
        for name, buffer in list(module.named_buffers(recurse=False)):
            if buffer.is_meta and name == "position_ids":
                module.register_buffer(name, torch.arange(buffer.shape[-1]).expand(1, -1), persistent=False)
    return model.eval()


class OpenClipScoreModel(nn.Module):
    """The same score run by open_clip itself (``backend="open_clip"``, where open_clip is installed)."""

    def __init__(self, model: nn.Module, tokenizer, preprocess: ClipPreprocess):
        super().__init__()
        self.clip = model
        self.tokenizer = tokenizer
        self.preprocess = preprocess

    def forward(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        dtype = next(self.clip.parameters()).dtype
        image = self.clip.encode_image(self.preprocess(images).to(dtype), normalize=True).float()
        text = self.clip.encode_text(self.tokenizer(list(prompts)).to(images.device), normalize=True).float()
        return (image * text).sum(-1)


class HPSv2(ModelReward):
    """HPS v2 / v2.1: the raw cosine of the HPS-tuned open_clip ViT-H-14's image and prompt features (~0.2-0.35).

    Args:
        version: ``v2.1`` (the default of hpsv2 ≥ 1.2) or ``v2.0``.
        weights: the checkpoint, a local path or a hub file ``ORG/NAME/FILE`` (default ``xswu/HPSv2/HPS_v2.1_compressed.pt``
            or ``.../HPS_v2_compressed.pt`` from the local cache).
        tokenizer: a CLIP tokenizer folder or hub id (default ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` from the cache;
            open_clip's ViT-H-14 tokenizer is OpenAI's BPE, which every CLIP tokenizer on the hub carries).
        backend: ``transformers`` (the checkpoint converted to ``CLIPModel``) or ``open_clip`` (needs open_clip).
        dtype: the network's dtype (hpsv2 scores under CUDA autocast, i.e. fp16 matmuls).
    """

    name = "hpsv2"
    unit = "HPS (cosine, ~0.2-0.35)"
    # HPS is trained with CLIP's logit scale (~100): a difference of 0.01 is a 73 % preference (odds e:1)
    scale = 0.01
    differentiable = True

    def __init__(self, version: str = "v2.1", weights: Optional[str] = None, tokenizer: Optional[str] = None,
                 backend: str = "transformers", dtype: str = "float32"):
        if backend not in BACKENDS:
            raise ValueError(f"backend: expected one of {', '.join(BACKENDS)}, got {backend!r}")
        if backend == "open_clip":
            try:
                import open_clip
            except ImportError as error:
                raise ImportError(
                    "reward 'hpsv2': backend=open_clip needs open_clip (pip install open_clip_torch), which needs "
                    "torchvision; use the default backend=transformers, which runs the same weights"
                ) from error
        found = resolve(self.name, sources.hpsv2_sources(version, weights, tokenizer, backend))
        state = load_hps_state_dict(hub_path(found[0]))
        preprocess = ClipPreprocess(rounding="round")  # torchvision's CenterCrop
        if backend == "open_clip":
            model = open_clip.create_model("ViT-H-14", pretrained=None)
            model.load_state_dict(state, strict=True)
            score_model = OpenClipScoreModel(model.eval(), open_clip.get_tokenizer("ViT-H-14"), preprocess)
        else:
            from transformers import CLIPTokenizer

            with quiet_transformers():
                tok = CLIPTokenizer.from_pretrained(hub_path(found[1]))
            score_model = ClipScoreModel(clip_from_open_clip(state), tok, preprocess, logit_scale=False,
                                         padding="max_length")
        super().__init__(score_model, dtype)

    @classmethod
    def from_open_clip_state_dict(cls, state: Dict[str, torch.Tensor], tokenizer, dtype: str = "float32",
                                  **convert) -> "HPSv2":
        """The reward around an open_clip state dict and a CLIP tokenizer (tests, notebooks): no files are read."""
        reward = cls.__new__(cls)
        model = ClipScoreModel(clip_from_open_clip(state, **convert), tokenizer, ClipPreprocess(rounding="round"),
                               logit_scale=False, padding="max_length")
        ModelReward.__init__(reward, model, dtype)
        return reward
