"""``rdpo-zoo best-of-n``: step-wise best-of-N with several estimators beside plain sampling (RDPO Table 4)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from rdpo_zoo.cli.common import Command, output_file_checked, threads_option


def _ints(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}", param_hint=flag) from None
    if not values:
        raise click.BadParameter("expected at least one value", param_hint=flag)
    return values


@click.command("best-of-n", cls=Command)
@click.option("--estimator", "estimators", default="x0-hat,delta-q", show_default=True,
              help="Comma-separated estimators to compare (final-order completes every candidate: costly).")
@click.option("--num-candidates", "n", type=click.IntRange(min=2), default=8, show_default=True,
              help="Candidates N drawn per step.")
@click.option("--prompts", default="ood", show_default=True, help="A prompt set (train, ood, all) or a text file.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Use only the first LIMIT prompts.")
@click.option("--seeds", default="0,1", show_default=True, help="Comma-separated seeds; every prompt runs with each.")
@click.option("--reward", default="world-aesthetic", show_default=True, help="The reward: a part, or a combination NAME[:WEIGHT]+NAME[:WEIGHT]... (Σ weight·reward/scale).")
@click.option("--reward-opt", multiple=True, metavar="[PART.]KEY=VALUE",
              help="An option of the reward part; in a combination name the part: world-aesthetic.KEY=VALUE.")
@click.option("--model", default="tiny", show_default=True, help="The model (a model part).")
@click.option("--model-opt", multiple=True, metavar="KEY=VALUE", help="Options of the model part.")
@click.option("--choice-timesteps", "steps", default=None, metavar="t,t,...",
              help="Steps t of T at which to choose, like train's --train-timesteps (default: every step).")
@click.option("--num-steps", type=click.IntRange(min=1), default=20, show_default=True, help="Sampling steps T.")
@click.option("--eta", type=click.FloatRange(min=0.0), default=None,
              help="The sampler's η [default: the model family's sampler's: DDIM 1, flow-sde on flow models 0.7].")
@click.option("--guidance-scale", type=click.FloatRange(min=1.0), default=3.0, show_default=True,
              help="Classifier-free guidance.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="Samples per batch.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the table as JSON here.")
@threads_option
def best_of_n(estimators, n, prompts, limit, seeds, reward, reward_opt, model, model_opt, steps, num_steps, eta,
              guidance_scale, batch_size, json_path, threads) -> None:
    """At each step draw N candidates from x_t, keep the best by each estimator, continue; report the final
    reward (mean ± s.e. over prompts × seeds, the same for every row) beside plain sampling."""
    from rdpo_zoo.best_of_n import best_of_n as run
    from rdpo_zoo.cli.plugins_cmd import model_part, parse_part_options
    from rdpo_zoo.diffusion import DiffusionModel
    from rdpo_zoo.parts import parse_assignments
    from rdpo_zoo.registry import build_reward, get_registry
    from rdpo_zoo.runtime import apply_threads
    from rdpo_zoo.world import prompt_set

    output_file_checked(json_path, "--json")
    seed_list = _ints(seeds, "--seeds")
    step_list = _ints(steps, "--choice-timesteps") if steps else None

    names = [e.strip() for e in estimators.split(",") if e.strip()]
    registry = get_registry()
    built = {}
    for name in names:
        built[name] = registry.get("estimator", name).build(parse_part_options("estimator", name, ()))
    prompt_list = prompt_set(prompts, option="--prompts")
    prompt_list = prompt_list[:limit] if limit else prompt_list
    try:
        reward_obj = build_reward(reward, parse_assignments(list(reward_opt), where="--reward-opt"), registry)
    except (ValueError, LookupError, OSError) as error:  # OSError: a learned reward's weights are missing
        raise click.BadParameter(str(error), param_hint="--reward") from None
    part, folder_options = model_part(model, {})
    model_options = parse_part_options("model", part, [f"{k}={v}" for k, v in folder_options.items()] + list(model_opt))
    apply_threads(threads)
    pipe = registry.get("model", part).build(model_options)
    # sampler None: the model family's own (DDIM on SD, flow-sde on flow models); eta None: that sampler's default
    diffusion = DiffusionModel(pipe, sampler=None, eta=eta, num_steps=num_steps, guidance_scale=guidance_scale)
    result = run(diffusion, prompt_list, reward_obj, built, n, seed_list, step_list, batch_size)
    click.echo(f"step-wise best-of-{n}, reward {reward}, {result['samples']} samples "
               f"({result['prompts']} prompts × seeds {result['seeds']}), {diffusion.sampler} T={num_steps}, "
               f"η={diffusion.eta}")
    click.echo(f"{'method':<14} {'reward':>10} {'± s.e.':>9} {'gain':>10} {'± s.e.':>9} {'UNet evals/sample':>18}")
    for method, row in result["methods"].items():
        click.echo(f"{method:<14} {row['mean']:>10.4f} {row['se']:>9.4f} {row['gain']['mean']:>10.4f} "
                   f"{row['gain']['se']:>9.4f} {row['unet_calls_per_sample']:>18.0f}")
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=2))
        click.echo(f"wrote {json_path}")
