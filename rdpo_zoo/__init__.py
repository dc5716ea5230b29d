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
