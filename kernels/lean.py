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
from itertools import repeat
from math import isfinite
from operator import gt, mul
from typing import Optional

import torch
from triton.runtime.driver import driver

from rdpo_zoo.reference import check_paired_inputs

from . import loader as _loader
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


def _inactive(hook) -> bool:
    """No launch hook: ``None`` (Triton ≤ 3.x) or an empty ``HookChain`` (Triton 3.9)."""
    return hook is None or (isinstance(getattr(hook, "calls", None), list) and not hook.calls)


_JIT = object()  # "launch through kernel[grid]"


def _launch_hooks_of_this_triton():
    """``() -> (enter_hook, exit_hook)`` where this Triton keeps its launch hooks (``triton.knobs.runtime`` since
    3.4, ``CompiledKernel`` class attributes before); ``None`` if neither: then no direct launches."""
    try:
        from triton import knobs

        runtime = knobs.runtime
        runtime.launch_enter_hook  # noqa: B018 - the attribute must exist
        return lambda: (runtime.launch_enter_hook, runtime.launch_exit_hook)
    except (ImportError, AttributeError):
        pass
    try:
        from triton.compiler.compiler import CompiledKernel

        CompiledKernel.launch_enter_hook  # noqa: B018
        return lambda: (CompiledKernel.launch_enter_hook, CompiledKernel.launch_exit_hook)
    except (ImportError, AttributeError):
        return None


_launch_hooks = _launch_hooks_of_this_triton()
if _launch_hooks is None:
    DIRECT_LAUNCH["on"] = False


def _launch_stream():
    """The current stream, for direct launches; ``_JIT`` when they are off or a profiler's launch hook is set
    (it wants Triton's launch metadata: then every launch goes through ``kernel[grid]``)."""
    if not DIRECT_LAUNCH["on"]:
        return _JIT
    enter, leave = _launch_hooks()
    if not (_inactive(enter) and _inactive(leave)):
        return _JIT
    active = driver.active
    return active.get_current_stream(active.get_current_device())


class _Launcher:
    """One kernel at one specialisation and grid.

    The first launch goes through ``kernel[grid](...)``, which compiles (or finds) the kernel and returns the
    ``CompiledKernel``. Later launches call that kernel's launcher as ``JITFunction.run`` does (Triton 3.2–3.9:
    ``run(gx, gy, gz, stream, function, packed_metadata, launch_metadata, enter_hook, exit_hook, *args)`` with
    every parameter, constexprs included, in signature order). If the first direct launch raises (another
    Triton's launcher signature), this launcher goes back to ``kernel[grid]`` for good and says so at debug
    level. Under the interpreter there is no compiled kernel: always ``kernel[grid]``.
    """

    __slots__ = ("kernel", "grid", "kwargs", "compiled", "direct", "tail", "verified")

    def __init__(self, kernel, grid: tuple, kwargs: dict):
        self.kernel, self.grid, self.kwargs = kernel, tuple(grid) + (1,) * (3 - len(grid)), kwargs
        self.compiled = self.direct = self.tail = None
        self.verified = False

    def __call__(self, stream, *args):
        direct = self.direct
        if direct is not None and stream is not _JIT:
            compiled = self.compiled
            try:
                direct(*self.grid, stream, compiled.function, compiled.packed_metadata, None, None, None, *args,
                       *self.tail)
            except Exception as error:  # noqa: BLE001 - only before the first success: see below
                if self.verified:
                    raise
                logger.debug("rdpo_zoo.kernels: launching %s through its compiled launcher failed (%s: %s); "
                             "using kernel[grid]", getattr(self.kernel, "__name__", "?"), type(error).__name__, error)
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
    split: tuple  # workspace segments: coefficients [3P], a gap to 16 bytes, partials, c, r, loss
    partials: _Launcher
    epilogue: _Launcher
    partial_args: tuple = ()  # the partials kernel's arguments after its pointers
    epilogue_args: tuple = ()  # the epilogue's arguments after its pointers
    backward: dict = field(default_factory=dict)
    numbers: dict = field(default_factory=dict)  # host blocks of coefficients given as numbers
    guard: bool = False  # on a CUDA device: launch there even when another device is current
    size: int = 0  # of the workspace, in elements

    def backward_launcher(self, needs: tuple, c_strides: tuple, c_dtype, c_aligned: bool):
        """``(launcher, its arguments after the pointers)`` of the backward kernel for this combination."""
        key = (needs, c_strides, c_dtype, c_aligned)
        found = self.backward.get(key)
        if found is None:
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
            layout = tuple(v for need, shape in zip(needs, self.shapes) for v in _grad_layout(shape if need else None))
            # every argument after the pointers: strides, the gradients' layout, c's strides, D, the chunk
            tail = (*self.strides, *layout, *c_strides, self.D, self.config.chunk)
            found = self.backward[key] = (launcher, tail)
        return found


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
    split = (3 * P, _pad(3 * P) - 3 * P, _pad(2 * P * n), _pad(2 * P), 2 * P, 1)
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
    epilogue_args = (P, n, D, *scalars) if op == "loss" else (P, n, D)
    return _Plan(op, P, D, spec.device, spec.compute_dtype, mean, config, x_t is not None,
                 (*ys[:3], *xs[:3], *ots[:3], *ors[:3]), (ys[3], xs[3], ots[3], ors[3]),
                 tuple(None if t is None else tuple(t.shape) for t in (y, x_t, o_theta, o_ref)), split,
                 partials, epilogue, (*ys[:3], *xs[:3], *ots[:3], *ors[:3], D, config.chunk, n), epilogue_args,
                 guard=guard, size=sum(split))


# ----------------------------------------------------------------------------------------------------------------
# The host check of the coefficients
# ----------------------------------------------------------------------------------------------------------------


def _host_form(value, P: int):
    """A coefficient given as a number (``float``) or a CPU tensor of shape [], [1] or [P] (``[P]`` values as a
    list and the tensor, expanded to [P]); ``None`` for anything else (the full check then decides, and names the
    error)."""
    kind = type(value)
    if kind is float or kind is int:
        return float(value)
    if isinstance(value, torch.Tensor) and value.device.type == "cpu" and value.dtype in _REAL_DTYPES:
        if value.dim() == 1 and value.shape[0] == P:
            return value
        if value.numel() == 1 and value.dim() <= 1:
            return value.reshape(1).expand(P)
    return None


_REAL_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32)


def _plainly_valid(av: list, bv: list, sv: list, min_sigma: float, has_x: bool) -> bool:
    """σ clearly above its floor min_sigma·max(|a|, |b|) at every step (then also σ > 0), every value finite and
    inside the float32 range, and a = 0 where x_t is None. Anything else (NaN included: it passes the full check
    and propagates) goes to the full check, which decides in the compute dtype exactly as before. C-level loops
    over the values: ~2 µs at P = 8, ~5 µs at P = 64."""
    if not isfinite(sum(av) + sum(bv) + sum(sv)):  # any NaN or inf
        return False
    top_a, top_b = max(map(abs, av)), max(map(abs, bv))
    if top_a >= _FLOAT32_MAX or top_b >= _FLOAT32_MAX or max(sv) >= _FLOAT32_MAX:
        return False
    k = min_sigma * _FLOOR_MARGIN
    if not min(sv) > k * max(top_a, top_b):  # the common case, decided at once; else step by step
        if not all(map(gt, sv, map(mul, repeat(k), map(max, map(abs, av), map(abs, bv))))):
            return False
    return has_x or not any(av)


def _forms(a, b, sigma, P: int):
    forms = (_host_form(a, P), _host_form(b, P), _host_form(sigma, P))
    return None if forms[0] is None or forms[1] is None or forms[2] is None else forms


def _host_block(forms, plan: "_Plan", min_sigma, has_x: bool) -> Optional[torch.Tensor]:
    """The host block ``[3·P]`` (a, b, σ in any real dtype: the copy converts) once the values are plainly valid,
    or ``None`` (then the general path runs its full check). Pinned for a CUDA device."""
    if not isinstance(min_sigma, (int, float)) or not min_sigma >= 0:
        return None
    P = plan.P
    if type(forms[0]) is float and type(forms[1]) is float and type(forms[2]) is float:
        block = plan.numbers.get(forms)  # numbers (Diffusion-DPO's 0, 1, 1): checked and built once per plan
        if block is None:
            if not _plainly_valid([forms[0]], [forms[1]], [forms[2]], float(min_sigma), has_x):
                return None
            block = _pinned(torch.tensor([forms[0]] * P + [forms[1]] * P + [forms[2]] * P, dtype=torch.float64),
                            plan)
            if len(plan.numbers) < 64:
                plan.numbers[forms] = block
        return block
    tensors = [torch.full((P,), v, dtype=torch.float64) if type(v) is float else v for v in forms]
    if tensors[0].dtype == tensors[1].dtype == tensors[2].dtype:
        block = torch.cat(tensors)
    else:
        block = torch.cat([t.double() for t in tensors])
    values = block.tolist()
    if not _plainly_valid(values[:P], values[P:2 * P], values[2 * P:], float(min_sigma), has_x):
        return None
    return _pinned(block, plan)


def _pinned(block: torch.Tensor, plan: "_Plan") -> torch.Tensor:
    # a non-blocking copy from pinned memory never waits for the stream; the caching host allocator keeps the
    # block alive until the copy has run
    return block.pin_memory() if plan.device.type == "cuda" else block


# ----------------------------------------------------------------------------------------------------------------
# autograd
# ----------------------------------------------------------------------------------------------------------------


class _DeviceGuard:
    """Launch on the plan's GPU when it is not the current one (Triton launches on the current device)."""

    __slots__ = ("ctx",)

    def __init__(self, plan: _Plan):
        self.ctx = torch.cuda.device(plan.device) if plan.device.index != torch.cuda.current_device() else None

    def __enter__(self):
        if self.ctx is not None:
            self.ctx.__enter__()

    def __exit__(self, *exc):
        if self.ctx is not None:
            return self.ctx.__exit__(*exc)
        return False


def _forward(plan: _Plan, y, x_t, o_theta, o_ref, host):
    """The two forward launches into one workspace: ``(a, b, σ, r, c, loss)`` (views of it)."""
    if plan.guard:
        with _DeviceGuard(plan):
            return _forward_here(plan, y, x_t, o_theta, o_ref, host)
    return _forward_here(plan, y, x_t, o_theta, o_ref, host)


def _forward_here(plan: _Plan, y, x_t, o_theta, o_ref, host):
    P = plan.P
    ws = torch.empty(plan.size, device=plan.device, dtype=plan.dtype)
    coef, _, partials, c, r, loss = torch.split_with_sizes(ws, plan.split)
    # one host-to-device copy (pinned: no stream sync), converting to the compute dtype
    coef.copy_(host, non_blocking=True)
    b, sigma = coef[P:], coef[2 * P:]  # a is coef: the kernels read P values from each
    stream = _launch_stream() if plan.partials.direct is not None else _JIT
    plan.partials(stream, y, x_t if x_t is not None else y, o_theta, o_ref, coef, b, partials, *plan.partial_args)
    if plan.op == "loss":
        plan.epilogue(stream, partials, b, sigma, r, c, loss, *plan.epilogue_args)
    else:
        plan.epilogue(stream, partials, b, sigma, r, *plan.epilogue_args)
    return coef, b, sigma, r.view(P, 2), c, loss.view(())


def _backward(plan: _Plan, needs, inputs, coefficients, c, c_strides, g):
    """The backward launch: the gradients of the inputs flagged in ``needs`` (``None`` for the others)."""
    y, x_t, o_theta, o_ref = inputs
    if x_t is None and needs[1]:
        needs = (needs[0], False, needs[2], needs[3])
    if not (needs[0] or needs[1] or needs[2] or needs[3]):
        return None, None, None, None
    launcher, tail = plan.backward_launcher(needs, c_strides, c.dtype, c.data_ptr() % 16 == 0)
    contiguous = torch.contiguous_format
    gy = torch.empty_like(y, memory_format=contiguous) if needs[0] else None
    gx = torch.empty_like(x_t, memory_format=contiguous) if needs[1] else None
    got = torch.empty_like(o_theta, memory_format=contiguous) if needs[2] else None
    gor = torch.empty_like(o_ref, memory_format=contiguous) if needs[3] else None
    stream = _launch_stream() if launcher.direct is not None else _JIT
    args = (stream, y, x_t if x_t is not None else y, o_theta, o_ref, *coefficients, c, g if g is not None else c,
            c if gy is None else gy, c if gx is None else gx, c if got is None else got, c if gor is None else gor,
            *tail)
    if plan.guard:
        with _DeviceGuard(plan):
            launcher(*args)
    else:
        launcher(*args)
    return gy, gx, got, gor


class LeanPreferenceLossFunction(torch.autograd.Function):
    """``(loss, r)`` as ``FusedPreferenceLossFunction``, through a launch plan (``r`` not differentiable).

    The workspace views (a, b, σ, c) live on ``ctx`` (neither inputs nor outputs); the inputs are saved."""

    @staticmethod
    def forward(ctx, y, x_t, o_theta, o_ref, plan: _Plan, host: torch.Tensor):
        ctx.set_materialize_grads(False)
        a, b, sigma, r, c, loss = _forward(plan, y, x_t, o_theta, o_ref, host)
        ctx.save_for_backward(y, x_t, o_theta, o_ref)
        ctx.plan, ctx.coefficients, ctx.c = plan, (a, b, sigma), c
        ctx.mark_non_differentiable(r)
        return loss, r

    @staticmethod
    def backward(ctx, grad_loss, grad_r):
        if grad_loss is None:
            return None, None, None, None, None, None
        if torch.is_grad_enabled():  # create_graph=True: once_differentiable's behaviour, at no cost otherwise
            return _once_loss_backward(ctx, grad_loss, grad_r)
        plan = ctx.plan
        g = grad_loss if grad_loss.dtype == plan.dtype else grad_loss.to(plan.dtype)
        grads = _backward(plan, ctx.needs_input_grad[:4], ctx.saved_tensors, ctx.coefficients, ctx.c, (2, 1), g)
        return grads[0], grads[1], grads[2], grads[3], None, None


class LeanPairedLogRatiosFunction(torch.autograd.Function):
    """``r [P, 2]`` as ``PairedLogRatiosFunction``, through a launch plan."""

    @staticmethod
    def forward(ctx, y, x_t, o_theta, o_ref, plan: _Plan, host: torch.Tensor):
        ctx.set_materialize_grads(False)
        a, b, sigma, r, _, _ = _forward(plan, y, x_t, o_theta, o_ref, host)
        ctx.save_for_backward(y, x_t, o_theta, o_ref)
        ctx.plan, ctx.coefficients = plan, (a, b, sigma)
        return r

    @staticmethod
    def backward(ctx, grad_r):
        if grad_r is None:
            return None, None, None, None, None, None
        if torch.is_grad_enabled():
            return _once_ratios_backward(ctx, grad_r)
        grads = _backward(ctx.plan, ctx.needs_input_grad[:4], ctx.saved_tensors, ctx.coefficients, grad_r,
                          tuple(grad_r.stride()), None)
        return grads[0], grads[1], grads[2], grads[3], None, None


def _loss_backward_body(ctx, grad_loss, grad_r):
    plan = ctx.plan
    g = grad_loss if grad_loss.dtype == plan.dtype else grad_loss.to(plan.dtype)
    grads = _backward(plan, ctx.needs_input_grad[:4], ctx.saved_tensors, ctx.coefficients, ctx.c, (2, 1), g)
    return grads[0], grads[1], grads[2], grads[3], None, None


def _ratios_backward_body(ctx, grad_r):
    grads = _backward(ctx.plan, ctx.needs_input_grad[:4], ctx.saved_tensors, ctx.coefficients, grad_r,
                      tuple(grad_r.stride()), None)
    return grads[0], grads[1], grads[2], grads[3], None, None


_once_loss_backward = torch.autograd.function.once_differentiable(_loss_backward_body)
_once_ratios_backward = torch.autograd.function.once_differentiable(_ratios_backward_body)


# ----------------------------------------------------------------------------------------------------------------
# Entry points (called by rdpo_zoo.kernels; NotImplemented = take the general path)
# ----------------------------------------------------------------------------------------------------------------


def _key(op, extra, y, x_t, o_theta, o_ref, reduction, min_sigma, backend):
    if not (isinstance(y, torch.Tensor) and isinstance(o_theta, torch.Tensor) and isinstance(o_ref, torch.Tensor)
            and (x_t is None or isinstance(x_t, torch.Tensor)) and y.dim() in (2, 3)):
        return None
    # the types too: True == 1 as a key, but beta=True is an error and beta=1 is not
    return (op, extra, None if extra is None else tuple(map(type, extra)), _tensor_key(y), _tensor_key(x_t),
            _tensor_key(o_theta), _tensor_key(o_ref), reduction, min_sigma, type(min_sigma), backend)


def _lookup(key, build):
    try:
        plan = _plans.get(key, _plans)
    except TypeError:  # an unhashable loss argument: no plan
        return None
    if plan is _plans:
        plan = build()
        if len(_plans) >= _MAX_PLANS:
            _plans.clear()
        _plans[key] = plan
    return plan


def _coefficients_need_grad(a, b, sigma) -> bool:
    if not torch.is_grad_enabled():
        return False
    Tensor = torch.Tensor
    return ((isinstance(a, Tensor) and a.requires_grad) or (isinstance(b, Tensor) and b.requires_grad)
            or (isinstance(sigma, Tensor) and sigma.requires_grad))


def try_preference_loss(y, x_t, o_theta, o_ref, a, b, sigma, loss, beta, penalty, psi_lambda, placement, clamp_eps,
                        reduction, min_sigma, backend, return_log_ratios, options, resolved: bool = False):
    """The lean launch of ``kernels.preference_loss``, or ``NotImplemented`` (the general path runs). ``resolved``:
    the loss arguments are a checked ``Objective``'s (``loss`` and ``penalty`` its formulas), not checked again."""
    if not ENABLED["on"] or options or backend not in (None, "triton"):
        return NotImplemented
    key = _key("loss", (loss, beta, penalty, psi_lambda, placement, clamp_eps), y, x_t, o_theta, o_ref, reduction,
               min_sigma, backend)
    if key is None or _coefficients_need_grad(a, b, sigma):
        return NotImplemented
    forms = _forms(a, b, sigma, y.shape[0])
    if forms is None:  # device tensors (the full check: a sync), or something the full check must name
        return NotImplemented

    def build():
        from rdpo_zoo import kernels

        # the general path's checks, in its order: the exact errors (raised, never cached)
        spec = check_paired_inputs(y, x_t, o_theta, o_ref, a, b, sigma, reduction, min_sigma)
        if resolved:
            loss_obj, penalty_obj, beta_, lam = loss, penalty, beta, psi_lambda
        else:
            loss_obj, penalty_obj, beta_, lam = _loader.validate_loss_arguments(loss, beta, penalty, psi_lambda,
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
    host = _host_block(forms, plan, min_sigma, x_t is not None)
    if host is None:
        return NotImplemented
    value, r = LeanPreferenceLossFunction.apply(y, x_t, o_theta, o_ref, plan, host)
    return (value, r) if return_log_ratios else value


def try_paired_log_ratios(y, x_t, o_theta, o_ref, a, b, sigma, reduction, min_sigma, backend):
    if not ENABLED["on"] or backend not in (None, "triton"):
        return NotImplemented
    key = _key("ratios", None, y, x_t, o_theta, o_ref, reduction, min_sigma, backend)
    if key is None or _coefficients_need_grad(a, b, sigma):
        return NotImplemented
    forms = _forms(a, b, sigma, y.shape[0])
    if forms is None:
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
    host = _host_block(forms, plan, min_sigma, x_t is not None)
    if host is None:
        return NotImplemented
    return LeanPairedLogRatiosFunction.apply(y, x_t, o_theta, o_ref, plan, host)
