"""The fused ops as ``torch.library`` custom ops, for ``torch.compile``.

Dynamo cannot trace through a Triton launch behind an ``autograd.Function`` with host-side checks (the value
checks read tensors: a graph break, and ``fullgraph=True`` fails). Under ``torch.compiler.is_compiling()``,
``rdpo_zoo.kernels.paired_log_ratios`` / ``preference_loss`` therefore run the value-free checks while tracing
(``check_paired_tensors`` and the loss-argument checks: the same errors) and call these ops, which the compiled
graph keeps as opaque nodes:

- ``rdpo_zoo::paired_log_ratios(y, x_t, o_theta, o_ref, a, b, sigma, mean, min_sigma) -> (r, coef)``
- ``rdpo_zoo::fused_preference_loss(..., loss_code, penalty_code, inside, beta, psi_lambda, clamp_eps)
  -> (loss, r, c, coef)``, c = dL/dr
- ``rdpo_zoo::paired_log_ratios_backward(y, x_t, o_theta, o_ref, coef, mean, c, g, needs) -> [gradients]``

Each has a fake (meta) implementation for tracing and its autograd registered (``register_autograd``: the backward
is the third op). The real implementations run the full ``check_paired_inputs`` on the actual values (the same
errors as eager, raised when the compiled code runs) and then, on CUDA with Triton, the kernels of
``log_ratio.py``/``fused_loss.py``; elsewhere plain PyTorch: the reference log-ratios and the closed-form loss
derivatives written out in ``fused_loss.py``'s docstring. ``coef`` is the checked ``[3, P]`` (a, b, σ) in the
compute dtype on the device, kept for the backward.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from rdpo_zoo import losses as _losses
from rdpo_zoo import reference as _reference
from rdpo_zoo.reference import PairedInputs, check_paired_inputs, check_paired_tensors

__all__ = ["paired_log_ratios_op", "fused_preference_loss_op", "paired_log_ratios_backward_op",
           "paired_log_ratios_compiled", "preference_loss_compiled"]

from . import loader as _loader  # noqa: E402
from .codes import LOSS_NAMES as _LOSS_NAMES  # noqa: E402 (the epilogue below switches on the same codes)
from .codes import PENALTY_NAMES as _PENALTY_NAMES  # noqa: E402
from .codes import fused_codes as _fused_codes  # noqa: E402


def _compute_dtype(*tensors) -> torch.dtype:
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def _use_triton(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    return _loader.load_triton() is not None


def _spec_from_coef(y, coef: Tensor) -> PairedInputs:
    return PairedInputs(y.shape[0], y.shape[-1], y.device, coef.dtype, coef[0], coef[1], coef[2])


# ----------------------------------------------------------------------------------------------------------------
# Plain-PyTorch implementations (any device; the CPU's)
# ----------------------------------------------------------------------------------------------------------------


def _loss_and_c(r: Tensor, loss_code: int, penalty_code: int, inside: bool, beta: float, lam: float,
                clamp_eps: Optional[float]) -> tuple[Tensor, Tensor]:
    """The batch loss (the reference's ``preference_loss``) and c = dL/dr in closed form (``fused_loss.py``)."""
    loss = _losses.preference_loss(r, _LOSS_NAMES[loss_code], beta, penalty=_PENALTY_NAMES[penalty_code],
                                   psi_lambda=lam, placement="inside" if inside else "outside", clamp_eps=clamp_eps)
    r_w, r_l = r[:, 0], r[:, 1]
    if clamp_eps is not None:
        lo, hi = math.log1p(-clamp_eps), math.log1p(clamp_eps)
        q_w, q_l = (torch.where(v < lo, lo, torch.where(v > hi, hi, v)) for v in (r_w, r_l))
    else:
        q_w, q_l = r_w, r_l
    zero = torch.zeros_like(r_w)
    pen = zero
    if penalty_code == 1:
        pen = torch.where(r_l < 0, 0.0, r_l)
    elif penalty_code == 2:
        pen = -torch.where(r_l < 0, 0.0, r_l)
    elif penalty_code == 3:
        pen = torch.where(-r_w < 0, 0.0, -r_w)
    z = beta * (q_w - q_l)
    if penalty_code and inside:
        z = z - lam * pen
    if loss_code == 1:
        g = torch.where(-z > 20.0, -1.0, -torch.sigmoid(-z))  # d softplus(−z)/dz, torch's threshold 20
    elif loss_code == 2:
        g = 2.0 * (z / beta - 1.0 / (2.0 * beta)) / beta
    else:
        g = torch.where(1.0 - z <= 0.0, zero, zero - 1.0)
    c_w, c_l = g * beta, -(g * beta)
    if clamp_eps is not None:
        c_w = torch.where((r_w >= lo) & (r_w <= hi), c_w, 0.0)
        c_l = torch.where((r_l >= lo) & (r_l <= hi), c_l, 0.0)
    if penalty_code:
        g_pen = -(lam * g) if inside else torch.full_like(g, lam)
        if penalty_code == 1:
            c_l = c_l + torch.where(pen <= 0.0, 0.0, g_pen)
        elif penalty_code == 2:
            c_l = c_l + torch.where(-pen <= 0.0, 0.0, -g_pen)
        else:
            c_w = c_w - torch.where(pen <= 0.0, 0.0, g_pen)
    P = r.shape[0]
    return loss.to(r.dtype), (torch.stack([c_w, c_l], 1) / P).to(r.dtype)


def _grads_reference(y, x_t, o_theta, o_ref, coef, mean: bool, c: Tensor, g: Optional[Tensor], needs) -> list:
    """dL/d input = Σ_k c_k·∂r_k/∂input (``log_ratio.py``'s docstring), each in its input's shape and dtype."""
    dtype = coef.dtype
    P, D = y.shape[0], y.shape[-1]
    a, b, sigma = (v.view(P, 1, 1) for v in coef)
    s = 1.0 / (2.0 * sigma * sigma)
    if mean:
        s = s / D
    cc = c.to(dtype) * (g.to(dtype) if g is not None else 1.0)
    k = 2.0 * s * b * cc.view(P, 2, 1)  # [P, 2, 1]

    def branches(t):
        t = t.to(dtype)
        return t.unsqueeze(1) if t.dim() == 2 else t

    yb, ot, orf = branches(y), branches(o_theta), branches(o_ref)
    t = yb - a * branches(x_t) if x_t is not None else yb
    delta = ot - orf
    out = []
    for need, tensor, grad in zip(needs, (y, x_t, o_theta, o_ref), (
            lambda: k * delta, lambda: -a * k * delta, lambda: k * (t - b * ot), lambda: -k * (t - b * orf))):
        if not need or tensor is None:
            continue
        value = grad().expand(P, 2, D)
        value = value.sum(1) if tensor.dim() == 2 else value
        out.append(value.to(tensor.dtype).contiguous())
    return out


# ----------------------------------------------------------------------------------------------------------------
# The ops
# ----------------------------------------------------------------------------------------------------------------


@torch.library.custom_op("rdpo_zoo::paired_log_ratios", mutates_args=())
def paired_log_ratios_op(y: Tensor, x_t: Optional[Tensor], o_theta: Tensor, o_ref: Tensor, a: Tensor, b: Tensor,
                         sigma: Tensor, mean: bool, min_sigma: float) -> tuple[Tensor, Tensor]:
    reduction = "mean" if mean else "sum"
    spec = check_paired_inputs(y, x_t, o_theta, o_ref, a, b, sigma, reduction, min_sigma)
    coef = torch.stack([spec.a, spec.b, spec.sigma])
    if _use_triton(spec.device):
        from .log_ratio import _launch_ratios_epilogue, choose_launch_config, launch_partials

        config = choose_launch_config(spec.P, spec.D, spec.device)
        r = _launch_ratios_epilogue(launch_partials(y, x_t, o_theta, o_ref, spec, config), spec, mean)
    else:
        r = _reference.paired_log_ratios(y, x_t, o_theta, o_ref, spec.a, spec.b, spec.sigma, reduction, 0.0)
        r = r.contiguous()
    return r, coef


@paired_log_ratios_op.register_fake
def _(y, x_t, o_theta, o_ref, a, b, sigma, mean, min_sigma):
    dtype = _compute_dtype(y, x_t, o_theta, o_ref)
    P = y.shape[0]
    return y.new_empty((P, 2), dtype=dtype), y.new_empty((3, P), dtype=dtype)


@torch.library.custom_op("rdpo_zoo::fused_preference_loss", mutates_args=())
def fused_preference_loss_op(y: Tensor, x_t: Optional[Tensor], o_theta: Tensor, o_ref: Tensor, a: Tensor, b: Tensor,
                             sigma: Tensor, mean: bool, min_sigma: float, loss_code: int, penalty_code: int,
                             inside: bool, beta: float, psi_lambda: float,
                             clamp_eps: Optional[float]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    reduction = "mean" if mean else "sum"
    spec = check_paired_inputs(y, x_t, o_theta, o_ref, a, b, sigma, reduction, min_sigma)
    coef = torch.stack([spec.a, spec.b, spec.sigma])
    if _use_triton(spec.device):
        from .fused_loss import fused_forward

        bounds = None if clamp_eps is None else (math.log1p(-clamp_eps), math.log1p(clamp_eps))
        loss, r, c, _ = fused_forward(y, x_t, o_theta, o_ref, _spec_from_coef(y, coef), mean, loss_code,
                                      penalty_code, inside, beta, psi_lambda, bounds)
        return loss, r, c, coef
    r = _reference.paired_log_ratios(y, x_t, o_theta, o_ref, spec.a, spec.b, spec.sigma, reduction, 0.0)
    loss, c = _loss_and_c(r.contiguous(), loss_code, penalty_code, inside, beta, psi_lambda, clamp_eps)
    return loss, r.contiguous(), c, coef


@fused_preference_loss_op.register_fake
def _(y, x_t, o_theta, o_ref, a, b, sigma, mean, min_sigma, loss_code, penalty_code, inside, beta, psi_lambda,
      clamp_eps):
    dtype = _compute_dtype(y, x_t, o_theta, o_ref)
    P = y.shape[0]
    return (y.new_empty((), dtype=dtype), y.new_empty((P, 2), dtype=dtype), y.new_empty((P, 2), dtype=dtype),
            y.new_empty((3, P), dtype=dtype))


@torch.library.custom_op("rdpo_zoo::paired_log_ratios_backward", mutates_args=())
def paired_log_ratios_backward_op(y: Tensor, x_t: Optional[Tensor], o_theta: Tensor, o_ref: Tensor, coef: Tensor,
                                  mean: bool, c: Tensor, g: Optional[Tensor], needs: list[bool]) -> list[Tensor]:
    if _use_triton(y.device):
        from .log_ratio import choose_launch_config, launch_backward

        spec = _spec_from_coef(y, coef)
        config = choose_launch_config(spec.P, spec.D, spec.device)
        g = None if g is None else g.reshape(()).to(coef.dtype)
        grads = launch_backward((y, x_t, o_theta, o_ref), tuple(needs), spec, mean, config, c, g)
        return [gr for gr in grads if gr is not None]
    return _grads_reference(y, x_t, o_theta, o_ref, coef, mean, c, g, needs)


@paired_log_ratios_backward_op.register_fake
def _(y, x_t, o_theta, o_ref, coef, mean, c, g, needs):
    return [torch.empty(t.shape, dtype=t.dtype, device=t.device)
            for need, t in zip(needs, (y, x_t, o_theta, o_ref)) if need and t is not None]


def _backward_grads(ctx, c, g):
    y, x_t, o_theta, o_ref, coef = ctx.saved_tensors
    needs = [bool(n) for n in ctx.needs_input_grad[:4]]
    if x_t is None:
        needs[1] = False
    if not any(needs):
        return [None] * 4
    flat = paired_log_ratios_backward_op(y, x_t, o_theta, o_ref, coef, ctx.mean, c, g, needs)
    it = iter(flat)
    return [next(it) if need else None for need in needs]


def _setup_ratios(ctx, inputs, output):
    y, x_t, o_theta, o_ref = inputs[:4]
    r, coef = output
    ctx.mean = inputs[7]
    ctx.save_for_backward(y, x_t, o_theta, o_ref, coef)
    ctx.mark_non_differentiable(coef)
    ctx.set_materialize_grads(False)


def _backward_ratios(ctx, grad_r, grad_coef):
    if grad_r is None:
        return (None,) * 9
    return (*_backward_grads(ctx, grad_r, None), None, None, None, None, None)


paired_log_ratios_op.register_autograd(_backward_ratios, setup_context=_setup_ratios)


def _setup_loss(ctx, inputs, output):
    y, x_t, o_theta, o_ref = inputs[:4]
    loss, r, c, coef = output
    ctx.mean = inputs[7]
    ctx.save_for_backward(y, x_t, o_theta, o_ref, coef, c)
    ctx.mark_non_differentiable(r, c, coef)
    ctx.set_materialize_grads(False)


def _backward_loss(ctx, grad_loss, grad_r, grad_c, grad_coef):
    if grad_loss is None:
        return (None,) * 15
    y, x_t, o_theta, o_ref, coef, c = ctx.saved_tensors

    class _Saved:  # _backward_grads reads the first five
        saved_tensors = (y, x_t, o_theta, o_ref, coef)
        needs_input_grad = ctx.needs_input_grad
        mean = ctx.mean

    return (*_backward_grads(_Saved, c, grad_loss), *(None,) * 11)


fused_preference_loss_op.register_autograd(_backward_loss, setup_context=_setup_loss)


# ----------------------------------------------------------------------------------------------------------------
# The traced front ends
# ----------------------------------------------------------------------------------------------------------------


def _coefficient_tensor(value, device) -> Tensor:
    """A coefficient as the op takes it: tensors as they are (the op's check reads them), numbers as 0-dim CPU
    float64 tensors (constants of the graph)."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return torch.tensor(float(value), dtype=torch.float64)
    raise TypeError(f"expected a number or a [P] tensor, got {type(value).__name__}")


def _coefficients(a, b, sigma, device):
    out = []
    for name, value in (("a", a), ("b", b), ("sigma", sigma)):
        try:
            out.append(_coefficient_tensor(value, device))
        except TypeError as error:
            raise TypeError(f"{name}: {error}") from None
    return out


def paired_log_ratios_compiled(y, x_t, o_theta, o_ref, a, b, sigma, reduction, min_sigma):
    check_paired_tensors(y, x_t, o_theta, o_ref, reduction, min_sigma)
    a, b, sigma = _coefficients(a, b, sigma, y.device)
    r, _ = paired_log_ratios_op(y, x_t, o_theta, o_ref, a, b, sigma, reduction == "mean", float(min_sigma))
    return r


def preference_loss_compiled(y, x_t, o_theta, o_ref, a, b, sigma, loss, beta, penalty, psi_lambda, placement,
                             clamp_eps, reduction, min_sigma, return_log_ratios, options):
    check_paired_tensors(y, x_t, o_theta, o_ref, reduction, min_sigma)
    loss_obj, penalty_obj, beta, psi_lambda = _loader.check_loss_arguments(loss, beta, penalty, psi_lambda,
                                                                            placement, clamp_eps)
    a, b, sigma = _coefficients(a, b, sigma, y.device)
    loss_code, penalty_code, reason = _fused_codes(loss_obj, penalty_obj)
    if reason is None and not options:
        value, r, _, _ = fused_preference_loss_op(
            y, x_t, o_theta, o_ref, a, b, sigma, reduction == "mean", float(min_sigma), loss_code, penalty_code,
            placement == "inside", float(beta), float(psi_lambda), None if clamp_eps is None else float(clamp_eps))
        return (value, r) if return_log_ratios else value
    r, _ = paired_log_ratios_op(y, x_t, o_theta, o_ref, a, b, sigma, reduction == "mean", float(min_sigma))
    value = _losses.preference_loss(r, loss_obj, beta, penalty=penalty_obj, psi_lambda=psi_lambda,
                                    placement=placement, clamp_eps=clamp_eps, **options)
    return (value, r.detach()) if return_log_ratios else value
