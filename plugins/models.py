"""Built-in models: Stable Diffusion 1.5, SDXL, SD3 / SD3.5, FLUX.1, and any diffusers pipeline by hub id or local
path.

The factories import torch and diffusers only when a model is built. No download happens unless the user named a
hub model: a part's default id is used only when it is already in the local Hugging Face cache (or a local
folder), and otherwise the factory fails at once, naming the id and how to get it.
"""

from __future__ import annotations

import json
import os
from typing import Optional

import rdpo_zoo
from rdpo_zoo import ModelPart, Option
from rdpo_zoo.errors import UserInputError

SD15_ID = "runwayml/stable-diffusion-v1-5"  # the RDPO, D3PO and SPO papers' base model
SD15_MIRROR = "stable-diffusion-v1-5/stable-diffusion-v1-5"  # where the hub now serves the same weights
SDXL_ID = "stabilityai/stable-diffusion-xl-base-1.0"  # RDPO Table 7, SPO's and Diffusion-DPO's SDXL runs
SD3_ID = "stabilityai/stable-diffusion-3.5-medium"  # Flow-GRPO's base model
FLUX_ID = "black-forest-labs/FLUX.1-dev"  # Flow-GRPO's and DanceGRPO's FLUX runs


class ModelNotAvailableError(UserInputError, OSError):
    """The model's weights are neither a local folder nor in the local cache, and no download was allowed."""


def _options(default_id: Optional[str]) -> tuple:
    if default_id is None:
        id_help = "a diffusers pipeline: hub id (downloaded if needed) or local folder (required)"
    else:
        id_help = f"hub id or local folder (default {default_id}, from the local cache only; naming an id allows a download)"
    return (
        Option("id", str, None, id_help),
        Option("dtype", str, "float32", "the weights' dtype", choices=("float32", "float16", "bfloat16")),
        Option("revision", str, None, "the hub revision (branch, tag or commit)"),
        Option("variant", str, None, "the weights' file variant, e.g. fp16"),
        Option("cache_dir", str, None, "the Hugging Face cache folder (default: the hub's, $HF_HOME)"),
    )


def _is_path(model_id: str) -> bool:
    """A hub id is ``name`` or ``org/name``; anything else (or anything that exists on disk) is a path."""
    if os.path.exists(os.path.expanduser(model_id)):
        return True
    return model_id.startswith((".", "/", "~")) or "\\" in model_id or model_id.count("/") > 1


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _how_to_get(model_id: str, label: str) -> str:
    text = f"download it with `huggingface-cli download {model_id}`"
    if model_id == SD15_ID:
        text += f" (the hub now serves it as {SD15_MIRROR})"
    return (
        f"{text}; or let rdpo-zoo download it by naming it: --model-opt id={model_id} (model {label!r}); "
        "or point at a local copy: --model-opt id=/path/to/pipeline"
    )


def load_pipeline(
    pipeline_class: str,
    label: str,
    default_id: Optional[str],
    id: Optional[str] = None,
    dtype: str = "float32",
    revision: Optional[str] = None,
    variant: Optional[str] = None,
    cache_dir: Optional[str] = None,
    **kwargs,
):
    """``diffusers.<pipeline_class>.from_pretrained`` with the no-surprise-download rule."""
    model_id = id if id is not None else default_id
    if model_id is None:
        raise ValueError(f"model {label!r}: option 'id' is required (a diffusers hub id or a local folder)")
    named = id is not None
    if _is_path(model_id):
        path = os.path.expanduser(model_id)
        if not os.path.isdir(path):
            raise ModelNotAvailableError(f"model {label!r}: {model_id!r} is not a folder (expected a diffusers pipeline)")
        model_id, local_only = path, True
    else:
        local_only = not named or _offline()
        if local_only:
            # fail before importing diffusers (seconds) when the weights are not cached
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(model_id, "model_index.json", cache_dir=cache_dir, revision=revision)
            if not isinstance(cached, str):
                why = "you are offline (HF_HUB_OFFLINE)" if named else "rdpo-zoo downloads only a model you name"
                raise ModelNotAvailableError(
                    f"model {label!r}: {model_id} is not in the local Hugging Face cache and {why}: "
                    + _how_to_get(model_id, label)
                )
    import diffusers
    import torch

    from rdpo_zoo.quiet import quiet_loading

    with quiet_loading():  # the pipeline module's import is what meets transformers' torchvision fallback
        cls = getattr(diffusers, pipeline_class)
    # diffusers renamed torch_dtype to dtype (huggingface/diffusers#14205) and warns on the old name; older
    # versions ignore an unknown `dtype` silently, so ask which one this version reads
    try:
        from diffusers.utils import deprecation_utils

        dtype_key = "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"
    except ImportError:
        dtype_key = "torch_dtype"
    try:
        with quiet_loading():
            return cls.from_pretrained(
                model_id,
                **{dtype_key: getattr(torch, dtype)},
                revision=revision,
                variant=variant,
                cache_dir=cache_dir,
                local_files_only=local_only,
                **kwargs,
            )
    except (OSError, ValueError) as error:
        raise ModelNotAvailableError(
            f"model {label!r}: cannot load {model_id} as a diffusers {pipeline_class}: {error}"
            + ("" if _is_path(model_id) else "; " + _how_to_get(model_id, label))
        ) from error


def build_sd15(**options):
    """Stable Diffusion 1.5 (``StableDiffusionPipeline``), without the safety checker."""
    return load_pipeline(
        "StableDiffusionPipeline", "sd15", SD15_ID, safety_checker=None, requires_safety_checker=False, **options
    )


def build_sdxl(**options):
    """Stable Diffusion XL base (``StableDiffusionXLPipeline``)."""
    return load_pipeline("StableDiffusionXLPipeline", "sdxl", SDXL_ID, **options)


def _flow_options(default_id: str, t5_help: Optional[str]) -> tuple:
    options = _options(default_id) + (
        Option("max_sequence_length", int, None, "T5 tokens per prompt (default: the pipeline's, 256 for SD3 and 512 "
               "for FLUX, capped at the T5 tokenizer's length)", min=1, max=512),
    )
    if t5_help:
        options += (Option("t5", bool, True, t5_help),)
    return options


def _folder_without(model_id: Optional[str], component: str) -> bool:
    """Whether ``model_id`` is a local pipeline folder saved without ``component`` (``[null, null]`` in its
    ``model_index.json``): diffusers then needs ``component=None`` passed explicitly to load it."""
    if model_id is None or not _is_path(model_id):
        return False
    index = os.path.join(os.path.expanduser(model_id), "model_index.json")
    try:
        with open(index) as f:
            entry = json.load(f).get(component)
    except (OSError, ValueError):
        return False
    return isinstance(entry, list) and entry[:1] == [None]


def _remember_sequence_length(pipe, max_sequence_length: Optional[int]):
    # read by the flow model families (rdpo_zoo.flow_families), which wrap the pipeline later
    if max_sequence_length is not None:
        pipe.rdpo_max_sequence_length = max_sequence_length
    return pipe


def build_sd3(t5: bool = True, max_sequence_length: Optional[int] = None, **options):
    """Stable Diffusion 3 / 3.5 (``StableDiffusion3Pipeline``); without its T5 encoder when ``t5`` is false or the
    folder was saved without it."""
    if not t5 or _folder_without(options.get("id"), "text_encoder_3"):
        options.update(text_encoder_3=None, tokenizer_3=None)
    return _remember_sequence_length(load_pipeline("StableDiffusion3Pipeline", "sd3", SD3_ID, **options),
                                     max_sequence_length)


def build_flux(max_sequence_length: Optional[int] = None, **options):
    """FLUX.1 (``FluxPipeline``)."""
    return _remember_sequence_length(load_pipeline("FluxPipeline", "flux", FLUX_ID, **options), max_sequence_length)


def build_diffusers(**options):
    """Any diffusers pipeline (``DiffusionPipeline`` picks the class from its ``model_index.json``)."""
    return load_pipeline("DiffusionPipeline", "diffusers", None, **options)


@rdpo_zoo.hookimpl
def register_models(register):
    register(ModelPart("sd15", "Stable Diffusion 1.5 (the papers' base model)", build_sd15, _options(SD15_ID),
                       family="sd"))
    register(ModelPart("sdxl", "Stable Diffusion XL base 1.0", build_sdxl, _options(SDXL_ID),
                       family="sdxl"))
    register(ModelPart("sd3", "Stable Diffusion 3 / 3.5 (MMDiT transformer, flow matching)", build_sd3,
                       _flow_options(SD3_ID, "load the T5 text encoder (false: SD3 without T5, less memory; a "
                                     "folder saved without T5 loads without it)"), family="sd3"))
    register(ModelPart("flux", "FLUX.1 (transformer on packed latents, guidance embedding, flow matching)",
                       build_flux, _flow_options(FLUX_ID, None), family="flux"))
    register(ModelPart("diffusers", "any diffusers pipeline, by hub id or local folder", build_diffusers, _options(None)))
