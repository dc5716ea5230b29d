"""The step family seam: how a sampler's timesteps, reverse steps and training process are read.

A step family wraps one diffusers scheduler configured for sampling with ``num_steps`` steps and answers every
question the rollout, the losses and the noised pairs ask of it, by step *index* (0 = the first, noisiest step):

- ``timesteps``: the values the denoiser receives (int64 for DDIM/DDPM; float32 for flow schedules, e.g. 960.129);
- ``coefficients(index)``: the step's Gaussian affine form ``x_{next} ~ N(a·x + b·o, σ² I)`` (float64);
- ``x0_coefficients(index)``: the one-step prediction ``x̂0 = p_x·x + p_o·o``;
- ``flow_time_step(index)``: the step's length |dt| in flow-matching time (Flow-GRPO's public KL convention);
- the forward process for noised pairs: ``sample_train_timesteps``, ``add_noise``, ``training_target``.

Families are parts (``rdpo_zoo.StepFamilyPart``, hook ``register_step_families``) chosen by name with the method
setting ``scheduler`` (``--scheduler NAME``); the built-ins are ``ddim`` and ``ddpm`` (:class:`DDIMFamily`,
:class:`DDPMFamily`), whose maths is :mod:`rdpo_zoo.schedulers`, and the flow-matching ``flow-sde``, ``dance-sde``
and ``cps`` (:mod:`rdpo_zoo.flow_step_families`, maths in :mod:`rdpo_zoo.flow_steps`). Nothing outside a step family reads a scheduler's
``alphas_cumprod``.
"""

from __future__ import annotations

from typing import ClassVar, Optional

import torch

from rdpo_zoo.flow_steps import is_flow_scheduler
from rdpo_zoo.schedulers import (
    StepCoefficients,
    UnsupportedSchedulerError,
    flow_time_step,
    step_coefficients,
    x0_coefficients,
)

__all__ = ["StepFamily", "AlphaBarFamily", "DDIMFamily", "DDPMFamily", "StepCoefficients"]


class StepFamily:
    """Base of every step family: one instance per (scheduler config, number of steps, options).

    Subclasses set ``name``, build ``self.scheduler`` (``set_timesteps(num_steps)`` done), ``self.timesteps`` and
    ``self.init_noise_sigma`` in ``__init__``, and implement the methods below. ``eta`` is the family's noise level
    (DDIM's η; ``None`` for families without one); ``options`` are the part's own options, typed.
    """

    name: ClassVar[str] = ""

    scheduler = None
    timesteps: torch.Tensor
    init_noise_sigma: float = 1.0

    def __init__(self, scheduler_config: dict, num_steps: int, eta: Optional[float] = None, **options):
        if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
            raise ValueError(f"num_steps: expected an integer >= 1, got {num_steps!r}")
        self.check_scheduler(dict(scheduler_config))
        self.num_steps = num_steps
        self.eta = eta
        self.options = options

    @classmethod
    def check_scheduler(cls, scheduler_config: dict) -> None:
        """Raise a one-line error if this family cannot run on a pipeline with this scheduler config."""

    def _check_index(self, index: int) -> int:
        index = int(index)
        if not 0 <= index < self.num_steps:
            raise ValueError(f"index: expected a step index in [0, {self.num_steps - 1}], got {index}")
        return index

    # -- the reverse (sampling) process ---------------------------------------------------------------------------
    def coefficients(self, index: int) -> StepCoefficients:
        """``(a, b, σ)`` of step ``index -> index + 1`` (σ the step's standard deviation), float64 scalars."""
        raise NotImplementedError

    def x0_coefficients(self, index: int) -> tuple[float, float]:
        """``(p_x, p_o)`` with ``x̂0 = p_x·x + p_o·o`` at step ``index``."""
        raise NotImplementedError

    def flow_time_step(self, index: int) -> float:
        """|dt| of step ``index`` in flow-matching time (the public KL convention of GRPO divides by it)."""
        raise NotImplementedError

    # -- the forward (training) process, for noised pairs --------------------------------------------------------
    def sample_train_timesteps(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``[n]`` training timestep values for the denoiser, drawn from ``generator``."""
        raise NotImplementedError

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``x_t`` from clean latents ``x0`` and ``noise`` at training timesteps ``t`` (``[P]``, one per leading
        row of ``x0``; the rest broadcasts)."""
        raise NotImplementedError

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the denoiser's output should equal at ``add_noise(x0, noise, t)``: ε, v, x0 or a flow velocity."""
        raise NotImplementedError


class AlphaBarFamily(StepFamily):
    """Steps of a discrete variance-preserving schedule ``x_t = √ᾱ_t·x0 + √(1 − ᾱ_t)·ε`` (diffusers'
    ``alphas_cumprod``), with integer timesteps; the maths is :mod:`rdpo_zoo.schedulers`."""

    scheduler_class: ClassVar[str] = ""
    scheduler_settings: ClassVar[dict] = {}

    def __init__(self, scheduler_config: dict, num_steps: int, eta: Optional[float] = None, **options):
        import diffusers

        super().__init__(scheduler_config, num_steps, eta, **options)
        cls = getattr(diffusers, self.scheduler_class)
        self.scheduler = cls.from_config(dict(scheduler_config), **self.scheduler_settings)
        self.scheduler.set_timesteps(num_steps)
        self.timesteps = self.scheduler.timesteps.clone()
        self.init_noise_sigma = self.scheduler.init_noise_sigma

    @classmethod
    def check_scheduler(cls, scheduler_config: dict) -> None:
        from rdpo_zoo.errors import UserInputError

        if "num_train_timesteps" not in scheduler_config:
            raise UserInputError(f"scheduler {cls.name!r}: the pipeline's scheduler config has no "
                                 "num_train_timesteps, so it is not a discrete diffusion schedule")
        if is_flow_scheduler(scheduler_config):  # it has no betas: from_config would invent the default ones
            raise UnsupportedSchedulerError(
                f"scheduler {cls.name!r}: the pipeline is a flow-matching model (FlowMatchEulerDiscreteScheduler, "
                "no betas); use --scheduler flow-sde, dance-sde or cps (docs/flow.md)")

    def _timestep(self, index: int) -> int:
        return int(self.timesteps[self._check_index(index)])

    def coefficients(self, index: int) -> StepCoefficients:
        return step_coefficients(self.scheduler, self._timestep(index), eta=self.eta)

    def x0_coefficients(self, index: int) -> tuple[float, float]:
        p_x, p_o = x0_coefficients(self.scheduler, self._timestep(index))
        return float(p_x), float(p_o)

    def flow_time_step(self, index: int) -> float:
        return float(flow_time_step(self.scheduler, self._timestep(index)))

    def sample_train_timesteps(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(self.scheduler.config.num_train_timesteps, (n,), generator=generator)

    def _alpha_bar(self, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha = self.scheduler.alphas_cumprod.to(x0.device, torch.float32)[t]
        return alpha.view(t.shape[0], *([1] * (x0.dim() - 1)))

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha = self._alpha_bar(x0, t)
        return alpha.sqrt() * x0 + (1 - alpha).sqrt() * noise

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        prediction = self.scheduler.config.prediction_type
        if prediction == "epsilon":
            return noise
        if prediction == "sample":
            return x0
        if prediction == "v_prediction":
            alpha = self._alpha_bar(x0, t)
            return alpha.sqrt() * noise - (1 - alpha).sqrt() * x0
        raise ValueError(f"scheduler.config.prediction_type: unsupported {prediction!r}")


class DDIMFamily(AlphaBarFamily):
    """DDIM (η as given; 1 is the stochastic step every method trains on), x̂0 clipping off (it breaks the affine
    step) and the last step to ᾱ of the last training timestep (``set_alpha_to_one=False``)."""

    name: ClassVar[str] = "ddim"
    scheduler_class: ClassVar[str] = "DDIMScheduler"
    scheduler_settings: ClassVar[dict] = {"clip_sample": False, "thresholding": False, "set_alpha_to_one": False}

    def __init__(self, scheduler_config: dict, num_steps: int, eta: Optional[float] = 1.0, **options):
        super().__init__(scheduler_config, num_steps, 1.0 if eta is None else float(eta), **options)


class DDPMFamily(AlphaBarFamily):
    """DDPM with the ``fixed_small`` variance (it has no η), x̂0 clipping off."""

    name: ClassVar[str] = "ddpm"
    scheduler_class: ClassVar[str] = "DDPMScheduler"
    scheduler_settings: ClassVar[dict] = {"clip_sample": False, "thresholding": False, "variance_type": "fixed_small"}

    def __init__(self, scheduler_config: dict, num_steps: int, eta: Optional[float] = None, **options):
        super().__init__(scheduler_config, num_steps, None, **options)
