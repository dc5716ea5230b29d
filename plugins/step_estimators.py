"""The built-in step-reward estimators (registered by ``rdpo_zoo.plugins.estimators``).

Notation: Q(x) = r(c, x̂0(x)), the reward of the one-step prediction of state x (Eq. 5 of the RDPO paper, the
step reward of SPO/TailorPO, "Assumption 2"). See ``rdpo_zoo.estimators`` for what a rollout measures.
"""

from __future__ import annotations

import torch

from rdpo_zoo.estimators import Estimator, StepMeasurements

__all__ = ["FinalOrder", "X0Hat", "DeltaQ"]


class FinalOrder(Estimator):
    """``final-order`` (D3PO's "Assumption 1", Diffusion-DPO): every step of a trajectory is labelled by the
    reward of that trajectory's final image. Ties (or gaps below the rollout's threshold) give no pair. Free for
    trajectory pairs; a branching rollout must complete every candidate to x_0 (cost: k·(steps left) UNet passes
    per chosen step)."""

    name = "final-order"
    needs_children = False
    needs_final = True

    def values(self, m: StepMeasurements) -> torch.Tensor:
        return m.final


class X0Hat(Estimator):
    """``x0-hat`` (Eq. 5; SPO, TailorPO): the value of a candidate x_{t-1} is Q(x_{t-1}) = r(c, x̂0(x_{t-1})),
    scored with the candidate's timestep when the reward accepts one (a step-aware preference model, as SPO's,
    serves this way)."""

    name = "x0-hat"

    def values(self, m: StepMeasurements) -> torch.Tensor:
        return m.q_children


class DeltaQ(Estimator):
    """``delta-q`` (Eq. 6, RDPO): the reward of the transition x_t → x_{t-1} is the change of the Q-value,

        r*(x_t → x_{t-1}) = Q(x_{t-1}) − Q(x_t)          (sign="after-minus-before", the default)

    The paper prints the difference as before − after while its text calls it "the expected reward change"; the
    printed order (``sign="before-minus-after"``) would prefer the child whose prediction got *worse*, so it is
    kept only as an option, for the record.

    When both candidates share x_t (branching rollouts), Q(x_t) cancels between them: the labels, the gap and
    the guidance gradient are exactly those of ``x0-hat``; only the values differ (their sign says whether a child
    improved on its parent). With per-branch x_t (trajectory pairs) the two estimators differ. ``variant`` offers
    the readings under which ΔQ matters with a shared x_t:

    - ``change`` (default): the values above;
    - ``improvement``: the same values, but a group is kept only if at least one candidate improved on its parent
      (max ΔQ > 0), i.e. the sign of ΔQ is used to drop pairs where neither child improves;
    - ``lookahead``: Algorithm 1's indexing, r*(x_{t-1}) = Q(x_{t-2}) − Q(x_{t-1}), the change over a one-step
      look-ahead sampled from each candidate (costs one more guided pass per candidate; branching rollouts only).
    """

    name = "delta-q"
    VARIANTS = ("change", "improvement", "lookahead")
    SIGNS = ("after-minus-before", "before-minus-after")

    def __init__(self, variant: str = "change", sign: str = "after-minus-before"):
        if variant not in self.VARIANTS:
            raise ValueError(f"variant: expected one of {self.VARIANTS}, got {variant!r}")
        if sign not in self.SIGNS:
            raise ValueError(f"sign: expected one of {self.SIGNS}, got {sign!r}")
        self.variant, self.sign = variant, sign
        self.needs_lookahead = variant == "lookahead"
        self.needs_parent = variant != "lookahead"

    def values(self, m: StepMeasurements) -> torch.Tensor:
        if self.variant == "lookahead":
            after, before = m.q_lookahead, m.q_children
        else:
            parent = m.q_parent if m.q_parent.dim() == 2 else m.q_parent.unsqueeze(1)
            after, before = m.q_children, parent
        change = after - before
        return change if self.sign == "after-minus-before" else -change

    def keep(self, values: torch.Tensor, m: StepMeasurements):
        if self.variant != "improvement":
            return None
        improvement = values if self.sign == "after-minus-before" else -values
        return improvement.max(1).values > 0


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

    def __call__(self, prompts, rewards: torch.Tensor) -> torch.Tensor:
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
