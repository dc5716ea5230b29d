"""Rollouts: sampling labelled step pairs (and single-trajectory samples) from a diffusion policy.

Modes (one sampler, ``rdpo_zoo.diffusion.DiffusionModel``):

- ``branching`` (TailorPO, RDPO's Algorithm 1; SPO with ``k > 2``): at each chosen step, draw k children
  x_{t-1}^(j) from one shared x_t, score them with the estimator, keep (best, worst) as a pair when the gap passes
  the threshold, and continue from the winner (``continue_from="winner"``; SPO continues from a random candidate).
- ``trajectory-pairs`` (D3PO): two trajectories per prompt from the same x_T; every chosen step gives a pair of
  transitions with their own x_t (the per-branch layout), labelled by the estimator.
- ``single`` (DDPO): one trajectory per sample; every chosen step is stored with the log-probability of the
  sampling policy (free from the drawn noise) for a PPO-style ratio.

Steps are named as in the paper: step t of T is ``model.timesteps[T − t]`` (t = T the first, t = 1 the last).
Steps whose σ is 0 or degenerate (no likelihood) are never stored; asking to train on one is an error.

Cost: a child's x̂0 needs a UNet pass at t − 1; when that child continues, the same pass serves its next step, so
branching costs one extra guided pass per extra child per chosen step, not per child per later step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from rdpo_zoo.diffusion import Conditioning, DiffusionModel, host_to_device
from rdpo_zoo.estimators import Estimator, StepMeasurements
from rdpo_zoo.reference import DEFAULT_MIN_SIGMA, step_log_prob
from rdpo_zoo.rewards import Reward

__all__ = [
    "ROLLOUT_MODES",
    "CONTINUE_FROM",
    "GAP_RULES",
    "StepPairs",
    "StepSamples",
    "RolloutResult",
    "Guidance",
    "check_train_steps",
    "rollout",
    "rollout_branching",
    "rollout_trajectory_pairs",
    "rollout_single",
]

ROLLOUT_MODES = ("branching", "trajectory-pairs", "single")
CONTINUE_FROM = ("winner", "random", "loser")
#: ``raw``: keep a pair when Δ/scale > threshold. ``softmax``: SPO's rule, keep when
#: softmax([s_w, s_l])[0] − softmax(...)[1] = tanh(Δ/2) > threshold, with Δ in units of the reward's scale.
GAP_RULES = ("raw", "softmax")


@dataclass
class StepPairs:
    """Labelled step pairs, ready for the loss. Column 0 of ``y``/``values`` is the preferred branch.

    ``x_t`` is ``[P, C, h, w]`` when both branches share it (branching) and ``[P, 2, C, h, w]`` otherwise.
    """

    x_t: torch.Tensor
    y: torch.Tensor  # [P, 2, C, h, w]
    step_index: torch.Tensor  # [P] index into model.timesteps
    cond: Conditioning  # P entries
    values: torch.Tensor  # [P, 2] estimator values of (preferred, dispreferred)
    #: [P] which trajectory (pair of trajectories) of the rollout each pair comes from; set by rollouts whose
    #: methods step the optimiser once per trajectory (``optimiser_step="trajectory"``), else None
    trajectory: Optional[torch.Tensor] = None

    @property
    def shared(self) -> bool:
        return self.x_t.dim() == self.y.dim() - 1

    def __len__(self) -> int:
        return self.y.shape[0]

    def select(self, index: torch.Tensor) -> "StepPairs":
        """The pairs at ``index`` (pass a host tensor: a device one costs a sync for the prompts)."""
        host = index.cpu()
        index = host_to_device(host, self.y.device)
        return StepPairs(self.x_t[index], self.y[index], self.step_index[index], self.cond.index(host),
                         self.values[index], None if self.trajectory is None else self.trajectory[index])

    @staticmethod
    def cat(parts: Sequence["StepPairs"]) -> Optional["StepPairs"]:
        parts = [p for p in parts if p is not None and len(p)]
        if not parts:
            return None
        ids = [p.trajectory for p in parts]
        return StepPairs(torch.cat([p.x_t for p in parts]), torch.cat([p.y for p in parts]),
                         torch.cat([p.step_index for p in parts]), Conditioning.cat([p.cond for p in parts]),
                         torch.cat([p.values for p in parts]), None if any(i is None for i in ids) else torch.cat(ids))


@dataclass
class StepSamples:
    """Single-trajectory transitions for policy-gradient losses (DDPO): x_t → y with the sampler's log-prob."""

    x_t: torch.Tensor  # [N, C, h, w]
    y: torch.Tensor  # [N, C, h, w]
    step_index: torch.Tensor  # [N]
    cond: Conditioning
    log_prob: torch.Tensor  # [N] log π_old(y | x_t), mean reduction over the D elements
    sample_id: torch.Tensor  # [N] which trajectory of the rollout (for its final reward / advantage)

    def __len__(self) -> int:
        return self.y.shape[0]

    def select(self, index: torch.Tensor) -> "StepSamples":
        host = index.cpu()
        index = host_to_device(host, self.y.device)
        return StepSamples(self.x_t[index], self.y[index], self.step_index[index], self.cond.index(host),
                           self.log_prob[index], self.sample_id[index])


@dataclass
class RolloutResult:
    final_latents: torch.Tensor  # [B, C, h, w] the trajectory that was continued (branching: the chosen child's)
    final_images: torch.Tensor  # [B, 3, H, W]
    final_rewards: torch.Tensor  # [B]
    prompts: list[str]
    pairs: Optional[StepPairs] = None
    samples: Optional[StepSamples] = None
    stats: dict = field(default_factory=dict)


@dataclass
class Guidance:
    """TailorPO-G's gradient guidance: after labelling, move the preferred child up the reward's gradient,

        x_w ← x_w + step_size · σ_t·√D · g/‖g‖,     g = ∇_x r(c, x̂0(x)),   x̂0(x) = p_x·x + p_o·sg[o(x)]

    with the network output held fixed (sg = stop-gradient: the gradient flows through the x̂0 map, the VAE
    decoder and the reward, not through the UNet). The step is measured in units of the step's own noise norm
    σ_t·√D (the size of σ_t·ξ), so ``step_size`` means the same at every step, for every reward and resolution: 0.1
    moves the winner by a tenth of the noise that separates it from its sibling. (A raw gradient step is useless in
    practice: on the embedded model, 0.1·∇r/scale is ~200× smaller than σ_t·‖ξ_w − ξ_l‖ at every step.) The pair
    stores the moved child; it continues from there. TailorPO has no public code; this form is our reading.
    """

    step_size: float = 0.1

    def __post_init__(self):
        if not (isinstance(self.step_size, (int, float)) and math.isfinite(self.step_size) and self.step_size > 0):
            raise ValueError(f"guidance step_size: expected a finite number > 0, got {self.step_size!r}")


def check_train_steps(model: DiffusionModel, steps: Sequence[int], min_sigma: float = DEFAULT_MIN_SIGMA) -> list[int]:
    """Validate the paper-style step numbers (t of T) and return them as step indices, refusing steps without a
    likelihood (σ = 0, e.g. η = 0, or a degenerate last step)."""
    steps = list(steps)
    if not steps:
        raise ValueError("steps: expected at least one step to fine-tune")
    indices = []
    for step in steps:
        if not isinstance(step, int) or isinstance(step, bool):
            raise ValueError(f"steps: expected integers t of T, got {step!r}")
        index = model.step_index(step)
        a, b, sigma = model.coefficients(index)
        if not float(sigma) > min_sigma * max(abs(float(a)), abs(float(b))):
            raise ValueError(
                f"steps: step t={step} (timestep {model.timesteps[index].item()}) has σ = {float(sigma):.3g}: no "
                f"likelihood there ({model.sampler}, eta={model.eta}); drop it from the steps or sample with eta > 0"
            )
        indices.append(index)
    if len(set(indices)) != len(indices):
        raise ValueError(f"steps: expected distinct steps, got {steps}")
    return sorted(indices)


def _score(reward: Reward, images: torch.Tensor, prompts: list[str], timestep: Optional[int]) -> torch.Tensor:
    timesteps = None
    if reward.accepts_timestep and timestep is not None:
        timesteps = torch.full((images.shape[0],), int(timestep), device=images.device)
    with torch.no_grad():
        return reward.score(images, prompts, timesteps).float()


def _q(model: DiffusionModel, reward: Reward, x: torch.Tensor, o: torch.Tensor, index: int, prompts) -> torch.Tensor:
    """Q(x) = r(c, x̂0(x)): the reward of the one-step prediction, scored with the state's timestep."""
    with torch.no_grad():
        images = model.decode(model.x0(x, o, index))
    return _score(reward, images, prompts, model.timesteps[index].item())


def _gap_keep(gap: torch.Tensor, scale: float, threshold: float, rule: str) -> torch.Tensor:
    normalised = gap / scale
    if rule == "softmax":
        return torch.tanh(normalised / 2) > threshold
    return normalised > threshold


def _check_common(model, cond, reward, estimator, continue_from=None, k=None, gap_rule="raw"):
    if not isinstance(model, DiffusionModel):
        raise TypeError(f"model: expected a DiffusionModel, got {type(model).__name__}")
    if not isinstance(cond, Conditioning):
        raise TypeError(f"cond: expected a Conditioning (model.encode(prompts)), got {type(cond).__name__}")
    if not isinstance(reward, Reward):
        raise TypeError(f"reward: expected a rdpo_zoo.rewards.Reward, got {type(reward).__name__}")
    if estimator is not None and not isinstance(estimator, Estimator):
        raise TypeError(f"estimator: expected a rdpo_zoo.estimators.Estimator, got {type(estimator).__name__}")
    if continue_from is not None and continue_from not in CONTINUE_FROM:
        raise ValueError(f"continue_from: expected one of {CONTINUE_FROM}, got {continue_from!r}")
    if k is not None and (not isinstance(k, int) or k < 2):
        raise ValueError(f"k: expected an integer >= 2 candidates per step, got {k!r}")
    if gap_rule not in GAP_RULES:
        raise ValueError(f"gap_rule: expected one of {GAP_RULES}, got {gap_rule!r}")


def _complete(model: DiffusionModel, x: torch.Tensor, o: Optional[torch.Tensor], index: int, cond: Conditioning,
              generator: torch.Generator) -> torch.Tensor:
    """Sample states at ``model.timesteps[index]`` (with their output ``o`` there, if known) to x_0."""
    for i in range(index, model.num_steps):
        if o is None:
            o = model.guided_output(x, i, cond)
        x = model.step(x, o, i, generator)[0][:, 0]
        o = None
    return x


def rollout_branching(
    model: DiffusionModel,
    cond: Conditioning,
    reward: Reward,
    estimator: Estimator,
    steps: Sequence[int],
    generator: torch.Generator,
    k: int = 2,
    continue_from: str = "winner",
    threshold: float = 0.0,
    gap_rule: str = "raw",
    guidance: Optional[Guidance] = None,
    store_pairs: bool = True,
) -> RolloutResult:
    """Algorithm 1 of the RDPO paper (and TailorPO, SPO): branch at each chosen step from one shared x_t.

    Returns the pairs (x_t shared) and the final images of the continued trajectories. ``stats`` holds the
    fraction of groups kept, the UNet evaluations and the estimator values.
    """
    _check_common(model, cond, reward, estimator, continue_from, k, gap_rule)
    chosen = set(check_train_steps(model, steps)) if store_pairs else {model.step_index(s) for s in steps}
    B, prompts = len(cond), list(cond.prompts)
    calls_before = model.unet_calls
    x = model.initial_noise(B, generator)
    o = None
    rows = torch.arange(B, device=model.device)
    cond_k = cond.repeat_interleave(k)
    pairs, kept, groups = [], 0, 0
    for index in range(model.num_steps):
        with torch.no_grad():
            if o is None:
                o = model.guided_output(x, index, cond)
            if index not in chosen:
                x, o = model.step(x, o, index, generator)[0][:, 0], None
                continue
            children, _ = model.step(x, o, index, generator, n=k)  # [B, k, ...]
            flat = children.flatten(0, 1)
            last = index + 1 == model.num_steps
            o_children = None if last else model.guided_output(flat, index + 1, cond_k)
            m = StepMeasurements()
            if estimator.needs_parent:
                m.q_parent = _q(model, reward, x, o, index, prompts)
            if estimator.needs_children or estimator.needs_lookahead:
                if last:  # x̂0 of a final state is the state itself, scored as a final image (timestep 0)
                    m.q_children = _score(reward, model.decode(flat), cond_k.prompts, 0)
                else:
                    m.q_children = _q(model, reward, flat, o_children, index + 1, cond_k.prompts)
                m.q_children = m.q_children.view(B, k)
            if estimator.needs_lookahead:
                if last:
                    raise ValueError("estimator: a look-ahead needs a step after the last fine-tuned step (t=1 has none)")
                ahead = model.step(flat, o_children, index + 1, generator)[0][:, 0]
                o_ahead = None if index + 2 == model.num_steps else model.guided_output(ahead, index + 2, cond_k)
                if o_ahead is None:
                    q_ahead = _score(reward, model.decode(ahead), cond_k.prompts, 0)
                else:
                    q_ahead = _q(model, reward, ahead, o_ahead, index + 2, cond_k.prompts)
                m.q_lookahead = q_ahead.view(B, k)
            if estimator.needs_final:
                finals = _complete(model, flat, o_children, index + 1, cond_k, generator)
                m.final = _score(reward, model.decode(finals), cond_k.prompts, 0).view(B, k)
            values = estimator.values(m)
            winner, loser = values.argmax(1), values.argmin(1)
            gap = values[rows, winner] - values[rows, loser]
            keep = _gap_keep(gap, reward.scale, threshold, gap_rule) & (winner != loser)
            extra = estimator.keep(values, m)
            if extra is not None:
                keep = keep & extra
        o_grid = None if o_children is None else o_children.view(B, k, *o_children.shape[1:])
        if guidance is not None:
            children = children.clone()
            o_winner = None if o_grid is None else o_grid[rows, winner]
            sigma = float(model.coefficients(index)[2])
            children[rows, winner] = _guide(model, reward, children[rows, winner], o_winner, index + 1, cond, guidance,
                                            sigma)
        groups += B
        kept += int(keep.sum())
        if store_pairs and bool(keep.any()):
            sel = keep.nonzero()[:, 0]
            y = torch.stack([children[sel, winner[sel]], children[sel, loser[sel]]], 1)
            pairs.append(StepPairs(x[sel].clone(), y, torch.full((len(sel),), index, device=model.device),
                                   cond.index(sel.cpu()), torch.stack([values[sel, winner[sel]], values[sel, loser[sel]]], 1)))
        if continue_from == "winner":
            pick = winner
        elif continue_from == "loser":
            pick = loser
        else:
            pick = torch.randint(k, (B,), generator=generator, device=generator.device).to(model.device)
        x, o = children[rows, pick], None
        if o_grid is not None:  # reuse the children's pass for their next step
            o = o_grid[rows, pick]
            moved = (pick == winner) if guidance is not None else torch.zeros_like(pick, dtype=torch.bool)
            if bool(moved.all()):
                o = None  # the guided winner moved: its cached output is stale
            elif bool(moved.any()):
                o = o.clone()
                o[moved] = model.guided_output(x[moved], index + 1, cond.index(moved.nonzero()[:, 0].cpu()))
    with torch.no_grad():
        images = model.decode(x)
        final = _score(reward, images, prompts, 0)
    stats = {"groups": groups, "pairs": kept, "pairs_kept_fraction": kept / groups if groups else float("nan"),
             "unet_calls": model.unet_calls - calls_before}
    return RolloutResult(x, images, final, prompts, pairs=StepPairs.cat(pairs) if store_pairs else None, stats=stats)


def _guide(model, reward, x, o, index, cond, guidance: Guidance, sigma: float) -> torch.Tensor:
    """Move states at ``model.timesteps[index]`` (output ``o`` there; ``None`` for final states), drawn with noise
    σ = ``sigma``, up the reward gradient (see :class:`Guidance`)."""
    last = o is None
    x = x.detach().float().requires_grad_(True)
    with torch.enable_grad():
        x0 = x if last else model.x0(x, o.detach(), index)
        images = model.decode(x0)
        timesteps = None
        if reward.accepts_timestep:
            timesteps = torch.full((x.shape[0],), 0 if last else model.timesteps[index].item(), device=x.device)
        value = reward.score_differentiable(images, list(cond.prompts), timesteps)
        (grad,) = torch.autograd.grad(value.sum(), x)
    flat = grad.flatten(1)
    direction = flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-30)
    step = guidance.step_size * sigma * math.sqrt(flat.shape[1])
    return (x + step * direction.view_as(x)).detach()


def rollout_trajectory_pairs(
    model: DiffusionModel,
    cond: Conditioning,
    reward: Reward,
    estimator: Estimator,
    steps: Sequence[int],
    generator: torch.Generator,
    threshold: float = 0.0,
    gap_rule: str = "raw",
) -> RolloutResult:
    """D3PO: two trajectories per prompt from the same x_T; each chosen step gives a per-branch pair.

    For ``x0-hat``/``delta-q`` the measurements are per branch: Q(x_t^k) comes from the output that samples the
    step, Q(x_{t-1}^k) from the next step's output (free), and at the last step from the final image.
    """
    _check_common(model, cond, reward, estimator, gap_rule=gap_rule)
    if estimator.needs_lookahead:
        raise ValueError(f"estimator: {estimator.name!r} needs a look-ahead, which only branching rollouts provide")
    chosen = check_train_steps(model, steps)
    B, prompts = len(cond), list(cond.prompts)
    calls_before = model.unet_calls
    cond2 = Conditioning.cat([cond, cond])  # branch-major: rows [0, B) branch 0, [B, 2B) branch 1
    prompts2 = prompts + prompts
    x_T = model.initial_noise(B, generator)
    x = torch.cat([x_T, x_T])
    need_q = estimator.needs_parent or estimator.needs_children
    q_at = {}  # index -> Q(x at that index), [2B]
    stored = {}  # index -> (x_t [2B], x_{t-1} [2B])
    with torch.no_grad():
        for index in range(model.num_steps):
            o = model.guided_output(x, index, cond2)
            if need_q and (index in chosen or index - 1 in chosen):
                q_at[index] = _q(model, reward, x, o, index, prompts2)
            x_next = model.step(x, o, index, generator)[0][:, 0]
            if index in chosen:
                stored[index] = (x, x_next)
            x = x_next
        images = model.decode(x)
        final = _score(reward, images, prompts2, 0)
    q_at[model.num_steps] = final
    pairs, kept, groups = [], 0, 0
    for index in chosen:
        x_t, y = stored[index]
        m = StepMeasurements(final=final.view(2, B).T)
        if need_q:
            m.q_parent = q_at[index].view(2, B).T
            m.q_children = q_at[index + 1].view(2, B).T
        values = estimator.values(m)  # [B, 2]
        winner = values.argmax(1)
        gap = (values[:, 0] - values[:, 1]).abs()
        keep = _gap_keep(gap, reward.scale, threshold, gap_rule)
        extra = estimator.keep(values, m)
        if extra is not None:
            keep = keep & extra
        groups += B
        kept += int(keep.sum())
        if bool(keep.any()):
            sel = keep.nonzero()[:, 0]
            w, l = winner[sel], 1 - winner[sel]
            x_t2, y2 = x_t.view(2, B, *x_t.shape[1:]), y.view(2, B, *y.shape[1:])
            pairs.append(StepPairs(
                torch.stack([x_t2[w, sel], x_t2[l, sel]], 1), torch.stack([y2[w, sel], y2[l, sel]], 1),
                torch.full((len(sel),), index, device=model.device), cond.index(sel.cpu()),
                torch.stack([values[sel, w], values[sel, l]], 1), trajectory=sel,
            ))
    stats = {"groups": groups, "pairs": kept, "pairs_kept_fraction": kept / groups if groups else float("nan"),
             "unet_calls": model.unet_calls - calls_before}
    # The "continued" trajectory of a pair rollout: report both branches' finals as the batch's samples.
    return RolloutResult(x, images, final, prompts2, pairs=StepPairs.cat(pairs), stats=stats)


def rollout_single(
    model: DiffusionModel, cond: Conditioning, reward: Reward, steps: Sequence[int], generator: torch.Generator,
    reduction: str = "mean",
) -> RolloutResult:
    """DDPO: one trajectory per sample; the chosen steps are stored with log π_old(y | x_t), computed from the
    drawn noise: log N(y; μ, σ²) = −ξ²/2 − log σ − ½·log 2π per element, reduced over D by ``reduction`` (the
    loss's own: the PPO ratio exp(log π_θ − log π_old) needs both sides reduced alike)."""
    from rdpo_zoo.reference import check_reduction

    check_reduction(reduction)
    _check_common(model, cond, reward, None)
    chosen = check_train_steps(model, steps)
    B, prompts = len(cond), list(cond.prompts)
    calls_before = model.unet_calls
    x = model.initial_noise(B, generator)
    records = []
    with torch.no_grad():
        for index in range(model.num_steps):
            o = model.guided_output(x, index, cond)
            children, noise = model.step(x, o, index, generator)
            x_next = children[:, 0]
            if index in chosen:
                # the loss's own formula on the drawn y (not −ξ²/2 from the noise, equal up to rounding): the PPO
                # ratio is then exactly 1 before the first update wherever the UNet gives the same o
                a, b, sigma = model.likelihood_coefficients(index)
                log_prob = step_log_prob(x_next, x, o.float(), a, b, sigma, reduction)
                records.append((x, x_next, index, log_prob))
            x = x_next
        images = model.decode(x)
        final = _score(reward, images, prompts, 0)
    ids = torch.arange(B, device=model.device)
    samples = StepSamples(
        torch.cat([r[0] for r in records]), torch.cat([r[1] for r in records]),
        torch.cat([torch.full((B,), r[2], device=model.device) for r in records]),
        Conditioning.cat([cond] * len(records)), torch.cat([r[3] for r in records]), ids.repeat(len(records)),
    )
    stats = {"unet_calls": model.unet_calls - calls_before, "samples": len(samples)}
    return RolloutResult(x, images, final, prompts, samples=samples, stats=stats)


def rollout(mode: str, model: DiffusionModel, cond: Conditioning, reward: Reward, estimator: Optional[Estimator],
            steps: Sequence[int], generator: torch.Generator, **options) -> RolloutResult:
    """Dispatch by mode name (``ROLLOUT_MODES``); options go to that mode's function."""
    if mode == "branching":
        return rollout_branching(model, cond, reward, estimator, steps, generator, **options)
    if mode == "trajectory-pairs":
        return rollout_trajectory_pairs(model, cond, reward, estimator, steps, generator, **options)
    if mode == "single":
        return rollout_single(model, cond, reward, steps, generator, **options)
    raise ValueError(f"mode: expected one of {ROLLOUT_MODES}, got {mode!r}")
