"""Throughput of the fused op beside the eager reference and ``torch.compile`` of it: ``rdpo-zoo bench``.

One setup per grid point, one result schema per row (``op, provider, mode, metric, unit, x, median, p20, p80``),
the Triton-tutorial way: GB/s is bytes ÷ time with the byte formula written down (``byte_counts``), and the
device's copy bandwidth is measured in the same run (a device-to-device ``copy_`` moving the same number of bytes)
so that every throughput has a ceiling beside it.

Imports torch and the package's own maths only (no diffusers, peft, transformers; Triton only when it runs), so a
GPU machine with just torch + triton runs it.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

import torch

from rdpo_zoo import losses as _losses
from rdpo_zoo import reference as _reference

__all__ = ["GRIDS", "Point", "BenchSettings", "run_bench", "byte_counts", "check_against_reference", "format_table",
           "validate_result"]

SCHEMA = "rdpo-zoo.bench/1"
PROVIDERS = ("triton", "eager", "compile")
MODES = ("forward", "full")  # full = forward + backward (dL/d o_theta)
OPS = ("preference_loss", "paired_log_ratios")
DTYPES = {
    # name -> (latents y/x_t dtype, network outputs o_theta/o_ref dtype)
    "fp32": (torch.float32, torch.float32),
    "bf16": (torch.bfloat16, torch.bfloat16),
    "fp16": (torch.float16, torch.float16),
    "mixed": (torch.float32, torch.bfloat16),  # fp32 latents, a bf16 network output (autocast)
}
LAYOUTS = ("shared", "per-branch", "noised")
#: grids: full (H100-sized: SD1.5 D = 4·64·64 and SDXL D = 4·128·128, P up to 64), quick (CI), interpret (tiny)
GRIDS = {
    "full": dict(P=(1, 8, 64), D=(16384, 65536), dtype=("fp32", "bf16"), layout=("shared", "per-branch")),
    "quick": dict(P=(1, 8), D=(16384,), dtype=("fp32", "bf16"), layout=("shared",)),
    "interpret": dict(P=(1, 2), D=(1024,), dtype=("fp32", "bf16"), layout=("shared", "per-branch")),
}
#: below this copy time for the op's one-pass bytes, launches dominate: the table shows latency, not GB/s
LAUNCH_BOUND_US = 20.0


@dataclass(frozen=True)
class Point:
    P: int
    D: int
    dtype: str
    layout: str

    def label(self) -> dict:
        return asdict(self)


@dataclass
class BenchSettings:
    grid: dict = field(default_factory=lambda: dict(GRIDS["quick"]))
    providers: tuple = PROVIDERS
    modes: tuple = MODES
    op: str = "preference_loss"
    loss: str = "dpo"
    penalty: Optional[str] = None
    beta: float = 0.1
    psi_lambda: float = 0.0
    device: str = "cpu"
    interpret: bool = False
    rep_ms: float = 100.0  # timing budget per measurement
    warmup_ms: float = 25.0
    threads: Optional[int] = None  # CPU: torch intra-op threads (None: torch's default)
    tuning: dict = field(default_factory=dict)  # GPU launch parameters: block_d, num_warps, programs_per_sm
    check: bool = False  # compare the fused op with a float64 reference run at every point (needs "triton")

    def points(self) -> list[Point]:
        g = self.grid
        return [Point(P, D, dt, lay) for lay in g["layout"] for dt in g["dtype"] for P in g["P"] for D in g["D"]]


# ----------------------------------------------------------------------------------------------------------------
# Inputs and byte counts
# ----------------------------------------------------------------------------------------------------------------


def make_inputs(point: Point, device, seed: int = 0) -> dict:
    """The op's inputs at ``point``: ``shared`` = TailorPO/SPO/RDPO (y [P, 2, D]; x_t, o_θ, o_ref [P, D]);
    ``per-branch`` = D3PO (all [P, 2, D]); ``noised`` = Diffusion-DPO (y = ε [P, D] expanded with stride 0,
    x_t not read (a = 0), o per branch). Only o_theta requires grad (the trainer's case). The coefficients a, b, σ
    are CPU tensors, as the trainer passes them (``DiffusionModel.coefficient_tensors``): they are checked on the
    host and copied over, with no device sync."""
    if point.dtype not in DTYPES:
        raise ValueError(f"dtype: expected one of {', '.join(DTYPES)}, got {point.dtype!r}")
    if point.layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {', '.join(LAYOUTS)}, got {point.layout!r}")
    lat, out = DTYPES[point.dtype]
    P, D = point.P, point.D
    g = torch.Generator(device="cpu").manual_seed(seed)

    def rand(shape, dtype, scale=1.0):
        return (torch.randn(shape, generator=g) * scale).to(device=device, dtype=dtype)

    shared = point.layout == "shared"
    o_shape = (P, D) if shared else (P, 2, D)
    o_theta = rand(o_shape, out).requires_grad_(True)
    o_ref = (o_theta.detach().float() + rand(o_shape, torch.float32, 0.05)).to(out)
    if point.layout == "noised":
        y, x_t, a = rand((P, D), lat).unsqueeze(1).expand(P, 2, D), None, torch.zeros(P)
        b, sigma = torch.ones(P), torch.ones(P)
    else:
        y, x_t = rand((P, 2, D), lat), rand(o_shape, lat)
        a = 0.9 + 0.1 * torch.rand(P, generator=g)
        b = -0.1 * torch.rand(P, generator=g) - 0.05
        sigma = 0.1 + 0.2 * torch.rand(P, generator=g)
    return dict(y=y, x_t=x_t, o_theta=o_theta, o_ref=o_ref, a=a, b=b, sigma=sigma)


def _distinct_bytes(t: Optional[torch.Tensor]) -> int:
    """Bytes of the distinct elements a one-pass op must read: stride-0 axes (the shared branch) count once."""
    if t is None:
        return 0
    n = 1
    for size, stride in zip(t.shape, t.stride()):
        if stride != 0:
            n *= size
    return n * t.element_size()


def byte_counts(inputs: dict, op: str, mode: str, n_chunks: Optional[int] = None) -> dict:
    """``{"min": bytes, "moved": bytes or None}`` for one call.

    min (one pass, any implementation): every distinct input element read once (y, x_t, o_θ, o_ref; a shared
      tensor once per pair), the [P] coefficients read, the outputs (loss, r) written, and for ``full`` the
      gradient dL/d o_θ written once.
    moved (this package's kernels, with ``n_chunks`` programs per pair):
      forward  = inputs read once + partials [P, 2, n_chunks] written and read back (fp32) + r, c, loss written
      backward = y, x_t, o_θ read again (o_ref is not needed for dL/d o_θ) + c read + dL/d o_θ written.
    """
    y, x_t, o_theta, o_ref = (inputs[k] for k in ("y", "x_t", "o_theta", "o_ref"))
    P = y.shape[0]
    coef = 3 * P * 4
    out = 8 * P + (4 if op == "preference_loss" else 0)
    reads = sum(_distinct_bytes(t) for t in (y, x_t, o_theta, o_ref))
    grad = o_theta.numel() * o_theta.element_size()
    minimum = reads + coef + out + (grad if mode == "full" else 0)
    moved = None
    if n_chunks is not None:
        partials = P * 2 * n_chunks * 4
        moved = reads + coef + 2 * partials + out + (8 * P if op == "preference_loss" else 0)
        if mode == "full":
            moved += sum(_distinct_bytes(t) for t in (y, x_t, o_theta)) + coef + 8 * P + grad
    return {"min": minimum, "moved": moved}


# ----------------------------------------------------------------------------------------------------------------
# Correctness at every grid point (for a GPU machine that has no pytest): the tolerances of tests/test_kernels.py
# ----------------------------------------------------------------------------------------------------------------

#: rounding of a gradient stored in its input's dtype (bf16: one ulp, 2⁻⁷, as the interpreter truncates)
_GRAD_RTOL = {torch.float64: 1e-12, torch.float32: 1e-6, torch.bfloat16: 1e-2, torch.float16: 2e-3}
#: and the spacing of fp16's subnormals (dL/do_θ at the mean reduction is often 1e-7…1e-5: below fp16's normal range)
_GRAD_ATOL = {torch.float64: 0.0, torch.float32: 0.0, torch.bfloat16: 0.0, torch.float16: 6e-8}


def check_against_reference(inputs: dict, loss_kwargs: dict) -> dict:
    """The fused ``preference_loss`` (Triton) against a float64 run of the reference on the same values:
    ``{"r": e, "loss": e, "grad": e}``, each the worst |error| ÷ tolerance (≤ 1 passes; NaN fails).

    Tolerances as in ``tests/test_kernels.py``: r within 1e-5·A (A the scale of the summed terms' parts), the loss
    and dL/do_θ at the kernel's own r (β amplifies r's bounded error), the gradient within the rounding of its
    dtype plus 1e-5 of its terms' scale.
    """
    from rdpo_zoo import kernels

    y, x_t, o_theta, o_ref, a, b, sigma = (inputs[k] for k in ("y", "x_t", "o_theta", "o_ref", "a", "b", "sigma"))
    value, r = kernels.preference_loss(y, x_t, o_theta, o_ref, a, b, sigma, backend="triton",
                                       return_log_ratios=True, **loss_kwargs)
    (grad,) = torch.autograd.grad(value, o_theta)

    def d(t):
        return None if t is None else t.detach().double()

    ot64 = d(o_theta).requires_grad_(True)
    r_ref = _reference.paired_log_ratios(d(y), d(x_t), ot64, d(o_ref), d(a), d(b), d(sigma))
    P, D = y.shape[0], y.shape[-1]

    def branches(t):
        if t is None:
            return torch.zeros(P, 2, D, dtype=torch.float64, device=y.device)
        t = d(t).abs()
        return t.unsqueeze(1).expand(P, 2, D) if t.dim() == 2 else t

    yb, xb, ob, rb = (branches(t) for t in (y, x_t, o_theta, o_ref))
    a_, b_ = (d(t).to(y.device).abs().reshape(P, 1, 1) for t in (a, b))
    s = (1.0 / (2.0 * d(sigma).to(y.device) ** 2) / D).reshape(P, 1, 1)  # the bench's reduction is the mean
    scale = (s * b_ * ((ob + rb) * (2 * yb + 2 * a_ * xb + b_ * (ob + rb)))).sum(-1)
    worst = {}
    worst["r"] = float(((r.double() - r_ref.detach()).abs() / (1e-5 * scale + 1e-30)).max())
    r_at = r.detach().double().requires_grad_(True)
    per_pair = _losses.pairwise_losses(r_at, **loss_kwargs)
    want = per_pair.mean()
    worst["loss"] = float((value.detach().double() - want.detach()).abs()
                          / (1e-5 * per_pair.detach().abs().mean() + 1e-30))
    (c,) = torch.autograd.grad(want, r_at)
    (grad_ref,) = torch.autograd.grad(r_ref, ot64, c)
    c_mag = (c.abs() + 1e-3 * c.abs().max()).unsqueeze(-1)
    terms = c_mag * 2 * s * b_ * (yb + a_ * xb + b_ * ob)
    terms = terms.sum(1) if o_theta.dim() == 2 else terms
    want_g = grad_ref.detach()
    want_g = torch.where(torch.isinf(want_g.to(o_theta.dtype)), want_g.to(o_theta.dtype).double(), want_g)
    tol = _GRAD_RTOL[o_theta.dtype] * want_g.abs() + 1e-5 * terms + _GRAD_ATOL[o_theta.dtype] + 1e-30
    err = (grad.double() - want_g).abs() / tol
    worst["grad"] = float(torch.where(torch.isinf(want_g) & (grad.double() == want_g), 0.0, err).max())
    return {k: (v if math.isfinite(v) else float("inf")) for k, v in worst.items()}


# ----------------------------------------------------------------------------------------------------------------
# Timers
# ----------------------------------------------------------------------------------------------------------------


def _quantiles(times_ms: list[float]) -> tuple[float, float, float]:
    if len(times_ms) == 1:
        return times_ms[0], times_ms[0], times_ms[0]
    q = statistics.quantiles(sorted(times_ms), n=10, method="inclusive")
    return statistics.median(times_ms), q[1], q[7]  # median, p20, p80


def cpu_timer(fn: Callable, warmup_ms: float, rep_ms: float, min_reps: int = 3, max_reps: int = 1000):
    """median, p20, p80 in ms: warm-up (at least two calls: compilation happens there), then each call timed."""
    start = time.perf_counter()
    for i in range(1000):
        fn()
        if i >= 1 and (time.perf_counter() - start) * 1e3 >= warmup_ms:
            break
    times, spent = [], 0.0
    while len(times) < min_reps or (spent < rep_ms and len(times) < max_reps):
        t0 = time.perf_counter()
        fn()
        dt = (time.perf_counter() - t0) * 1e3
        times.append(dt)
        spent += dt
    return _quantiles(times)


def cuda_timer(fn: Callable, warmup_ms: float, rep_ms: float):
    """median, p20, p80 in ms from ``triton.testing.do_bench`` (it flushes L2 between calls)."""
    from triton.testing import do_bench

    fn()  # compile / autotune outside the measurement
    torch.cuda.synchronize()
    median, p20, p80 = do_bench(fn, warmup=int(warmup_ms), rep=int(rep_ms), quantiles=[0.5, 0.2, 0.8])
    return median, p20, p80


def cuda_event_timer(fn: Callable, warmup_ms: float, rep_ms: float):
    """Fallback when Triton is absent: CUDA events around each call."""
    fn()
    torch.cuda.synchronize()
    times = []
    start_wall = time.perf_counter()
    while len(times) < 5 or (time.perf_counter() - start_wall) * 1e3 < rep_ms:
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e))
    return _quantiles(times)


# ----------------------------------------------------------------------------------------------------------------
# Providers
# ----------------------------------------------------------------------------------------------------------------


def _reference_fn(op: str, loss_kwargs: dict) -> Callable:
    def preference(y, x_t, o_theta, o_ref, a, b, sigma):
        r = _reference.paired_log_ratios(y, x_t, o_theta, o_ref, a, b, sigma)
        return _losses.preference_loss(r, **loss_kwargs)

    def log_ratios(y, x_t, o_theta, o_ref, a, b, sigma):
        return _reference.paired_log_ratios(y, x_t, o_theta, o_ref, a, b, sigma)

    return preference if op == "preference_loss" else log_ratios


def _fused_fn(op: str, loss_kwargs: dict) -> Callable:
    from rdpo_zoo import kernels

    def preference(y, x_t, o_theta, o_ref, a, b, sigma):
        return kernels.preference_loss(y, x_t, o_theta, o_ref, a, b, sigma, backend="triton", **loss_kwargs)

    def log_ratios(y, x_t, o_theta, o_ref, a, b, sigma):
        return kernels.paired_log_ratios(y, x_t, o_theta, o_ref, a, b, sigma, backend="triton")

    return preference if op == "preference_loss" else log_ratios


def _call(fn: Callable, inputs: dict, mode: str, grad_r: Optional[torch.Tensor]) -> Callable:
    args = tuple(inputs[k] for k in ("y", "x_t", "o_theta", "o_ref", "a", "b", "sigma"))
    o_theta = inputs["o_theta"]
    if mode == "forward":
        return lambda: fn(*args)
    if grad_r is None:
        return lambda: torch.autograd.grad(fn(*args), o_theta)
    return lambda: torch.autograd.grad(fn(*args), o_theta, grad_r)


# ----------------------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------------------


def _row(op, provider, mode, metric, unit, point, median, p20=None, p80=None) -> dict:
    return dict(op=op, provider=provider, mode=mode, metric=metric, unit=unit, x=point.label(), median=median,
                p20=median if p20 is None else p20, p80=median if p80 is None else p80)


def _versions() -> dict:
    from importlib import metadata

    out = {"python": platform.python_version(), "torch": torch.__version__}
    for dist in ("triton", "rdpo-zoo"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def run_bench(settings: BenchSettings, log: Callable[[str], None] = lambda s: None) -> dict:
    """Run the grid; returns the JSON-ready result (see ``validate_result`` for its schema)."""
    from rdpo_zoo import kernels

    device = torch.device(settings.device)
    cuda = device.type == "cuda"
    notes: list[str] = []
    status = kernels.triton_status()
    providers = list(settings.providers)
    if "triton" in providers:
        if not status["available"]:
            notes.append(f"triton: not run, Triton cannot be imported ({status['error']})")
            providers.remove("triton")
        elif not cuda and not status["interpreted"]:
            notes.append("triton: not run: the Triton path needs a CUDA GPU (or --interpret for a smoke test "
                         "under the interpreter, tiny sizes)")
            providers.remove("triton")
        elif status["interpreted"]:
            notes.append("triton: under TRITON_INTERPRET=1 (the interpreter): a smoke test, not a speed")
    tuning = None
    if status["available"]:
        from rdpo_zoo.kernels import log_ratio

        tuning = log_ratio.set_tuning(**settings.tuning)
    loss_kwargs = dict(loss=settings.loss, beta=settings.beta, penalty=settings.penalty,
                       psi_lambda=settings.psi_lambda)
    loss_path = kernels.fused_loss_path(settings.loss, settings.penalty) if settings.op == "preference_loss" else None
    if loss_path and loss_path != "fused":
        notes.append(f"loss {settings.loss!r}: {loss_path}")
    if cuda:
        have_triton_timer = status["available"] and not status["interpreted"]
        timer = cuda_timer if have_triton_timer else cuda_event_timer
        timer_name = "triton.testing.do_bench" if have_triton_timer else "torch.cuda.Event"
    else:
        if settings.threads is not None:
            torch.set_num_threads(settings.threads)
        timer, timer_name = cpu_timer, "time.perf_counter (warm-up, then each call)"
        notes.append("peak memory: measured on CUDA only")
        if hasattr(os, "getloadavg"):
            notes.append(f"cpu: {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, load average "
                         f"{os.getloadavg()[0]:.2f} at the start (other work on the machine skews CPU timings)")
    compiled = None
    if "compile" in providers:
        import torch._dynamo as dynamo

        dynamo.config.cache_size_limit = max(dynamo.config.cache_size_limit, 256)
        compiled = torch.compile(_reference_fn(settings.op, loss_kwargs))
    fns = {"eager": _reference_fn(settings.op, loss_kwargs), "compile": compiled}
    if "triton" in providers:
        fns["triton"] = _fused_fn(settings.op, loss_kwargs)
    rows: list[dict] = []
    op = settings.op
    check = None
    if settings.check:
        if "triton" in providers:
            check = {"passed": True, "tolerance": "error / tolerance <= 1, as tests/test_kernels.py", "worst": {}}
        else:
            notes.append("check: not run (it compares the Triton path, which does not run here)")
    for point in settings.points():
        inputs = make_inputs(point, device)
        if check is not None:
            errors = check_against_reference(inputs, loss_kwargs)
            for name, e in errors.items():
                check["worst"][name] = max(check["worst"].get(name, 0.0), e)
                rows.append(_row(op, "triton", "full", f"check_{name}_error_over_tolerance", "ratio", point,
                                 e if math.isfinite(e) else 1e300))
            if not all(e <= 1.0 for e in errors.values()):
                check["passed"] = False
                notes.append(f"check FAILED at {point.label()}: {errors}")
            log(f"check {point.label()}: " + ", ".join(f"{k} {v:.3g}" for k, v in errors.items()))
        grad_r = torch.randn(point.P, 2, device=device) if op == "paired_log_ratios" else None
        n_chunks = None
        if "triton" in providers:
            from rdpo_zoo.kernels.log_ratio import choose_launch_config

            n_chunks = choose_launch_config(point.P, point.D, device).n_chunks
        for mode in settings.modes:
            counts = byte_counts(inputs, op, mode, n_chunks)
            # the device's copy bandwidth at the same byte counts (a copy of n/2 bytes moves n)
            copy_gbps = {}
            for kind in ("min", "moved"):
                nbytes = counts[kind]
                if nbytes is None:
                    continue
                src = torch.empty(max(1, nbytes // 2), dtype=torch.uint8, device=device)
                dst = torch.empty_like(src)
                med, p20, p80 = timer(lambda: dst.copy_(src), settings.warmup_ms, settings.rep_ms)
                copy_gbps[kind] = 2 * src.numel() / (med * 1e-3) / 1e9
                rows.append(_row(op, "copy", mode, f"bandwidth_{kind}_bytes", "GB/s", point, copy_gbps[kind],
                                 2 * src.numel() / (p80 * 1e-3) / 1e9, 2 * src.numel() / (p20 * 1e-3) / 1e9))
                if kind == "min":
                    rows.append(_row(op, "copy", mode, "time_min_bytes", "ms", point, med, p20, p80))
            rows.append(_row(op, "model", mode, "bytes_min", "B", point, float(counts["min"])))
            if counts["moved"] is not None:
                rows.append(_row(op, "triton", mode, "bytes_moved", "B", point, float(counts["moved"])))
            times = {}
            for provider in PROVIDERS:
                if provider not in providers:
                    continue
                call = _call(fns[provider], inputs, mode, grad_r)
                try:
                    med, p20, p80 = timer(call, settings.warmup_ms, settings.rep_ms)
                except Exception as error:  # noqa: BLE001 - a provider that cannot run is reported, not fatal
                    notes.append(f"{provider} {mode} {point.label()}: failed: {type(error).__name__}: {error}")
                    continue
                times[provider] = (med, p20, p80)
                rows.append(_row(op, provider, mode, "time", "ms", point, med, p20, p80))
                gb = counts["min"] / 1e9
                rows.append(_row(op, provider, mode, "throughput_min_bytes", "GB/s", point, gb / (med * 1e-3),
                                 gb / (p80 * 1e-3), gb / (p20 * 1e-3)))
                rows.append(_row(op, provider, mode, "copy_fraction_min_bytes", "ratio", point,
                                 gb / (med * 1e-3) / copy_gbps["min"]))
                if provider == "triton" and counts["moved"] is not None:
                    gm = counts["moved"] / 1e9
                    rows.append(_row(op, provider, mode, "throughput_moved_bytes", "GB/s", point, gm / (med * 1e-3),
                                     gm / (p80 * 1e-3), gm / (p20 * 1e-3)))
                    rows.append(_row(op, provider, mode, "copy_fraction_moved_bytes", "ratio", point,
                                     gm / (med * 1e-3) / copy_gbps["moved"]))
                if cuda:
                    torch.cuda.synchronize()
                    base = torch.cuda.memory_allocated(device)
                    torch.cuda.reset_peak_memory_stats(device)
                    call()
                    torch.cuda.synchronize()
                    peak = torch.cuda.max_memory_allocated(device) - base
                    rows.append(_row(op, provider, mode, "peak_memory_above_inputs", "MB", point, peak / 2**20))
            if "triton" in times:
                t = times["triton"]
                for other in ("eager", "compile"):
                    if other in times:
                        o = times[other]
                        rows.append(_row(op, "triton", mode, f"speedup_vs_{other}", "x", point, o[0] / t[0],
                                         o[1] / t[2], o[2] / t[1]))
            log(_progress_line(point, mode, times))
        del inputs
    return {
        "schema": SCHEMA,
        "op": op,
        "device": torch.cuda.get_device_name(device) if cuda else f"cpu ({platform.processor() or platform.machine()})",
        "device_type": device.type,
        "versions": _versions(),
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "timer": timer_name,
        "interpret": bool(status["interpreted"]),
        "loss": {"loss": settings.loss, "penalty": settings.penalty, "beta": settings.beta,
                 "psi_lambda": settings.psi_lambda, "path": loss_path},
        "grid": {k: list(v) for k, v in settings.grid.items()},
        "providers": [p for p in PROVIDERS if p in providers],
        "modes": list(settings.modes),
        "launch_bound_us": LAUNCH_BOUND_US,
        "tuning": tuning,
        "check": check,
        "notes": notes,
        "rows": rows,
    }


def _progress_line(point: Point, mode: str, times: dict) -> str:
    parts = [f"{p} {t[0]:.3f} ms" for p, t in times.items()]
    return f"P={point.P} D={point.D} {point.dtype} {point.layout} {mode}: " + ", ".join(parts)


# ----------------------------------------------------------------------------------------------------------------
# Table and schema
# ----------------------------------------------------------------------------------------------------------------


def _index(result: dict) -> dict:
    out = {}
    for row in result["rows"]:
        x = row["x"]
        out[(x["P"], x["D"], x["dtype"], x["layout"], row["mode"], row["provider"], row["metric"])] = row
    return out


def _fmt_time(ms: Optional[float]) -> str:
    if ms is None:
        return "—"
    return f"{ms * 1e3:.3g}µs" if ms < 1 else f"{ms:.4g}ms"


def _fmt(v: Optional[float], spec: str = ".3g") -> str:
    return "—" if v is None else format(v, spec)


def format_table(result: dict) -> str:
    """One line per (point, mode): each provider's median time; the copy bandwidth measured at the one-pass byte
    count and the best provider's GB/s on that count;
    Triton's GB/s on the minimum and on the bytes it moves, the moved/minimum ratio, the fraction of the copy
    bandwidth measured at the moved byte count, and its speed-ups. ``bound`` is ``launch`` where copying the
    op's bytes takes under ``launch_bound_us`` (then read the times as latencies: GB/s mean little there)."""
    idx = _index(result)
    providers = result["providers"]
    cuda = result["device_type"] == "cuda"
    head = ["P", "D", "dtype", "layout", "mode"] + [p for p in PROVIDERS if p in providers]
    head += ["bound", "copy GB/s", "best GB/s", "triton GB/s min|moved", "moved/min", "triton %copy", "x eager",
             "x compile"]
    if cuda:
        head += ["peak MB " + "|".join(p for p in PROVIDERS if p in providers)]
    lines = [head]
    seen = []
    for row in result["rows"]:
        x = row["x"]
        key = (x["P"], x["D"], x["dtype"], x["layout"], row["mode"])
        if key not in seen:
            seen.append(key)
    for key in seen:
        def get(provider, metric):
            row = idx.get(key + (provider, metric))
            return None if row is None else row["median"]

        copy_ms = get("copy", "time_min_bytes")
        launch_bound = copy_ms is not None and copy_ms * 1e3 < result.get("launch_bound_us", LAUNCH_BOUND_US)
        cells = [str(key[0]), str(key[1]), key[2], key[3], key[4]]
        cells += [_fmt_time(get(p, "time")) for p in PROVIDERS if p in providers]
        cells.append("launch" if launch_bound else "memory")
        cells.append(_fmt(get("copy", "bandwidth_min_bytes")))
        best = [b for b in (get(p, "throughput_min_bytes") for p in providers) if b is not None]
        cells.append(_fmt(max(best)) if best else "—")
        tmin, tmoved = get("triton", "throughput_min_bytes"), get("triton", "throughput_moved_bytes")
        cells.append("—" if tmin is None else f"{_fmt(tmin)}|{_fmt(tmoved)}")
        bmin, bmoved = get("model", "bytes_min"), get("triton", "bytes_moved")
        cells.append(f"{bmoved / bmin:.2f}" if bmoved and bmin else "—")
        frac = get("triton", "copy_fraction_moved_bytes")
        cells.append("—" if frac is None else f"{100 * frac:.0f}%")
        cells += [_fmt(get("triton", f"speedup_vs_{other}"), ".2f") for other in ("eager", "compile")]
        if cuda:
            cells.append("|".join(_fmt(get(p, "peak_memory_above_inputs"), ".0f") for p in PROVIDERS
                                  if p in providers))
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    text = ["  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text)


ROW_KEYS = ("op", "provider", "mode", "metric", "unit", "x", "median", "p20", "p80")


def validate_result(result: dict) -> None:
    """Raise ``ValueError`` naming the first thing wrong with a bench result (the JSON schema)."""
    for key in ("schema", "op", "device", "device_type", "versions", "timestamp", "timer", "rows", "notes",
                "providers", "grid", "loss"):
        if key not in result:
            raise ValueError(f"bench result: missing key {key!r}")
    if result["schema"] != SCHEMA:
        raise ValueError(f"bench result: schema {result['schema']!r}, expected {SCHEMA!r}")
    for key in ("torch", "triton", "python"):
        if key not in result["versions"]:
            raise ValueError(f"bench result: versions lacks {key!r}")
    if not result["rows"]:
        raise ValueError("bench result: no rows")
    for i, row in enumerate(result["rows"]):
        if tuple(row) != ROW_KEYS:
            raise ValueError(f"bench result: row {i} has keys {tuple(row)}, expected {ROW_KEYS}")
        if row["provider"] not in PROVIDERS + ("copy", "model") or row["mode"] not in MODES:
            raise ValueError(f"bench result: row {i}: provider/mode {row['provider']!r}/{row['mode']!r}")
        if set(row["x"]) != {"P", "D", "dtype", "layout"}:
            raise ValueError(f"bench result: row {i}: x {row['x']!r}")
        values = (row["median"], row["p20"], row["p80"])
        if not all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in values):
            raise ValueError(f"bench result: row {i}: non-finite or negative figure {values}")
        if not row["p20"] <= row["median"] * (1 + 1e-9) or not row["median"] <= row["p80"] * (1 + 1e-9):
            raise ValueError(f"bench result: row {i}: expected p20 ≤ median ≤ p80, got {values}")
    for provider in result["providers"]:
        if not any(r["provider"] == provider and r["metric"] == "time" for r in result["rows"]):
            raise ValueError(f"bench result: provider {provider!r} has no time rows")
    json.dumps(result)  # serialisable
