"""Built-in model families (``sd``, ``sdxl``) and step families (``ddim``, ``ddpm``): the first implementations of
the two seams, :mod:`rdpo_zoo.families` and :mod:`rdpo_zoo.steps`. Factories are import strings, so listing them
imports no torch."""

from __future__ import annotations

import rdpo_zoo
from rdpo_zoo import ModelFamilyPart, StepFamilyPart


@rdpo_zoo.hookimpl
def register_model_families(register):
    register(ModelFamilyPart("sd", "Stable Diffusion 1.5-shaped UNet pipelines (one CLIP text encoder; the embedded "
                                   "tiny model)", "rdpo_zoo.families:SDFamily"))
    register(ModelFamilyPart("sdxl", "Stable Diffusion XL-shaped UNet pipelines (two text encoders, pooled "
                                     "embeddings and size ids)", "rdpo_zoo.families:SDXLFamily"))


@rdpo_zoo.hookimpl
def register_step_families(register):
    register(StepFamilyPart("ddim", "DDIM steps with η (1: the stochastic step the methods train on), x̂0 "
                                    "clipping off", "rdpo_zoo.steps:DDIMFamily"))
    register(StepFamilyPart("ddpm", "DDPM ancestral steps (fixed_small variance), x̂0 clipping off",
                            "rdpo_zoo.steps:DDPMFamily"))
