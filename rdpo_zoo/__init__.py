"""rdpo-zoo: step-wise DPO-style alignment of text-to-image diffusion models.

The public API is imported lazily, so that ``import rdpo_zoo`` (and the CLI's ``--help``) costs no torch import.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> module that defines it; one place, so the lazy loader and __all__ cannot drift.
_EXPORTS = {
    "step_coefficients": "rdpo_zoo.schedulers",
    "x0_coefficients": "rdpo_zoo.schedulers",
    "StepCoefficients": "rdpo_zoo.schedulers",
    "UnsupportedSchedulerError": "rdpo_zoo.schedulers",
    "gaussian_log_prob": "rdpo_zoo.reference",
    "step_log_prob": "rdpo_zoo.reference",
    "paired_log_ratios": "rdpo_zoo.reference",
    "check_paired_inputs": "rdpo_zoo.reference",
    "REDUCTIONS": "rdpo_zoo.reference",
    "pairwise_losses": "rdpo_zoo.losses",
    "preference_loss": "rdpo_zoo.losses",
    "PairwiseLoss": "rdpo_zoo.losses",
    "Penalty": "rdpo_zoo.losses",
    "LossInputs": "rdpo_zoo.losses",
    # plugins: the hook marker, the parts a plugin registers, and the registry (none of these import torch)
    "hookimpl": "rdpo_zoo.hookspecs",
    "Option": "rdpo_zoo.parts",
    "OptionError": "rdpo_zoo.parts",
    "EstimatorPart": "rdpo_zoo.parts",
    "LossPart": "rdpo_zoo.parts",
    "PenaltyPart": "rdpo_zoo.parts",
    "RewardPart": "rdpo_zoo.parts",
    "ModelPart": "rdpo_zoo.parts",
    "ModelFamilyPart": "rdpo_zoo.parts",
    "StepFamilyPart": "rdpo_zoo.parts",
    "ModelFamily": "rdpo_zoo.families",
    "StepFamily": "rdpo_zoo.steps",
    "Preset": "rdpo_zoo.parts",
    "register": "rdpo_zoo.registry",
    "unregister": "rdpo_zoo.registry",
    "get_part": "rdpo_zoo.registry",
    "list_parts": "rdpo_zoo.registry",
    "get_registry": "rdpo_zoo.registry",
    "temporary_registry": "rdpo_zoo.registry",
    "build_loss": "rdpo_zoo.resolve",
    "merge_settings": "rdpo_zoo.resolve",
    "build_reward": "rdpo_zoo.registry",
    "resolve_reward": "rdpo_zoo.registry",
    "Objective": "rdpo_zoo.resolve",
    "UnknownPartError": "rdpo_zoo.registry",
    "DuplicatePartError": "rdpo_zoo.registry",
    "UserInputError": "rdpo_zoo.errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'rdpo_zoo' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
