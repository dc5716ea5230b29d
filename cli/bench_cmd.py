"""``rdpo-zoo bench``: throughput of the fused log-ratio/loss kernels beside the eager reference and torch.compile.

Imports nothing heavy at module level (``--help`` is instant) and never diffusers/peft/transformers: a GPU machine
with only torch and triton runs it (``python3 -m pip install --no-build-isolation --no-deps .``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

_CHOICES = dict(
    providers=("triton", "eager", "compile", "compile-ro"),
    modes=("forward", "full"),
    dtypes=("fp32", "bf16", "fp16", "mixed"),
    layouts=("shared", "per-branch", "noised"),
)


def _csv(kind: str, cast=str):
    def parse(ctx, param, value):
        if value is None:
            return None
        items = tuple(cast(v.strip()) for v in value.split(",") if v.strip())
        allowed = _CHOICES.get(kind)
        bad = [v for v in items if allowed is not None and v not in allowed]
        if bad or not items:
            choices = f" of {', '.join(allowed)}" if allowed else ""
            raise click.BadParameter(f"expected a comma-separated list{choices}, got {value!r}")
        if cast is int and any(v < 1 for v in items):
            raise click.BadParameter(f"expected positive integers, got {value!r}")
        return items

    return parse


@click.command()
@click.option("--quick", is_flag=True, help="The CI-sized grid (P 1,8; D 16384; fp32, bf16; shared).")
@click.option("--interpret", is_flag=True,
              help="Run the Triton kernels under TRITON_INTERPRET=1 on the CPU: a smoke test on a tiny grid.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write every figure (and device, versions) as JSON here.")
@click.option("--op", type=click.Choice(["preference_loss", "paired_log_ratios"]), default="preference_loss",
              show_default=True, help="The fused op to time.")
@click.option("--providers", callback=_csv("providers"),
              help="Comma-separated subset of triton,eager,compile (default: all that can run here); --device-time "
                   "also compile-ro (torch.compile mode reduce-overhead).")
@click.option("--modes", callback=_csv("modes"), help="forward and/or full (forward+backward); default both.")
@click.option("--P", "P", callback=_csv("P", int), help="Comma-separated pair counts (overrides the grid).")
@click.option("--D", "D", callback=_csv("D", int), help="Comma-separated latent sizes (overrides the grid).")
@click.option("--dtypes", callback=_csv("dtypes"), help="Comma-separated fp32,bf16,fp16,mixed (overrides the grid).")
@click.option("--layouts", callback=_csv("layouts"),
              help="Comma-separated shared,per-branch,noised (overrides the grid).")
@click.option("--loss", default="dpo", show_default=True, help="The loss (a name the registry of losses knows).")
@click.option("--penalty", default=None, help="An optional penalty (psi, psi-literal, dpop).")
@click.option("--beta", type=float, default=0.1, show_default=True, help="The loss's β (the DPO temperature).")
@click.option("--psi-lambda", type=float, default=0.0, show_default=True,
              help="λ of the penalty (Ψ's weight; 0 with no --penalty), as train's --psi-lambda.")
@click.option("--device", default=None, help="cuda, cuda:N or cpu (default: cuda if available).")
@click.option("--check", is_flag=True,
              help="Before timing, compare the fused op (r, loss, dL/do_theta) with a float64 reference run at every "
                   "grid point, with the tests' tolerances; exit 1 if any is off (for a GPU machine without pytest).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU only: torch intra-op threads (1 gives steady figures on a busy machine).")
@click.option("--block-d", type=int, default=None, help="GPU: columns per kernel block (a power of two; 1024).")
@click.option("--num-warps", type=int, default=None, help="GPU: warps per program of the streaming kernels (4).")
@click.option("--programs-per-sm", type=int, default=None,
              help="GPU: programs the streaming grids aim for per SM (8).")
@click.option("--rep-ms", type=float, default=None,
              help="Timing budget per measurement in ms (default 100 on CUDA, 200 on the CPU, 50 interpreted).")
@click.option("--device-time", is_flag=True,
              help="The device benchmark: wall time of back-to-back calls and device time from CUDA-graph replay, "
                   "P·D from 2^20 to 2^26, copy bandwidth at each size, host-bound rows marked, eager and "
                   "torch.compile (default and reduce-overhead, dynamic=False) of the maths alone as baselines "
                   "(kernels/device_bench.py). On the CPU: wall times only.")
@click.option("--compile-sizes", callback=_csv("compile-sizes", int),
              help="--device-time: the P·D values where the torch.compile baselines run (default 2^20,2^22,2^24).")
@click.option("--train", is_flag=True,
              help="One training iteration of the trainer (branching and trajectory pairs, gradient checkpointing "
                   "off and on) on a random SD-1.5-shaped model at 512×512, timed, beside a plain-loop optimisation "
                   "(rdpo_zoo/train_bench.py; needs diffusers, peft, accelerate).")
@click.option("--train-size", type=click.Choice(["sd15", "tiny"]), default="sd15", show_default=True,
              help="--train: the model's shape (tiny: a CPU-sized smoke run).")
@click.option("--mixed-precision", type=click.Choice(["no", "fp16", "bf16"]), default=None,
              help="--train: the trainer's mixed precision (default: bf16 on CUDA, no on the CPU).")
@click.option("--host", is_flag=True,
              help="Measure the host cost per call instead (no GPU needed): Triton's dispatch with only the driver's "
                   "launch stubbed, the general and the lean launch path side by side, the trainer's coefficients "
                   "included (kernels/host_bench.py).")
@click.option("--calls", type=click.IntRange(min=1), default=1000, show_default=True,
              help="--host: timed calls per figure (the median of them; at one torch thread).")
def bench(quick, interpret, json_path, op, providers, modes, P, D, dtypes, layouts, loss, penalty, beta, psi_lambda,
          device, check, threads, block_d, num_warps, programs_per_sm, rep_ms, device_time, compile_sizes, train,
          train_size, mixed_precision, host, calls) -> None:
    """Time the fused op (forward, and forward+backward) beside the eager reference and torch.compile of it.

    Reports time (median, p20, p80), GB/s on the one-pass minimum of bytes and on the bytes the kernels move,
    the fraction of the device's copy bandwidth measured in the same run, speed-ups, and peak memory on CUDA.
    On the CPU the Triton path needs --interpret (a smoke test); the targets are for a GPU (docs/kernels.md).
    """
    if host:
        _bench_host(calls, json_path)
        return
    if train:
        _bench_train(train_size, device, mixed_precision, threads, json_path)
        return
    if interpret:
        # before the kernels are first defined: Triton reads it when a @triton.jit function is created
        os.environ["TRITON_INTERPRET"] = "1"
    import torch

    from rdpo_zoo.kernels import bench as kbench
    from rdpo_zoo.kernels import triton_status

    if interpret and not triton_status()["interpreted"]:
        raise click.UsageError("--interpret: the Triton kernels were already defined without the interpreter in "
                               "this process; run the command in a fresh process")
    if device is None:
        device = "cpu" if interpret or not torch.cuda.is_available() else "cuda"
    if interpret and torch.device(device).type != "cpu":
        raise click.UsageError("--interpret runs on the CPU; drop --device")
    if device_time:
        _bench_device(interpret, device, P, D, dtypes, layouts, providers, modes, loss, penalty, beta, psi_lambda,
                      threads, rep_ms, compile_sizes, json_path)
        return
    if providers is not None and "compile-ro" in providers:
        raise click.UsageError("--providers: compile-ro is a provider of --device-time only")
    grid = dict(kbench.GRIDS["interpret" if interpret else ("quick" if quick else "full")])
    for key, value in (("P", P), ("D", D), ("dtype", dtypes), ("layout", layouts)):
        if value is not None:
            grid[key] = value
    on_cpu = torch.device(device).type == "cpu"
    if providers is None:
        providers = ("triton", "eager", "compile")
    settings = kbench.BenchSettings(
        grid=grid, providers=providers, modes=modes or kbench.MODES, op=op, loss=loss, penalty=penalty, beta=beta,
        psi_lambda=psi_lambda, device=device, interpret=interpret, threads=threads, check=check,
        tuning={k: v for k, v in dict(block_d=block_d, num_warps=num_warps, programs_per_sm=programs_per_sm).items()
                if v is not None},
        rep_ms=rep_ms if rep_ms is not None else (50.0 if interpret else (200.0 if on_cpu else 100.0)),
    )
    if settings.tuning:
        try:
            from rdpo_zoo.kernels import log_ratio
        except ImportError as error:
            raise click.UsageError(f"--block-d/--num-warps/--programs-per-sm: Triton cannot be imported ({error})")
        try:
            log_ratio.set_tuning(**settings.tuning)
        except ValueError as error:
            raise click.UsageError(str(error))
    if on_cpu and "triton" in providers and not interpret:
        click.echo("note: the Triton path needs a CUDA GPU; timing the reference and torch.compile only "
                   "(--interpret runs the kernels under the Triton interpreter, as a smoke test)")
    if op == "preference_loss":
        from rdpo_zoo.kernels import fused_loss_path

        path = fused_loss_path(loss, penalty)
        click.echo(f"loss {loss!r}" + (f" + penalty {penalty!r}" if penalty else "") + f": {path}")
    result = kbench.run_bench(settings, log=lambda line: click.echo(line, err=True))
    for note in result["notes"]:
        click.echo(f"note: {note}")
    v = result["versions"]
    click.echo(f"{result['op']} on {result['device']} (torch {v['torch']}, triton {v['triton']}; timer: "
               f"{result['timer']}; kernel tuning: {result['tuning']})")
    click.echo(kbench.format_table(result))
    if json_path is not None:
        kbench.validate_result(result)
        json_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = json_path.with_name(json_path.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(json_path)
        click.echo(f"wrote {json_path}")
    if result["check"] is not None:
        worst = ", ".join(f"{k} {v:.3g}" for k, v in result["check"]["worst"].items())
        click.echo(f"check against the float64 reference (worst error / tolerance): {worst} — "
                   + ("passed" if result["check"]["passed"] else "FAILED"))
        if not result["check"]["passed"]:
            raise SystemExit(1)


def _write_json(result: dict, json_path: Path, quiet: bool = False) -> None:
    json_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = json_path.with_name(json_path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(json_path)
    if not quiet:
        click.echo(f"wrote {json_path}")


def _bench_host(calls: int, json_path) -> None:
    from rdpo_zoo.kernels import host_bench

    try:
        result = host_bench.run_host_bench(calls=calls)
    except RuntimeError as error:
        raise click.ClickException(str(error))
    click.echo(result["what"])
    click.echo(host_bench.format_host_table(result))
    worst = host_bench.summary(result)
    click.echo(f"forward + backward: the lean path is {worst:.2f}x or more below the general path (every row)")
    if json_path is not None:
        host_bench.validate_host_result(result)
        _write_json(result, json_path)


def _bench_device(interpret, device, P, D, dtypes, layouts, providers, modes, loss, penalty, beta, psi_lambda, threads,
                  rep_ms, compile_sizes, json_path) -> None:
    import torch

    from rdpo_zoo.kernels import device_bench

    if threads is not None:
        torch.set_num_threads(threads)
    grid = dict(device_bench.DEVICE_GRIDS["interpret" if interpret else "device"])
    for key, value in (("P", P), ("D", D), ("dtype", dtypes), ("layout", layouts)):
        if value is not None:
            grid[key] = value
    if providers is None:
        providers = device_bench.DEVICE_PROVIDERS
    result = device_bench.run_device_bench(
        grid, providers=providers, modes=modes or ("forward", "full"), device=device,
        loss_kwargs=dict(loss=loss, beta=beta, penalty=penalty, psi_lambda=psi_lambda),
        budget_ms=rep_ms if rep_ms is not None else 50.0,
        compile_sizes=compile_sizes or device_bench.COMPILE_SIZES, log=lambda line: click.echo(line, err=True),
        on_progress=lambda partial: json_path is not None and _write_json(partial, json_path, quiet=True))
    for note in result["notes"]:
        click.echo(f"note: {note}")
    v = result["versions"]
    click.echo(f"{result['op']} on {result['device']} (torch {v['torch']}, triton {v['triton']}; {result['timer']})")
    click.echo(device_bench.format_device_table(result))
    if json_path is not None:
        device_bench.validate_device_result(result)
        _write_json(result, json_path)


def _bench_train(size: str, device, mixed_precision, threads, json_path) -> None:
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    try:
        from rdpo_zoo import train_bench
        import diffusers  # noqa: F401 - the trainer's stack, asked for here only
    except ImportError as error:
        raise click.ClickException(f"--train needs the trainer's stack (diffusers, peft, accelerate): {error}")

    def partial(result):  # each configuration as it finishes: a stage cut short by its time limit keeps them
        if json_path is not None:
            _write_json(result, json_path, quiet=True)

    result = train_bench.run_train_bench(size, device=device, mixed_precision=mixed_precision, on_record=partial,
                                         log=lambda line: click.echo(line, err=True))
    click.echo(f"one training iteration on {result['device']}, {size}, mixed precision {result['mixed_precision']} "
               f"({result['what']})")
    click.echo(train_bench.format_train_table(result))
    if json_path is not None:
        _write_json(result, json_path)
