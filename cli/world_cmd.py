"""``rdpo-zoo world-check``: the embedded model's quality, measured by the world's pixel checker."""

from __future__ import annotations

import json

import click

from rdpo_zoo.cli.common import Command, threads_option


@click.command("world-check", cls=Command)
@click.option("--model", default="tiny", show_default=True,
              help="'tiny', 'tiny-flow', a pipeline folder (SD or SD3), or a hub id.")
@click.option("--run", "run_dir", default=None, type=click.Path(exists=True, file_okay=False),
              help="Measure a pretraining run's snapshot instead of --model.")
@click.option("--snapshot", default=None, type=int, help="With --run: the snapshot step (latest by default).")
@click.option("-n", "--num-images", "n", default=256, show_default=True, type=click.IntRange(min=1),
              help="Images to draw.")
@click.option("--prompts", "prompt_set", default="train", show_default=True,
              help="Prompt set (cycled): train, ood, all, or a text file.")
@click.option("--seed", default=0, show_default=True, type=int, help="Sampling seed.")
@click.option("--num-steps", "steps", default=20, show_default=True, type=click.IntRange(min=1),
              help="Sampling steps T (DDIM; Euler for a flow model).")
@click.option("--eta", default=1.0, show_default=True, type=click.FloatRange(min=0.0),
              help="DDIM η (SD models; a flow model samples with its scheduler's deterministic Euler steps).")
@click.option("--shift", default=None, type=click.FloatRange(min=0.0, min_open=True),
              help="Flow models only: override the FlowMatchEulerDiscreteScheduler's shift.")
@click.option("--guidance-scale", "guidance", default=3.0, show_default=True, type=click.FloatRange(min=1.0),
              help="Classifier-free guidance (3: the scale of docs/world.md's quality table).")
@threads_option
@click.pass_context
def world_check(ctx, model, run_dir, snapshot, n, prompt_set, seed, steps, eta, guidance, shift, threads):
    """Sample N images (DDIM with η, or a flow model's Euler steps; CFG) for a world prompt set and print, as JSON,
    the fractions whose colour, shape, background and size the pixel checker reads as asked."""
    from rdpo_zoo import world
    from rdpo_zoo.errors import UserInputError
    from rdpo_zoo.preview import cycle_prompts, sample_images
    from rdpo_zoo.runtime import apply_threads

    prompts = cycle_prompts(world.prompt_set(prompt_set, option="--prompts"), n)
    apply_threads(threads)
    if run_dir is not None:
        from rdpo_zoo.pretrain_flow import is_flow_run

        if is_flow_run(run_dir):
            from rdpo_zoo.pretrain_flow import build_pipeline

            pipe = build_pipeline(run_dir, snapshot)
        else:
            from rdpo_zoo.pretrain import build_pipeline

            pipe = build_pipeline(run_dir, snapshot)
    else:
        from rdpo_zoo.embedded import load_pipeline

        pipe = load_pipeline(model, option="--model")
    flow = hasattr(pipe, "transformer")
    explicit = lambda name: ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE  # noqa: E731
    if flow and explicit("eta"):
        raise UserInputError("--eta: a flow model is measured with its scheduler's deterministic Euler steps")
    if not flow and shift is not None:
        raise UserInputError("--shift: only for flow-matching models (tiny-flow or an SD3 pipeline folder)")
    if flow:
        from rdpo_zoo.pretrain_flow import sample_images as sample_flow

        if shift is not None:
            pipe.scheduler = pipe.scheduler.from_config(pipe.scheduler.config, shift=shift)
        images = sample_flow(pipe, prompts, seed=seed, steps=steps, guidance_scale=guidance)
        settings = {"sampler": "euler", "shift": pipe.scheduler.config.shift}
    else:
        images = sample_images(pipe, prompts, seed=seed, steps=steps, eta=eta, guidance_scale=guidance)
        settings = {"eta": eta}
    rates = world.evaluate(images, prompts)
    click.echo(json.dumps({"model": run_dir or model, "snapshot": snapshot, "prompts": prompt_set, "steps": steps,
                           **settings, "guidance": guidance, "seed": seed, **rates}, indent=2))
