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
        "rdpo_zoo.plugins.policy_gradient:PerPromptAdvantage",
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


class PerPromptAdvantage:
    """``advantage`` (DDPO, kvablack/ddpo-pytorch ``PerPromptStatTracker``): a single-trajectory rollout's final
    rewards normalised per prompt, A = clamp((r − mean)/(std + 1e-8), ±clip), with mean and std over that prompt's
    last ``buffer_size`` rewards once it has ``min_count`` of them, and over the whole batch before that.

    Stateful across iterations; ``state_dict``/``load_state_dict`` let a resumed run continue exactly.
    """

    name = "advantage"

    def __init__(self, buffer_size: int = 16, min_count: int = 16, clip: float = 5.0):
        if buffer_size < 1 or min_count < 1 or not clip > 0:
            raise ValueError(f"advantage: expected buffer_size >= 1, min_count >= 1, clip > 0; got "
                             f"{buffer_size}, {min_count}, {clip}")
        self.buffer_size, self.min_count, self.clip = buffer_size, min_count, clip
        self.history: dict[str, list[float]] = {}

    def __call__(self, prompts, rewards):
        import torch

        rewards = rewards.detach().float().cpu()
        if len(prompts) != rewards.shape[0]:
            raise ValueError(f"prompts: expected {rewards.shape[0]} prompts (one per reward), got {len(prompts)}")
        batch_mean, batch_std = rewards.mean(), rewards.std() if rewards.numel() > 1 else torch.tensor(1.0)
        advantages = torch.empty_like(rewards)
        for prompt in dict.fromkeys(prompts):
            rows = torch.tensor([i for i, p in enumerate(prompts) if p == prompt])
            buffer = self.history.setdefault(prompt, [])
            buffer.extend(rewards[rows].tolist())
            del buffer[: max(0, len(buffer) - self.buffer_size)]
            if len(buffer) < self.min_count:
                mean, std = batch_mean, batch_std
            else:
                values = torch.tensor(buffer)
                mean, std = values.mean(), values.std()
            advantages[rows] = (rewards[rows] - mean) / (std + 1e-8)
        return advantages.clamp(-self.clip, self.clip)

    def state_dict(self) -> dict:
        return {"history": {k: list(v) for k, v in self.history.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.history = {k: list(v) for k, v in state["history"].items()}
