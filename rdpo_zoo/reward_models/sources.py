"""The files each learned reward needs, where rdpo-zoo looks for them by default, and how to obtain them; plus the
cheap availability checks ``rdpo-zoo plugins`` calls (no torch, no network).

One place for these facts: the rewards resolve their files from these sources, and the checks ask the same
question of the same sources.
"""

from __future__ import annotations

from typing import Optional, Tuple

from rdpo_zoo.reward_models.weights import (
    BERT_TOKENIZER_FILES,
    CLIP_TOKENIZER_FILES,
    MODEL_FILES,
    FileSource,
    FolderSource,
    check,
)

CLIP_L14_ID = "openai/clip-vit-large-patch14"
CLIP_H14_ID = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
PICKSCORE_ID = "yuvalkirstain/PickScore_v1"
HPS_REPO = "xswu/HPSv2"
HPS_FILES = {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}  # hpsv2's hps_version_map
IMAGE_REWARD_REPOS = ("THUDM/ImageReward", "zai-org/ImageReward")  # the organisation was renamed in 2025
BERT_IDS = ("google-bert/bert-base-uncased", "bert-base-uncased")
AESTHETIC_URL = ("https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/"
                 "sac%2Blogos%2Bava1-l14-linearMSE.pth")

_CLIP_TOKENIZER_FILES = "tokenizer.json tokenizer_config.json vocab.json merges.txt special_tokens_map.json"

CLIP_L14 = FolderSource(
    f"CLIP ViT-L/14 ({CLIP_L14_ID})",
    "clip",
    (CLIP_L14_ID,),
    f"`hf download {CLIP_L14_ID} config.json model.safetensors preprocessor_config.json` (1.7 GB)",
    MODEL_FILES,
)
AESTHETIC_MLP = FileSource(
    "the LAION aesthetic MLP (sac+logos+ava1-l14-linearMSE.pth)",
    "weights",
    (("trl-lib/ddpo-aesthetic-predictor", "aesthetic-model.pth"),),
    f"`hf download trl-lib/ddpo-aesthetic-predictor aesthetic-model.pth` (trl's copy for its DDPO example), or the "
    f"upstream file {AESTHETIC_URL} (3.7 MB; also in ddpo-pytorch's and d3po's assets/)",
)
PICKSCORE = FolderSource(
    f"PickScore ({PICKSCORE_ID})",
    "model",
    (PICKSCORE_ID,),
    f"`hf download {PICKSCORE_ID}` (3.9 GB)",
    MODEL_FILES,
)
PICKSCORE_PROCESSOR = FolderSource(
    f"PickScore's processor: the CLIP-H tokenizer and image settings ({CLIP_H14_ID})",
    "processor",
    (CLIP_H14_ID,),
    f"`hf download {CLIP_H14_ID} preprocessor_config.json {_CLIP_TOKENIZER_FILES}` (no weights needed)",
    CLIP_TOKENIZER_FILES + (("preprocessor_config.json",),),
)
CLIP_TOKENIZER = FolderSource(
    f"a CLIP BPE tokenizer ({CLIP_H14_ID}; open_clip's ViT-H-14 uses the same vocabulary)",
    "tokenizer",
    (CLIP_H14_ID, CLIP_L14_ID),
    f"`hf download {CLIP_H14_ID} {_CLIP_TOKENIZER_FILES}` (no weights needed)",
    CLIP_TOKENIZER_FILES,
)
BERT_TOKENIZER = FolderSource(
    "BLIP's BERT tokenizer (bert-base-uncased)",
    "tokenizer",
    BERT_IDS,
    f"`hf download {BERT_IDS[0]} vocab.txt tokenizer_config.json` (no weights needed)",
    BERT_TOKENIZER_FILES,
)
IMAGE_REWARD = FileSource(
    "ImageReward v1.0 (ImageReward.pt)",
    "weights",
    tuple((repo, "ImageReward.pt") for repo in IMAGE_REWARD_REPOS),
    f"`hf download {IMAGE_REWARD_REPOS[0]} ImageReward.pt med_config.json` (1.8 GB)",
)
MED_CONFIG = FileSource("BLIP's text-encoder config (med_config.json)", "med_config", (), "")
VP_SCORE = FileSource(
    "VP-Score, VisionPrefer's reward model (an ImageReward-architecture checkpoint)",
    "weights",
    (),
    "download the VP-Score checkpoint from the VisionPrefer release (Wu et al., 'Multimodal Large Language Models "
    "Make Text-to-Image Generative Models Align Better', arXiv:2404.15100)",
)


def hps_weights(version: str) -> FileSource:
    if version not in HPS_FILES:
        raise ValueError(f"version: expected one of {', '.join(HPS_FILES)}, got {version!r}")
    filename = HPS_FILES[version]
    return FileSource(f"HPS{version} weights ({filename})", "weights", ((HPS_REPO, filename),),
                      f"`hf download {HPS_REPO} {filename}` (1.9 GB)")


# ------------------------------------------------------------------ the sources of each reward, given its options


def aesthetic_sources(clip: Optional[str] = None, weights: Optional[str] = None, **_):
    return [(CLIP_L14, clip), (AESTHETIC_MLP, weights)]


def pickscore_sources(model: Optional[str] = None, processor: Optional[str] = None, **_):
    return [(PICKSCORE, model), (PICKSCORE_PROCESSOR, processor)]


def hpsv2_sources(version: str = "v2.1", weights: Optional[str] = None, tokenizer: Optional[str] = None,
                  backend: str = "transformers", **_):
    found = [(hps_weights(version), weights)]
    if backend != "open_clip":  # open_clip ships its tokenizer
        found.append((CLIP_TOKENIZER, tokenizer))
    return found


def image_reward_sources(weights: Optional[str] = None, tokenizer: Optional[str] = None,
                         med_config: Optional[str] = None, vp_score: bool = False, **_):
    found = [(VP_SCORE if vp_score else IMAGE_REWARD, weights), (BERT_TOKENIZER, tokenizer)]
    if med_config is not None:
        found.append((MED_CONFIG, med_config))
    return found


# ------------------------------------------------------------ availability checks: part.availability(**options)


def aesthetic_available(**options) -> Tuple[bool, str]:
    return check(aesthetic_sources(**options))


def pickscore_available(**options) -> Tuple[bool, str]:
    return check(pickscore_sources(**options))


def hpsv2_available(**options) -> Tuple[bool, str]:
    return check(hpsv2_sources(**options))


def image_reward_available(**options) -> Tuple[bool, str]:
    return check(image_reward_sources(**options))


def vp_score_available(**options) -> Tuple[bool, str]:
    return check(image_reward_sources(vp_score=True, **options))
