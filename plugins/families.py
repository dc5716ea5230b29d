"""Built-in model families (``sd``, ``sdxl``; ``sd3``, ``flux`` for flow-matching transformers) and step families
(``ddim``, ``ddpm``; ``flow-sde``, ``dance-sde``, ``cps`` for flow-matching schedulers): the implementations of
the two seams, :mod:`rdpo_zoo.families` and :mod:`rdpo_zoo.steps`. Factories are import strings, so listing them
imports no torch."""

from __future__ import annotations

import rdpo_zoo
from rdpo_zoo import ModelFamilyPart, Option, StepFamilyPart


@rdpo_zoo.hookimpl
def register_model_families(register):
    register(ModelFamilyPart("sd", "Stable Diffusion 1.5-shaped UNet pipelines (one CLIP text encoder; the embedded "
                                   "tiny model)", "rdpo_zoo.families:SDFamily"))
    register(ModelFamilyPart("sdxl", "Stable Diffusion XL-shaped UNet pipelines (two text encoders, pooled "
                                     "embeddings and size ids)", "rdpo_zoo.families:SDXLFamily"))
    register(ModelFamilyPart("sd3", "Stable Diffusion 3 / 3.5-shaped pipelines (MMDiT transformer, pooled "
                                    "projections, CFG; flow matching)", "rdpo_zoo.flow_families:SD3Family"))
    register(ModelFamilyPart("flux", "FLUX.1-shaped pipelines (transformer on packed latents, position ids, "
                                     "guidance embedding instead of CFG; flow matching)",
                             "rdpo_zoo.flow_families:FluxFamily"))


@rdpo_zoo.hookimpl
def register_step_families(register):
    register(StepFamilyPart("ddim", "DDIM steps with η (1: the stochastic step the methods train on), x̂0 "
                                    "clipping off", "rdpo_zoo.steps:DDIMFamily"))
    register(StepFamilyPart("ddpm", "DDPM ancestral steps (fixed_small variance), x̂0 clipping off",
                            "rdpo_zoo.steps:DDPMFamily"))
    # flow-matching models (SD3, FLUX: FlowMatchEulerDiscreteScheduler), docs/flow.md
    weighting = Option("train_weighting", str, "logit_normal", "how noised pairs draw training timesteps: "
                       "logit_normal (diffusers' SD3 training script), none (uniform) or mode",
                       choices=("logit_normal", "none", "mode"))
    register(StepFamilyPart("flow-sde", "Flow-GRPO's SDE on a flow-matching Euler schedule (η: its noise_level, "
                                        "0.7 in Flow-GRPO)", "rdpo_zoo.flow_step_families:FlowSDEFamily",
                            (weighting,)))
    register(StepFamilyPart("dance-sde", "DanceGRPO's SDE on a flow-matching Euler schedule (std η·√|dt|)",
                            "rdpo_zoo.flow_step_families:DanceSDEFamily", (weighting,)))
    register(StepFamilyPart("cps", "coefficients-preserving sampling on a flow-matching Euler schedule (η in [0, 1])",
                            "rdpo_zoo.flow_step_families:CPSFamily",
                            (weighting, Option("log_prob", str, "exact", "likelihoods with the step's std (exact) or "
                                               "CPS's public −mean (y − μ)², i.e. std 1/√2 (public)",
                                               choices=("exact", "public")))))
