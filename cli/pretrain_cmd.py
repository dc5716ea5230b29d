"""``rdpo-zoo pretrain``: rebuild the embedded tiny model from the world's data (run, resume, export)."""

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
    """Pretrain the embedded tiny pipeline on the CPU, in resumable runs (see docs/world.md)."""


@pretrain.command("run")
@click.option("--config", "config_path", default=None, type=click.Path(exists=True, dir_okay=False),
              help="PretrainConfig JSON (default: the committed config that made the shipped weights).")
@click.option("--run-dir", default="runs/pretrain/tiny", show_default=True, type=click.Path(file_okay=False),
              help="Checkpoints, snapshots and log.jsonl; rerunning with the same folder resumes.")
@click.option("--max-minutes", default=60.0, show_default=True, type=click.FloatRange(min=0.0),
              help="Stop at the first checkpoint after this long; run again to resume.")
@click.option("--unet-steps", default=None, type=click.IntRange(min=1), help="Override the UNet step count (to extend a run).")
@click.option("--threads", default=None, type=click.IntRange(min=1),
              help="Override torch's CPU threads (1 is faster than 2 on a 2-core machine shared with other jobs).")
def run_cmd(config_path, run_dir, max_minutes, unet_steps, threads):
    """Train (or resume) the VAE, then the UNet with the text encoder."""
    from rdpo_zoo.pretrain import PretrainConfig, run

    cfg = PretrainConfig.from_json(Path(config_path) if config_path else _embedded_dir() / "pretrain_tiny.json")
    if unet_steps is not None:
        cfg.unet_steps = unet_steps
    if threads is not None:
        cfg.threads = threads
    done = run(cfg, run_dir, max_minutes=max_minutes)
    click.echo(json.dumps({"run_dir": run_dir, "done": done}))


@pretrain.command("export", cls=Command)
@click.option("--run-dir", default="runs/pretrain/tiny", show_default=True, type=click.Path(exists=True, file_okay=False))
@click.option("--snapshot", default=None, type=int, help="Snapshot step to export (latest by default).")
@click.option("--output-dir", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Pipeline folder to write. Required: replacing the shipped model is a choice, made by naming its "
                   "folder (rdpo_zoo/embedded/tiny in a source checkout; docs/world.md).")
@click.option("--fp32", is_flag=True, help="Store fp32 weights instead of fp16.")
def export_cmd(run_dir, snapshot, out_dir, fp32):
    """Write a StableDiffusionPipeline folder from a run's EMA snapshot."""
    from rdpo_zoo.pretrain import export

    output_dir_checked(out_dir)
    path = export(run_dir, out_dir, snapshot=snapshot, fp16=not fp32)
    click.echo(json.dumps({"exported": str(path)}))
