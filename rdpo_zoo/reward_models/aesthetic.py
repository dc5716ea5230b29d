"""The LAION improved aesthetic predictor (``christophschuhmann/improved-aesthetic-predictor``): the aesthetic
reward of DDPO, D3PO and the RDPO paper.

    emb   = CLIP ViT-L/14 image features (``get_image_features``: the projected CLS token), then emb / ‖emb‖₂
    score = MLP(emb),  MLP = Linear(768,1024) Dropout Linear(1024,128) Dropout Linear(128,64) Dropout
                             Linear(64,16) Linear(16,1)      -- no activations ("linearMSE"), dropouts off at eval

The MLP's weights are ``sac+logos+ava1-l14-linearMSE.pth`` (state-dict keys ``layers.{0,2,4,6,7}.{weight,bias}``),
the file DDPO and D3PO ship; scores are on the AVA scale (about 1–10). The images are prepared as
``CLIPProcessor`` prepares the uint8 images those repositories feed it (see :mod:`.preprocess`), in torch, so the
score is batched, runs on the images' device and has a gradient (the originals wrap it in ``torch.no_grad``).
"""

from __future__ import annotations

import logging
import os
from typing import Optional, Sequence

import torch
from torch import nn

from rdpo_zoo.reward_models import sources
from rdpo_zoo.reward_models.common import ModelReward, git_blob_sha1, hub_path, load_torch_file, quiet_transformers
from rdpo_zoo.reward_models.preprocess import ClipPreprocess
from rdpo_zoo.reward_models.weights import resolve

__all__ = ["AestheticMLP", "AestheticModel", "Aesthetic", "load_aesthetic_mlp", "SAC_LOGOS_AVA1_BLOB"]

logger = logging.getLogger(__name__)

#: git blob id of sac+logos+ava1-l14-linearMSE.pth (3,714,759 bytes), identical in the upstream repository,
#: ddpo-pytorch and d3po (their ``assets/``) and Diffusion-DPO's ``utils/aesthetics_model/``
SAC_LOGOS_AVA1_BLOB = "7c0d8aa2923efd62fcdddced392cf17c237150dd"
MLP_KEYS = tuple(f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias"))


class AestheticMLP(nn.Module):
    """The predictor's head, exactly the upstream module (so its state dict loads with its own key names)."""

    def __init__(self, input_size: int = 768):
        super().__init__()
        self.input_size = input_size
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.layers(embeddings)


def load_aesthetic_mlp(path: str, check_identity: bool = True) -> AestheticMLP:
    """The MLP from a ``.pth`` (or ``.safetensors``) state dict with keys ``layers.{0,2,4,6,7}.{weight,bias}``.
    Warns when the file is not the sac+logos+ava1 one that DDPO/D3PO use (other LAION heads load too)."""
    state = load_torch_file(path)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    keys = set(state)
    if keys != set(MLP_KEYS):
        raise ValueError(
            f"{path}: expected the LAION aesthetic MLP's keys {', '.join(MLP_KEYS)}; "
            f"missing {sorted(set(MLP_KEYS) - keys)}, unexpected {sorted(keys - set(MLP_KEYS))}"
        )
    mlp = AestheticMLP(input_size=state["layers.0.weight"].shape[1])
    mlp.load_state_dict(state, strict=True)
    if check_identity and not path.endswith(".safetensors"):
        blob = git_blob_sha1(path)
        if blob != SAC_LOGOS_AVA1_BLOB:
            logger.warning(
                "%s is not sac+logos+ava1-l14-linearMSE.pth (git blob %s, expected %s): scores will not match "
                "DDPO/D3PO's aesthetic reward", path, blob, SAC_LOGOS_AVA1_BLOB,
            )
    return mlp.eval()


def load_clip_vision(folder: str) -> nn.Module:
    """The image tower and its projection (``CLIPVisionModelWithProjection``) from a ``from_pretrained`` folder
    of a whole ``CLIPModel`` (its text tower is not loaded) or of the vision model alone."""
    import json

    from transformers import CLIPConfig, CLIPVisionModelWithProjection

    with open(os.path.join(folder, "config.json")) as handle:
        model_type = json.load(handle).get("model_type")
    with quiet_transformers():
        if model_type == "clip":
            full = CLIPConfig.from_pretrained(folder)
            config = full.vision_config
            config.projection_dim = full.projection_dim  # kept at the top level of a CLIPModel's config
            return CLIPVisionModelWithProjection.from_pretrained(folder, config=config)
        return CLIPVisionModelWithProjection.from_pretrained(folder)


def _features(output) -> torch.Tensor:
    """``get_image_features``'s tensor: transformers ≥ 5 returns an output whose ``pooler_output`` holds it."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class AestheticModel(nn.Module):
    """CLIP image tower with its projection (a ``CLIPModel`` or ``CLIPVisionModelWithProjection``), the MLP, and
    the preprocessing; ``forward(images [B,3,H,W] in [0,1], prompts) -> [B]`` (prompts are not used)."""

    def __init__(self, clip: nn.Module, mlp: AestheticMLP, preprocess: Optional[ClipPreprocess] = None):
        super().__init__()
        self.clip = clip
        self.mlp = mlp
        self.preprocess = preprocess or ClipPreprocess()

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The L2-normalised image embeddings ``[B, 768]`` (float32)."""
        dtype = next(self.clip.parameters()).dtype
        pixels = self.preprocess(images).to(dtype)
        if hasattr(self.clip, "get_image_features"):
            emb = _features(self.clip.get_image_features(pixel_values=pixels))
        else:  # CLIPVisionModelWithProjection
            emb = self.clip(pixel_values=pixels).image_embeds
        emb = emb.float()
        return emb / emb.norm(dim=-1, keepdim=True)

    def forward(self, images: torch.Tensor, prompts: Sequence[str] = ()) -> torch.Tensor:
        emb = self.embed(images)
        return self.mlp(emb.to(next(self.mlp.parameters()).dtype)).squeeze(-1).float()


class Aesthetic(ModelReward):
    """LAION aesthetic score (AVA scale, about 1–10) of CLIP ViT-L/14 image embeddings: DDPO/D3PO's reward.

    Args:
        clip: the CLIP model, a hub id or a local ``from_pretrained`` folder (default
            ``openai/clip-vit-large-patch14`` from the local cache; naming an id allows its download).
        weights: the MLP's state dict, a local path or a hub file ``ORG/NAME/FILE`` (default
            ``trl-lib/ddpo-aesthetic-predictor/aesthetic-model.pth`` from the local cache).
        dtype: the networks' dtype (the originals score in float32).
    """

    name = "aesthetic"
    unit = "LAION aesthetic score (AVA scale, 1-10)"
    # provisional: an improvement DDPO's curves resolve within a few epochs; measure it on your base model
    # (the std of the score over its samples) and pass thresholds in those units
    scale = 0.25
    differentiable = True

    def __init__(self, clip: Optional[str] = None, weights: Optional[str] = None, dtype: str = "float32"):
        clip_dir, mlp_file = resolve(self.name, sources.aesthetic_sources(clip, weights))
        folder = hub_path(clip_dir)
        model = AestheticModel(load_clip_vision(folder), load_aesthetic_mlp(hub_path(mlp_file)),
                               ClipPreprocess.from_config(folder))
        super().__init__(model, dtype)

    @classmethod
    def from_modules(cls, clip: nn.Module, mlp: AestheticMLP, preprocess: Optional[ClipPreprocess] = None,
                     dtype: str = "float32") -> "Aesthetic":
        """The reward around given modules (tests, notebooks): no files are read."""
        reward = cls.__new__(cls)
        ModelReward.__init__(reward, AestheticModel(clip, mlp, preprocess), dtype)
        return reward
