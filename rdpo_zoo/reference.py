"""Reference maths in plain PyTorch: Gaussian step log-probabilities and paired policy/reference log-ratios.

This module is the definition of correctness: the Triton kernels of ``rdpo_zoo.kernels`` are tested against
it. Read it beside ``docs/maths.md``.

For a pair ``p`` and branch ``k`` (column 0 = preferred, 1 = dispreferred) the log-ratio is

    r_{p,k} = log π_θ(y | x_t) − log π_ref(y | x_t)
            = s_p · Σ_d b·Δo · (2(y − a·x_t) − b·(o_θ + o_ref)),     Δo = o_θ − o_ref,
      s_p   = 1/(2σ_p²)  (÷ D for reduction="mean")

which is ``s·(‖y − μ_ref‖² − ‖y − μ_θ‖²)`` factored so that fp32 stays accurate at large D (the difference of
two large sums loses about 40× more precision at D = 16384).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

import torch

__all__ = [
    "REDUCTIONS",
    "DEFAULT_MIN_SIGMA",
    "PairedInputs",
    "check_paired_inputs",
    "check_paired_tensors",
    "gaussian_log_prob",
    "step_log_prob",
    "step_kl",
    "KL_CONVENTIONS",
    "paired_log_ratios",
]

REDUCTIONS = ("mean", "sum")
#: σ must be at least this fraction of the step's scale max(|a|, |b|). DDPM clamps its last variance to 1e-20
#: (σ = 1e-10, log-ratio weights of 1e19); the smallest legitimate σ of a 20-step DDIM η = 1 chain is ~2e-2.
DEFAULT_MIN_SIGMA = 1e-4
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

Coefficient = Union[float, int, torch.Tensor]


def check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: expected one of {', '.join(map(repr, REDUCTIONS))}, got {reduction!r}")
    return reduction


def _check_float_tensor(name: str, tensor, optional: bool = False) -> None:
    if tensor is None and optional:
        return
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected a floating tensor (float16, bfloat16, float32 or float64), got {tensor.dtype}")


@dataclass(frozen=True)
class PairedInputs:
    """Validated shapes of a paired log-ratio call: P pairs, D latent elements, and which tensors are shared."""

    P: int
    D: int
    device: torch.device
    compute_dtype: torch.dtype
    a: torch.Tensor  # [P], compute dtype, on device
    b: torch.Tensor
    sigma: torch.Tensor

    @property
    def scale(self) -> torch.Tensor:
        """``s_p = 1/(2σ²)``: multiply by 1/D for the mean reduction."""
        return 1.0 / (2.0 * self.sigma * self.sigma)


def _coefficient(name: str, value: Coefficient, P: int, device, dtype) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        if value.dtype == torch.bool or value.is_complex():
            raise TypeError(f"{name}: expected a real number or a [P] tensor, got dtype {value.dtype}")
        if value.dim() > 1 or (value.dim() == 1 and value.shape[0] not in (1, P)):
            raise ValueError(f"{name}: expected a scalar or a [P] = [{P}] tensor, got shape {tuple(value.shape)}")
        if value.device != device and value.device.type != "cpu":
            raise ValueError(f"{name}: expected a tensor on {device} (the device of y) or the CPU, got {value.device}")
        value = value.to(device=device, dtype=dtype)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        value = torch.tensor(float(value), device=device, dtype=dtype)
    else:
        raise TypeError(f"{name}: expected a number or a [P] tensor, got {type(value).__name__}")
    return value.reshape(-1).expand(P).contiguous() if value.numel() == 1 else value.reshape(P)


def check_paired_inputs(
    y: torch.Tensor,
    x_t: Optional[torch.Tensor],
    o_theta: torch.Tensor,
    o_ref: torch.Tensor,
    a: Coefficient,
    b: Coefficient,
    sigma: Coefficient,
    reduction: str = "mean",
    min_sigma: float = DEFAULT_MIN_SIGMA,
) -> PairedInputs:
    """Validate a paired log-ratio call and return its shapes; every error names the argument at fault.

    Each of ``y``, ``x_t``, ``o_theta``, ``o_ref`` is ``[P, D]`` (shared by both branches: one network pass
    serves the pair) or ``[P, 2, D]`` (one row per branch). ``x_t`` may be ``None`` when ``a`` is 0 (Diffusion-DPO's
    noised pairs). ``a``, ``b``, ``sigma`` are numbers or ``[P]`` tensors.
    """
    P, D, device, compute_dtype = check_paired_tensors(y, x_t, o_theta, o_ref, reduction, min_sigma)
    return _check_coefficients(x_t, a, b, sigma, min_sigma, P, D, device, compute_dtype)


def check_paired_tensors(
    y: torch.Tensor,
    x_t: Optional[torch.Tensor],
    o_theta: torch.Tensor,
    o_ref: torch.Tensor,
    reduction: str = "mean",
    min_sigma: float = DEFAULT_MIN_SIGMA,
) -> tuple[int, int, torch.device, torch.dtype]:
    """The part of ``check_paired_inputs`` that reads no values (types, dtypes, devices, shapes, options):
    ``(P, D, device, compute_dtype)``. It traces under ``torch.compile``."""
    check_reduction(reduction)
    for name, tensor in (("y", y), ("o_theta", o_theta), ("o_ref", o_ref)):
        _check_float_tensor(name, tensor)
    _check_float_tensor("x_t", x_t, optional=True)
    named = [("y", y), ("x_t", x_t), ("o_theta", o_theta), ("o_ref", o_ref)]
    named = [(n, t) for n, t in named if t is not None]
    device = y.device
    for name, tensor in named:
        if tensor.device != device:
            raise ValueError(f"{name}: expected a tensor on {device} (the device of y), got one on {tensor.device}")
    if y.dim() not in (2, 3):
        raise ValueError(f"y: expected shape [P, 2, D] (or [P, D] shared by both branches), got {tuple(y.shape)}")
    P, D = y.shape[0], y.shape[-1]
    for name, tensor in named:
        ok_shape = (tensor.dim() == 2 and tuple(tensor.shape) == (P, D)) or (
            tensor.dim() == 3 and tuple(tensor.shape) == (P, 2, D)
        )
        if not ok_shape:
            raise ValueError(
                f"{name}: expected shape [P, D] = [{P}, {D}] (shared by both branches) or [P, 2, D] = [{P}, 2, {D}] "
                f"(per branch), taking P and D from y, got {tuple(tensor.shape)}"
            )
    if P < 1 or D < 1:
        raise ValueError(f"y: expected P >= 1 pairs and D >= 1 elements, got shape {tuple(y.shape)}")
    if not isinstance(min_sigma, (int, float)) or not min_sigma >= 0:
        raise ValueError(f"min_sigma: expected a number >= 0, got {min_sigma!r}")
    compute_dtype = torch.float64 if any(t.dtype == torch.float64 for _, t in named) else torch.float32
    return P, D, device, compute_dtype


def _check_coefficients(x_t, a, b, sigma, min_sigma, P, D, device, compute_dtype) -> PairedInputs:
    # Coefficients given as numbers or CPU tensors (the trainer's, from the scheduler's table) are checked on the
    # host and then copied over in one transfer: checking device tensors costs a device sync on every call.
    on_host = all(not isinstance(v, torch.Tensor) or v.device.type == "cpu" for v in (a, b, sigma))
    where = torch.device("cpu") if on_host else device
    a_t = _coefficient("a", a, P, where, compute_dtype)
    b_t = _coefficient("b", b, P, where, compute_dtype)
    sigma_t = _coefficient("sigma", sigma, P, where, compute_dtype)
    # NaN passes through (and propagates into the result, as documented); only a definite σ ≤ floor is refused.
    floor = min_sigma * torch.maximum(a_t.abs(), b_t.abs())  # in the compute dtype, as the kernels see it
    if on_host:  # P numbers: plain Python is cheaper than more tiny tensor ops
        rows = torch.stack([a_t, sigma_t, floor]).tolist()
        a_nonzero = any(v != 0 for v in rows[0])
        bad_steps = [i for i, (s, f) in enumerate(zip(rows[1], rows[2])) if s <= 0 or s < f or math.isinf(s)]
    else:
        bad = (sigma_t <= 0) | (sigma_t < floor) | torch.isinf(sigma_t)
        a_nonzero, any_bad = torch.stack([torch.any(a_t != 0), torch.any(bad)]).tolist()  # one device sync
        bad_steps = bad.nonzero()[:, 0].tolist() if any_bad else []
    if x_t is None and a_nonzero:
        raise ValueError("x_t: None is only allowed when a == 0 (x_t is then not read); pass x_t")
    if bad_steps:
        index = bad_steps[0]
        raise ValueError(
            f"sigma: step {index} has σ = {float(sigma_t[index]):.3g}, below min_sigma·max(|a|, |b|) = "
            f"{float(floor[index]):.3g} or not finite: a deterministic (η = 0) or degenerate last step has no "
            "likelihood; leave such steps out of the pairs (the sampler's `skip_degenerate_steps`), or sample "
            "with η > 0"
        )
    if where != device:
        # non_blocking: a blocking host-to-device copy synchronises the stream; from pageable memory CUDA stages the
        # bytes before returning, so the temporary may go at once
        a_t, b_t, sigma_t = torch.stack([a_t, b_t, sigma_t]).to(device, non_blocking=True).unbind(0)
    return PairedInputs(P, D, device, compute_dtype, a_t, b_t, sigma_t)


def gaussian_log_prob(y: torch.Tensor, mean: torch.Tensor, sigma: Coefficient, reduction: str = "mean") -> torch.Tensor:
    """``log N(y; mean, σ² I)`` per sample (dim 0), reduced over every other dim by ``reduction``.

    ``"mean"`` averages the per-element log-density over the D elements (the public DDPO/D3PO/SPO code does
    this, and their β assume it); ``"sum"`` is the exact log-likelihood.
    """
    check_reduction(reduction)
    _check_float_tensor("y", y)
    _check_float_tensor("mean", mean)
    if y.shape != mean.shape:
        raise ValueError(f"mean: expected the shape of y {tuple(y.shape)}, got {tuple(mean.shape)}")
    dtype = torch.float64 if torch.float64 in (y.dtype, mean.dtype) else torch.float32
    sigma = _coefficient("sigma", sigma, y.shape[0], y.device, dtype).reshape((-1,) + (1,) * (y.dim() - 1))
    if bool(torch.any(sigma <= 0)):
        raise ValueError("sigma: expected σ > 0; a deterministic step (η = 0) has no likelihood")
    elementwise = -((y.to(dtype) - mean.to(dtype)) ** 2) / (2 * sigma**2) - sigma.log() - 0.5 * math.log(2 * math.pi)
    flat = elementwise.reshape(y.shape[0], -1)
    return flat.mean(1) if reduction == "mean" else flat.sum(1)


def step_log_prob(
    y: torch.Tensor, x_t: torch.Tensor, o: torch.Tensor, a: Coefficient, b: Coefficient, sigma: Coefficient,
    reduction: str = "mean",
) -> torch.Tensor:
    """``log N(y; a·x_t + b·o, σ² I)`` per sample: the log-probability of one reverse step (DDPO's ratio)."""
    for name, tensor in (("x_t", x_t), ("o", o)):
        _check_float_tensor(name, tensor)
        if tensor.shape != y.shape:
            raise ValueError(f"{name}: expected the shape of y {tuple(y.shape)}, got {tuple(tensor.shape)}")
    n = y.shape[0]
    dtype = torch.float64 if torch.float64 in (y.dtype, x_t.dtype, o.dtype) else torch.float32
    shape = (-1,) + (1,) * (y.dim() - 1)
    a = _coefficient("a", a, n, y.device, dtype).reshape(shape)
    b = _coefficient("b", b, n, y.device, dtype).reshape(shape)
    return gaussian_log_prob(y, a * x_t.to(dtype) + b * o.to(dtype), sigma, reduction)


#: how a step's KL to the reference is weighted: ``exact``, the KL of the two step Gaussians; ``public``, Flow-GRPO's
#: (``scripts/train_sd3.py``: (μ_θ − μ_ref)²/(2·std_dev_t²), std_dev_t = σ/√|dt|), which is |dt| times the exact one
KL_CONVENTIONS = ("exact", "public")


def step_kl(
    o_theta: torch.Tensor, o_ref: torch.Tensor, b: Coefficient, sigma: Coefficient, reduction: str = "mean",
    convention: str = "exact", dt: Optional[Coefficient] = None,
) -> torch.Tensor:
    """``KL(N(a·x_t + b·o_θ, σ²I) ‖ N(a·x_t + b·o_ref, σ²I))`` per sample: per element b²(o_θ − o_ref)²/(2σ²) (a·x_t
    cancels), reduced over D by ``reduction``. ``convention="public"`` multiplies it by ``dt``, the step's length
    in flow-matching time (Flow-GRPO divides by std_dev_t² = σ²/|dt|); ``dt`` is required then, ignored otherwise.
    Autograd flows to ``o_theta`` (and ``o_ref`` if it asks)."""
    check_reduction(reduction)
    if convention not in KL_CONVENTIONS:
        raise ValueError(f"convention: expected one of {KL_CONVENTIONS}, got {convention!r}")
    _check_float_tensor("o_theta", o_theta)
    _check_float_tensor("o_ref", o_ref)
    if o_ref.shape != o_theta.shape:
        raise ValueError(f"o_ref: expected the shape of o_theta {tuple(o_theta.shape)}, got {tuple(o_ref.shape)}")
    n = o_theta.shape[0]
    dtype = torch.float64 if torch.float64 in (o_theta.dtype, o_ref.dtype) else torch.float32
    b = _coefficient("b", b, n, o_theta.device, dtype)
    sigma = _coefficient("sigma", sigma, n, o_theta.device, dtype)
    if bool(torch.any(sigma <= 0)):
        raise ValueError("sigma: expected σ > 0; a deterministic step (η = 0) has no likelihood")
    diff = (o_theta.to(dtype) - o_ref.to(dtype)).reshape(n, -1)
    squared = diff.square().mean(1) if reduction == "mean" else diff.square().sum(1)
    kl = b.square() * squared / (2 * sigma.square())
    if convention == "public":
        if dt is None:
            raise ValueError("dt: the public KL convention needs each step's length |dt| in flow-matching time")
        kl = kl * _coefficient("dt", dt, n, o_theta.device, dtype).abs()
    return kl


def _per_branch(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    tensor = tensor.to(dtype)
    return tensor.unsqueeze(1) if tensor.dim() == 2 else tensor  # [P, 1 or 2, D]


def paired_log_ratios(
    y: torch.Tensor,
    x_t: Optional[torch.Tensor],
    o_theta: torch.Tensor,
    o_ref: torch.Tensor,
    a: Coefficient,
    b: Coefficient,
    sigma: Coefficient,
    reduction: str = "mean",
    min_sigma: float = DEFAULT_MIN_SIGMA,
) -> torch.Tensor:
    """Policy/reference log-ratios ``[P, 2]`` of both branches of each pair (column 0 = preferred).

    Args:
        y: the branches' next states x_{t-1}, ``[P, 2, D]`` (or ``[P, D]`` shared, e.g. Diffusion-DPO's ε target).
        x_t: the current state, ``[P, D]`` shared by both branches (TailorPO/SPO/RDPO) or ``[P, 2, D]`` (D3PO);
            ``None`` when ``a`` is 0.
        o_theta, o_ref: policy and reference network outputs (after classifier-free guidance), ``[P, D]`` or
            ``[P, 2, D]``; autograd flows to every input that requires grad.
        a, b, sigma: the step's affine Gaussian coefficients (``rdpo_zoo.step_coefficients``), numbers or ``[P]``.
        reduction: ``"mean"`` over the D elements (default; matches public D3PO/DDPO/SPO/Diffusion-DPO code) or
            ``"sum"`` (the exact log-likelihood ratio).
        min_sigma: refuse σ below ``min_sigma·max(|a|, |b|)`` (no likelihood there).

    Computed in fp32 (fp64 if any input is fp64); NaN inputs give NaN outputs.
    """
    spec = check_paired_inputs(y, x_t, o_theta, o_ref, a, b, sigma, reduction, min_sigma)
    dtype = spec.compute_dtype
    a_, b_ = spec.a.view(-1, 1, 1), spec.b.view(-1, 1, 1)
    o_t, o_r = _per_branch(o_theta, dtype), _per_branch(o_ref, dtype)
    target = 2 * _per_branch(y, dtype)
    if x_t is not None:
        target = target - 2 * a_ * _per_branch(x_t, dtype)
    ratio = (b_ * (o_t - o_r) * (target - b_ * (o_t + o_r))).sum(-1)  # [P, 1 or 2]
    scale = spec.scale / spec.D if reduction == "mean" else spec.scale
    return (ratio * scale.view(-1, 1)).expand(spec.P, 2)
