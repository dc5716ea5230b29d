"""The per-sample policy-gradient parts (no torch import): DDPO's per-prompt ``advantage`` estimator and ``ppo-clip``
loss; Flow-GRPO's ``group-advantage`` estimator and ``grpo`` loss (docs/grpo.md)."""

from __future__ import annotations

import rdpo_zoo
from rdpo_zoo import EstimatorPart, LossPart, Option


def _ppo_clip():
    from rdpo_zoo.losses import POLICY_GRADIENT_LOSSES

    return POLICY_GRADIENT_LOSSES["ppo-clip"]


def _grpo():
    from rdpo_zoo.losses import POLICY_GRADIENT_LOSSES

    return POLICY_GRADIENT_LOSSES["grpo"]


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
    register(EstimatorPart(
        "group-advantage", "GRPO: final rewards normalised within each prompt's group of this rollout (Flow-GRPO)",
        "rdpo_zoo.plugins.policy_gradient:GroupAdvantage",
        options=(
            Option("global_std", bool, False, "divide by the std of the whole rollout's rewards, not the group's "
                   "(Flow-GRPO: sample.global_std)"),
            Option("std_eps", float, 1e-4, "added to the std (Flow-GRPO's stat tracker: 1e-4)", min=0.0,
                   min_exclusive=True),
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
    register(LossPart(
        "grpo", "Flow-GRPO: PPO-clip on each step's ratio against the sampler, advantages clamped, + β·KL to the "
        "reference", _grpo,
        options=(
            Option("clip_range", float, 1e-4, "PPO's clip c on the step ratio (Flow-GRPO: 1e-4, mean reduction)",
                   min=0.0, min_exclusive=True),
            Option("adv_clip_max", float, 5.0, "advantages are clamped to ±adv_clip_max (Flow-GRPO: 5)", min=0.0,
                   min_exclusive=True),
            Option("kl_beta", float, 0.0, "β, the weight of the KL to the reference (Flow-GRPO train.beta: 0.04; "
                   "0: no KL and no reference pass)", min=0.0),
            Option("kl", str, "public", "the KL's convention: exact (the two step Gaussians' KL) or public "
                   "(Flow-GRPO's, |dt| times the exact one; docs/grpo.md)", choices=("exact", "public")),
        ),
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


class GroupAdvantage:
    """``group-advantage`` (Flow-GRPO, yifan123/flow_grpo ``flow_grpo/stat_tracking.py`` ``PerPromptStatTracker``
    with ``type='grpo'``, cleared after every epoch in ``scripts/train_sd3.py``): each reward normalised within its
    prompt's group of *this* rollout, A = (r − mean_group)/(std + std_eps), std the group's (population std, numpy's
    ``np.std``) or, with ``global_std``, the whole rollout's. Samples with the same prompt string form one group (as in
    the public code). Unclamped: the ``grpo`` loss clamps to ±adv_clip_max. Stateless across iterations (unlike
    DDPO's ``advantage``, which keeps a rolling per-prompt history)."""

    name = "group-advantage"

    def __init__(self, global_std: bool = False, std_eps: float = 1e-4):
        if not std_eps > 0:
            raise ValueError(f"group-advantage: expected std_eps > 0, got {std_eps}")
        self.global_std, self.std_eps = bool(global_std), float(std_eps)

    def __call__(self, prompts, rewards):
        import torch

        rewards = rewards.detach().cpu().double()
        if len(prompts) != rewards.shape[0]:
            raise ValueError(f"prompts: expected {rewards.shape[0]} prompts (one per reward), got {len(prompts)}")
        advantages = torch.empty_like(rewards)
        batch_std = rewards.std(correction=0)
        for prompt in dict.fromkeys(prompts):
            rows = torch.tensor([i for i, p in enumerate(prompts) if p == prompt])
            group = rewards[rows]
            std = batch_std if self.global_std else group.std(correction=0)
            advantages[rows] = (group - group.mean()) / (std + self.std_eps)
        return advantages.float()
