"""The embedded models: tiny text-to-image pipelines shipped inside the package.

``tiny/`` is an ordinary diffusers ``StableDiffusionPipeline`` folder (``model_index.json``, ``unet/``, ``vae/``,
``text_encoder/``, ``tokenizer/``, ``scheduler/``; weights in fp16 safetensors) made by :mod:`rdpo_zoo.pretrain`
from the world of :mod:`rdpo_zoo.world`; ``tiny/pretrain_config.json`` is the configuration that made it. It draws
64×64 images from 4×16×16 latents and loads in about a second with no network.

``tiny-flow/`` is a ``StableDiffusion3Pipeline`` folder without T5 (``transformer/``, ``text_encoder/``,
``text_encoder_2/``, ``tokenizer/``, ``tokenizer_2/``, tiny's ``vae/``, a ``FlowMatchEulerDiscreteScheduler``) made by
:mod:`rdpo_zoo.pretrain_flow` with the rectified-flow objective on the same world.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

from rdpo_zoo.errors import UserInputError

if TYPE_CHECKING:  # annotations only: importing this module must stay cheap
    import torch

__all__ = ["TINY", "TINY_FLOW", "tiny_path", "tiny_flow_path", "load_tiny_pipeline", "load_tiny_flow_pipeline",
           "load_pipeline", "is_flow_folder", "EmbeddedModelMissingError", "TINY_FLOW_T5_TOKENS"]

TINY = "tiny"
TINY_FLOW = "tiny-flow"
#: the all-zero "T5" tokens tiny-flow is sampled with (its pipeline has no T5 encoder but appends this many zero
#: embeddings); pretraining drew the count from 0, 2, 8 and 32 (``t5_pad_lengths``), so any of those works
TINY_FLOW_T5_TOKENS = 8

_HERE = Path(__file__).resolve().parent


class EmbeddedModelMissingError(UserInputError, FileNotFoundError):
    """The package was built without the embedded weights."""


def tiny_path() -> Path:
    """The folder of the embedded pipeline (raises if this install has none)."""
    path = _HERE / "tiny"
    if not (path / "model_index.json").is_file():
        raise EmbeddedModelMissingError(
            f"the embedded model is missing from {path}; rebuild it with `rdpo-zoo pretrain run` and "
            "`rdpo-zoo pretrain export` (see docs/world.md), or reinstall the package"
        )
    return path


def tiny_flow_path() -> Path:
    """The folder of the embedded flow-matching pipeline (raises if this install has none)."""
    path = _HERE / TINY_FLOW
    if not (path / "model_index.json").is_file():
        raise EmbeddedModelMissingError(
            f"the embedded model is missing from {path}; rebuild it with `rdpo-zoo pretrain run --model tiny-flow` "
            "and `rdpo-zoo pretrain export` (see docs/world.md), or reinstall the package"
        )
    return path


def is_flow_folder(path) -> bool:
    """Whether a pipeline folder holds a ``StableDiffusion3Pipeline`` (by its ``model_index.json``)."""
    import json

    index = Path(path) / "model_index.json"
    return index.is_file() and json.loads(index.read_text()).get("_class_name") == "StableDiffusion3Pipeline"


def load_tiny_flow_pipeline(device: Union[str, "torch.device"] = "cpu", dtype=None, path: Optional[Path] = None):
    """The embedded ``StableDiffusion3Pipeline`` (no T5 encoder) on ``device`` in ``dtype`` (float32 by default; the
    stored fp16 transformer and VAE are upcast), progress bars off. ``path`` loads another folder of the same layout."""
    import torch

    from rdpo_zoo.quiet import quiet_loading

    dtype = torch.float32 if dtype is None else dtype
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype: expected a torch.dtype, got {dtype!r}")
    folder = Path(path) if path is not None else tiny_flow_path()
    with warnings.catch_warnings(), quiet_loading():
        from diffusers import StableDiffusion3Pipeline

        warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
        pipe = StableDiffusion3Pipeline.from_pretrained(
            str(folder), text_encoder_3=None, tokenizer_3=None, torch_dtype=dtype, local_files_only=True
        )
    pipe.set_progress_bar_config(disable=True)
    # read by the sd3 model family (rdpo_zoo.flow_families) as the count of zero T5 tokens to append
    pipe.rdpo_max_sequence_length = TINY_FLOW_T5_TOKENS
    return pipe.to(device)


def load_tiny_pipeline(device: Union[str, "torch.device"] = "cpu", dtype=None, path: Optional[Path] = None):
    """The embedded ``StableDiffusionPipeline`` on ``device`` in ``dtype`` (float32 by default; the stored fp16
    weights are upcast), progress bars off. ``path`` loads another folder of the same layout."""
    import torch

    from rdpo_zoo.quiet import quiet_loading

    dtype = torch.float32 if dtype is None else dtype
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype: expected a torch.dtype, got {dtype!r}")
    folder = Path(path) if path is not None else tiny_path()
    with warnings.catch_warnings(), quiet_loading():
        from diffusers import StableDiffusionPipeline

        # diffusers >= 0.40 renames torch_dtype to dtype; the old name works on every version the package supports.
        warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
        pipe = StableDiffusionPipeline.from_pretrained(
            str(folder), safety_checker=None, requires_safety_checker=False, torch_dtype=dtype, local_files_only=True
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def load_pipeline(model: str = TINY, device: Union[str, "torch.device"] = "cpu", dtype=None, option: str = "model"):
    """A pipeline by name: ``tiny`` or ``tiny-flow`` (the embedded models), a local pipeline folder (a
    ``StableDiffusion3Pipeline`` folder loads as one, any other as a ``StableDiffusionPipeline``), or a hub id of a
    ``StableDiffusionPipeline`` (the only case that touches the network, and only because the user named it). A path
    that is not a pipeline folder, or a hub id that cannot be loaded, is a :class:`~rdpo_zoo.errors.UserInputError`
    naming ``option``."""
    if not isinstance(model, str) or not model:
        raise UserInputError(f"{option}: expected 'tiny', 'tiny-flow', a pipeline folder or a hub id, got {model!r}")
    if model == TINY:
        return load_tiny_pipeline(device=device, dtype=dtype)
    if model == TINY_FLOW:
        return load_tiny_flow_pipeline(device=device, dtype=dtype)
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise UserInputError(f"{option}: {model!r} is a folder without model_index.json; expected a diffusers "
                                 "pipeline folder")
        if is_flow_folder(path):
            return load_tiny_flow_pipeline(device=device, dtype=dtype, path=path)
        return load_tiny_pipeline(device=device, dtype=dtype, path=path)
    if path.exists() or model.startswith((".", "/", "~")) or "\\" in model or model.count("/") > 1:
        raise UserInputError(f"{option}: {model!r} is not a folder; expected 'tiny', a pipeline folder or a hub id "
                             "(org/name)")
    import torch

    from rdpo_zoo.quiet import quiet_loading

    with quiet_loading():
        from diffusers import StableDiffusionPipeline

        try:
            pipe = StableDiffusionPipeline.from_pretrained(
                model, safety_checker=None, requires_safety_checker=False, torch_dtype=dtype or torch.float32
            )
        except OSError as error:  # not on the hub, not in the cache, or offline
            raise UserInputError(f"{option}: cannot load the hub model {model!r}: {error}") from error
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
