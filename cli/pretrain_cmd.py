"""``rdpo-zoo pretrain``: rebuild the embedded models (tiny, tiny-flow) from the world's data (run, resume, export)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from rdpo_zoo.cli.common import Command, output_dir_checked



def _embedded_dir() -> Path:
    # The package's data folder, wherever it is installed (editable or not).
    from rdpo_zoo import embedded

    return Path(embedded.__file__).resolve().parent


@click.group()
def pretrain() -> None:
    """Pretrain the embedded tiny pipelines on the CPU, in resumable runs (see docs/world.md)."""


_MODELS = ("tiny", "tiny-flow")
_DEFAULT_CONFIGS = {"tiny": "pretrain_tiny.json", "tiny-flow": "pretrain_tiny_flow.json"}


@pretrain.command("run")
@click.option("--model", default="tiny", show_default=True, type=click.Choice(_MODELS),
              help="tiny: the SD-shaped UNet model; tiny-flow: the SD3-shaped flow-matching model (docs/world.md).")
@click.option("--config", "config_path", default=None, type=click.Path(exists=True, dir_okay=False),
              help="The model's pretraining config JSON (default: the committed config that made its shipped weights).")
@click.option("--run-dir", default=None, type=click.Path(file_okay=False),
              help="Checkpoints, snapshots and log.jsonl (default runs/pretrain/MODEL); rerunning with the same folder "
                   "resumes.")
@click.option("--max-minutes", default=60.0, show_default=True, type=click.FloatRange(min=0.0),
              help="Stop at the first checkpoint after this long; run again to resume.")
@click.option("--unet-steps", default=None, type=click.IntRange(min=1),
              help="tiny: override the UNet's step count (to extend a run).")
@click.option("--transformer-steps", default=None, type=click.IntRange(min=1),
              help="tiny-flow: override the transformer's step count (to extend a run).")
@click.option("--threads", default=None, type=click.IntRange(min=1),
              help="Override torch's CPU threads (1 is faster than 2 on a 2-core machine shared with other jobs).")
def run_cmd(model, config_path, run_dir, max_minutes, unet_steps, transformer_steps, threads):
    """Train (or resume) a model: tiny, the VAE then the UNet with the text encoder; tiny-flow, the transformer with
    its two text encoders on tiny's frozen VAE."""
    from rdpo_zoo.errors import UserInputError

    if model == "tiny":
        from rdpo_zoo.pretrain import PretrainConfig as Config, run

        if transformer_steps is not None:
            raise UserInputError("--transformer-steps: only for --model tiny-flow; tiny's denoiser is a UNet (--unet-steps)")
    else:
        from rdpo_zoo.pretrain_flow import FlowPretrainConfig as Config, run

        if unet_steps is not None:
            raise UserInputError("--unet-steps: only for --model tiny; tiny-flow's denoiser is a transformer "
                                 "(--transformer-steps)")
    cfg = Config.from_json(Path(config_path) if config_path else _embedded_dir() / _DEFAULT_CONFIGS[model])
    if unet_steps is not None:
        cfg.unet_steps = unet_steps
    if transformer_steps is not None:
        cfg.steps = transformer_steps
    if threads is not None:
        cfg.threads = threads
    run_dir = run_dir or f"runs/pretrain/{model}"
    done = run(cfg, run_dir, max_minutes=max_minutes)
    click.echo(json.dumps({"run_dir": run_dir, "done": done}))


@pretrain.command("export", cls=Command)
@click.option("--run-dir", default="runs/pretrain/tiny", show_default=True, type=click.Path(exists=True, file_okay=False),
              help="A run of either model (which one is read from its config).")
@click.option("--snapshot", default=None, type=int, help="Snapshot step to export (latest by default).")
@click.option("--output-dir", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Pipeline folder to write. Required: replacing the shipped model is a choice, made by naming its "
                   "folder (rdpo_zoo/embedded/tiny or rdpo_zoo/embedded/tiny-flow in a source checkout; docs/world.md).")
@click.option("--fp32", is_flag=True, help="tiny only: store fp32 weights instead of fp16.")
@click.option("--shift", default=None, type=click.FloatRange(min=0.0, min_open=True),
              help="tiny-flow only: the exported scheduler's shift (default: the run's config).")
def export_cmd(run_dir, snapshot, out_dir, fp32, shift):
    """Write a pipeline folder (StableDiffusionPipeline for tiny, StableDiffusion3Pipeline for tiny-flow) from a
    run's EMA snapshot."""
    from rdpo_zoo.errors import UserInputError
    from rdpo_zoo.pretrain_flow import is_flow_run

    output_dir_checked(out_dir)
    if is_flow_run(run_dir):
        if fp32:
            raise UserInputError("--fp32: only for tiny runs; a tiny-flow export stores the transformer and VAE in fp16")
        from rdpo_zoo.pretrain_flow import export

        path = export(run_dir, out_dir, snapshot=snapshot, shift=shift)
    else:
        if shift is not None:
            raise UserInputError(f"--shift: only for tiny-flow runs; {run_dir} is a tiny (DDIM) run")
        from rdpo_zoo.pretrain import export

        path = export(run_dir, out_dir, snapshot=snapshot, fp16=not fp32)
    click.echo(json.dumps({"exported": str(path)}))
