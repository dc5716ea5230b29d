"""Fused preference loss: paired log-ratios, the pairwise loss with its penalty, and dL/dr, in two launches
(the streaming ``_partials_kernel`` of ``log_ratio.py`` and the one-program epilogue below); the backward is the
shared ``_backward_kernel``, fed with ``c = dL/dr`` and the upstream scalar gradient.

The formulas are those of ``rdpo_zoo.losses`` (the definition), for each pair with raw log-ratios ``r_w, r_l``:

    ĉ_k  = clamp(r_k, log(1 − ε), log(1 + ε))  (if clamp_eps; gradient 1 inside [lo, hi], 0 outside, as torch)
    pen  = psi: relu(r_l) | psi-literal: −relu(r_l) | dpop: relu(−r_w)      (of the *unclamped* r)
    z    = β·(ĉ_w − ĉ_l) − λ·pen   (placement "inside"; "outside": z = β·(ĉ_w − ĉ_l))
    f(z) = dpo: softplus(−z) | ipo: (z/β − 1/(2β))² | hinge: relu(1 − z)
    L    = mean_p [ f(z) (+ λ·pen outside) ]

and their derivatives (each pair's c_k = dL/dr_k; the batch mean gives the final 1/P), with g = f'(z):

    g      = dpo: −σ(−z) (torch's softplus: −1 exactly when −z > 20) | ipo: 2(z/β − 1/(2β))/β | hinge: −[1 − z > 0]
    g_pen  = dL/dpen = −λ·g (inside) or λ (outside)
    c_w    = [lo ≤ r_w ≤ hi]·β·g   − [dpop]·[r_w < 0]·g_pen
    c_l    = −[lo ≤ r_l ≤ hi]·β·g  + [psi]·[r_l > 0]·g_pen − [psi-literal]·[r_l > 0]·g_pen

Every [mask]·v is a *select* (``tl.where(mask, v, 0)``), as torch's clamp and relu backward are: a NaN g must not
leak through an inactive path as NaN·0 would. relu's mask follows torch's ``threshold_backward`` on the result
(0 where relu(x) ≤ 0, else 1: NaN passes), so NaN inputs give NaN losses, log-ratios and gradients exactly where
the reference gives them (tested). softplus is
``x if x > 20 else log1p(exp(x))`` like torch's (threshold 20), with an exact log1p (Goldberg's
``log(v)·u/(v − 1)``, v = 1 + u) since libdevice's is not available everywhere: it never overflows for huge |z|.
Scalars (β, λ, clamp bounds) are passed as float32 (hi, lo) pairs and summed in the accumulation dtype, so the
fp64 path sees them to ~2⁻⁴⁸ relative without recompiling per value.
"""

from __future__ import annotations

import struct

import torch
import triton
import triton.language as tl

from rdpo_zoo.reference import PairedInputs

from .codes import FUSED_LOSSES, FUSED_PENALTIES

from .log_ratio import (
    _DeviceGuard,
    _acc_dtype,
    _epilogue_blocks,
    _ratio_scale,
    _reduce_partials,
    choose_launch_config,
    launch_backward,
    launch_partials,
)

__all__ = ["FUSED_LOSSES", "FUSED_PENALTIES", "FusedPreferenceLossFunction", "fused_forward", "preference_loss_triton"]



@triton.jit
def _relu(x):
    # torch.relu: keeps NaN (NaN < 0 is false)
    return tl.where(x < 0.0, 0.0, x)


@triton.jit
def _log1p_exp(x):
    # log(1 + e^x) for x ≤ 20, exact to a few ulps at every scale: u = e^x, v = 1 + u, log1p(u) = log(v)·u/(v − 1)
    u = tl.exp(x)
    v = 1.0 + u
    return tl.where(v == 1.0, u, tl.log(v) * (u / (v - 1.0)))


@triton.jit
def _preference_epilogue_kernel(
    part_ptr, b_ptr, sig_ptr, r_ptr, c_ptr, loss_ptr, P, N_CHUNKS, D,
    beta_hi, beta_lo, lam_hi, lam_lo, lo_hi, lo_lo, hi_hi, hi_lo,
    MEAN: tl.constexpr, LOSS: tl.constexpr, PENALTY: tl.constexpr, INSIDE: tl.constexpr, CLAMP: tl.constexpr,
    ACC: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    zero = tl.zeros([BLOCK_P], dtype=ACC)
    beta = zero + beta_hi + beta_lo
    lam = zero + lam_hi + lam_lo
    lo = zero + lo_hi + lo_lo
    hi = zero + hi_hi + hi_lo
    total = tl.zeros([BLOCK_P], dtype=ACC)
    for p0 in range(0, P, BLOCK_P):
        rows = p0 + tl.arange(0, BLOCK_P)
        m = rows < P
        bs = _ratio_scale(b_ptr, sig_ptr, rows, m, D, MEAN, ACC)
        r_w = _reduce_partials(part_ptr, rows, m, N_CHUNKS, 0, ACC, BLOCK_P, BLOCK_C) * bs
        r_l = _reduce_partials(part_ptr, rows, m, N_CHUNKS, 1, ACC, BLOCK_P, BLOCK_C) * bs
        tl.store(r_ptr + rows * 2, r_w, mask=m)
        tl.store(r_ptr + rows * 2 + 1, r_l, mask=m)
        # the ratio clamp: a where-chain keeps NaN (tl.minimum/maximum would drop it)
        if CLAMP:
            q_w = tl.where(r_w < lo, lo, tl.where(r_w > hi, hi, r_w))
            q_l = tl.where(r_l < lo, lo, tl.where(r_l > hi, hi, r_l))
        else:
            q_w = r_w
            q_l = r_l
        z = beta * (q_w - q_l)
        # the penalty, of the unclamped r
        pen = zero
        if PENALTY == 1:  # psi: relu(r_l)
            pen = _relu(r_l)
        elif PENALTY == 2:  # psi-literal: −relu(r_l)
            pen = -_relu(r_l)
        elif PENALTY == 3:  # dpop: relu(−r_w)
            pen = _relu(-r_w)
        if PENALTY != 0:
            if INSIDE:
                z = z - lam * pen
        # the loss f(z) and g = f'(z)
        if LOSS == 1:  # dpo: softplus(−z) with torch's threshold 20
            x = -z
            big = x > 20.0
            f = tl.where(big, x, _log1p_exp(tl.where(big, 0.0, x)))
            e = tl.exp(tl.where(big, 0.0, x))
            g = -tl.where(big, 1.0, e / (e + 1.0))
        elif LOSS == 2:  # ipo: (z/β − 1/(2β))²
            u = z / beta - 1.0 / (2.0 * beta)
            f = u * u
            g = 2.0 * u / beta
        else:  # hinge: relu(1 − z)
            f = _relu(1.0 - z)
            g = tl.where(f <= 0.0, 0.0, -1.0)
        # back through z = β(q_w − q_l) and the clamp. Masks *select* (as torch's where-based backward does), so
        # a NaN g does not leak through a clamped or inactive path: NaN·0 would.
        c_w = g * beta
        c_l = -(g * beta)
        if CLAMP:
            c_w = tl.where((r_w >= lo) & (r_w <= hi), c_w, 0.0)
            c_l = tl.where((r_l >= lo) & (r_l <= hi), c_l, 0.0)
        # back through the penalty: dL/dpen = −λ·g inside the margin, λ outside (added to the loss)
        if PENALTY != 0:
            if INSIDE:
                g_pen = -(lam * g)
            else:
                f = f + lam * pen
                g_pen = lam
            if PENALTY == 1:
                c_l = c_l + tl.where(pen <= 0.0, 0.0, g_pen)
            elif PENALTY == 2:
                c_l = c_l + tl.where(-pen <= 0.0, 0.0, -g_pen)
            else:
                c_w = c_w - tl.where(pen <= 0.0, 0.0, g_pen)
        tl.store(c_ptr + rows * 2, c_w / P, mask=m)
        tl.store(c_ptr + rows * 2 + 1, c_l / P, mask=m)
        total += tl.where(m, f, 0.0)
    tl.store(loss_ptr, tl.sum(total, axis=0) / P)


def _split(value: float) -> tuple[float, float]:
    """``value`` as float32 (hi, lo) with hi + lo = value to ~2⁻⁴⁸ relative (inf beyond the float32 range)."""
    try:
        hi = struct.unpack("f", struct.pack("f", value))[0]
    except OverflowError:
        return (float("inf") if value > 0 else float("-inf")), 0.0
    lo = struct.unpack("f", struct.pack("f", value - hi))[0]
    return hi, lo


def fused_forward(y, x_t, o_theta, o_ref, spec: PairedInputs, mean: bool, loss_code: int, penalty_code: int,
                  inside: bool, beta: float, psi_lambda: float, clamp_bounds):
    """The two forward launches: ``(loss, r, c, config)``, c = dL/dr (÷ P), for the backward."""
    config = choose_launch_config(spec.P, spec.D, spec.device)
    partials = launch_partials(y, x_t, o_theta, o_ref, spec, config)
    P, n_chunks = spec.P, config.n_chunks
    r = torch.empty((P, 2), device=spec.device, dtype=spec.compute_dtype)
    c = torch.empty((P, 2), device=spec.device, dtype=spec.compute_dtype)
    loss = torch.empty((), device=spec.device, dtype=spec.compute_dtype)
    lo, hi = clamp_bounds if clamp_bounds is not None else (0.0, 0.0)
    block_p, block_c = _epilogue_blocks(P, n_chunks)
    with _DeviceGuard(spec.device):
        _preference_epilogue_kernel[(1,)](
            partials, spec.b, spec.sigma, r, c, loss, P, n_chunks, spec.D,
            *_split(beta), *_split(psi_lambda), *_split(lo), *_split(hi),
            MEAN=mean, LOSS=loss_code, PENALTY=penalty_code, INSIDE=inside, CLAMP=clamp_bounds is not None,
            ACC=_acc_dtype(spec), BLOCK_P=block_p, BLOCK_C=block_c, num_warps=4,
            # no FMA contraction: z = β(r_w − r_l) must use the rounded r it stores (a contracted
            # fma(Σ_w, b·s, −r_l) differs by ulp(r_w), which β·ulp turns into a visible loss error at |r| ~ 1e13)
            enable_fp_fusion=False,
        )
    return loss, r, c, config


class FusedPreferenceLossFunction(torch.autograd.Function):
    """``(loss, r)``: the batch loss (0-dim, compute dtype) and the log-ratios ``[P, 2]`` (not differentiable:
    for metrics). Gradients flow from ``loss`` to whichever of ``y``, ``x_t``, ``o_theta``, ``o_ref`` require them.
    """

    @staticmethod
    def forward(ctx, y, x_t, o_theta, o_ref, spec: PairedInputs, mean: bool, loss_code: int, penalty_code: int,
                inside: bool, beta: float, psi_lambda: float, clamp_bounds):
        loss, r, c, config = fused_forward(y, x_t, o_theta, o_ref, spec, mean, loss_code, penalty_code, inside, beta,
                                           psi_lambda, clamp_bounds)
        ctx.save_for_backward(y, x_t, o_theta, o_ref, c)
        ctx.spec, ctx.mean, ctx.config = spec, mean, config
        ctx.mark_non_differentiable(r)
        return loss, r

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, grad_r):
        y, x_t, o_theta, o_ref, c = ctx.saved_tensors
        needs = tuple(ctx.needs_input_grad[:4])
        g = grad_loss.reshape(()).to(c.dtype)
        grads = launch_backward((y, x_t, o_theta, o_ref), needs, ctx.spec, ctx.mean, ctx.config, c, g)
        return (*grads, None, None, None, None, None, None, None, None)


def preference_loss_triton(y, x_t, o_theta, o_ref, spec: PairedInputs, reduction: str, loss_code: int,
                           penalty_code: int, inside: bool, beta: float, psi_lambda: float, clamp_bounds):
    """The fused op on validated inputs; ``clamp_bounds`` is ``(log(1 − ε), log(1 + ε))`` or ``None``."""
    return FusedPreferenceLossFunction.apply(
        y, x_t, o_theta, o_ref, spec, reduction == "mean", loss_code, penalty_code, inside, float(beta),
        float(psi_lambda), clamp_bounds,
    )
