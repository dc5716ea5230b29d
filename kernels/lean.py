"""The lean launch path: eager calls of the fused ops with host-side step coefficients, at a few µs of Python.

Per call, the general path (``FusedPreferenceLossFunction``) validates every argument (``check_paired_inputs``:
~30–50 µs), goes through Triton's JIT binder for each of its three launches (~25 µs each) and allocates four
buffers. A training loop repeats the same shapes, dtypes and loss settings call after call, so this path keeps a
**launch plan** per (shapes, strides, dtypes, devices, 16-byte alignment, loss settings): the launch configuration,
the kernels' stride arguments and constexprs, the workspace layout and, after a kernel's first launch, its compiled
kernel, launched directly through the compiled kernel's own launcher (~1 µs; ``kernel[grid]`` when this Triton's
launcher does not take the arguments, see ``_Launcher``).

What each call still does:

- the tensor checks are implied by the key: a plan is built only after the full ``check_paired_inputs`` (and the
  loss-argument checks) passed on a call with that key, so a bad tensor never reaches a plan, and raises the same
  error it always did (the first call with a new key runs the full checks);
- the coefficients a, b, σ, given as numbers or CPU tensors (the trainer's), are read on the host and checked
  against the σ floor in Python; anything not plainly valid (a device tensor, a wrong shape, a σ at or near the
  floor, x_t = None with a ≠ 0) is handed to the general path, whose full check gives today's exact error (device
  tensors always take it: checking them needs a device sync);
- one workspace allocation holds the coefficients (one non-blocking host-to-device copy), the partial sums, r,
  dL/dr and the loss; three launches for a forward + backward (partials, epilogue, backward), no device sync, no
  ``zeros``/``ones_like``: ``set_materialize_grads(False)`` (no zero gradient is made for the non-differentiable r),
  and the upstream gradient of the loss is read by the backward kernel where it lies.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Optional

import torch
from triton import knobs
from triton.runtime.driver import driver

from rdpo_zoo.reference import check_paired_inputs

from . import log_ratio as LR
from . import fused_loss as FL

logger = logging.getLogger("rdpo_zoo.kernels")

__all__ = ["ENABLED", "DIRECT_LAUNCH", "plan_count", "clear_plans", "try_preference_loss", "try_paired_log_ratios"]

#: the lean path on or off (``rdpo_zoo.kernels.use_lean_path``); off: every call takes the general path
ENABLED = {"on": True}
#: launch through compiled kernels' own launchers (off: always ``kernel[grid]``, Triton's JIT dispatch)
DIRECT_LAUNCH = {"on": True}
_MAX_PLANS = 256
_plans: dict = {}
_FLOAT32_MAX = 3.4028234663852886e38
#: a σ this close to its floor goes to the full check (which decides in the compute dtype, exactly as before)
_FLOOR_MARGIN = 1.0 + 2.0**-20


def plan_count() -> int:
    return sum(1 for p in _plans.values() if p is not None)


def clear_plans() -> None:
    _plans.clear()


# ----------------------------------------------------------------------------------------------------------------
# Launching one kernel
# ----------------------------------------------------------------------------------------------------------------


class _Launcher:
    """One kernel at one specialisation and grid.

    The first launch goes through ``kernel[grid](...)``, which compiles (or finds) the kernel and returns the
    ``CompiledKernel``. Later launches call that kernel's launcher as ``JITFunction.run`` does (Triton 3.2–3.9:
    ``run(gx, gy, gz, stream, function, packed_metadata, launch_metadata, enter_hook, exit_hook, *args)`` with
    every parameter, constexprs included, in signature order). If the first direct launch raises (another
    Triton's launcher signature), this launcher goes back to ``kernel[grid]`` for good and says so at debug
    level. Under the interpreter there is no compiled kernel: always ``kernel[grid]``.
    """

    __slots__ = ("kernel", "grid", "kwargs", "n_args", "compiled", "direct", "tail", "verified")

    def __init__(self, kernel, grid: tuple, kwargs: dict):
        self.kernel, self.grid, self.kwargs = kernel, tuple(grid) + (1,) * (3 - len(grid)), kwargs
        self.compiled = self.direct = self.tail = None
        self.verified = False

    def __call__(self, *args):
        direct = self.direct
        if direct is not None and DIRECT_LAUNCH["on"]:
            hooks = knobs.runtime
            if hooks.launch_enter_hook is None:  # a profiler's hook wants Triton's launch metadata: JIT path
                active = driver.active
                stream = active.get_current_stream(active.get_current_device())
                compiled = self.compiled
                try:
                    direct(*self.grid, stream, compiled.function, compiled.packed_metadata, None, None,
                           hooks.launch_exit_hook, *args, *self.tail)
                except Exception as error:  # noqa: BLE001 - only before the first success: see below
                    if self.verified:
                        raise
                    logger.debug("rdpo_zoo.kernels: launching %s through its compiled launcher failed (%s: %s); "
                                 "using kernel[grid]", getattr(self.kernel, "__name__", "?"), type(error).__name__,
                                 error)
                    self.direct = None
                else:
                    self.verified = True
                    return
        result = self.kernel[self.grid](*args, **self.kwargs)
        if self.compiled is None and result is not None and hasattr(result, "packed_metadata"):
            names = list(getattr(self.kernel, "arg_names", ()))
            try:
                tail = tuple(self.kwargs[name] for name in names[len(args):])
            except KeyError:  # a parameter passed neither way: not this signature
                return
            self.compiled, self.tail = result, tail
            try:
                self.direct = result.run
            except Exception:  # noqa: BLE001
                self.direct = None


# ----------------------------------------------------------------------------------------------------------------
# Plans
# ----------------------------------------------------------------------------------------------------------------


def _pad(n: int) -> int:
    return (n + 3) // 4 * 4  # 16-byte segments in fp32 (32 in fp64): every workspace pointer keeps its alignment


def _tensor_key(t):
    if t is None:
        return None
    return (t.shape, t.stride(), t.dtype, t.device, t.data_ptr() % 16 == 0)


@dataclass
class _Plan:
    op: str  # "loss" or "ratios"
    P: int
    D: int
    device: torch.device
    dtype: torch.dtype
    mean: bool
    config: LR.LaunchConfig
    has_x: bool
    strides: tuple  # the 12 stride arguments of y, x_t, o_theta, o_ref
    shared: tuple  # Y/X/OT/OR_SHARED
    shapes: tuple  # shapes of y, x_t, o_theta, o_ref (gradients)
    split: tuple  # workspace segments: a, b, sigma, partials, r, c, loss
    coef_pad: int
    partials: _Launcher
    epilogue: _Launcher
    epilogue_scalars: tuple = ()
    backward: dict = field(default_factory=dict)
    guard: bool = False  # the tensors are on a CUDA device other than the current one at plan time

    def backward_launcher(self, needs: tuple, c_strides: tuple, c_dtype, c_aligned: bool) -> _Launcher:
        key = (needs, c_strides, c_dtype, c_aligned)
        launcher = self.backward.get(key)
        if launcher is None:
            need_y, need_x, need_ot, need_or = needs
            sums = tuple(len(shape) == 2 if shape is not None else True for shape in self.shapes)
            ys, xs, ots, ors = self.shared
            acc = LR._acc_dtype_of(self.dtype)
            launcher = _Launcher(LR._backward_kernel, (self.P, self.config.n_chunks), dict(
                Y_SHARED=ys, X_SHARED=xs, OT_SHARED=ots, OR_SHARED=ors, HAS_X=self.has_x, HAS_G=self.op == "loss",
                MEAN=self.mean, NEED_GY=need_y, NEED_GX=need_x, NEED_GOT=need_ot, NEED_GOR=need_or,
                GY_SUM=sums[0], GX_SUM=sums[1], GOT_SUM=sums[2], GOR_SUM=sums[3],
                LOAD_T=need_ot or need_or, LOAD_OT=need_ot or need_y or need_x, LOAD_OR=need_or or need_y or need_x,
                ACC=acc, BLOCK_D=self.config.block_d, num_warps=self.config.num_warps))
            self.backward[key] = launcher
        return launcher


def _grad_layout(shape) -> tuple[int, int]:
    """(stride_pair, stride_branch) of a contiguous gradient of ``shape`` ([P, D] or [P, 2, D])."""
    if shape is None:
        return 0, 0
    return (shape[-1], 0) if len(shape) == 2 else (2 * shape[-1], shape[-1])


def _build_plan(op, y, x_t, o_theta, o_ref, spec, mean, fused) -> _Plan:
    P, D = spec.P, spec.D
    config = LR.choose_launch_config(P, D, spec.device)
    n = config.n_chunks
    acc = LR._acc_dtype_of(spec.compute_dtype)
    ys, xs, ots, ors = (LR._strides(t) for t in (y, x_t, o_theta, o_ref))
    pad = _pad(P)
    split = (pad, pad, pad, _pad(2 * P * n), _pad(2 * P), _pad(2 * P), 1)
    partials = _Launcher(LR._partials_kernel, (P, n), dict(
        Y_SHARED=ys[3], X_SHARED=xs[3], OT_SHARED=ots[3], OR_SHARED=ors[3], HAS_X=x_t is not None, ACC=acc,
        BLOCK_D=config.block_d, num_warps=config.num_warps))
    block_p, block_c = LR._epilogue_blocks(P, n)
    scalars = ()
    if op == "loss":
        loss_code, penalty_code, inside, beta, psi_lambda, bounds = fused
        lo, hi = bounds if bounds is not None else (0.0, 0.0)
        scalars = (*FL._split(beta), *FL._split(psi_lambda), *FL._split(lo), *FL._split(hi))
        epilogue = _Launcher(FL._preference_epilogue_kernel, (1,), dict(
            MEAN=mean, LOSS=loss_code, PENALTY=penalty_code, INSIDE=inside, CLAMP=bounds is not None, ACC=acc,
            BLOCK_P=block_p, BLOCK_C=block_c, num_warps=4, enable_fp_fusion=False))
    else:
        epilogue = _Launcher(LR._ratios_epilogue_kernel, (1,), dict(
            MEAN=mean, ACC=acc, BLOCK_P=block_p, BLOCK_C=block_c, num_warps=4))
    guard = spec.device.type == "cuda" and spec.device.index is not None
    return _Plan(op, P, D, spec.device, spec.compute_dtype, mean, config, x_t is not None,
                 (*ys[:3], *xs[:3], *ots[:3], *ors[:3]), (ys[3], xs[3], ots[3], ors[3]),
                 tuple(None if t is None else tuple(t.shape) for t in (y, x_t, o_theta, o_ref)), split, pad,
                 partials, epilogue, scalars, guard=guard)


# ----------------------------------------------------------------------------------------------------------------
# The host check of the coefficients
# ----------------------------------------------------------------------------------------------------------------


def _host_values(value, P: int) -> Optional[list]:
    """The P values of a coefficient given as a number or a CPU tensor of shape [], [1] or [P]; ``None`` for
    anything else (the full check then decides, and names the error)."""
    kind = type(value)
    if kind is float or kind is int:
        return [float(value)] * P
    if isinstance(value, torch.Tensor) and value.device.type == "cpu" and not value.requires_grad:
        if value.dtype == torch.bool or value.is_complex():
            return None
        if value.dim() == 1 and value.shape[0] == P:
            return value.tolist()
        if value.numel() == 1 and value.dim() <= 1:
            return [float(value.reshape(()).item())] * P
    return None


def _plainly_valid(a: list, b: list, sigma: list, min_sigma: float, has_x: bool) -> bool:
    """σ clearly above its floor min_sigma·max(|a|, |b|) for every step (NaN passes, as in the full check), every
    value inside the float32 range, and a = 0 where x_t is None. Borderline cases go to the full check."""
    for ai, bi, si in zip(a, b, sigma):
        if not (-_FLOAT32_MAX < ai < _FLOAT32_MAX and -_FLOAT32_MAX < bi < _FLOAT32_MAX) and not (
                math.isnan(ai) or math.isnan(bi)):
            return False
        if math.isnan(si):
            continue
        if si <= 0 or si >= _FLOAT32_MAX:
            return False
        floor = min_sigma * max(abs(ai), abs(bi))
        if si < floor * _FLOOR_MARGIN:
            return False
    if not has_x and any(ai != 0 for ai in a):
        return False
    return True


def _coefficients(a, b, sigma, P: int, min_sigma: float, has_x: bool):
    """``[a, b, σ]`` as one host list padded per segment, or ``None`` (then the general path runs)."""
    if not isinstance(min_sigma, (int, float)) or not min_sigma >= 0:
        return None
    av = _host_values(a, P)
    if av is None:
        return None
    bv = _host_values(b, P)
    if bv is None:
        return None
    sv = _host_values(sigma, P)
    if sv is None or not _plainly_valid(av, bv, sv, float(min_sigma), has_x):
        return None
    return av, bv, sv


def _host_block(values, plan: _Plan) -> torch.Tensor:
    av, bv, sv = values
    fill = [0.0] * (plan.coef_pad - plan.P)
    return torch.tensor(av + fill + bv + fill + sv + fill, dtype=plan.dtype)


# ----------------------------------------------------------------------------------------------------------------
# autograd
# ----------------------------------------------------------------------------------------------------------------


class _DeviceGuard:
    __slots__ = ("ctx",)

    def __init__(self, plan: _Plan):
        self.ctx = None
        if plan.guard and plan.device.index != torch.cuda.current_device():
            self.ctx = torch.cuda.device(plan.device)

    def __enter__(self):
        if self.ctx is not None:
            self.ctx.__enter__()

    def __exit__(self, *exc):
        if self.ctx is not None:
            return self.ctx.__exit__(*exc)
        return False


def _forward(plan: _Plan, y, x_t, o_theta, o_ref, host):
    ws = torch.empty(sum(plan.split), device=plan.device, dtype=plan.dtype)
    a, b, sigma, partials, r, c, loss = ws.split(plan.split)
    # non_blocking: from pageable memory CUDA stages the bytes and returns; no stream sync
    ws[: 3 * plan.coef_pad].copy_(host, non_blocking=True)
    x_or_y = x_t if x_t is not None else y
    n = plan.config.n_chunks
    with _DeviceGuard(plan):
        plan.partials(y, x_or_y, o_theta, o_ref, a, b, partials, *plan.strides, plan.D, plan.config.chunk, n)
        if plan.op == "loss":
            plan.epilogue(partials, b, sigma, r, c, loss, plan.P, n, plan.D, *plan.epilogue_scalars)
        else:
            plan.epilogue(partials, b, sigma, r, plan.P, n, plan.D)
    return a, b, sigma, r[: 2 * plan.P].view(plan.P, 2), c, loss.view(())


def _backward(plan: _Plan, needs, saved, c, c_strides, g):
    y, x_t, o_theta, o_ref, a, b, sigma = saved
    need_x = needs[1] and x_t is not None
    needs = (needs[0], need_x, needs[2], needs[3])
    grads = [torch.empty(shape, device=plan.device, dtype=t.dtype) if need else None
             for need, shape, t in zip(needs, plan.shapes, (y, x_t, o_theta, o_ref))]
    if not any(needs):
        return grads
    layouts = [_grad_layout(shape if need else None) for need, shape in zip(needs, plan.shapes)]
    launcher = plan.backward_launcher(needs, c_strides, c.dtype, c.data_ptr() % 16 == 0)
    dummy = c
    x_or_y = x_t if x_t is not None else y
    with _DeviceGuard(plan):
        launcher(y, x_or_y, o_theta, o_ref, a, b, sigma, c, g if g is not None else dummy,
                 *(gr if gr is not None else dummy for gr in grads), *plan.strides,
                 *layouts[0], *layouts[1], *layouts[2], *layouts[3], *c_strides, plan.D, plan.config.chunk)
    return grads


class LeanPreferenceLossFunction(torch.autograd.Function):
    """``(loss, r)`` as ``FusedPreferenceLossFunction``, through a launch plan (``r`` not differentiable)."""

    @staticmethod
    def forward(ctx, y, x_t, o_theta, o_ref, plan: _Plan, host: torch.Tensor):
        ctx.set_materialize_grads(False)
        a, b, sigma, r, c, loss = _forward(plan, y, x_t, o_theta, o_ref, host)
        ctx.save_for_backward(y, x_t, o_theta, o_ref, a, b, sigma, c)
        ctx.plan = plan
        ctx.mark_non_differentiable(r)
        return loss, r

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, grad_r):
        if grad_loss is None:
            return None, None, None, None, None, None
        plan = ctx.plan
        y, x_t, o_theta, o_ref, a, b, sigma, c = ctx.saved_tensors
        g = grad_loss if grad_loss.dtype == plan.dtype else grad_loss.to(plan.dtype)
        grads = _backward(plan, ctx.needs_input_grad[:4], (y, x_t, o_theta, o_ref, a, b, sigma), c, (2, 1), g)
        return (*grads, None, None)


class LeanPairedLogRatiosFunction(torch.autograd.Function):
    """``r [P, 2]`` as ``PairedLogRatiosFunction``, through a launch plan."""

    @staticmethod
    def forward(ctx, y, x_t, o_theta, o_ref, plan: _Plan, host: torch.Tensor):
        ctx.set_materialize_grads(False)
        a, b, sigma, r, _, _ = _forward(plan, y, x_t, o_theta, o_ref, host)
        ctx.save_for_backward(y, x_t, o_theta, o_ref, a, b, sigma)
        ctx.plan = plan
        return r

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_r):
        if grad_r is None:
            return None, None, None, None, None, None
        plan = ctx.plan
        saved = ctx.saved_tensors
        grads = _backward(plan, ctx.needs_input_grad[:4], saved, grad_r, tuple(grad_r.stride()), None)
        return (*grads, None, None)


# ----------------------------------------------------------------------------------------------------------------
# Entry points (called by rdpo_zoo.kernels; NotImplemented = take the general path)
# ----------------------------------------------------------------------------------------------------------------


def _key(op, extra, y, x_t, o_theta, o_ref, reduction, min_sigma, backend):
    if not (isinstance(y, torch.Tensor) and isinstance(o_theta, torch.Tensor) and isinstance(o_ref, torch.Tensor)
            and (x_t is None or isinstance(x_t, torch.Tensor)) and y.dim() in (2, 3)):
        return None
    return (op, extra, _tensor_key(y), _tensor_key(x_t), _tensor_key(o_theta), _tensor_key(o_ref), reduction,
            min_sigma, backend)


def _lookup(key, build):
    plan = _plans.get(key, _plans)
    if plan is _plans:
        plan = build()
        if len(_plans) >= _MAX_PLANS:
            _plans.clear()
        _plans[key] = plan
    return plan


def _coefficients_need_grad(a, b, sigma) -> bool:
    return torch.is_grad_enabled() and any(isinstance(v, torch.Tensor) and v.requires_grad for v in (a, b, sigma))


def try_preference_loss(y, x_t, o_theta, o_ref, a, b, sigma, loss, beta, penalty, psi_lambda, placement, clamp_eps,
                        reduction, min_sigma, backend, return_log_ratios, options):
    if not ENABLED["on"] or options or backend not in (None, "triton"):
        return NotImplemented
    try:
        key = _key("loss", (loss, beta, penalty, psi_lambda, placement, clamp_eps), y, x_t, o_theta, o_ref,
                   reduction, min_sigma, backend)
        if key is None:
            return NotImplemented
        hash(key)
    except TypeError:  # an unhashable loss argument
        return NotImplemented
    if _coefficients_need_grad(a, b, sigma):
        return NotImplemented
    values = _coefficients(a, b, sigma, y.shape[0], min_sigma, x_t is not None)
    if values is None:
        return NotImplemented

    def build():
        from rdpo_zoo import kernels

        # the general path's checks, in its order: the exact errors (raised, never cached)
        spec = check_paired_inputs(y, x_t, o_theta, o_ref, a, b, sigma, reduction, min_sigma)
        loss_obj, penalty_obj, beta_, lam = kernels._validate_loss_arguments(loss, beta, penalty, psi_lambda,
                                                                             placement, clamp_eps)
        if kernels.select_backend(backend, spec.device, None) != "triton":
            return None
        loss_code, penalty_code, reason = kernels._fused_codes(loss_obj, penalty_obj)
        if reason is not None:
            return None
        bounds = None if clamp_eps is None else (math.log1p(-clamp_eps), math.log1p(clamp_eps))
        return _build_plan("loss", y, x_t, o_theta, o_ref, spec, reduction == "mean",
                           (loss_code, penalty_code, placement == "inside", float(beta_), float(lam), bounds))

    plan = _lookup(key, build)
    if plan is None:
        return NotImplemented
    value, r = LeanPreferenceLossFunction.apply(y, x_t, o_theta, o_ref, plan, _host_block(values, plan))
    return (value, r) if return_log_ratios else value


def try_paired_log_ratios(y, x_t, o_theta, o_ref, a, b, sigma, reduction, min_sigma, backend):
    if not ENABLED["on"] or backend not in (None, "triton"):
        return NotImplemented
    key = _key("ratios", None, y, x_t, o_theta, o_ref, reduction, min_sigma, backend)
    if key is None or _coefficients_need_grad(a, b, sigma):
        return NotImplemented
    values = _coefficients(a, b, sigma, y.shape[0], min_sigma, x_t is not None)
    if values is None:
        return NotImplemented

    def build():
        from rdpo_zoo import kernels

        spec = check_paired_inputs(y, x_t, o_theta, o_ref, a, b, sigma, reduction, min_sigma)
        if kernels.select_backend(backend, spec.device, None) != "triton":
            return None
        return _build_plan("ratios", y, x_t, o_theta, o_ref, spec, reduction == "mean", None)

    plan = _lookup(key, build)
    if plan is None:
        return NotImplemented
    return LeanPairedLogRatiosFunction.apply(y, x_t, o_theta, o_ref, plan, _host_block(values, plan))
