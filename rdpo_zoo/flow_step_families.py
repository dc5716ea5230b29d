"""The flow-matching step families ``flow-sde``, ``dance-sde`` and ``cps`` on the step-family seam
(:class:`rdpo_zoo.steps.StepFamily`); their maths is :mod:`rdpo_zoo.flow_steps` (docs/flow.md, "Steps").

One instance wraps a ``FlowMatchEulerDiscreteScheduler`` built from the pipeline's scheduler config with
``set_timesteps`` done as the pipeline does it: the model family passes ``mu`` (FLUX's resolution-dependent shift)
and ``sigmas`` (FLUX's linspace(1, 1/T, T)); SD3 passes neither (its static ``shift``). Timesteps are the float
values the denoiser receives (σ·1000, e.g. 960.129); the network output ``o`` is the velocity.
"""

from __future__ import annotations

from typing import ClassVar, Optional, Sequence

import torch

from rdpo_zoo.errors import UserInputError
from rdpo_zoo.flow_steps import (
    DEFAULT_FLOW_ETA,
    LOG_PROB_CONVENTIONS,
    PUBLIC_CPS_LOG_PROB_STD,
    TRAIN_WEIGHTINGS,
    check_flow_eta,
    check_flow_scheduler_config,
    flow_add_noise,
    flow_schedule_coefficients,
    flow_training_target,
    make_flow_scheduler,
    sample_flow_train_timesteps,
)
from rdpo_zoo.gaussian_step import StepCoefficients
from rdpo_zoo.steps import StepFamily

__all__ = ["FlowStepFamily", "FlowSDEFamily", "DanceSDEFamily", "CPSFamily"]


class FlowStepFamily(StepFamily):
    """Steps x_{i+1} ~ N(a·x_i + b·v, std²) of one flow SDE (``sde``) on a flow-matching Euler schedule.

    Args:
        scheduler_config: the pipeline's ``FlowMatchEulerDiscreteScheduler`` config.
        num_steps: T.
        eta: the SDE's noise level η (None: 0.7, Flow-GRPO's); 0 is diffusers' deterministic Euler step.
        mu, sigmas: passed to ``set_timesteps`` as the pipeline passes them (from the model family).
        log_prob: ``"exact"`` (the Gaussian with the step's std) or, for cps, ``"public"`` (CPS's public
            −mean (y − μ)², the Gaussian with std 1/√2 up to a constant): the std likelihoods use,
            :meth:`likelihood_coefficients`; sampling always uses the step's std.
        train_weighting: how noised pairs draw training timesteps (``"logit_normal"``, as diffusers' SD3
            training script; ``"none"`` is uniform; ``"mode"``).
    """

    sde: ClassVar[str] = ""
    default_eta: ClassVar[float] = DEFAULT_FLOW_ETA  # what eta=None means

    def __init__(
        self, scheduler_config: dict, num_steps: int, eta: Optional[float] = None, *, mu: Optional[float] = None,
        sigmas: Optional[Sequence[float]] = None, log_prob: str = "exact", train_weighting: str = "logit_normal",
        **options,
    ):
        eta = self.default_eta if eta is None else eta
        super().__init__(scheduler_config, num_steps, check_flow_eta(eta, self.sde), **options)
        if log_prob not in LOG_PROB_CONVENTIONS:
            raise UserInputError(f"log_prob: expected one of {', '.join(LOG_PROB_CONVENTIONS)}, got {log_prob!r}")
        if log_prob == "public" and self.sde != "cps":
            raise UserInputError(f"log_prob: 'public' is CPS's convention (variance dropped); {self.sde}'s public "
                                 "log-prob is the exact Gaussian, use log_prob='exact'")
        if train_weighting not in TRAIN_WEIGHTINGS:
            raise UserInputError(f"train_weighting: expected one of {', '.join(TRAIN_WEIGHTINGS)}, "
                                 f"got {train_weighting!r}")
        self.scheduler_config = dict(scheduler_config)
        self.log_prob, self.train_weighting = log_prob, train_weighting
        self.scheduler = make_flow_scheduler(self.scheduler_config, num_steps, mu=mu, sigmas=sigmas)
        self.timesteps = self.scheduler.timesteps.clone()
        self.init_noise_sigma = 1.0  # x_T = ε: the flow pipelines draw unit noise
        self.sigmas = self.scheduler.sigmas.to(torch.float64)  # [T + 1], the scheduler's, ending at 0
        self._table = flow_schedule_coefficients(self.scheduler, self.sde, self.eta)

    @classmethod
    def check_scheduler(cls, scheduler_config: dict) -> None:
        check_flow_scheduler_config(scheduler_config, cls.name)

    def coefficients(self, index: int) -> StepCoefficients:
        index = self._check_index(index)
        return StepCoefficients(*(column[index] for column in self._table))

    def likelihood_coefficients(self, index: int) -> StepCoefficients:
        """``(a, b, std)`` as log-probabilities and log-ratios read them: :meth:`coefficients`, with CPS's public
        std 1/√2 under ``log_prob="public"``."""
        a, b, std = self.coefficients(index)
        if self.log_prob == "public":
            std = torch.full_like(std, PUBLIC_CPS_LOG_PROB_STD)
        return StepCoefficients(a, b, std)

    def x0_coefficients(self, index: int) -> tuple[float, float]:
        return 1.0, -float(self.sigmas[self._check_index(index)])

    def flow_time_step(self, index: int) -> float:
        index = self._check_index(index)
        return float(self.sigmas[index] - self.sigmas[index + 1])

    def sample_train_timesteps(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return sample_flow_train_timesteps(self.scheduler_config, n, generator, weighting=self.train_weighting)

    def _train_sigma(self, t: torch.Tensor) -> torch.Tensor:
        # float32 on t's device (float64 is not on every accelerator); σ = t / N as the training scripts' sigmas
        return torch.as_tensor(t).to(torch.float32) / self.scheduler.config.num_train_timesteps

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return flow_add_noise(x0, noise, self._train_sigma(t))

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return flow_training_target(x0, noise)


class FlowSDEFamily(FlowStepFamily):
    """Flow-GRPO's SDE: g² = η²·σ/(1 − σ), the σ = 1 first step in the public form."""

    name: ClassVar[str] = "flow-sde"
    sde: ClassVar[str] = "flow-sde"


class DanceSDEFamily(FlowStepFamily):
    """DanceGRPO's SDE: g = η."""

    name: ClassVar[str] = "dance-sde"
    sde: ClassVar[str] = "dance-sde"


class CPSFamily(FlowStepFamily):
    """Coefficients-preserving sampling: x̂0 re-noised to exactly σ_{i+1}, std = σ_{i+1}·sin(ηπ/2), η ≤ 1."""

    name: ClassVar[str] = "cps"
    sde: ClassVar[str] = "cps"
