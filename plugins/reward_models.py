"""Built-in parts: the learned reward models of the RDPO paper and its baselines (docs/rewards.md).

``aesthetic`` (LAION aesthetic predictor, DDPO/D3PO/RDPO), ``pickscore``, ``hpsv2``, ``image-reward`` and
``vp-score``. Their weights are not shipped: each reward finds them at a local path or in the local Hugging Face
cache, downloads only an id the user named (and only online), and otherwise fails before any compute with the
files and how to get them. Each part's ``availability`` says, without importing torch, whether they are here.

Factories and checks are named as ``module:attribute`` strings, so loading this plugin imports no torch.
"""

from __future__ import annotations

import rdpo_zoo
from rdpo_zoo import Option, RewardPart

_DTYPE = Option("dtype", str, "float32", "the network's dtype", choices=("float32", "float16", "bfloat16"))
_BERT = Option(
    "tokenizer", str, None,
    "bert-base-uncased tokenizer: folder or hub id (default google-bert/bert-base-uncased, from the local cache only)",
)
_MED = Option("med_config", str, None, "BLIP's med_config.json (default: ImageReward's, built in)")


@rdpo_zoo.hookimpl
def register_rewards(register):
    register(RewardPart(
        "aesthetic",
        "LAION aesthetic predictor on CLIP ViT-L/14 (DDPO/D3PO/RDPO's reward; AVA scale 1-10; differentiable)",
        "rdpo_zoo.reward_models.aesthetic:Aesthetic",
        (
            Option("clip", str, None, "CLIP ViT-L/14: folder or hub id (default openai/clip-vit-large-patch14, "
                   "from the local cache only; naming an id allows its download)"),
            Option("weights", str, None, "the MLP's .pth: path or hub file ORG/NAME/FILE (default "
                   "trl-lib/ddpo-aesthetic-predictor/aesthetic-model.pth, from the local cache only)"),
            _DTYPE,
        ),
        availability="rdpo_zoo.reward_models.sources:aesthetic_available",
    ))
    register(RewardPart(
        "pickscore",
        "PickScore: logit_scale x cosine of a CLIP-H's image and prompt features (differentiable)",
        "rdpo_zoo.reward_models.pickscore:PickScore",
        (
            Option("model", str, None, "PickScore model: folder or hub id (default yuvalkirstain/PickScore_v1, "
                   "from the local cache only)"),
            Option("processor", str, None, "tokenizer + preprocessor_config.json: folder or hub id (default "
                   "laion/CLIP-ViT-H-14-laion2B-s32B-b79K, from the local cache only)"),
            _DTYPE,
        ),
        availability="rdpo_zoo.reward_models.sources:pickscore_available",
    ))
    register(RewardPart(
        "hpsv2",
        "Human Preference Score v2/v2.1: raw cosine of the HPS open_clip ViT-H-14 (run by transformers; differentiable)",
        "rdpo_zoo.reward_models.hpsv2:HPSv2",
        (
            Option("version", str, "v2.1", "HPS_v2.1_compressed.pt or HPS_v2_compressed.pt", choices=("v2.1", "v2.0")),
            Option("weights", str, None, "the checkpoint: path or hub file ORG/NAME/FILE (default "
                   "xswu/HPSv2/<version's file>, from the local cache only)"),
            Option("tokenizer", str, None, "CLIP tokenizer: folder or hub id (default "
                   "laion/CLIP-ViT-H-14-laion2B-s32B-b79K, from the local cache only)"),
            Option("backend", str, "transformers", "transformers (the checkpoint converted to CLIPModel) or "
                   "open_clip (if installed)", choices=("transformers", "open_clip")),
            _DTYPE,
        ),
        availability="rdpo_zoo.reward_models.sources:hpsv2_available",
    ))
    register(RewardPart(
        "image-reward",
        "ImageReward v1.0 (BLIP + MLP, normalised 0 +- 1 on SD 1.4; differentiable)",
        "rdpo_zoo.reward_models.image_reward:ImageReward",
        (
            Option("weights", str, None, "ImageReward.pt: path or hub file ORG/NAME/FILE (default "
                   "THUDM/ImageReward/ImageReward.pt, from the local cache only)"),
            _BERT,
            _MED,
            _DTYPE,
        ),
        availability="rdpo_zoo.reward_models.sources:image_reward_available",
    ))
    register(RewardPart(
        "vp-score",
        "VP-Score, VisionPrefer's reward model (ImageReward's architecture; differentiable)",
        "rdpo_zoo.reward_models.image_reward:VPScore",
        (
            Option("weights", str, None, "the VP-Score checkpoint: path or hub file ORG/NAME/FILE (required)"),
            _BERT,
            _MED,
            _DTYPE,
        ),
        availability="rdpo_zoo.reward_models.sources:vp_score_available",
    ))
