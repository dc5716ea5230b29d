"""Flow-matching steps as affine Gaussians: Flow-SDE (Flow-GRPO), Dance-SDE (DanceGRPO) and CPS on
diffusers' ``FlowMatchEulerDiscreteScheduler``.

Names: ``sigma`` is always the *scheduler's* sigma, the noise level of the interpolant
x = (1 − σ)·x0 + σ·ε (σ = timestep / num_train_timesteps); ``std`` is the standard deviation of a reverse step.
Step i goes from σ_i to σ_{i+1} < σ_i, dt = σ_{i+1} − σ_i < 0, ``v`` is the (guided) velocity the transformer
predicts and η the noise level. Each public sampler's update is affine in (x_i, v)::

    x_{i+1} ~ N(a·x_i + b·v, std²)

flow-sde (Flow-GRPO, ``sde_step_with_logprob``): std_dev_t = η·√(σ_i / (1 − σ_i)),
    mean = x·(1 + std_dev_t²·dt / (2σ_i)) + v·(1 + std_dev_t²·(1 − σ_i) / (2σ_i))·dt,  std = std_dev_t·√(−dt), so
    a = 1 − η²(σ_i − σ_{i+1}) / (2(1 − σ_i)),  b = (1 + η²/2)·dt,  std = η·√(σ_i/(1 − σ_i))·√(σ_i − σ_{i+1}).
    At σ_i = 1 (the first step of every SD3/FLUX schedule) the public code replaces 1 − σ_i by 1 − σ_1 (σ_1 =
    sigmas[1], the next sigma of that step), which gives a = 1 − η²/2, b = dt, std = η.
dance-sde (DanceGRPO, ``flux_step`` with ``sde_solver``): std = η·√(σ_i − σ_{i+1}),
    mean = x + dt·[v + ½η²·(x + (1 − σ_i)·v)/σ_i]  (its score estimate is −(x + (1 − σ_i)·v)/σ_i), so
    a = 1 − η²(σ_i − σ_{i+1}) / (2σ_i),  b = dt·(1 + η²(1 − σ_i)/(2σ_i)).
cps (coefficients-preserving sampling, Flow-GRPO's ``sde_type="cps"``): std = σ_{i+1}·sin(ηπ/2),
    mean = (1 − σ_{i+1})·x̂0 + √(σ_{i+1}² − std²)·x̂1 with x̂0 = x − σ_i·v, x̂1 = x + (1 − σ_i)·v; with
    c = cos(ηπ/2):  a = (1 − σ_{i+1}) + σ_{i+1}·c,  b = −σ_i(1 − σ_{i+1}) + (1 − σ_i)·σ_{i+1}·c.
    At η = 1 it is diffusers' own ``stochastic_sampling=True`` step; its last step (σ_{i+1} = 0) has std = 0.

At η = 0 every row is diffusers' Euler step (a = 1, b = dt, std = 0): a deterministic step with no likelihood.
The one-step prediction is x̂0 = x_i − σ_i·v.

Log-probability conventions. The exact Gaussian (constants and log std included) is the default everywhere; the
log-ratio of two policies is the same either way. CPS's public code drops the variance: its log-prob is
−mean (y − μ)², i.e. the Gaussian log-density with std 1/√2 up to a constant (``log_prob="public"`` of the cps
step family; ``PUBLIC_CPS_LOG_PROB_STD``). DanceGRPO's public log-prob drops its constants too (a dangling
statement), which changes no ratio.

The forward (training) process, for noised pairs: x_t = (1 − σ)·x0 + σ·ε and the target of v is ε − x0, with the
training timesteps drawn as diffusers' SD3 training scripts draw them (logit-normal by default, see
:func:`sample_flow_train_timesteps`).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch

from rdpo_zoo.errors import UserInputError
from rdpo_zoo.gaussian_step import StepCoefficients, UnsupportedSchedulerError

__all__ = [
    "FLOW_SDES", "DEFAULT_FLOW_ETA", "LOG_PROB_CONVENTIONS", "PUBLIC_CPS_LOG_PROB_STD", "TRAIN_WEIGHTINGS",
    "flow_step_coefficients", "flow_schedule_coefficients", "flow_step_index", "flow_x0_coefficients",
    "make_flow_scheduler", "resolution_shift_options", "check_flow_scheduler_config", "is_flow_scheduler",
    "check_flow_sde", "check_flow_eta", "flow_add_noise", "flow_training_target", "sample_flow_train_timesteps",
]

FLOW_SDES = ("flow-sde", "dance-sde", "cps")
DEFAULT_FLOW_ETA = 0.7  # Flow-GRPO's noise_level (config/base.py)
LOG_PROB_CONVENTIONS = ("exact", "public")
# −(y − μ)² is the Gaussian log-density with std 1/√2 (1/(2·std²) = 1) up to a constant.
PUBLIC_CPS_LOG_PROB_STD = 1 / math.sqrt(2)
# diffusers' compute_density_for_timestep_sampling; "none" = uniform u.
TRAIN_WEIGHTINGS = ("logit_normal", "mode", "none")
FLOW_SCHEDULER = "FlowMatchEulerDiscreteScheduler"

Number = Union[int, float, torch.Tensor]


# ---------------------------------------------------------------------------------------------- validation
def check_flow_sde(sde) -> str:
    if sde not in FLOW_SDES:
        raise UserInputError(f"sde: expected one of {', '.join(FLOW_SDES)}, got {sde!r}")
    return sde


def check_flow_eta(eta, sde: str) -> float:
    """η as a float: finite, >= 0; CPS's η is in [0, 1] (its std σ_{i+1}·sin(ηπ/2) reaches σ_{i+1} at η = 1)."""
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not math.isfinite(eta) or eta < 0:
        raise UserInputError(f"eta: expected a finite number >= 0 (the {sde} noise level), got {eta!r}")
    if sde == "cps" and eta > 1:
        raise UserInputError(f"eta: cps takes η in [0, 1] (std = σ_next·sin(ηπ/2), all fresh noise at 1), got {eta}")
    return float(eta)


def is_flow_scheduler(scheduler_or_config) -> bool:
    """Whether a scheduler (or its config dict) is diffusers' ``FlowMatchEulerDiscreteScheduler`` (or a subclass)."""
    if isinstance(scheduler_or_config, dict):
        name = scheduler_or_config.get("_class_name")
        if name is not None:
            return name == FLOW_SCHEDULER
        keys = scheduler_or_config.keys()
        return "beta_start" not in keys and ("shift" in keys or "use_dynamic_shifting" in keys)
    from diffusers import FlowMatchEulerDiscreteScheduler

    return isinstance(scheduler_or_config, FlowMatchEulerDiscreteScheduler)


def check_flow_scheduler_config(config: dict, what: str = "flow-sde") -> None:
    """One-line error when ``config`` is not a flow-matching Euler scheduler these steps can take."""
    if not is_flow_scheduler(config):
        name = config.get("_class_name", "a scheduler with betas (DDIM/DDPM-style)")
        raise UnsupportedSchedulerError(
            f"scheduler: {what} needs a {FLOW_SCHEDULER} (a flow-matching model: SD3, FLUX), got {name}; "
            "use --scheduler ddim or ddpm for UNet (ε/v-prediction) models"
        )
    if config.get("invert_sigmas", False):
        raise UnsupportedSchedulerError(
            "scheduler.config.invert_sigmas=True: the sigmas rise along the chain (Mochi); the flow SDEs need "
            "σ falling from 1 towards 0"
        )


def _as_sigmas(value: Number, name: str) -> torch.Tensor:
    s = torch.as_tensor(value).to("cpu", torch.float64)
    if s.dim() > 1:
        raise UserInputError(f"{name}: expected a number or a 1-D [P] tensor, got shape {tuple(s.shape)}")
    return s


# ------------------------------------------------------------------------------------------------ the table
def flow_step_coefficients(
    sigma: Number, sigma_next: Number, sde: str = "flow-sde", eta: float = DEFAULT_FLOW_ETA
) -> StepCoefficients:
    """``(a, b, std)`` of the step σ_i = ``sigma`` -> σ_{i+1} = ``sigma_next`` of ``sde`` with noise level ``eta``
    (the module docstring has the table and its derivation); float64 tensors shaped like ``sigma``.

    ``StepCoefficients.sigma`` holds the step std (the field name is the engine's; ``.std`` is the same value).
    At σ_i = 1 flow-sde uses the public first-step form (1 − σ_i replaced by 1 − σ_{i+1}), which is the public
    code's on the scheduler's own schedule (where σ_{i+1} = sigmas[1])."""
    check_flow_sde(sde)
    eta = check_flow_eta(eta, sde)
    s, s_next = torch.broadcast_tensors(_as_sigmas(sigma, "sigma"), _as_sigmas(sigma_next, "sigma_next"))
    if torch.any((s <= 0) | (s > 1)):
        raise UserInputError(f"sigma: expected scheduler sigmas in (0, 1], got {s.tolist()}")
    if torch.any((s_next < 0) | (s_next >= s)):
        raise UserInputError(f"sigma_next: expected values in [0, sigma) (σ falls along the chain), got "
                             f"{s_next.tolist()} after {s.tolist()}")
    dt = s_next - s
    if eta == 0:  # every SDE is diffusers' Euler step; written out so that it is exact
        return StepCoefficients(torch.ones_like(s), dt, torch.zeros_like(s))
    if sde == "flow-sde":
        one_minus = torch.where(s == 1, 1 - s_next, 1 - s)
        std_dev_t_sq = eta**2 * s / one_minus  # Flow-GRPO's std_dev_t², the per-unit-time variance
        a = 1 - eta**2 * (s - s_next) / (2 * one_minus)
        b = torch.where(s == 1, dt, (1 + eta**2 / 2) * dt)
        std = (std_dev_t_sq * (s - s_next)).sqrt()
    elif sde == "dance-sde":
        a = 1 - eta**2 * (s - s_next) / (2 * s)
        b = dt * (1 + eta**2 * (1 - s) / (2 * s))
        std = eta * (s - s_next).sqrt()
    else:  # cps
        c = math.cos(eta * math.pi / 2)
        a = (1 - s_next) + s_next * c
        b = -s * (1 - s_next) + (1 - s) * s_next * c
        std = s_next * math.sin(eta * math.pi / 2)
    return StepCoefficients(a, b, std)


def flow_schedule_coefficients(scheduler, sde: str = "flow-sde", eta: float = DEFAULT_FLOW_ETA) -> StepCoefficients:
    """``(a, b, std)`` of every step of a ``FlowMatchEulerDiscreteScheduler`` after ``set_timesteps``: ``[T]``
    float64 tensors, row i the step ``scheduler.timesteps[i]`` -> the next (index addressing)."""
    sigmas = _schedule_sigmas(scheduler)
    return flow_step_coefficients(sigmas[:-1], sigmas[1:], sde, eta)


def flow_x0_coefficients(sigma: Number) -> tuple[torch.Tensor, torch.Tensor]:
    """``(p_x, p_o)`` with x̂0 = p_x·x_t + p_o·v = x_t − σ·v (float64 tensors shaped like ``sigma``)."""
    s = _as_sigmas(sigma, "sigma")
    return torch.ones_like(s), -s


def _schedule_sigmas(scheduler) -> torch.Tensor:
    config = dict(scheduler.config)
    if not is_flow_scheduler(scheduler):
        config["_class_name"] = type(scheduler).__name__
    check_flow_scheduler_config(config)
    if scheduler.num_inference_steps is None:
        raise UserInputError("scheduler: call scheduler.set_timesteps(num_inference_steps) first")
    return scheduler.sigmas.to("cpu", torch.float64)


def flow_step_index(scheduler, timestep: Number) -> torch.Tensor:
    """The step index (int64, shaped like ``timestep``) of each float timestep in ``scheduler.timesteps``.

    A value matches the scheduler's float32 timestep it rounds to within 1e-3 (timesteps printed to three
    decimals, e.g. by ``rdpo-zoo schedule``, still match); anything else is an error, as an integer *index*
    passed as a timestep would be."""
    _schedule_sigmas(scheduler)
    schedule = scheduler.timesteps.to("cpu", torch.float64)
    t = torch.as_tensor(timestep)
    if t.dtype == torch.bool or t.is_complex():
        raise UserInputError(f"timestep: expected a number or a tensor of the scheduler's timesteps, got {t.dtype}")
    t = t.to("cpu", torch.float64)
    if t.dim() > 1:
        raise UserInputError(f"timestep: expected a number or a 1-D [P] tensor, got shape {tuple(t.shape)}")
    distance, index = (t.reshape(-1, 1) - schedule.reshape(1, -1)).abs().min(dim=1)
    if torch.any(distance > 1e-3):
        shown = [round(v, 3) for v in schedule.tolist()]
        raise UserInputError(
            f"timestep: {t.tolist()} is not one of scheduler.timesteps {shown} (flow timesteps are σ·"
            f"{scheduler.config.num_train_timesteps}; to address a step by its index use the step family's "
            "coefficients(index) or flow_schedule_coefficients(...)[index])"
        )
    return index.reshape(t.shape)


def flow_step_coefficients_at(
    scheduler, timestep: Number, prev_timestep: Optional[Number] = None, sde: Optional[str] = None,
    eta: Optional[float] = None,
) -> StepCoefficients:
    """``schedulers.step_coefficients`` for a ``FlowMatchEulerDiscreteScheduler`` (it dispatches here).

    ``timestep`` is one of ``scheduler.timesteps`` (or a ``[P]`` tensor of them); the next sigma is the
    scheduler's ``sigmas[index + 1]`` (the final 0 after the last step) unless ``prev_timestep`` names another
    target timestep (σ_next = prev_timestep / num_train_timesteps; 0 = the end). ``sde=None`` with η 0/None is
    diffusers' own Euler step; η > 0 needs an ``sde``."""
    sigmas = _schedule_sigmas(scheduler)
    if sde is None:
        if eta not in (None, 0, 0.0):
            raise UserInputError(
                f"sde: a flow scheduler's step with eta={eta!r} needs sde= one of {', '.join(FLOW_SDES)} "
                "(eta=0 is diffusers' deterministic Euler step)"
            )
        sde, eta = "flow-sde", 0.0
    elif eta is None:
        eta = DEFAULT_FLOW_ETA
    index = flow_step_index(scheduler, timestep)
    sigma = sigmas[index]
    if prev_timestep is None:
        sigma_next = sigmas[index + 1]
    else:
        sigma_next = _as_sigmas(prev_timestep, "prev_timestep") / scheduler.config.num_train_timesteps
        if torch.any(sigma_next < 0):
            raise UserInputError(f"prev_timestep: expected values >= 0, got {prev_timestep!r}")
    return flow_step_coefficients(sigma, sigma_next, sde, eta)


# --------------------------------------------------------------------------------------------- schedules
def make_flow_scheduler(
    scheduler_config: dict, num_steps: int, *, mu: Optional[float] = None, sigmas: Optional[Sequence[float]] = None
):
    """A ``FlowMatchEulerDiscreteScheduler`` from ``scheduler_config`` with ``set_timesteps`` done as the pipeline
    does it: SD3/SD3.5 pass neither ``mu`` nor ``sigmas`` (static ``shift`` from the config); FLUX
    (``use_dynamic_shifting=True``) passes ``mu`` (its resolution-dependent shift) and ``sigmas`` =
    linspace(1, 1/T, T); :func:`resolution_shift_options` computes both."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    check_flow_scheduler_config(dict(scheduler_config))
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise UserInputError(f"num_steps: expected an integer >= 1, got {num_steps!r}")
    if scheduler_config.get("use_dynamic_shifting", False) and mu is None:
        raise UserInputError(
            "mu: this scheduler shifts its sigmas by resolution (use_dynamic_shifting=True, FLUX); pass mu (the "
            "pipeline's calculate_shift of the image sequence length, see resolution_shift_options)"
        )
    if sigmas is not None and len(sigmas) != num_steps:
        raise UserInputError(f"sigmas: expected {num_steps} values (one per step), got {len(sigmas)}")
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(dict(scheduler_config))
    scheduler.set_timesteps(num_steps, sigmas=None if sigmas is None else list(sigmas), mu=mu)
    return scheduler


def resolution_shift_options(scheduler_config: dict, num_steps: int, image_seq_len: int, *, flux_sigmas: bool) -> dict:
    """``{"mu": ..., "sigmas": ...}`` as diffusers' SD3 (``flux_sigmas=False``) or FLUX (``True``) pipeline
    computes them for ``num_steps`` steps at ``image_seq_len`` latent tokens ((h/2)·(w/2) of the latents):
    ``mu`` = ``calculate_shift`` with the config's base/max sequence lengths and shifts when the config uses
    dynamic shifting (else None); ``sigmas`` = linspace(1, 1/T, T) for FLUX (else None)."""
    import numpy as np
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    mu = None
    if scheduler_config.get("use_dynamic_shifting", False):
        mu = calculate_shift(
            image_seq_len, scheduler_config.get("base_image_seq_len", 256),
            scheduler_config.get("max_image_seq_len", 4096), scheduler_config.get("base_shift", 0.5),
            scheduler_config.get("max_shift", 1.15),
        )
    sigmas = np.linspace(1.0, 1 / num_steps, num_steps).tolist() if flux_sigmas else None
    return {"mu": mu, "sigmas": sigmas}


# ------------------------------------------------------------------------------------- the forward process
def _broadcast_sigma(sigma: Number, like: torch.Tensor) -> torch.Tensor:
    s = torch.as_tensor(sigma, device=like.device, dtype=torch.float32)
    if s.dim() == 1:
        s = s.reshape(-1, *([1] * (like.dim() - 1)))
    return s


def flow_add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: Number) -> torch.Tensor:
    """x_t = (1 − σ)·x0 + σ·ε (rectified flow; diffusers' ``scale_noise``); ``sigma`` a number or ``[B]``."""
    s = _broadcast_sigma(sigma, x0)
    return (1 - s) * x0.float() + s * noise.float()


def flow_training_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The velocity v = dx_t/dσ = ε − x0 that the transformer is trained to predict."""
    return noise.float() - x0.float()


def sample_flow_train_timesteps(
    scheduler_config: dict, n: int, generator: torch.Generator, weighting: str = "logit_normal",
    logit_mean: float = 0.0, logit_std: float = 1.0, mode_scale: float = 1.29,
) -> torch.Tensor:
    """``[n]`` float32 training timesteps (the denoiser's values; σ = t / num_train_timesteps), drawn as diffusers'
    ``train_dreambooth_lora_sd3.py`` draws them: u from ``compute_density_for_timestep_sampling`` (logit-normal
    with mean 0 and std 1 by default, that script's default; ``"none"`` is uniform), index = ⌊u·N⌋ into the
    scheduler's training schedule (its static ``shift`` applied, as in that script)."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.training_utils import compute_density_for_timestep_sampling

    check_flow_scheduler_config(dict(scheduler_config))
    if weighting not in TRAIN_WEIGHTINGS:
        raise UserInputError(f"weighting: expected one of {', '.join(TRAIN_WEIGHTINGS)}, got {weighting!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UserInputError(f"n: expected an integer >= 1, got {n!r}")
    train = FlowMatchEulerDiscreteScheduler.from_config(dict(scheduler_config))
    u = compute_density_for_timestep_sampling(weighting, n, logit_mean, logit_std, mode_scale,
                                              device=generator.device, generator=generator)
    count = train.config.num_train_timesteps
    # u = 1 exactly (possible for "mode" at u' = 0) would index past the end: clamp, as the last bin.
    index = (u * count).long().clamp(0, count - 1).cpu()
    return train.timesteps[index].to(torch.float32)
