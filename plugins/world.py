"""Built-in parts of the embedded world: the ``tiny`` and ``tiny-flow`` models and the pixel rewards (JPEG (in)compressibility for any
model; the world's prompt fidelity and aesthetic-like score). See docs/world.md.

Factories are named as ``module:attribute`` strings, so loading this plugin imports neither torch nor diffusers.
"""

from __future__ import annotations

import rdpo_zoo
from rdpo_zoo import ModelPart, Option, RewardPart
from rdpo_zoo.embedded import TINY_FLOW_T5_TOKENS  # a constant: the module imports neither torch nor diffusers


def build_tiny(device: str = "cpu", dtype: str = "float32"):
    """The embedded tiny ``StableDiffusionPipeline`` (no network)."""
    import torch

    from rdpo_zoo.embedded import load_tiny_pipeline

    return load_tiny_pipeline(device=device, dtype=getattr(torch, dtype))


def build_tiny_flow(device: str = "cpu", dtype: str = "float32", max_sequence_length: int = None):
    """The embedded tiny-flow ``StableDiffusion3Pipeline`` (no T5 encoder, no network)."""
    import torch

    from rdpo_zoo.embedded import load_tiny_flow_pipeline

    pipe = load_tiny_flow_pipeline(device=device, dtype=getattr(torch, dtype))
    if max_sequence_length is not None:
        pipe.rdpo_max_sequence_length = max_sequence_length
    return pipe


@rdpo_zoo.hookimpl
def register_models(register):
    register(
        ModelPart(
            "tiny",
            "the embedded 64×64 text-to-image pipeline of the shapes world (ships with the package; the default)",
            build_tiny,
            (
                Option("device", str, "cpu", "torch device to load it on"),
                Option("dtype", str, "float32", "the weights' dtype", choices=("float32", "float16", "bfloat16")),
            ),
            family="sd",
        )
    )
    register(
        ModelPart(
            "tiny-flow",
            "the embedded 64×64 SD3-shaped flow-matching pipeline of the shapes world (small MMDiT, no T5; ships "
            "with the package)",
            build_tiny_flow,
            (
                Option("device", str, "cpu", "torch device to load it on"),
                Option("dtype", str, "float32", "the weights' dtype", choices=("float32", "float16", "bfloat16")),
                Option("max_sequence_length", int, None, f"zero T5 tokens per prompt (default {TINY_FLOW_T5_TOKENS}; "
                       "pretrained on 0, 2, 8 and 32)", min=1, max=32),
            ),
            family="sd3",
        )
    )


@rdpo_zoo.hookimpl
def register_rewards(register):
    quality = (Option("quality", int, 95, "JPEG quality (DDPO's code uses 95)", min=1, max=95),)
    register(RewardPart("compressibility", "negative JPEG size in kB at quality 95 (DDPO), any model",
                        "rdpo_zoo.image_rewards:JpegCompressibility", quality))
    register(RewardPart("incompressibility", "JPEG size in kB at quality 95 (DDPO), any model",
                        "rdpo_zoo.image_rewards:JpegIncompressibility", quality))
    register(RewardPart("world-fidelity", "world prompts: soft probability of the asked background, colour and shape "
                        "(differentiable)", "rdpo_zoo.image_rewards:WorldFidelity"))
    register(RewardPart("world-aesthetic", "any image: contrast, centring and edge sharpness in [0, 1] "
                        "(differentiable)", "rdpo_zoo.image_rewards:WorldAesthetic"))
