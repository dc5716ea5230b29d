"""``rdpo-zoo eval``: score the base model or a trained LoRA on a prompt set with several rewards over seeds."""

from __future__ import annotations

import json
from pathlib import Path

import click

from rdpo_zoo.cli.common import output_file_checked, threads_option


@click.command("eval")
@click.option("--lora", "run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="A training run's folder (its lora/ is loaded), or one of its checkpoint-NNNNNN folders; the "
                   "run's model and sampling settings are the defaults.")
@click.option("--model", default=None, help="The model part (default: the run's, else tiny).")
@click.option("--model-opt", multiple=True, metavar="KEY=VALUE", help="Options of the model part.")
@click.option("--reward", "rewards", default="world-aesthetic", show_default=True,
              help="Comma-separated reward parts; every image is scored by each.")
@click.option("--prompts", default="ood", show_default=True, help="A prompt set (train, ood, all) or a text file.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Use only the first LIMIT prompts.")
@click.option("--seeds", default="0,1,2", show_default=True, help="Comma-separated seeds; each prompt runs with each.")
@click.option("--compare-base/--no-compare-base", default=None,
              help="With --lora, also sample the base model (adapter off) on the same noise and report the gain "
                   "[default: on with --lora].")
@click.option("--num-steps", type=click.IntRange(min=1), default=None, help="Sampling steps T (default: the run's, else 20).")
@click.option("--eta", type=click.FloatRange(min=0.0), default=None, help="DDIM's η (default: the run's, else 1).")
@click.option("--guidance-scale", type=click.FloatRange(min=1.0), default=None,
              help="Classifier-free guidance (default: the run's, else 5).")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True, help="Images per batch.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the table as JSON here.")
@threads_option
def evaluate(run_dir, model, model_opt, rewards, prompts, limit, seeds, compare_base, num_steps, eta, guidance_scale,
             batch_size, json_path, threads) -> None:
    """Mean ± s.e. of every reward over prompts × seeds, for the base model or a trained LoRA (and its gain over
    the base on identical noise)."""
    from rdpo_zoo.cli.best_of_n_cmd import _ints
    from rdpo_zoo.cli.plugins_cmd import model_part, parse_part_options
    from rdpo_zoo.diffusion import DiffusionModel
    from rdpo_zoo.evaluate import evaluate_rewards
    from rdpo_zoo.registry import get_registry
    from rdpo_zoo.quiet import quiet_loading
    from rdpo_zoo.runtime import apply_threads
    from rdpo_zoo.trainer import LORA_WEIGHT_NAME
    from rdpo_zoo.world import prompt_set

    output_file_checked(json_path, "--json")
    seed_list = _ints(seeds, "--seeds")

    run_config, lora_dir = {}, None
    if run_dir is not None:
        # a run's folder (its final lora/), or one of its checkpoint-NNNNNN folders (the LoRA lies in it)
        lora_dir = next((d for d in (run_dir / "lora", run_dir) if (d / LORA_WEIGHT_NAME).is_file()), None)
        if lora_dir is None:
            raise click.BadParameter(f"{run_dir} has no lora/{LORA_WEIGHT_NAME} (is it a finished training run, "
                                     "or one of its checkpoint folders?)", param_hint="--lora")
        config_path = next((d / "config.json" for d in (run_dir, run_dir.parent) if (d / "config.json").is_file()),
                           None)
        if config_path is not None:
            run_config = json.loads(config_path.read_text())
    method, run = run_config.get("method", {}), run_config.get("run", {})
    model = model or run.get("model", "tiny")
    options = dict(run.get("model_options", {})) if model == run.get("model") else {}
    registry = get_registry()
    part, folder_options = model_part(model, {})
    model_options = parse_part_options("model", part, [f"{k}={v}" for k, v in {**options, **folder_options}.items()]
                                       + list(model_opt))
    apply_threads(threads)
    pipe = registry.get("model", part).build(model_options)
    if run_dir is not None:
        with quiet_loading():  # our LoRA files hold the UNet's layers only, by design
            pipe.load_lora_weights(str(lora_dir), weight_name=LORA_WEIGHT_NAME)
    diffusion = DiffusionModel(
        pipe, sampler=method.get("scheduler") or "ddim",
        eta=eta if eta is not None else (method.get("eta") if method.get("eta") is not None else 1.0),
        num_steps=num_steps or method.get("num_steps", 20),
        guidance_scale=guidance_scale or max(1.0, method.get("guidance_scale", 5.0)),
    )
    names = [r.strip() for r in rewards.split(",") if r.strip()]
    reward_objs = {name: registry.get("reward", name).build(parse_part_options("reward", name, ())) for name in names}
    prompt_list = prompt_set(prompts, option="--prompts")
    prompt_list = prompt_list[:limit] if limit else prompt_list
    compare = bool(run_dir) if compare_base is None else compare_base
    result = evaluate_rewards(diffusion, prompt_list, seed_list, reward_objs, batch_size, compare, progress=True)
    result.update(model=model, lora=str(run_dir) if run_dir else None, prompt_set=prompts)
    label = f"{model} + LoRA {run_dir}" if run_dir else f"{model} (base)"
    click.echo(f"{label}: {result['samples']} samples ({result['prompts']} prompts × seeds {result['seeds']})")
    header = f"{'reward':<20} {'model':>10} {'± s.e.':>9}"
    if compare:
        header += f" {'base':>10} {'± s.e.':>9} {'gain':>10} {'± s.e.':>9}"
    click.echo(header)
    for name, row in result["rewards"].items():
        main = row.get("tuned", row.get("model"))
        line = f"{name:<20} {main['mean']:>10.4f} {main['se']:>9.4f}"
        if compare:
            line += (f" {row['base']['mean']:>10.4f} {row['base']['se']:>9.4f} {row['gain']['mean']:>10.4f} "
                     f"{row['gain']['se']:>9.4f}")
        click.echo(line)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=2))
        click.echo(f"wrote {json_path}")
