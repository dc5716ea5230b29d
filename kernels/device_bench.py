"""``rdpo-zoo bench --device-time``: what the device spends on the fused loss, beside what a caller waits.

``triton.testing.do_bench`` with an L2-flushing memset before each repetition hides part of the host work behind
the memset and measures neither the device nor the caller. Here, per grid point and mode (``forward``; ``full`` =
forward + backward to o_θ), each provider is timed two ways:

- **wall**: back-to-back calls, one sync at the end (what a training loop waits per call: host work included);
- **device**: the same work captured in a CUDA graph and replayed (kernels only: no Python, no launch latency
  between them), timed with CUDA events. For the fused op the graph holds the lean path's launches (the
  coefficients copied device-to-device instead of host-to-device: capture cannot read pageable host memory).

A row whose wall time exceeds its device time by more than ``HOST_BOUND_RATIO`` is marked host-bound: there the
caller waits for Python, not for the GPU. GB/s are on the one-pass minimum of bytes (``bench.byte_counts``), the
fused op's moved bytes beside, and the device's copy bandwidth is measured at each size the same two ways (a
device-to-device ``copy_`` of the minimum bytes).

Baselines: the eager maths alone (``maths_loss``: the factored log-ratios and the reference loss, no validation),
and ``torch.compile`` of it with ``dynamic=False`` in the default mode and in ``reduce-overhead`` (CUDA graphs of
its own: wall time only) at ``COMPILE_SIZES``.

On the CPU the wall times run (the fused op only under ``--interpret``), device times and reduce-overhead are
CUDA-only and say so in the notes. Imports torch and the package's maths only.
"""

from __future__ import annotations

import datetime as _dt
import math
import platform
import statistics
import time
from typing import Callable, Optional

import torch

from rdpo_zoo import losses as _losses

from . import bench as kbench

__all__ = ["DEVICE_GRIDS", "DEVICE_PROVIDERS", "COMPILE_SIZES", "HOST_BOUND_RATIO", "maths_loss", "run_device_bench",
           "format_device_table"]

DEVICE_SCHEMA = "rdpo-zoo.bench-device/1"
#: P = 64 pairs, D from 2^14 (SD 1.5's 4·64·64) to 2^20: P·D from 2^20 to 2^26
DEVICE_GRIDS = {
    "device": dict(P=(64,), D=(2**14, 2**16, 2**18, 2**20), dtype=("fp32", "bf16"), layout=("shared",)),
    "interpret": dict(P=(2,), D=(64,), dtype=("fp32",), layout=("shared",)),
}
DEVICE_PROVIDERS = ("triton", "eager", "compile", "compile-ro")
#: P·D at which the torch.compile baselines run (each size compiles once per mode: dynamic=False)
COMPILE_SIZES = (2**20, 2**22, 2**24)
HOST_BOUND_RATIO = 1.5


def maths_loss(y, x_t, o_theta, o_ref, a, b, sigma, loss_kwargs: dict):
    """The preference loss as plain tensor maths (no checks, no host reads): what eager PyTorch and torch.compile
    run. ``a, b, sigma``: ``[P]`` tensors on the device; the mean reduction."""
    dtype = torch.float64 if o_theta.dtype == torch.float64 else torch.float32
    P, D = y.shape[0], y.shape[-1]

    def branches(t):
        t = t.to(dtype)
        return t.unsqueeze(1) if t.dim() == 2 else t

    a_, b_ = a.to(dtype).view(P, 1, 1), b.to(dtype).view(P, 1, 1)
    ot, orf = branches(o_theta), branches(o_ref)
    target = 2 * branches(y) - (2 * a_ * branches(x_t) if x_t is not None else 0)
    r = (b_ * (ot - orf) * (target - b_ * (ot + orf))).sum(-1) / (2 * sigma.to(dtype).view(P, 1) ** 2 * D)
    return _losses.preference_loss(r.expand(P, 2), **loss_kwargs)


def _stats(values: list) -> tuple[float, float, float]:
    if len(values) == 1:
        return values[0], values[0], values[0]
    q = statistics.quantiles(sorted(values), n=10, method="inclusive")
    return statistics.median(values), q[1], q[7]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def wall_time(fn: Callable, device, budget_ms: float, rounds: int = 7) -> tuple[float, float, float]:
    """ms per call of back-to-back calls (one sync per round): median, p20, p80 over ``rounds`` rounds."""
    for _ in range(3):
        fn()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(5):
        fn()
    _sync(device)
    per_call = max((time.perf_counter() - t0) / 5, 1e-7)
    n = int(min(1000, max(5, budget_ms * 1e-3 / rounds / per_call)))
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        _sync(device)
        out.append((time.perf_counter() - t0) / n * 1e3)
    return _stats(out)


def device_time(fn: Callable, device, per_graph: int = 3, rounds: int = 5, replays: int = 4):
    """ms per call from CUDA-graph replay: ``per_graph`` calls captured once, replayed ``replays`` times per round
    between two CUDA events; median, p20, p80 over ``rounds``. ``None`` off CUDA."""
    if device.type != "cuda":
        return None
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(3):  # warm-up on a side stream, as torch.cuda.graphs asks
            fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(per_graph):
            fn()
    graph.replay()
    torch.cuda.synchronize(device)
    out = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(replays):
            graph.replay()
        end.record()
        end.synchronize()
        out.append(start.elapsed_time(end) / (replays * per_graph))
    del graph
    return _stats(out)


def _fused_calls(inputs: dict, loss_kwargs: dict, mode: str, device):
    """``(wall_fn, graph_fn)`` of the fused op: the public call (the lean path), and its launches alone."""
    from rdpo_zoo import kernels

    args = tuple(inputs[k] for k in ("y", "x_t", "o_theta", "o_ref", "a", "b", "sigma"))
    o_theta = inputs["o_theta"]
    one = torch.ones((), device=device)

    def public():
        value = kernels.preference_loss(*args, backend="triton", **loss_kwargs)
        if mode == "full":
            torch.autograd.grad(value, o_theta, one)

    public()
    lean = kernels._lean()
    if lean is None:  # the lean path is off on this Triton (said at warning level): time the public call
        return public, public
    y, x_t, o_ref = inputs["y"], inputs["x_t"], inputs["o_ref"]
    key = lean._key("loss", (loss_kwargs["loss"], loss_kwargs["beta"], loss_kwargs["penalty"],
                             loss_kwargs["psi_lambda"], "inside", None),
                    y, x_t, o_theta, o_ref, "mean", kbench._reference.DEFAULT_MIN_SIGMA, "triton")
    plan = lean._plans.get(key)
    if plan is None:  # the lean path did not take this call (it says why at debug level): time the public call
        return public, public
    host = torch.cat([inputs[k].to(torch.float64) for k in ("a", "b", "sigma")]).to(device)

    def launches():
        value, _ = lean.LeanPreferenceLossFunction.apply(y, x_t, o_theta, o_ref, plan, host)
        if mode == "full":
            torch.autograd.grad(value, o_theta, one)

    return public, launches


def _maths_call(fn, inputs: dict, loss_kwargs: dict, mode: str, device):
    args = [inputs[k] for k in ("y", "x_t", "o_theta", "o_ref")]
    coefficients = [inputs[k].to(device) for k in ("a", "b", "sigma")]
    o_theta = inputs["o_theta"]
    one = torch.ones((), device=device)

    def call():
        value = fn(*args, *coefficients, loss_kwargs)
        if mode == "full":
            torch.autograd.grad(value, o_theta, one)

    return call


def run_device_bench(grid: dict, providers=DEVICE_PROVIDERS, modes=kbench.MODES, device: str = "cuda",
                     loss_kwargs: Optional[dict] = None, budget_ms: float = 50.0,
                     compile_sizes=COMPILE_SIZES, log: Callable[[str], None] = lambda s: None,
                     on_progress: Callable[[dict], None] = lambda result: None) -> dict:
    """Every point and mode (see the module docstring); ``on_progress(result)`` after each point, with the rows so
    far (a run cut short by a time limit keeps them)."""
    from rdpo_zoo import kernels

    device = torch.device(device)
    cuda = device.type == "cuda"
    loss_kwargs = {**dict(loss="dpo", beta=0.1, penalty=None, psi_lambda=0.0), **(loss_kwargs or {})}
    status = kernels.triton_status()
    notes, rows = [], []
    providers = list(providers)
    if "triton" in providers and not (status["available"] and (cuda or status["interpreted"])):
        notes.append("triton: not run here (a CUDA GPU, or --interpret on the CPU)")
        providers.remove("triton")
    if not cuda:
        notes.append("device times (CUDA-graph replay) and compile-ro (reduce-overhead) are CUDA-only: wall times only")
        if "compile-ro" in providers:
            providers.remove("compile-ro")
    compiled = {}
    if "compile" in providers or "compile-ro" in providers:
        import torch._dynamo as dynamo

        dynamo.config.cache_size_limit = max(dynamo.config.cache_size_limit, 64)
        if "compile" in providers:
            compiled["compile"] = torch.compile(maths_loss, dynamic=False)
        if "compile-ro" in providers:
            compiled["compile-ro"] = torch.compile(maths_loss, dynamic=False, mode="reduce-overhead")
    points = [kbench.Point(P, D, dt, lay) for lay in grid["layout"] for dt in grid["dtype"] for P in grid["P"]
              for D in grid["D"]]
    op = "preference_loss"
    result = {
        "schema": DEVICE_SCHEMA,
        "op": op,
        "device": torch.cuda.get_device_name(device) if cuda else f"cpu ({platform.processor() or platform.machine()})",
        "device_type": device.type,
        "versions": kbench._versions(),
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "timer": "wall: back-to-back calls, one sync per round; device: CUDA-graph replay, CUDA events",
        "interpret": bool(status["interpreted"]),
        "loss": loss_kwargs,
        "grid": {k: list(v) for k, v in grid.items()},
        "providers": [p for p in DEVICE_PROVIDERS if p in providers],
        "modes": list(modes),
        "compile_sizes": list(compile_sizes),
        "host_bound_ratio": HOST_BOUND_RATIO,
        "notes": notes,
        "rows": rows,
    }
    for point in points:
        inputs = kbench.make_inputs(point, device)
        n_chunks = None
        if "triton" in providers:
            from .log_ratio import choose_launch_config

            n_chunks = choose_launch_config(point.P, point.D, device).n_chunks
        for mode in modes:
            counts = kbench.byte_counts(inputs, op, mode, n_chunks)
            rows.append(kbench._row(op, "model", mode, "bytes_min", "B", point, float(counts["min"])))
            if counts["moved"] is not None:
                rows.append(kbench._row(op, "triton", mode, "bytes_moved", "B", point, float(counts["moved"])))
            src = torch.empty(max(1, counts["min"] // 2), dtype=torch.uint8, device=device)
            dst = torch.empty_like(src)
            timed = {"copy": (lambda: dst.copy_(src), lambda: dst.copy_(src))}
            if "triton" in providers:
                timed["triton"] = _fused_calls(inputs, loss_kwargs, mode, device)
            if "eager" in providers:
                call = _maths_call(maths_loss, inputs, loss_kwargs, mode, device)
                timed["eager"] = (call, call)
            for name, fn in compiled.items():
                if point.P * point.D in compile_sizes:
                    call = _maths_call(fn, inputs, loss_kwargs, mode, device)
                    timed[name] = (call, call if name == "compile" else None)
            summary = {}
            for provider, (wall_fn, graph_fn) in timed.items():
                try:
                    wall = wall_time(wall_fn, device, budget_ms)
                    dev = device_time(graph_fn, device) if graph_fn is not None else None
                except Exception as error:  # noqa: BLE001 - a provider that cannot run is reported, not fatal
                    notes.append(f"{provider} {mode} {point.label()}: failed: {type(error).__name__}: {error}")
                    continue
                summary[provider] = (wall, dev)
                rows.append(kbench._row(op, provider, mode, "wall_time", "ms", point, *wall))
                if dev is not None:
                    rows.append(kbench._row(op, provider, mode, "device_time", "ms", point, *dev))
                    rows.append(kbench._row(op, provider, mode, "wall_over_device", "ratio", point,
                                            wall[0] / dev[0]))
                nbytes = counts["min"] if provider != "copy" else 2 * src.numel()
                for metric, t in (("wall", wall), ("device", dev)):
                    if t is not None:
                        gb = nbytes / 1e9
                        rows.append(kbench._row(op, provider, mode, f"{metric}_throughput_min_bytes", "GB/s", point,
                                                gb / (t[0] * 1e-3), gb / (t[2] * 1e-3), gb / (t[1] * 1e-3)))
                if provider == "triton" and counts["moved"] is not None and dev is not None:
                    rows.append(kbench._row(op, provider, mode, "device_throughput_moved_bytes", "GB/s", point,
                                            counts["moved"] / 1e9 / (dev[0] * 1e-3)))
            copy_dev = summary.get("copy", (None, None))[1]
            if "triton" in summary:
                wall, dev = summary["triton"]
                basis = dev if dev is not None else wall
                copy_basis = copy_dev if copy_dev is not None else summary["copy"][0]
                rows.append(kbench._row(op, "triton", mode, "copy_fraction_min_bytes", "ratio", point,
                                        copy_basis[0] / basis[0]))
                for other in ("eager", "compile", "compile-ro"):
                    if other in summary:
                        rows.append(kbench._row(op, "triton", mode, f"wall_speedup_vs_{other}", "x", point,
                                                summary[other][0][0] / wall[0]))
                        if dev is not None and summary[other][1] is not None:
                            rows.append(kbench._row(op, "triton", mode, f"device_speedup_vs_{other}", "x", point,
                                                    summary[other][1][0] / dev[0]))
            log(f"P={point.P} D={point.D} {point.dtype} {point.layout} {mode}: " + ", ".join(
                f"{p} wall {t[0][0] * 1e3:.1f}µs" + (f" device {t[1][0] * 1e3:.1f}µs" if t[1] else "")
                for p, t in summary.items()))
        del inputs
        on_progress(result)
    return result


def validate_device_result(result: dict) -> None:
    for key in ("schema", "device", "device_type", "versions", "rows", "providers", "notes", "grid"):
        if key not in result:
            raise ValueError(f"bench --device-time result: missing key {key!r}")
    if result["schema"] != DEVICE_SCHEMA:
        raise ValueError(f"bench --device-time result: schema {result['schema']!r}, expected {DEVICE_SCHEMA!r}")
    for i, row in enumerate(result["rows"]):
        if tuple(row) != kbench.ROW_KEYS:
            raise ValueError(f"bench --device-time result: row {i} has keys {tuple(row)}")
        values = (row["median"], row["p20"], row["p80"])
        if not all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in values):
            raise ValueError(f"bench --device-time result: row {i}: non-finite or negative figure {values}")


def format_device_table(result: dict) -> str:
    """One line per (point, mode): wall and device µs per provider, the copy's, GB/s (device, minimum bytes) and
    the fraction of copy bandwidth, host-bound marks, speed-ups of the fused op."""
    index = {}
    keys = []
    for row in result["rows"]:
        x = row["x"]
        key = (x["P"], x["D"], x["dtype"], x["layout"], row["mode"])
        if key not in keys:
            keys.append(key)
        index[key + (row["provider"], row["metric"])] = row["median"]
    providers = ["copy"] + result["providers"]
    head = ["P·D", "dtype", "layout", "mode"] + [f"{p} wall|dev µs" for p in providers] + [
        "triton GB/s min", "%copy", "x eager wall", "x compile wall", "x compile dev"]
    lines = [head]
    ratio = result.get("host_bound_ratio", HOST_BOUND_RATIO)

    def us(v):
        return "—" if v is None else f"{v * 1e3:.1f}"

    for key in keys:
        P, D, dtype, layout, mode = key
        cells = [f"2^{int(math.log2(P * D))}" if P * D & (P * D - 1) == 0 else str(P * D), dtype, layout, mode]
        for p in providers:
            wall, dev = index.get(key + (p, "wall_time")), index.get(key + (p, "device_time"))
            mark = "*" if wall is not None and dev is not None and wall > ratio * dev else ""
            cells.append(f"{us(wall)}|{us(dev)}{mark}")
        gbps = index.get(key + ("triton", "device_throughput_min_bytes"),
                         index.get(key + ("triton", "wall_throughput_min_bytes")))
        frac = index.get(key + ("triton", "copy_fraction_min_bytes"))
        cells.append("—" if gbps is None else f"{gbps:.0f}")
        cells.append("—" if frac is None else f"{100 * frac:.0f}%")
        for metric in ("wall_speedup_vs_eager", "wall_speedup_vs_compile", "device_speedup_vs_compile"):
            v = index.get(key + ("triton", metric))
            cells.append("—" if v is None else f"{v:.2f}")
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    text = ["  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    text.append(f"(* host-bound: wall > {ratio}× device)")
    return "\n".join(text)
