"""The Gaussian affine form of one reverse diffusion step: the one table of the project.

Every reverse step that rdpo-zoo can take a likelihood of is

    x_{t-1} ~ N(a·x_t + b·o, σ² I)

with ``o`` the network output (ε-, v- or x0-prediction) and ``a``, ``b``, ``σ`` scalars that depend only on
the scheduler and the timestep pair. This module computes them, exactly as diffusers' own ``step`` does:

DDIM (Song et al. 2021, Eq. 12 and 16), with ᾱ = ``alphas_cumprod``::

    x̂0  = p_x·x_t + p_o·o         ε̂ = e_x·x_t + e_o·o          (prediction-type table below)
    σ    = η · sqrt((1 − ᾱ_prev)/(1 − ᾱ_t) · (1 − ᾱ_t/ᾱ_prev))
    μ    = sqrt(ᾱ_prev)·x̂0 + sqrt(1 − ᾱ_prev − σ²)·ε̂

DDPM (Ho et al. 2020, Eq. 6–7), with α_t^step = ᾱ_t/ᾱ_prev and β_t^step = 1 − α_t^step::

    μ    = sqrt(ᾱ_prev)·β_t^step/(1 − ᾱ_t) · x̂0 + sqrt(α_t^step)·(1 − ᾱ_prev)/(1 − ᾱ_t) · x_t
    σ²   = (1 − ᾱ_prev)/(1 − ᾱ_t)·β_t^step   ("fixed_small", clamped at 1e-20 as diffusers does)
         = β_t^step                           ("fixed_large")

Prediction types (``1 − ᾱ_t`` written β̄_t)::

    epsilon:       x̂0 = (x_t − sqrt(β̄_t)·o)/sqrt(ᾱ_t)          ε̂ = o
    sample:        x̂0 = o                                        ε̂ = (x_t − sqrt(ᾱ_t)·o)/sqrt(β̄_t)
    v_prediction:  x̂0 = sqrt(ᾱ_t)·x_t − sqrt(β̄_t)·o             ε̂ = sqrt(β̄_t)·x_t + sqrt(ᾱ_t)·o

Both μ's are affine in (x_t, o), so ``a`` collects the x_t coefficients and ``b`` the o coefficients.
"""

from __future__ import annotations

import math
from typing import Union

import torch

from rdpo_zoo.errors import UserInputError
from rdpo_zoo.flow_steps import flow_step_coefficients_at, flow_step_index, flow_x0_coefficients, is_flow_scheduler
from rdpo_zoo.gaussian_step import StepCoefficients, UnsupportedSchedulerError

__all__ = ["step_coefficients", "x0_coefficients", "flow_time_step", "StepCoefficients", "UnsupportedSchedulerError"]

TimestepLike = Union[int, float, torch.Tensor]

_USE_INSTEAD = (
    "use `DDIMScheduler.from_config(scheduler.config, clip_sample=False, set_alpha_to_one=False)` "
    "(or `DDPMScheduler.from_config(...)` with variance_type='fixed_small')"
)
_GAUSSIAN_DDPM_VARIANCES = ("fixed_small", "fixed_small_log", "fixed_large")


def _scheduler_kind(scheduler) -> str:
    from diffusers import DDIMScheduler, DDPMScheduler

    if isinstance(scheduler, DDIMScheduler):
        return "ddim"
    if isinstance(scheduler, DDPMScheduler):
        return "ddpm"
    raise UnsupportedSchedulerError(
        f"scheduler: {type(scheduler).__name__} has no Gaussian reverse step whose mean is affine in the network "
        f"output, so no step likelihood can be computed; {_USE_INSTEAD}."
    )


def _check_affine(scheduler) -> None:
    config = scheduler.config
    if config.get("thresholding", False):
        raise UnsupportedSchedulerError(
            "scheduler.config.thresholding=True: dynamic thresholding of x̂0 makes the step mean non-affine in the "
            "network output; rebuild the scheduler with thresholding=False."
        )
    if config.get("clip_sample", False):
        raise UnsupportedSchedulerError(
            "scheduler.config.clip_sample=True: clipping x̂0 makes the step mean non-affine in the network output; "
            "rebuild the scheduler with clip_sample=False."
        )


def _as_timesteps(timestep: TimestepLike, name: str) -> torch.Tensor:
    t = torch.as_tensor(timestep)
    if t.is_floating_point():
        if not torch.all(t == t.round()):
            raise ValueError(f"{name}: expected integer timesteps, got {timestep!r}")
    elif t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"{name}: expected an integer or a tensor of integer timesteps, got dtype {t.dtype}")
    if t.dim() > 1:
        raise ValueError(f"{name}: expected a number or a 1-D [P] tensor, got shape {tuple(t.shape)}")
    return t.to(torch.int64)


def _previous_timestep(scheduler, kind: str, t: torch.Tensor) -> torch.Tensor:
    """The step's previous timestep, derived exactly as that scheduler's own ``step`` derives it."""
    if scheduler.num_inference_steps is None:
        raise ValueError(
            "scheduler: call scheduler.set_timesteps(num_inference_steps) first (or pass prev_timestep=)"
        )
    if kind == "ddim":
        return t - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    timesteps = scheduler.timesteps.to(torch.int64).cpu()
    flat = t.reshape(-1).cpu()
    prev = torch.empty_like(flat)
    for i, value in enumerate(flat.tolist()):
        where = (timesteps == value).nonzero()
        if where.numel() == 0:
            raise ValueError(f"timestep: {value} is not in scheduler.timesteps {timesteps.tolist()}")
        index = int(where[0, 0])
        prev[i] = -1 if index == len(timesteps) - 1 else timesteps[index + 1]
    return prev.reshape(t.shape).to(t.device)


def _alpha_bar(scheduler, kind: str, t: torch.Tensor, prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    alphas_cumprod = scheduler.alphas_cumprod.to(device=t.device, dtype=torch.float64)
    n = alphas_cumprod.shape[0]
    if torch.any((t < 0) | (t >= n)):
        raise ValueError(f"timestep: expected values in [0, {n - 1}], got {t.tolist()}")
    if torch.any(prev >= t):
        raise ValueError(f"prev_timestep: expected a value below timestep {t.tolist()}, got {prev.tolist()}")
    final = float(scheduler.final_alpha_cumprod) if kind == "ddim" else 1.0
    alpha_t = alphas_cumprod[t]
    alpha_prev = torch.where(prev >= 0, alphas_cumprod[prev.clamp(min=0)], torch.full_like(alpha_t, final))
    return alpha_t, alpha_prev


def x0_coefficients(scheduler, timestep: TimestepLike) -> tuple[torch.Tensor, torch.Tensor]:
    """``(p_x, p_o)`` with ``x̂0 = p_x·x_t + p_o·o`` for the scheduler's prediction type (float64 tensors); for a
    flow scheduler (velocity ``o``) ``(1, −σ)`` with σ the scheduler's sigma at ``timestep``."""
    if is_flow_scheduler(scheduler):
        return flow_x0_coefficients(scheduler.sigmas.double()[flow_step_index(scheduler, timestep)])
    kind = _scheduler_kind(scheduler)
    t = _as_timesteps(timestep, "timestep")
    alpha_t, _ = _alpha_bar(scheduler, kind, t, t - 1)
    (p_x, p_o), _ = _prediction_table(scheduler, alpha_t)
    return p_x, p_o


def _prediction_table(scheduler, alpha_t: torch.Tensor):
    """``((p_x, p_o), (e_x, e_o))`` with x̂0 = p_x·x + p_o·o and ε̂ = e_x·x + e_o·o."""
    sqrt_a, sqrt_b = alpha_t.sqrt(), (1 - alpha_t).sqrt()
    one, zero = torch.ones_like(alpha_t), torch.zeros_like(alpha_t)
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return (1 / sqrt_a, -sqrt_b / sqrt_a), (zero, one)
    if prediction_type == "sample":
        return (zero, one), (1 / sqrt_b, -sqrt_a / sqrt_b)
    if prediction_type == "v_prediction":
        return (sqrt_a, -sqrt_b), (sqrt_b, sqrt_a)
    raise UnsupportedSchedulerError(
        f"scheduler.config.prediction_type: expected 'epsilon', 'sample' or 'v_prediction', got {prediction_type!r}"
    )


def _step_alphas(scheduler, kind: str, timestep, prev_timestep):
    """The timesteps as a tensor and ᾱ at them and at their previous timesteps (derived as the scheduler's own
    ``step`` derives them when ``prev_timestep`` is None)."""
    t = _as_timesteps(timestep, "timestep")
    if prev_timestep is None:
        prev = _previous_timestep(scheduler, kind, t)
    else:
        prev = _as_timesteps(prev_timestep, "prev_timestep").to(t.device).expand_as(t)
    return (t, *_alpha_bar(scheduler, kind, t, prev))


def flow_time_step(scheduler, timestep: TimestepLike, prev_timestep: TimestepLike | None = None) -> torch.Tensor:
    """|dt|, the length of the step ``timestep -> prev_timestep`` in flow-matching time: the time τ of the
    rectified-flow interpolant x = (1 − τ)·x̂0 + τ·ε with the same signal-to-noise ratio as ᾱ,

        τ = √(1 − ᾱ) / (√ᾱ + √(1 − ᾱ))      (x_t / (√ᾱ + √(1 − ᾱ)) is that interpolant),

    so |dt| = τ(t) − τ(prev). It is what Flow-GRPO's public KL (÷ std_dev_t² = σ²/|dt|) leaves on a DDIM/DDPM step:
    the KL of two Gaussians is unchanged by the rescaling, so the public KL of a DDIM step read in flow coordinates is
    |dt| times its exact KL. float64, shaped like ``timestep``; ``prev_timestep`` as in :func:`step_coefficients`.
    On a flow scheduler it is σ_i − σ_{i+1}, the scheduler's own step length."""
    if is_flow_scheduler(scheduler):
        sigmas = scheduler.sigmas.double()
        index = flow_step_index(scheduler, timestep)
        after = sigmas[index + 1] if prev_timestep is None else (
            torch.as_tensor(prev_timestep, dtype=torch.float64) / scheduler.config.num_train_timesteps)
        return sigmas[index] - after
    kind = _scheduler_kind(scheduler)
    t, alpha_t, alpha_prev = _step_alphas(scheduler, kind, timestep, prev_timestep)

    def tau(alpha):
        return (1 - alpha).sqrt() / (alpha.sqrt() + (1 - alpha).sqrt())

    return tau(alpha_t) - tau(alpha_prev)


def step_coefficients(
    scheduler,
    timestep: TimestepLike,
    prev_timestep: TimestepLike | None = None,
    eta: float | None = 0.0,
    sde: str | None = None,
) -> StepCoefficients:
    """The affine Gaussian form ``(a, b, sigma)`` of the reverse step ``timestep -> prev_timestep``.

    Args:
        scheduler: a diffusers ``DDIMScheduler`` or ``DDPMScheduler`` (subclasses too), after ``set_timesteps``
            unless ``prev_timestep`` is given; or a ``FlowMatchEulerDiscreteScheduler`` after ``set_timesteps``
            (SD3, FLUX: ``sde`` picks the flow SDE, see :mod:`rdpo_zoo.flow_steps`; ``sigma`` is then the step's
            std, not the scheduler's sigma).
        timestep: the current timestep, a number or a ``[P]`` tensor (for a flow scheduler one of its float
            ``timesteps``).
        prev_timestep: the step's target timestep; by default derived as the scheduler's own ``step`` derives
            it (a negative value means "past the end": DDIM's ``final_alpha_cumprod``, DDPM's 1).
        eta: DDIM's η, as ``DDIMScheduler.step`` takes it (0 = deterministic, σ = 0; 1 = DDPM-like). DDPM has
            no η: pass ``None`` or 0.0 (the default); any other value is refused. For a flow scheduler, the SDE's
            noise level (``sde`` given and ``eta=None``: 0.7, Flow-GRPO's).
        sde: flow schedulers only: ``"flow-sde"`` (Flow-GRPO), ``"dance-sde"`` (DanceGRPO) or ``"cps"``; None
            with η 0 is diffusers' own Euler step. Refused for DDIM/DDPM.

    Returns:
        ``StepCoefficients(a, b, sigma)``, float64 tensors shaped like ``timestep``. ``sigma`` may be 0 (η = 0, a
        last step without noise): that is a valid deterministic step, but it has no likelihood, and the
        log-probability functions refuse it.
    """
    if is_flow_scheduler(scheduler):
        return flow_step_coefficients_at(scheduler, timestep, prev_timestep, sde=sde, eta=eta)
    kind = _scheduler_kind(scheduler)
    if sde is not None:
        raise UserInputError(
            f"sde: {sde!r} is a flow-matching SDE for FlowMatchEulerDiscreteScheduler (SD3, FLUX); "
            f"{type(scheduler).__name__} takes eta only (leave sde=None)"
        )
    _check_affine(scheduler)
    t, alpha_t, alpha_prev = _step_alphas(scheduler, kind, timestep, prev_timestep)
    (p_x, p_o), (e_x, e_o) = _prediction_table(scheduler, alpha_t)
    beta_t, beta_prev = 1 - alpha_t, 1 - alpha_prev

    if kind == "ddim":
        if eta is None:
            eta = 0.0
        if not (isinstance(eta, (int, float)) and math.isfinite(eta) and eta >= 0):
            raise ValueError(f"eta: expected a finite number >= 0 (DDIM's η), got {eta!r}")
        variance = beta_prev / beta_t * (1 - alpha_t / alpha_prev)
        sigma = eta * variance.sqrt()
        # DDIM's "direction pointing to x_t" uses sqrt(1 − ᾱ_prev − σ²); for η > 1 it turns imaginary (NaN).
        direction_sq = 1 - alpha_prev - sigma**2
        if torch.any(direction_sq < 0):
            raise ValueError(f"eta: {eta} makes 1 − ᾱ_prev − σ² negative at timestep {t.tolist()}; use eta <= 1")
        direction = direction_sq.sqrt()
        a = alpha_prev.sqrt() * p_x + direction * e_x
        b = alpha_prev.sqrt() * p_o + direction * e_o
        return StepCoefficients(a, b, sigma)

    if eta not in (None, 0, 0.0):
        raise ValueError(
            f"eta: DDPMScheduler has no η (its variance is set by variance_type), got eta={eta!r}; "
            "pass eta=None, or use DDIMScheduler for η-interpolated steps"
        )
    variance_type = scheduler.config.variance_type
    if variance_type not in _GAUSSIAN_DDPM_VARIANCES:
        reason = (
            "the variance depends on the network output"
            if variance_type in ("learned", "learned_range")
            else "diffusers' step takes the square root of a log-variance there, which is not a Gaussian step"
        )
        raise UnsupportedSchedulerError(
            f"scheduler.config.variance_type={variance_type!r}: {reason}; use variance_type='fixed_small' "
            f"(or 'fixed_large'), or {_USE_INSTEAD}"
        )
    step_alpha = alpha_t / alpha_prev
    step_beta = 1 - step_alpha
    x0_coeff = alpha_prev.sqrt() * step_beta / beta_t
    xt_coeff = step_alpha.sqrt() * beta_prev / beta_t
    a = x0_coeff * p_x + xt_coeff
    b = x0_coeff * p_o
    if variance_type == "fixed_large":
        variance = step_beta
    else:
        variance = (beta_prev / beta_t * step_beta).clamp(min=1e-20)
    # diffusers adds no noise when t == 0.
    sigma = torch.where(t > 0, variance.sqrt(), torch.zeros_like(variance))
    return StepCoefficients(a, b, sigma)
