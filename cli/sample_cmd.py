"""``rdpo-zoo sample``: draw images for a prompt set, save a captioned grid and every image's rewards."""

from __future__ import annotations

import json
from pathlib import Path

import click

from rdpo_zoo.cli.common import Command, output_dir_checked, threads_option


@click.command(cls=Command)
@click.option("--model", default="tiny", show_default=True,
              help="'tiny' (the embedded model), a pipeline folder, or a hub id (the only case that downloads).")
@click.option("--prompts", "prompt_set", default="ood", show_default=True,
              help="Prompt set: 'train', 'ood', 'all', or a text file with one prompt per line (cycled to fill -n).")
@click.option("-n", "--num-images", "n", default=16, show_default=True, type=click.IntRange(min=1), help="Images to draw.")
@click.option("--output-dir", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Folder for grid.png and rewards.json (created if missing).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the initial latents and of the η noise.")
@click.option("--num-steps", "steps", default=20, show_default=True, type=click.IntRange(min=1), help="Sampling steps T.")
@click.option("--eta", default=None, type=click.FloatRange(min=0.0),
              help="DDIM η [default: 1, the paper's]; a flow model (SD3, FLUX, tiny-flow) samples with its pipeline's "
                   "deterministic Euler steps and refuses it.")
@click.option("--guidance-scale", "guidance", default=3.0, show_default=True, type=click.FloatRange(min=1.0),
              help="Classifier-free guidance (3: the scale docs/world.md's quality table and the rewards' scales were "
                   "measured at; train's rollouts use their preset's, 5).")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1), help="Images per pipeline call.")
@click.option("--device", default="cpu", show_default=True, help="torch device (cpu, cuda, cuda:N).")
@threads_option
def sample(model, prompt_set, n, out_dir, seed, steps, eta, guidance, batch_size, device, threads):
    """Sample a model and write OUTPUT_DIR/grid.png (prompts as captions) and OUTPUT_DIR/rewards.json (every reward of
    every image, and the world checker's reading when the prompts are world prompts)."""
    from rdpo_zoo.runtime import apply_threads, check_device

    output_dir_checked(out_dir)
    check_device(device)
    import torch

    from rdpo_zoo import world
    from rdpo_zoo.embedded import load_pipeline
    from rdpo_zoo.errors import UserInputError
    from rdpo_zoo.families import resolve_model_family
    from rdpo_zoo.preview import caption_grid, cycle_prompts, pipeline_sampler, sample_images, score_images

    prompts = cycle_prompts(world.prompt_set(prompt_set, option="--prompts"), n)
    apply_threads(threads)
    pipe = load_pipeline(model, device=device, option="--model")
    try:
        sampler = pipeline_sampler(resolve_model_family(pipe), eta)
    except UserInputError as error:  # the library names `eta`; the command line knows it as --eta
        raise click.BadParameter(str(error).split(": ", 1)[1], param_hint="--eta") from None
    images = sample_images(pipe, prompts, seed=seed, steps=steps, eta=eta, guidance_scale=guidance, batch_size=batch_size)
    scores, checks, skipped = score_images(images, prompts)
    out_dir.mkdir(parents=True, exist_ok=True)
    caption_grid(images, prompts).save(out_dir / "grid.png")
    records = []
    for i, prompt in enumerate(prompts):
        rec = {"index": i, "prompt": prompt, "rewards": {k: v[i] for k, v in scores.items()}}
        if checks is not None:
            rec["check"] = checks[i]
        records.append(rec)
    from rdpo_zoo.image_rewards import WORLD_REWARDS

    report = {
        "model": model, "prompts": prompt_set, "n": n, "seed": seed, "steps": steps, "guidance": guidance,
        **sampler,
        "reward_scales": {k: WORLD_REWARDS[k].scale for k in scores if k in WORLD_REWARDS},
        "mean_rewards": {k: sum(v) / len(v) for k, v in scores.items()},
        # The spread over these samples: what each reward's `scale` is set from (docs/world.md).
        "std_rewards": {k: float(torch.tensor(v).std()) if len(v) > 1 else 0.0 for k, v in scores.items()},
        "skipped_rewards": skipped,
        "images": records,
    }
    if checks is not None:
        report["check_rates"] = world.evaluate(images, prompts)
    (out_dir / "rewards.json").write_text(json.dumps(report, indent=2))
    click.echo(json.dumps({"grid": str(out_dir / "grid.png"), "rewards": str(out_dir / "rewards.json"),
                           "mean_rewards": report["mean_rewards"], **({"check_rates": report["check_rates"]} if checks else {})},
                          indent=2))

