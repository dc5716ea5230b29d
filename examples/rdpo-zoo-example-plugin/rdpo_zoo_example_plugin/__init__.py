"""An example rdpo-zoo plugin: the hooks. This module only names parts and declares their options; the formulas
live in modules that import torch, and are imported when a part is built."""

import rdpo_zoo
from rdpo_zoo import LossPart, Option, RewardPart


@rdpo_zoo.hookimpl
def register_losses(register):
    register(
        LossPart(
            name="dpo-margin",
            description="DPO with a target margin γ: −log σ(β(r_w − r_l) − λ·penalty − γ)",
            factory="rdpo_zoo_example_plugin.losses:dpo_margin",
            options=[Option("margin", float, 0.5, "γ, the margin the pair must exceed", min=0.0)],
        )
    )


@rdpo_zoo.hookimpl
def register_rewards(register):
    register(
        RewardPart(
            name="saturation",
            description="mean colour saturation of the image (differentiable)",
            factory="rdpo_zoo_example_plugin.rewards:Saturation",
            options=[Option("measure", str, "hsv", "HSV saturation, or chroma (max − min)", choices=("hsv", "chroma"))],
        )
    )
