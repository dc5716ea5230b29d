"""The trainer's three loss paths, each the loss of one minibatch and its statistics:

- :class:`StepPairLossPath`: step pairs (branching, trajectory pairs): both branches' log-ratios under the policy and
  the reference, then the method's :class:`rdpo_zoo.resolve.Objective` (``rdpo_zoo.kernels.preference_loss``);
- :class:`NoisedPairLossPath`: Diffusion-DPO's noised pairs (a = 0, b = 1, σ := 1; see ``rdpo_zoo.noised_pairs``);
- :class:`PolicyGradientLossPath`: single-trajectory samples and a per-sample ``PolicyGradientLoss`` (DDPO's
  PPO-clip, GRPO, a plugin's), with the reference KL when the loss asks for one.

:func:`build_loss_path` picks one by the loss part's type (a ``PolicyGradientLoss`` takes the per-sample path) and
by what the rollout yields (noised pairs or step pairs). The :class:`rdpo_zoo.trainer.Trainer` builds one at set-up
and calls its :meth:`minibatch_loss` in its loop; set-up and the loop stay in the trainer.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

__all__ = ["NoisedPairLossPath", "PolicyGradientLossPath", "StepPairLossPath", "build_loss_path",
           "policy_gradient_loss"]


def policy_gradient_loss(loss_part, loss_options) -> tuple:
    """``(PolicyGradientLoss, its typed options)``: β and the pair clamp, common to every loss part, belong to
    pairwise losses and are dropped."""
    from rdpo_zoo.parts import LOSS_COMMON_OPTIONS

    options = loss_part.parse_options(loss_options or {})
    for common in LOSS_COMMON_OPTIONS:
        options.pop(common.name, None)
    return loss_part.load(), options


class _LossPath:
    """What every path holds: the model (its reference is the denoiser with the adapter disabled), the denoiser to
    call for the policy (the accelerator's wrapper), the accelerator (its autocast) and the method's reduction."""

    def __init__(self, model, denoiser, accelerator, reduction: str):
        self.model, self.denoiser, self.accelerator, self.reduction = model, denoiser, accelerator, reduction


def denoiser_inputs(pairs):
    """``(x, cond, step index)`` of the denoiser calls a minibatch of step pairs needs: one per pair when both
    branches share x_t, else one per branch (the pairs flattened, branch-major within a pair)."""
    if pairs.shared:
        return pairs.x_t, pairs.cond, pairs.step_index
    return pairs.x_t.flatten(0, 1), pairs.cond.repeat_interleave(2), pairs.step_index.repeat_interleave(2)


class StepPairLossPath(_LossPath):
    """The preference loss of step pairs under ``objective`` (a resolved :class:`rdpo_zoo.resolve.Objective`)."""

    def __init__(self, model, denoiser, accelerator, reduction: str, objective, backend: Optional[str]):
        super().__init__(model, denoiser, accelerator, reduction)
        self.objective, self.backend = objective, backend

    def loss(self, pairs, steps: Optional[torch.Tensor] = None):
        """The preference loss of a minibatch of step pairs, and its ``[P, 2]`` log-ratios (detached). ``steps``:
        the pairs' step indices on the host, if at hand (else read from ``pairs``: one device sync)."""
        from rdpo_zoo.kernels import preference_loss

        model = self.model
        P = len(pairs)
        x_in, cond_in, index_in = denoiser_inputs(pairs)
        with self.accelerator.autocast():
            o_theta = model.guided_output(x_in, index_in, cond_in, denoiser=self.denoiser)
            with torch.no_grad(), model.reference():
                o_ref = model.guided_output(x_in, index_in, cond_in)
        shape = (P, -1) if pairs.shared else (P, 2, -1)
        # host coefficients: the fused op checks them on the host and copies them over, with no device sync
        a, b, sigma = model.coefficient_tensors(pairs.step_index if steps is None else steps)
        return preference_loss(
            pairs.y.flatten(2), pairs.x_t.reshape(*shape), o_theta.reshape(*shape),  # the kernels read bf16 as is
            o_ref.reshape(*shape), a, b, sigma, reduction=self.reduction,
            backend=self.backend, return_log_ratios=True, objective=self.objective,
        )

    def minibatch_loss(self, part, steps, stats: dict, noise: Callable[[], torch.Generator], first: bool,
                       advantages: Optional[torch.Tensor] = None):
        """The loss of minibatch ``part`` (``steps``: its host step indices, or ``None``), its statistics appended
        to ``stats``. ``noise()`` gives the minibatch's generator (the noised pairs' t and ε); ``first``: the
        iteration's first minibatch; ``advantages``: the rollout's per-trajectory advantages (the per-sample
        path)."""
        loss, r = self.loss(part, steps)
        self.pair_stats(stats, r)
        return loss

    def pair_stats(self, stats: dict, r: torch.Tensor) -> None:
        """The pair statistics of a minibatch, as device scalars (fetched with the others at the end)."""
        r = r.detach().float()
        r_w, r_l = r[:, 0], r[:, 1]
        row = torch.stack([r_w.mean(), r_l.mean(), (self.objective.beta * (r_w - r_l)).mean(),
                           (r_w > r_l).float().mean(), (r_l > 0).float().mean()])
        for key, value in zip(("r_w", "r_l", "margin", "accuracy", "psi_active"), row.unbind()):
            stats[key].append(value)


class NoisedPairLossPath(StepPairLossPath):
    """Diffusion-DPO's loss on noised pairs under ``objective``."""

    def loss(self, pairs, generator: torch.Generator):
        """Diffusion-DPO's loss on a minibatch of noised pairs: a = 0, b = 1, σ := 1 (see rdpo_zoo.noised_pairs),
        and its ``[P, 2]`` log-ratios (detached); ``generator`` draws the pairs' t and ε."""
        from rdpo_zoo.kernels import preference_loss
        from rdpo_zoo.noised_pairs import noised_inputs

        model = self.model
        P = len(pairs)
        x_t, y, t = noised_inputs(model, pairs.x0, generator)
        cond2 = pairs.cond.repeat_interleave(2)
        with self.accelerator.autocast():
            o_theta = model.guided_output(x_t.flatten(0, 1), None, cond2, denoiser=self.denoiser,
                                          timesteps=t.repeat_interleave(2))
            with torch.no_grad(), model.reference():
                o_ref = model.guided_output(x_t.flatten(0, 1), None, cond2, timesteps=t.repeat_interleave(2))
        target = y.reshape(P, -1) if y.dim() == x_t.dim() - 1 else y.reshape(P, 2, -1)
        return preference_loss(
            target, None, o_theta.reshape(P, 2, -1), o_ref.reshape(P, 2, -1), 0.0, 1.0, 1.0,
            reduction=self.reduction, backend=self.backend, return_log_ratios=True, objective=self.objective,
        )

    def minibatch_loss(self, part, steps, stats: dict, noise: Callable[[], torch.Generator], first: bool,
                       advantages: Optional[torch.Tensor] = None):
        loss, r = self.loss(part, noise())
        self.pair_stats(stats, r)
        return loss


class PolicyGradientLossPath(_LossPath):
    """A per-sample ``PolicyGradientLoss`` (``pg_loss``, with its typed ``pg_options``) on single-trajectory
    transitions, weighted by the rollout's advantages."""

    def __init__(self, model, denoiser, accelerator, reduction: str, pg_loss, pg_options: dict):
        super().__init__(model, denoiser, accelerator, reduction)
        self.pg_loss, self.pg_options = pg_loss, pg_options
        #: the KL to the reference the loss asks for ("exact", "public"), or None
        self.kl_convention = pg_loss.reference_kl(pg_options) if pg_loss.reference_kl else None

    def loss(self, samples, advantages, steps: Optional[torch.Tensor] = None, stats: Optional[dict] = None):
        """The per-sample policy-gradient loss on a minibatch of single-trajectory transitions; ``advantages`` are
        the rollout's per-trajectory advantages (indexed by each transition's ``sample_id``); ``steps`` as in
        :meth:`StepPairLossPath.loss`. When the loss asks for a KL to the reference, one more pass with the adapter
        disabled gives it. ``stats``: where to append the minibatch's ratio, clip fraction, approximate KL
        (½·mean (log π_θ − log π_old)², as DDPO and Flow-GRPO log it) and reference KL. Returns the mean loss and
        the detached log-ratios to the sampler."""
        from rdpo_zoo.diffusion import host_to_device
        from rdpo_zoo.reference import step_kl, step_log_prob

        model = self.model
        index = samples.step_index if steps is None else steps
        with self.accelerator.autocast():
            o_theta = model.guided_output(samples.x_t, samples.step_index, samples.cond, denoiser=self.denoiser)
            if self.kl_convention is not None:
                with torch.no_grad(), model.reference():
                    o_ref = model.guided_output(samples.x_t, samples.step_index, samples.cond)
        a, b, sigma = (host_to_device(v, samples.y.device) for v in model.coefficient_tensors(index))
        log_prob = step_log_prob(samples.y, samples.x_t, o_theta.float(), a, b, sigma, self.reduction)
        extra = {}
        if self.kl_convention is not None:
            dt = host_to_device(model.flow_time_steps(index), samples.y.device) if self.kl_convention == "public" \
                else None
            extra["reference_kl"] = step_kl(o_theta.float(), o_ref.float(), b, sigma, self.reduction,
                                            self.kl_convention, dt)
        per_sample = self.pg_loss.fn(log_prob, samples.log_prob, advantages[samples.sample_id], **self.pg_options,
                                     **extra)
        log_ratio = (log_prob - samples.log_prob).detach()
        if stats is not None:
            ratio = log_ratio.exp()
            stats["ratio"].append(ratio.mean())
            stats["approx_kl"].append(0.5 * log_ratio.square().mean())
            if "clip_range" in self.pg_options:
                stats["clip_fraction"].append(((ratio - 1).abs() > self.pg_options["clip_range"]).float().mean())
            if "reference_kl" in extra:
                stats["kl"].append(extra["reference_kl"].detach().mean())
        return per_sample.mean(), log_ratio

    def minibatch_loss(self, part, steps, stats: dict, noise: Callable[[], torch.Generator], first: bool,
                       advantages: Optional[torch.Tensor] = None):
        loss, log_ratio = self.loss(part, advantages, steps, stats)
        if first:  # before any update this iteration: the sampler, ratio 1
            stats["ratio_before_update"].append(log_ratio.exp().mean())
        return loss


def build_loss_path(loss, yields: str, model, denoiser, accelerator, reduction: str, backend: Optional[str],
                    pg_options: Optional[dict] = None):
    """The loss path of ``loss`` (a resolved ``Objective``, or a ``PolicyGradientLoss`` with ``pg_options``) for a
    rollout that yields ``yields`` (``rdpo_zoo.rollout_modes``): by the loss's type, a ``PolicyGradientLoss`` takes
    the per-sample path; a pairwise objective the noised-pair or the step-pair path."""
    from rdpo_zoo.losses import PolicyGradientLoss

    if isinstance(loss, PolicyGradientLoss):
        return PolicyGradientLossPath(model, denoiser, accelerator, reduction, loss, pg_options or {})
    if yields == "noised-pairs":
        return NoisedPairLossPath(model, denoiser, accelerator, reduction, loss, backend)
    return StepPairLossPath(model, denoiser, accelerator, reduction, loss, backend)
