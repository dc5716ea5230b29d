"""What every learned reward shares: a frozen ``torch.nn.Module`` that follows the images to their device, scored
in eval mode with or without a graph, and the loading helpers (files resolved first, then torch)."""

from __future__ import annotations

import contextlib
import hashlib
import os
from typing import Optional, Sequence

import torch

from rdpo_zoo.reward_models.weights import Resolved
from rdpo_zoo.rewards import Reward

__all__ = ["ModelReward", "DTYPES", "torch_dtype", "load_torch_file", "hub_path", "git_blob_sha1", "quiet_transformers"]

DTYPES = ("float32", "float16", "bfloat16")


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' loading report while loading a whole checkpoint into part of a model (the text
    tower's weights are "unexpected" by design there); errors still raise."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"dtype: expected one of {', '.join(DTYPES)}, got {name!r}")
    return getattr(torch, name)


def hub_path(resolved: Resolved) -> str:
    """A local path for a resolved file or folder, downloading now what the user named (online only)."""
    if resolved.path is not None:
        return resolved.path
    target = resolved.download
    if isinstance(target, tuple):
        from huggingface_hub import hf_hub_download

        return hf_hub_download(target[0], target[1])
    from huggingface_hub import snapshot_download

    # configs, tokenizer files and safetensors weights; a repository with only pickled weights gets those instead
    # (never both formats, nor TF/Flax ones: a CLIP-H repository holds them all, several GB each)
    folder = snapshot_download(target, allow_patterns=["*.json", "*.txt", "*.safetensors"])
    needs_weights = any("config.json" in group for group in getattr(resolved.source, "needs", ()))
    if needs_weights and not any(name.endswith(".safetensors") for name in os.listdir(folder)):
        folder = snapshot_download(target, allow_patterns=["*.json", "*.txt", "pytorch_model*.bin"])
    return folder


def load_torch_file(path: str) -> dict:
    """A state dict from ``.safetensors`` or a torch pickle (``weights_only``: tensors and plain containers only)."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def git_blob_sha1(path: str) -> str:
    """The git blob id of a file (``git hash-object``): how upstream repositories identify a weights file."""
    digest = hashlib.sha1()
    digest.update(b"blob %d\0" % os.path.getsize(path))
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ModelReward(Reward):
    """A reward computed by a frozen network ``self.model`` (an ``nn.Module`` whose ``forward(images, prompts)``
    takes images ``[B, 3, H, W]`` in [0, 1] and returns ``[B]``).

    The model is kept in eval mode with gradients off for its parameters; it moves to the images' device (and stays
    there) on the first call with images elsewhere. :meth:`score` runs under ``torch.no_grad``;
    :meth:`score_differentiable` keeps the graph back to the images (parameters stay frozen). Both return float32.
    """

    differentiable = True

    def __init__(self, model: torch.nn.Module, dtype: str = "float32"):
        self.dtype = torch_dtype(dtype)
        self.model = model.to(self.dtype).eval().requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device) -> "ModelReward":
        self.model.to(device)
        return self

    def _forward(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        self.check_images(images, prompts)
        if images.device != self.device:
            self.model.to(images.device)
        self.model.eval()
        return self.model(images, list(prompts)).float()

    def score(self, images: torch.Tensor, prompts: Sequence[str], timesteps: Optional[torch.Tensor] = None) -> torch.Tensor:
        with torch.no_grad():
            return self._forward(images.detach(), prompts)

    def score_differentiable(
        self, images: torch.Tensor, prompts: Sequence[str], timesteps: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        return self._forward(images, prompts)
