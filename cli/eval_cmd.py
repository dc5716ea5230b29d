"""``rdpo-zoo eval``: score the base model or a trained LoRA on a prompt set with several rewards over seeds."""

from __future__ import annotations

import json
from pathlib import Path

import click

from rdpo_zoo.cli.common import output_file_checked, threads_option


@click.command("eval")
@click.option("--lora", "run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="A training run's folder (its newest checkpoint's LoRA, also on an unfinished run) or one of its "
                   "checkpoint-N folders; the run's model and sampling settings are the defaults.")
@click.option("--model", default=None, help="The model part (default: the run's, else tiny).")
@click.option("--model-opt", multiple=True, metavar="KEY=VALUE", help="Options of the model part.")
@click.option("--reward", "rewards", default=None,
              help="Comma-separated rewards scored beside the world's (each a part or a combination "
                   "NAME[:WEIGHT]+NAME[:WEIGHT]...) [default: the run's reward with --lora].")
@click.option("--reward-opt", multiple=True, metavar="[PART.]KEY=VALUE",
              help="An option of a reward part; in a combination name the part: world-aesthetic.KEY=VALUE.")
@click.option("--prompts", default="ood", show_default=True, help="A prompt set (train, ood, all) or a text file.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Use only the first LIMIT prompts.")
@click.option("--seeds", default="0,1,2", show_default=True, help="Comma-separated seeds; each prompt runs with each.")
@click.option("--compare-base/--no-compare-base", default=None,
              help="With --lora, also sample the base model (adapter off) on the same noise and report the gain "
                   "[default: on with --lora].")
@click.option("--num-steps", type=click.IntRange(min=1), default=None, help="Sampling steps T (default: the run's, else 20).")
@click.option("--eta", type=click.FloatRange(min=0.0), default=None,
              help="The sampler's η (default: the run's, else the step family's: DDIM 1, flow-sde 0.7).")
@click.option("--guidance-scale", type=click.FloatRange(min=1.0), default=None,
              help="Guidance (default: the run's, else the model family's: 5, FLUX's 3.5).")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True, help="Images per batch.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the table as JSON here.")
@threads_option
def evaluate(run_dir, model, model_opt, rewards, reward_opt, prompts, limit, seeds, compare_base, num_steps, eta,
             guidance_scale, batch_size, json_path, threads) -> None:
    """Mean ± s.e. over prompts × seeds of every world reward, the pixel checker's accuracies and the spread of
    samples within a prompt, for the base model or a trained LoRA; with the base compared (the default with
    --lora): the paired gain on identical noise and the tuned model's KL to the base along its own chains. A star
    marks what the run trained on. On prompts outside the world the checker and world-fidelity are skipped."""
    from rdpo_zoo.cli.best_of_n_cmd import _ints
    from rdpo_zoo.cli.plugins_cmd import model_part, parse_part_options
    from rdpo_zoo.diffusion import DiffusionModel
    from rdpo_zoo.evaluate import compare_models, format_report, report_rewards
    from rdpo_zoo.parts import OptionError, parse_assignments
    from rdpo_zoo.registry import UnknownPartError, build_reward, get_registry
    from rdpo_zoo.run_folder import LORA_WEIGHT_NAME, find_lora
    from rdpo_zoo.runtime import apply_threads
    from rdpo_zoo.world import prompt_set

    output_file_checked(json_path, "--json")
    seed_list = _ints(seeds, "--seeds")
    run_config, lora = {}, None
    if run_dir is not None:
        try:
            lora = find_lora(run_dir)
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint="--lora") from None
        run_config = lora.run_config
        click.echo(f"LoRA: {lora.description}")
    method, run = run_config.get("method", {}), run_config.get("run", {})
    model = model or run.get("model", "tiny")
    options = dict(run.get("model_options", {})) if model == run.get("model") else {}
    registry = get_registry()
    part, folder_options = model_part(model, {})
    model_options = parse_part_options("model", part, [f"{k}={v}" for k, v in {**options, **folder_options}.items()]
                                       + list(model_opt))
    prompt_list = prompt_set(prompts, option="--prompts")
    prompt_list = prompt_list[:limit] if limit else prompt_list
    trained_spec = run.get("reward") if lora is not None else None
    specs = [r.strip() for r in rewards.split(",") if r.strip()] if rewards else []
    try:
        settings = parse_assignments(list(reward_opt), where="--reward-opt")
        built = {spec: build_reward(spec, _options_for(spec, settings), registry) for spec in specs}
        trained_reward = (build_reward(trained_spec, run.get("reward_options") or {}, registry)
                          if trained_spec else None)
    except (ValueError, UnknownPartError, OptionError, OSError) as error:  # OSError: a learned reward's weights
        raise click.BadParameter(str(error), param_hint="--reward") from None
    reward_objs, trained, notes = report_rewards(registry, trained_spec, trained_reward, prompt_list, built)
    apply_threads(threads)
    chosen_model = registry.get("model", part)
    pipe = chosen_model.build(model_options)
    diffusion = DiffusionModel(
        pipe, sampler=method.get("scheduler"),
        eta=eta if eta is not None else method.get("eta"),  # None: the step family's default
        num_steps=num_steps or method.get("num_steps", 20),
        guidance_scale=guidance_scale or max(1.0, method["guidance_scale"] if method.get("guidance_scale") is not None
                                             else _base_guidance(part)),
        family=chosen_model.family, registry=registry,
    )
    if lora is not None:
        diffusion.family.load_lora(lora.folder, weight_name=LORA_WEIGHT_NAME)
    compare = bool(run_dir) if compare_base is None else compare_base
    label = f"{model} + LoRA {lora.folder}" if lora else f"{model} (base)"
    click.echo(f"{label} on prompts {prompts} ({diffusion.sampler} η={diffusion.eta}, T={diffusion.num_steps}, "
               f"CFG {diffusion.guidance_scale:g}):")
    result = compare_models(diffusion, prompt_list, seed_list, reward_objs, trained, batch_size, compare_base=compare,
                            kl=compare and lora is not None, notes=notes, show_progress=True)
    result.update(model=model, lora=str(lora.folder) if lora else None, prompt_set=prompts)
    for line in format_report(result):
        click.echo(line)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=2))
        click.echo(f"wrote {json_path}")


def _options_for(spec: str, options: dict) -> dict:
    """The --reward-opt settings that belong to ``spec``: all of them for a plain name, its parts' for a combination
    (``PART.KEY``)."""
    from rdpo_zoo.rewards import parse_reward_spec

    names = [name for name, _ in parse_reward_spec(spec)]
    if len(names) == 1 and ":" not in spec:
        return {k.split(".", 1)[1] if k.startswith(names[0] + ".") else k: v for k, v in options.items()
                if "." not in k or k.startswith(names[0] + ".")}
    return {k: v for k, v in options.items() if k.split(".", 1)[0] in names}


def _base_guidance(part: str) -> float:
    """The guidance of a model without a run: its family's where it has one (FLUX.1's 3.5), else the presets' 5."""
    from rdpo_zoo.cli.common import model_family_class

    return getattr(model_family_class(part), "default_guidance_scale", None) or 5.0
