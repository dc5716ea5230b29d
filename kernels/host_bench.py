"""``rdpo-zoo bench --host``: the host cost of one call of the fused loss, everything but the driver's launch.

On a GPU the fused op is host-bound at every size the trainer uses (docs/kernels.md): what limits it is Python on
the host per call. That cost can be measured on any machine: with the fake CUDA driver of ``fake_driver.py``
Triton's whole dispatch runs (binding, specialisation, its caches, the compiled kernels' launchers) on CPU tensors
and only the launch itself is a counted no-op. Each figure is the median (p20, p80) over ``calls`` calls at one
torch thread, after a warm-up, of:

- ``general``: the path every call took before the lean path (``use_lean_path(False)``): the full
  ``check_paired_inputs``, Triton's JIT dispatch per launch, four allocations;
- ``lean``: the lean launch path (``kernels/lean.py``);

each for ``forward`` (the loss) and ``full`` (the loss and ``torch.autograd.grad`` to o_θ, as a training step
asks), and for two callers:

- ``bench``: the coefficients a, b, σ given as ``[P]`` CPU tensors (``kernels.bench.make_inputs``);
- ``trainer``: the trainer's coefficients, ``DiffusionModel.coefficient_tensors`` of the pairs' steps: ``general``
  rebuilds the [T, 3] table from the cached per-step device scalars and indexes it with the device step index
  (the code before this change); ``lean`` picks rows of the host table built once (``pick_coefficients``) with the
  host index. Here the "device" is the CPU, so the general path's device-branch check (13 small kernels and a
  sync on a GPU) is not exercised: its figure is a lower bound of its cost on a GPU.

Beside each figure: the kernel launches per call that reached the driver and the torch operators the call ran.
The measurement runs in a child process (the fake driver cannot be undone, and needs ``TRITON_INTERPRET`` unset).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Optional

__all__ = ["HOST_POINTS", "run_host_bench", "measure", "format_host_table", "HOST_SCHEMA"]

HOST_SCHEMA = "rdpo-zoo.bench-host/1"
#: (P, D, dtype, layout): the trainer's layout at P = 8, and a larger per-branch bf16 call. D is kept small: the
#: host cost does not depend on it, and large CPU allocations (the gradient) would add the CPU's malloc, which a
#: GPU's caching allocator does not have
HOST_POINTS = ((8, 4096, "fp32", "shared"), (64, 4096, "bf16", "per-branch"))
#: T of the trainer's coefficient table (SD's 20 steps)
TABLE_STEPS = 20


def run_host_bench(calls: int = 1000, points=HOST_POINTS, timeout: float = 900.0) -> dict:
    """Measure in a child process (see the module docstring); returns the JSON-ready result."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["OMP_NUM_THREADS"] = "1"
    # glibc: no mmap/munmap per large allocation (the gradients), as a GPU's caching allocator has none either
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # the GPU default, stated (Triton 3.9 warns otherwise)
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(1 << 30))
    env.setdefault("MALLOC_TRIM_THRESHOLD_", str(1 << 30))
    code = ("import json, sys; from rdpo_zoo.kernels.host_bench import measure; "
            f"print('RESULT ' + json.dumps(measure({int(calls)}, {[list(p) for p in points]!r})))")
    done = subprocess.run([sys.executable, "-P", "-c", code], env=env, capture_output=True, text=True,
                          timeout=timeout)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"bench --host: the measuring process failed (exit {done.returncode}):\n"
                           + (done.stderr or done.stdout)[-3000:])
    return json.loads(lines[-1][len("RESULT "):])


PATHS = ("general", "lean")
#: calls of one path before switching to the other: both see the same load on a shared machine
_BLOCK = 10


def _time_interleaved(fns: dict, calls: int, warmup: int, lean_switch: dict) -> dict:
    """Per path, ``calls`` per-call times in µs, the paths alternating in blocks of ``_BLOCK`` calls."""
    clock = time.perf_counter
    times = {path: [] for path in fns}
    saved = lean_switch["on"]
    try:
        for path, fn in fns.items():
            lean_switch["on"] = path == "lean"
            for _ in range(warmup):
                fn()
        while min(len(t) for t in times.values()) < calls:
            for path, fn in fns.items():
                lean_switch["on"] = path == "lean"
                out = times[path]
                for _ in range(_BLOCK):
                    t0 = clock()
                    fn()
                    out.append((clock() - t0) * 1e6)
    finally:
        lean_switch["on"] = saved
    return times


def _quantiles_us(times: list[float]) -> tuple[float, float, float]:
    import statistics

    q = statistics.quantiles(sorted(times), n=10, method="inclusive")
    return statistics.median(times), q[1], q[7]


def _operators(fn) -> list[str]:
    """The torch operators one call runs (a TorchDispatchMode sees every one, autograd's included)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func.overloadpacket.__name__))
            return func(*args, **(kwargs or {}))

    with Record():
        fn()
    return seen


def measure(calls: int = 1000, points=HOST_POINTS, warmup: int = 100) -> dict:
    """The measurement itself: installs the fake CUDA driver in *this* process (irreversibly)."""
    from . import fake_driver

    driver = fake_driver.install()
    import platform

    import torch

    torch.set_num_threads(1)
    from rdpo_zoo import kernels
    from rdpo_zoo.diffusion import pick_coefficients

    from . import bench as kbench
    from . import lean

    status = kernels.triton_status()
    rows = []
    for P, D, dtype, layout in points:
        point = kbench.Point(int(P), int(D), dtype, layout)
        inputs = kbench.make_inputs(point, "cpu")
        y, x_t, o_theta, o_ref = (inputs[k] for k in ("y", "x_t", "o_theta", "o_ref"))
        g = torch.Generator().manual_seed(1)
        # the trainer's coefficients: a [T, 3] table; per-step scalars as DiffusionModel.coefficients caches them
        table = torch.stack([0.9 + 0.1 * torch.rand(TABLE_STEPS, generator=g),
                             -0.1 * torch.rand(TABLE_STEPS, generator=g) - 0.05,
                             0.1 + 0.2 * torch.rand(TABLE_STEPS, generator=g)], 1)
        scalars = [tuple(row.unbind()) for row in table]
        steps_host = torch.randint(TABLE_STEPS, (point.P,), generator=g)
        steps_device = steps_host.clone()  # "on the device": here the CPU

        def coefficients_before():  # DiffusionModel.coefficient_tensors before this change
            rebuilt = torch.stack([torch.stack(s) for s in scalars])
            picked = rebuilt[steps_device.to(rebuilt.device)]
            return picked[:, 0], picked[:, 1], picked[:, 2]

        def coefficients_now():
            return pick_coefficients(table, steps_host)

        def call(caller, mode, lean_off):
            def fn():
                if caller == "bench":
                    a, b, sigma = inputs["a"], inputs["b"], inputs["sigma"]
                else:
                    a, b, sigma = coefficients_before() if lean_off else coefficients_now()
                loss = kernels.preference_loss(y, x_t, o_theta, o_ref, a, b, sigma, loss="dpo", beta=0.1,
                                               backend="triton")
                if mode == "full":
                    torch.autograd.grad(loss, o_theta)
            return fn

        for caller in ("bench", "trainer"):
            for mode in ("forward", "full"):
                fns = {path: call(caller, mode, path == "general") for path in PATHS}
                facts = {}
                for path, fn in fns.items():
                    with kernels.use_lean_path(path == "lean"):
                        fn()  # compiles (the first time) and builds the plan
                        before = fake_driver.launch_count()
                        fn()
                        facts[path] = (fake_driver.launch_count() - before, _operators(fn))
                times = _time_interleaved(fns, calls, warmup, lean.ENABLED)
                for path in PATHS:
                    median, p20, p80 = _quantiles_us(times[path])
                    rows.append(dict(point=dict(P=point.P, D=point.D, dtype=dtype, layout=layout), caller=caller,
                                     mode=mode, path=path, calls=calls, median_us=median, p20_us=p20, p80_us=p80,
                                     launches=facts[path][0], operators=facts[path][1]))
    ratios = []
    for row in rows:
        if row["path"] == "lean":
            general = next(r for r in rows if r["path"] == "general" and r["point"] == row["point"]
                           and r["caller"] == row["caller"] and r["mode"] == row["mode"])
            ratios.append(dict(point=row["point"], caller=row["caller"], mode=row["mode"],
                               general_over_lean=general["median_us"] / row["median_us"]))
    from importlib import metadata

    versions = {"python": platform.python_version(), "torch": torch.__version__, "triton": status["version"]}
    try:
        versions["rdpo-zoo"] = metadata.version("rdpo-zoo")
    except metadata.PackageNotFoundError:
        versions["rdpo-zoo"] = None
    import datetime as _dt

    return {
        "schema": HOST_SCHEMA,
        "what": "host µs per call, Triton's dispatch with the driver's launch stubbed (fake CUDA driver, "
                f"sm_{driver.target.arch}); median, p20, p80 of {calls} calls after {warmup} warm-up calls, "
                "1 torch thread",
        "cpu": platform.processor() or platform.machine(),
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "versions": versions,
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "rows": rows,
        "ratios": ratios,
    }


HOST_ROW_KEYS = ("point", "caller", "mode", "path", "calls", "median_us", "p20_us", "p80_us", "launches",
                 "operators")


def validate_host_result(result: dict) -> None:
    """Raise ``ValueError`` naming the first thing wrong with a ``bench --host`` result."""
    for key in ("schema", "what", "versions", "timestamp", "rows", "ratios"):
        if key not in result:
            raise ValueError(f"bench --host result: missing key {key!r}")
    if result["schema"] != HOST_SCHEMA:
        raise ValueError(f"bench --host result: schema {result['schema']!r}, expected {HOST_SCHEMA!r}")
    for i, row in enumerate(result["rows"]):
        if tuple(row) != HOST_ROW_KEYS:
            raise ValueError(f"bench --host result: row {i} has keys {tuple(row)}, expected {HOST_ROW_KEYS}")
        if not row["p20_us"] <= row["median_us"] <= row["p80_us"] or row["calls"] < 1:
            raise ValueError(f"bench --host result: row {i}: expected p20 <= median <= p80")


def format_host_table(result: dict) -> str:
    head = ["P", "D", "dtype", "layout", "caller", "mode", "general µs", "lean µs", "general/lean",
            "launches general|lean"]
    lines = [head]
    for ratio in result["ratios"]:
        pick = {r["path"]: r for r in result["rows"] if r["point"] == ratio["point"]
                and r["caller"] == ratio["caller"] and r["mode"] == ratio["mode"]}
        p = ratio["point"]
        lines.append([str(p["P"]), str(p["D"]), p["dtype"], p["layout"], ratio["caller"], ratio["mode"],
                      f"{pick['general']['median_us']:.1f}", f"{pick['lean']['median_us']:.1f}",
                      f"{ratio['general_over_lean']:.2f}x",
                      f"{pick['general']['launches']}|{pick['lean']['launches']}"])
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    text = ["  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text)


def summary(result: dict) -> Optional[float]:
    """The smallest general/lean ratio of a forward + backward (the Done-when figure)."""
    full = [r["general_over_lean"] for r in result["ratios"] if r["mode"] == "full"]
    return min(full) if full else None
