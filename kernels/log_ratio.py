"""Fused paired log-ratios: Triton kernels, their launchers and the ``paired_log_ratios`` autograd op.

For pair ``p`` and branch ``k ∈ {w, l}`` (column 0 preferred, 1 dispreferred) the policy/reference log-ratio is

    r_{p,k} = s_p · b_p · Σ_d Δo · (2·t − b_p·(o_θ + o_ref)),    t = y − a_p·x_t,   Δo = o_θ − o_ref,
    s_p     = 1/(2σ_p²)   (÷ D for reduction="mean")

(``rdpo_zoo.reference.paired_log_ratios`` is the definition; this is its factored form, which stays accurate in
fp32 at large D). Its derivatives, element by element (each is linear in the upstream dL/dr_{p,k} =: c_{p,k}):

    ∂r/∂o_θ   =  2·s·b·(t − b·o_θ)        (= 2·s·b·(y − a·x_t − b·o_θ): the residual under the policy's mean)
    ∂r/∂o_ref = −2·s·b·(t − b·o_ref)
    ∂r/∂y     =  2·s·b·Δo
    ∂r/∂x_t   = −2·a·s·b·Δo

A tensor shared by both branches (``[P, D]``, or a ``[P, 2, D]`` view with stride 0 on the branch axis) is read
once per pair; the gradient of a ``[P, D]`` input is the sum of both branches' contributions, written once.

Kernels (one launch each; grids in ``LaunchConfig``):

1. ``_partials_kernel``, grid ``(P, n_chunks)``: program (p, c) streams columns ``[c·CHUNK, (c+1)·CHUNK)`` of
   every input of pair p once, for both branches, and writes the two partial sums
   ``Σ Δo·(2t − b(o_θ + o_ref))`` to ``partials[p, k, c]`` (fp32, fp64 for fp64 inputs). No atomics: the
   reduction order is fixed by the launch configuration, so results are deterministic run to run.
2. ``_ratios_epilogue_kernel``, grid ``(1,)``: sums the ``n_chunks`` partials of each pair in a fixed order and
   scales by ``b·s``: ``r [P, 2]``. (``preference_loss.py`` has the loss version of this epilogue.)
3. ``_backward_kernel``, grid ``(P, n_chunks)``: re-reads only what the requested gradients need (for dL/do_θ:
   y, x_t, o_θ — never o_ref) and writes each gradient once, in its input's dtype.

Loads are cast to the accumulation dtype before any arithmetic (bf16 arithmetic is not to be trusted, and the
interpreter's is wrong); the pair index is cast to int64 before it multiplies a stride.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

from rdpo_zoo.reference import PairedInputs

__all__ = [
    "LaunchConfig",
    "choose_launch_config",
    "set_tuning",
    "TUNING",
    "force_launch_config",
    "is_interpreted",
    "PairedLogRatiosFunction",
    "paired_log_ratios_triton",
    "launch_partials",
    "launch_backward",
]


# ----------------------------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------------------------


@triton.jit
def _load(row_ptr, cols, stride_d, mask, ACC: tl.constexpr):
    return tl.load(row_ptr + cols * stride_d, mask=mask, other=0.0).to(ACC)


@triton.jit
def _partials_kernel(
    y_ptr, x_ptr, ot_ptr, or_ptr, a_ptr, b_ptr, part_ptr,
    y_sp, y_sk, y_sd, x_sp, x_sk, x_sd, ot_sp, ot_sk, ot_sd, or_sp, or_sk, or_sd,
    D, CHUNK, N_CHUNKS,
    Y_SHARED: tl.constexpr, X_SHARED: tl.constexpr, OT_SHARED: tl.constexpr, OR_SHARED: tl.constexpr,
    HAS_X: tl.constexpr, ACC: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # partials[p, k, c] = Σ_{d in chunk c} Δo_k · (2·(y_k − a·x_k) − b·(o_θ,k + o_ref,k))
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    p = pid_p.to(tl.int64)
    a = tl.load(a_ptr + p).to(ACC)
    b = tl.load(b_ptr + p).to(ACC)
    y_row = y_ptr + p * y_sp
    x_row = x_ptr + p * x_sp
    ot_row = ot_ptr + p * ot_sp
    or_row = or_ptr + p * or_sp
    acc_w = tl.zeros([BLOCK_D], dtype=ACC)
    acc_l = tl.zeros([BLOCK_D], dtype=ACC)
    start = pid_c * CHUNK
    for off in range(0, CHUNK, BLOCK_D):
        cols = start + off + tl.arange(0, BLOCK_D)
        mask = cols < D
        # Each shared tensor is loaded once and serves both branches.
        y_w = _load(y_row, cols, y_sd, mask, ACC)
        if Y_SHARED:
            y_l = y_w
        else:
            y_l = _load(y_row + y_sk, cols, y_sd, mask, ACC)
        if HAS_X:
            x_w = _load(x_row, cols, x_sd, mask, ACC)
            if X_SHARED:
                x_l = x_w
            else:
                x_l = _load(x_row + x_sk, cols, x_sd, mask, ACC)
            t_w = y_w - a * x_w
            t_l = y_l - a * x_l
        else:
            t_w = y_w
            t_l = y_l
        ot_w = _load(ot_row, cols, ot_sd, mask, ACC)
        if OT_SHARED:
            ot_l = ot_w
        else:
            ot_l = _load(ot_row + ot_sk, cols, ot_sd, mask, ACC)
        or_w = _load(or_row, cols, or_sd, mask, ACC)
        if OR_SHARED:
            or_l = or_w
        else:
            or_l = _load(or_row + or_sk, cols, or_sd, mask, ACC)
        # masked lanes load 0 everywhere, so they add Δo·(…) = 0
        acc_w += (ot_w - or_w) * (2.0 * t_w - b * (ot_w + or_w))
        acc_l += (ot_l - or_l) * (2.0 * t_l - b * (ot_l + or_l))
    out = part_ptr + p * 2 * N_CHUNKS + pid_c
    tl.store(out, tl.sum(acc_w, axis=0))
    tl.store(out + N_CHUNKS, tl.sum(acc_l, axis=0))


@triton.jit
def _reduce_partials(part_ptr, rows, row_mask, N_CHUNKS, BRANCH: tl.constexpr, ACC: tl.constexpr,
                     BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    # Σ_c partials[rows, BRANCH, c], in a fixed order (deterministic).
    total = tl.zeros([BLOCK_P], dtype=ACC)
    for c0 in range(0, N_CHUNKS, BLOCK_C):
        cs = c0 + tl.arange(0, BLOCK_C)
        ptrs = part_ptr + (rows[:, None] * 2 + BRANCH) * N_CHUNKS + cs[None, :]
        tile = tl.load(ptrs, mask=row_mask[:, None] & (cs[None, :] < N_CHUNKS), other=0.0).to(ACC)
        total += tl.sum(tile, axis=1)
    return total


@triton.jit
def _ratio_scale(b_ptr, sig_ptr, rows, row_mask, D, MEAN: tl.constexpr, ACC: tl.constexpr):
    # b·s with s = 1/(2σ²) (÷ D for the mean reduction): r = b·s·Σ Δo·(2t − b(o_θ + o_ref))
    b = tl.load(b_ptr + rows, mask=row_mask, other=0.0).to(ACC)
    sig = tl.load(sig_ptr + rows, mask=row_mask, other=1.0).to(ACC)
    s = 1.0 / (2.0 * sig * sig)
    if MEAN:
        s = s / D
    return b * s


@triton.jit
def _ratios_epilogue_kernel(
    part_ptr, b_ptr, sig_ptr, r_ptr, P, N_CHUNKS, D,
    MEAN: tl.constexpr, ACC: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    for p0 in range(0, P, BLOCK_P):
        rows = p0 + tl.arange(0, BLOCK_P)
        m = rows < P
        bs = _ratio_scale(b_ptr, sig_ptr, rows, m, D, MEAN, ACC)
        r_w = _reduce_partials(part_ptr, rows, m, N_CHUNKS, 0, ACC, BLOCK_P, BLOCK_C) * bs
        r_l = _reduce_partials(part_ptr, rows, m, N_CHUNKS, 1, ACC, BLOCK_P, BLOCK_C) * bs
        tl.store(r_ptr + rows * 2, r_w, mask=m)
        tl.store(r_ptr + rows * 2 + 1, r_l, mask=m)


@triton.jit
def _backward_kernel(
    y_ptr, x_ptr, ot_ptr, or_ptr, a_ptr, b_ptr, sig_ptr, c_ptr, g_ptr,
    gy_ptr, gx_ptr, got_ptr, gor_ptr,
    y_sp, y_sk, y_sd, x_sp, x_sk, x_sd, ot_sp, ot_sk, ot_sd, or_sp, or_sk, or_sd,
    gy_sp, gy_sk, gx_sp, gx_sk, got_sp, got_sk, gor_sp, gor_sk,
    c_sp, c_sk, D, CHUNK,
    Y_SHARED: tl.constexpr, X_SHARED: tl.constexpr, OT_SHARED: tl.constexpr, OR_SHARED: tl.constexpr,
    HAS_X: tl.constexpr, HAS_G: tl.constexpr, MEAN: tl.constexpr,
    NEED_GY: tl.constexpr, NEED_GX: tl.constexpr, NEED_GOT: tl.constexpr, NEED_GOR: tl.constexpr,
    GY_SUM: tl.constexpr, GX_SUM: tl.constexpr, GOT_SUM: tl.constexpr, GOR_SUM: tl.constexpr,
    LOAD_T: tl.constexpr, LOAD_OT: tl.constexpr, LOAD_OR: tl.constexpr,
    ACC: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # With k_k = 2·s·b·c_k (c_k = g·dL/dr_k, s ÷ D for the mean), for branch k:
    #   dL/do_θ,k = k_k·(t_k − b·o_θ,k)        dL/do_ref,k = −k_k·(t_k − b·o_ref,k)
    #   dL/dy_k   = k_k·Δo_k                    dL/dx_t,k  = −a·k_k·Δo_k
    # A *_SUM gradient belongs to a [P, D] input: both branches' contributions summed, one store.
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    p = pid_p.to(tl.int64)
    a = tl.load(a_ptr + p).to(ACC)
    b = tl.load(b_ptr + p).to(ACC)
    sig = tl.load(sig_ptr + p).to(ACC)
    s = 1.0 / (2.0 * sig * sig)
    if MEAN:
        s = s / D
    c_w = tl.load(c_ptr + p * c_sp).to(ACC)
    c_l = tl.load(c_ptr + p * c_sp + c_sk).to(ACC)
    if HAS_G:
        g = tl.load(g_ptr).to(ACC)
        c_w = c_w * g
        c_l = c_l * g
    k_w = 2.0 * s * b * c_w
    k_l = 2.0 * s * b * c_l
    y_row = y_ptr + p * y_sp
    x_row = x_ptr + p * x_sp
    ot_row = ot_ptr + p * ot_sp
    or_row = or_ptr + p * or_sp
    start = pid_c * CHUNK
    for off in range(0, CHUNK, BLOCK_D):
        cols = start + off + tl.arange(0, BLOCK_D)
        mask = cols < D
        if LOAD_T:
            y_w = _load(y_row, cols, y_sd, mask, ACC)
            if Y_SHARED:
                y_l = y_w
            else:
                y_l = _load(y_row + y_sk, cols, y_sd, mask, ACC)
            if HAS_X:
                x_w = _load(x_row, cols, x_sd, mask, ACC)
                if X_SHARED:
                    x_l = x_w
                else:
                    x_l = _load(x_row + x_sk, cols, x_sd, mask, ACC)
                t_w = y_w - a * x_w
                t_l = y_l - a * x_l
            else:
                t_w = y_w
                t_l = y_l
        if LOAD_OT:
            ot_w = _load(ot_row, cols, ot_sd, mask, ACC)
            if OT_SHARED:
                ot_l = ot_w
            else:
                ot_l = _load(ot_row + ot_sk, cols, ot_sd, mask, ACC)
        if LOAD_OR:
            or_w = _load(or_row, cols, or_sd, mask, ACC)
            if OR_SHARED:
                or_l = or_w
            else:
                or_l = _load(or_row + or_sk, cols, or_sd, mask, ACC)
        if NEED_GOT:
            g_w = k_w * (t_w - b * ot_w)
            g_l = k_l * (t_l - b * ot_l)
            row = got_ptr + p * got_sp
            if GOT_SUM:
                tl.store(row + cols, (g_w + g_l).to(got_ptr.dtype.element_ty), mask=mask)
            else:
                tl.store(row + cols, g_w.to(got_ptr.dtype.element_ty), mask=mask)
                tl.store(row + got_sk + cols, g_l.to(got_ptr.dtype.element_ty), mask=mask)
        if NEED_GOR:
            g_w = -k_w * (t_w - b * or_w)
            g_l = -k_l * (t_l - b * or_l)
            row = gor_ptr + p * gor_sp
            if GOR_SUM:
                tl.store(row + cols, (g_w + g_l).to(gor_ptr.dtype.element_ty), mask=mask)
            else:
                tl.store(row + cols, g_w.to(gor_ptr.dtype.element_ty), mask=mask)
                tl.store(row + gor_sk + cols, g_l.to(gor_ptr.dtype.element_ty), mask=mask)
        if NEED_GY:
            g_w = k_w * (ot_w - or_w)
            g_l = k_l * (ot_l - or_l)
            row = gy_ptr + p * gy_sp
            if GY_SUM:
                tl.store(row + cols, (g_w + g_l).to(gy_ptr.dtype.element_ty), mask=mask)
            else:
                tl.store(row + cols, g_w.to(gy_ptr.dtype.element_ty), mask=mask)
                tl.store(row + gy_sk + cols, g_l.to(gy_ptr.dtype.element_ty), mask=mask)
        if NEED_GX:
            g_w = -a * k_w * (ot_w - or_w)
            g_l = -a * k_l * (ot_l - or_l)
            row = gx_ptr + p * gx_sp
            if GX_SUM:
                tl.store(row + cols, (g_w + g_l).to(gx_ptr.dtype.element_ty), mask=mask)
            else:
                tl.store(row + cols, g_w.to(gx_ptr.dtype.element_ty), mask=mask)
                tl.store(row + gx_sk + cols, g_l.to(gx_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------------------------
# Launch configuration
# ----------------------------------------------------------------------------------------------------------------


def is_interpreted() -> bool:
    """True when these kernels were defined under ``TRITON_INTERPRET=1`` (they then run on CPU tensors)."""
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:  # pragma: no cover - very old triton
        return False
    return isinstance(_partials_kernel, InterpretedFunction)


def runs_cpu_tensors() -> bool:
    """True when Triton takes CPU tensors here: under the interpreter, or with the fake CUDA driver of
    ``fake_driver`` (compiles for a GPU, stubs the launch: ``rdpo-zoo bench --host`` and the compile test)."""
    from . import fake_driver

    return is_interpreted() or fake_driver.installed()


@dataclass(frozen=True)
class LaunchConfig:
    """How the D axis is cut: ``n_chunks = ceil(D / chunk)`` programs per pair, each looping over its chunk in
    steps of ``block_d`` columns (``chunk`` is a multiple of ``block_d``, a power of two)."""

    block_d: int
    chunk: int
    n_chunks: int
    num_warps: int = 4


#: GPU launch parameters (``set_tuning`` changes them; ``rdpo-zoo bench --block-d/--num-warps/--programs-per-sm``
#: sweeps them). The streaming kernels use 48 (forward) and 32 (backward) registers a thread at 1024 columns and 4
#: warps (ptxas, sm_90), so up to 10 such programs fit on an SM: aiming at 8 per SM (~1056 on an H100) keeps
#: 16 KiB+ of loads in flight per SM, above the ~18 KiB/SM that Little's law asks of HBM3 (3.35 TB/s × ~0.7 µs).
TUNING = {"block_d": 1024, "num_warps": 4, "programs_per_sm": 8}


def set_tuning(block_d: Optional[int] = None, num_warps: Optional[int] = None,
               programs_per_sm: Optional[int] = None) -> dict:
    """Change the GPU launch parameters (a power-of-two ``block_d`` ≥ 16, ``num_warps`` in 1…16); returns them."""
    if block_d is not None:
        if block_d < 16 or block_d & (block_d - 1):
            raise ValueError(f"block_d: expected a power of two >= 16, got {block_d}")
        TUNING["block_d"] = int(block_d)
    if num_warps is not None:
        if num_warps not in (1, 2, 4, 8, 16):
            raise ValueError(f"num_warps: expected 1, 2, 4, 8 or 16, got {num_warps}")
        TUNING["num_warps"] = int(num_warps)
    if programs_per_sm is not None:
        if programs_per_sm < 1:
            raise ValueError(f"programs_per_sm: expected a positive integer, got {programs_per_sm}")
        TUNING["programs_per_sm"] = int(programs_per_sm)
    return dict(TUNING)


_forced: Optional[tuple[int, Optional[int]]] = None
_sm_count: dict[int, int] = {}


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _multiprocessors(device: torch.device) -> int:
    if device.type != "cuda":  # the fake driver's device (rdpo-zoo bench --host)
        from .fake_driver import FAKE_PROPERTIES

        return FAKE_PROPERTIES["multiprocessor_count"]
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _sm_count:
        _sm_count[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _sm_count[index]


def choose_launch_config(P: int, D: int, device: torch.device) -> LaunchConfig:
    """The grid for ``P`` pairs of ``D`` elements.

    On a GPU (``TUNING``): 1024-column blocks (4 warps, 8 fp32 a thread: two 16-byte loads per tensor), and chunks
    cut so that ``P · n_chunks`` is about ``programs_per_sm`` × the SM count (1056 on an H100), never below one
    block: at SD1.5/SDXL sizes P = 1 gives 16–64 programs (launch-bound anyway) and P·D ≥ 2²² gives 1024–4096
    programs of 1–4 blocks. Under the interpreter (~15 ms per program and loop iteration, vector width nearly
    free): one program per pair, one wide block.
    """
    if _forced is not None:
        block_d, chunk = _forced
        chunk = block_d * math.ceil(D / block_d) if chunk is None else chunk
        return LaunchConfig(block_d, chunk, math.ceil(D / chunk))
    if is_interpreted() or (device.type != "cuda" and not runs_cpu_tensors()):
        block_d = min(max(_next_pow2(D), 16), 8192)
        chunk = block_d * math.ceil(D / block_d)
        return LaunchConfig(block_d, chunk, 1)
    block_d = min(TUNING["block_d"], max(128, _next_pow2(D)))
    want_chunks = max(1, math.ceil(TUNING["programs_per_sm"] * _multiprocessors(device) / P))
    chunk = block_d * max(1, math.ceil(math.ceil(D / want_chunks) / block_d))
    return LaunchConfig(block_d, chunk, math.ceil(D / chunk), num_warps=TUNING["num_warps"])


class force_launch_config:
    """Context manager (tests): force ``block_d`` (a power of two) and ``chunk`` (a multiple of it; ``None``: the
    whole row), e.g. to exercise several chunks, several loop iterations and a ragged tail at tiny D."""

    def __init__(self, block_d: int, chunk: Optional[int] = None):
        if block_d < 1 or block_d & (block_d - 1):
            raise ValueError(f"block_d: expected a power of two, got {block_d}")
        if chunk is not None and (chunk < block_d or chunk % block_d):
            raise ValueError(f"chunk: expected a multiple of block_d = {block_d}, got {chunk}")
        self.value = (block_d, chunk)

    def __enter__(self):
        global _forced
        self._saved, _forced = _forced, self.value
        return self

    def __exit__(self, *exc):
        global _forced
        _forced = self._saved
        return False


def _epilogue_blocks(P: int, n_chunks: int) -> tuple[int, int]:
    return min(_next_pow2(P), 64), min(_next_pow2(n_chunks), 64)


def _acc_dtype(spec: PairedInputs):
    return _acc_dtype_of(spec.compute_dtype)


def _acc_dtype_of(compute_dtype: torch.dtype):
    return tl.float64 if compute_dtype == torch.float64 else tl.float32


class _DeviceGuard:
    """Launch on the tensors' GPU (Triton launches on the current device)."""

    def __init__(self, device: torch.device):
        self.ctx = torch.cuda.device(device) if device.type == "cuda" else None

    def __enter__(self):
        if self.ctx is not None:
            self.ctx.__enter__()

    def __exit__(self, *exc):
        if self.ctx is not None:
            return self.ctx.__exit__(*exc)
        return False


# ----------------------------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------------------------


def _strides(t: Optional[torch.Tensor]) -> tuple[int, int, int, bool]:
    """``(stride_pair, stride_branch, stride_d, shared)``: a [P, D] tensor, or a [P, 2, D] view with stride 0 on
    the branch axis, is shared by both branches."""
    if t is None:
        return 0, 0, 0, True
    if t.dim() == 2:
        return t.stride(0), 0, t.stride(1), True
    return t.stride(0), t.stride(1), t.stride(2), t.stride(1) == 0


def launch_partials(y, x_t, o_theta, o_ref, spec: PairedInputs, config: LaunchConfig) -> torch.Tensor:
    """Kernel 1: ``partials [P, 2, n_chunks]`` in the compute dtype."""
    P, D = spec.P, spec.D
    partials = torch.empty((P, 2, config.n_chunks), device=spec.device, dtype=spec.compute_dtype)
    ys, xs, ots, ors = (_strides(t) for t in (y, x_t, o_theta, o_ref))
    with _DeviceGuard(spec.device):
        _partials_kernel[(P, config.n_chunks)](
            y, x_t if x_t is not None else y, o_theta, o_ref, spec.a, spec.b, partials,
            *ys[:3], *xs[:3], *ots[:3], *ors[:3],
            D, config.chunk, config.n_chunks,
            Y_SHARED=ys[3], X_SHARED=xs[3], OT_SHARED=ots[3], OR_SHARED=ors[3],
            HAS_X=x_t is not None, ACC=_acc_dtype(spec), BLOCK_D=config.block_d,
            num_warps=config.num_warps,
        )
    return partials


def _launch_ratios_epilogue(partials: torch.Tensor, spec: PairedInputs, mean: bool) -> torch.Tensor:
    P, n_chunks = partials.shape[0], partials.shape[2]
    r = torch.empty((P, 2), device=spec.device, dtype=spec.compute_dtype)
    block_p, block_c = _epilogue_blocks(P, n_chunks)
    with _DeviceGuard(spec.device):
        _ratios_epilogue_kernel[(1,)](
            partials, spec.b, spec.sigma, r, P, n_chunks, spec.D,
            MEAN=mean, ACC=_acc_dtype(spec), BLOCK_P=block_p, BLOCK_C=block_c, num_warps=4,
        )
    return r


def launch_backward(
    inputs: tuple, needs: tuple[bool, bool, bool, bool], spec: PairedInputs, mean: bool, config: LaunchConfig,
    c: torch.Tensor, g: Optional[torch.Tensor] = None,
) -> tuple[Optional[torch.Tensor], ...]:
    """Kernel 3: the gradients ``(dy, dx_t, do_theta, do_ref)`` of ``Σ_{p,k} g·c[p, k]·r[p, k]`` for the inputs
    flagged in ``needs`` (``None`` for the others). Each has its input's shape and dtype."""
    y, x_t, o_theta, o_ref = inputs
    need_y, need_x, need_ot, need_or = needs
    need_x = need_x and x_t is not None
    grads, layout = [], []
    for t, need in zip(inputs, (need_y, need_x, need_ot, need_or)):
        if need:
            grad = torch.empty(t.shape, device=t.device, dtype=t.dtype)  # contiguous
            grads.append(grad)
            layout.append((grad.stride(0), 0 if t.dim() == 2 else grad.stride(1), t.dim() == 2))
        else:
            grads.append(None)
            layout.append((0, 0, True))
    if not any(needs):
        return tuple(grads)
    dummy = c
    ys, xs, ots, ors = (_strides(t) for t in (y, x_t, o_theta, o_ref))
    with _DeviceGuard(spec.device):
        _backward_kernel[(spec.P, config.n_chunks)](
            y, x_t if x_t is not None else y, o_theta, o_ref, spec.a, spec.b, spec.sigma, c,
            g if g is not None else dummy,
            *(gr if gr is not None else dummy for gr in grads),
            *ys[:3], *xs[:3], *ots[:3], *ors[:3],
            *layout[0][:2], *layout[1][:2], *layout[2][:2], *layout[3][:2],
            c.stride(0), c.stride(1), spec.D, config.chunk,
            Y_SHARED=ys[3], X_SHARED=xs[3], OT_SHARED=ots[3], OR_SHARED=ors[3],
            HAS_X=x_t is not None, HAS_G=g is not None, MEAN=mean,
            NEED_GY=need_y, NEED_GX=need_x, NEED_GOT=need_ot, NEED_GOR=need_or,
            GY_SUM=layout[0][2], GX_SUM=layout[1][2], GOT_SUM=layout[2][2], GOR_SUM=layout[3][2],
            LOAD_T=need_ot or need_or, LOAD_OT=need_ot or need_y or need_x, LOAD_OR=need_or or need_y or need_x,
            ACC=_acc_dtype(spec), BLOCK_D=config.block_d, num_warps=config.num_warps,
        )
    return tuple(grads)


# ----------------------------------------------------------------------------------------------------------------
# autograd
# ----------------------------------------------------------------------------------------------------------------


class PairedLogRatiosFunction(torch.autograd.Function):
    """``r [P, 2]`` (compute dtype: fp32, fp64 for fp64 inputs) with gradients to whichever of ``y``, ``x_t``,
    ``o_theta``, ``o_ref`` require them. Not twice differentiable."""

    @staticmethod
    def forward(ctx, y, x_t, o_theta, o_ref, spec: PairedInputs, mean: bool):
        config = choose_launch_config(spec.P, spec.D, spec.device)
        r = _launch_ratios_epilogue(launch_partials(y, x_t, o_theta, o_ref, spec, config), spec, mean)
        ctx.save_for_backward(y, x_t, o_theta, o_ref)
        ctx.spec, ctx.mean, ctx.config = spec, mean, config
        return r

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_r):
        inputs = ctx.saved_tensors
        needs = tuple(ctx.needs_input_grad[:4])
        grads = launch_backward(inputs, needs, ctx.spec, ctx.mean, ctx.config, grad_r)
        return (*grads, None, None)


def paired_log_ratios_triton(y, x_t, o_theta, o_ref, spec: PairedInputs, reduction: str) -> torch.Tensor:
    """The fused op on validated inputs (``spec`` from ``rdpo_zoo.reference.check_paired_inputs``)."""
    return PairedLogRatiosFunction.apply(y, x_t, o_theta, o_ref, spec, reduction == "mean")
