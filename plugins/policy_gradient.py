"""DDPO's parts: the per-prompt ``advantage`` estimator and the per-sample ``ppo-clip`` loss (no torch import)."""

from __future__ import annotations

import rdpo_zoo
from rdpo_zoo import EstimatorPart, LossPart, Option


def _ppo_clip():
    from rdpo_zoo.losses import POLICY_GRADIENT_LOSSES

    return POLICY_GRADIENT_LOSSES["ppo-clip"]


@rdpo_zoo.hookimpl
def register_estimators(register):
    register(EstimatorPart(
        "advantage", "DDPO: final rewards normalised per prompt (rolling buffer), for single-trajectory rollouts",
        "rdpo_zoo.plugins.step_estimators:PerPromptAdvantage",
        options=(
            Option("buffer_size", int, 16, "rewards kept per prompt (DDPO: 16)", min=1),
            Option("min_count", int, 16, "rewards a prompt needs before its own statistics are used (DDPO: 16)", min=1),
            Option("clip", float, 5.0, "advantages are clamped to ±clip (DDPO: adv_clip_max 5)", min=0.0, min_exclusive=True),
        ),
    ))


@rdpo_zoo.hookimpl
def register_losses(register):
    register(LossPart(
        "ppo-clip", "DDPO: per-sample PPO-clip, max(−A·ratio, −A·clamp(ratio, 1 ± c)), ratio against the sampler",
        _ppo_clip,
        options=(Option("clip_range", float, 1e-4, "PPO's clip c on the step ratio (DDPO: 1e-4, mean reduction)",
                        min=0.0, min_exclusive=True),),
    ))
