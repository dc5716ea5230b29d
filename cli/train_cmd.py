"""``rdpo-zoo train``: every method as a preset over one trainer; explicit flags override the preset and a config
file (TOML, YAML or JSON), which overrides nothing given on the command line.

The options are generated from the settings' own schemas (``rdpo_zoo.parts.SETTINGS`` for the method,
``rdpo_zoo.config.RunSettings`` for the run, the parts' options for ``--loss-opt`` and friends), so the help cannot
drift from the code. Nothing heavy is imported until the command runs.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Optional

import click

from rdpo_zoo.cli.plugins_cmd import part_options, part_overrides
from rdpo_zoo.config import RunSettings, run_setting_fields
from rdpo_zoo.parts import PART_SETTINGS, SETTINGS, OptionError

_CLICK_TYPES = {int: click.INT, float: click.FLOAT, str: click.STRING, bool: click.BOOL}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _method_options(command):
    """``--rollout``, ``--num-candidates``, …: one flag per method setting a preset may fix (default: not given)."""
    for option in reversed(SETTINGS):
        if option.name in PART_SETTINGS or option.name in PART_SETTINGS.values():
            continue  # --estimator/--loss/--penalty and their -opt flags come from part_options
        kind = click.Choice([str(c) for c in option.choices]) if option.choices else _CLICK_TYPES[option.type]
        default = "" if option.default is None else f" [preset's, else {option.default}]"
        callback = None
        if option.type is bool and option.nullable:  # true / false / auto (None: the setting decides itself)
            kind, default = click.Choice(["true", "false", "auto"], case_sensitive=False), " [preset's, else auto]"
            callback = _auto_is_none
        command = click.option(_flag(option.name), option.name, type=kind, default=None, callback=callback,
                               help=option.help + default)(command)
    return command


def _auto_is_none(ctx, param, value):
    # "auto" given explicitly must still override a preset's value: the settings parser reads "none" as None
    return "none" if value is not None and value.lower() == "auto" else value


def _run_options(command):
    """One flag per :class:`RunSettings` field (default: not given, so a config file's value stands)."""
    for f in reversed(run_setting_fields()):
        meta = f.metadata
        if f.name in ("model_options", "reward_options"):
            flag = "--" + f.name.split("_")[0] + "-opt"
            command = click.option(flag, f.name, multiple=True, metavar="KEY=VALUE", help=meta["help"])(command)
            continue
        default = RunSettings.__dataclass_fields__[f.name]
        shown = default.default if default.default is not dataclasses.MISSING else None
        if f.type in ("bool", bool):
            command = click.option(f"{_flag(f.name)}/--no-{f.name.replace('_', '-')}", f.name, default=None,
                                   help=f"{meta['help']} [default: {shown}]")(command)
            continue
        kind = click.Choice(list(meta["choices"])) if "choices" in meta else {
            "int": click.INT, "float": click.FLOAT}.get(str(f.type), click.STRING)
        command = click.option(_flag(f.name), f.name, type=kind, default=None,
                               help=f"{meta['help']} [default: {shown}]")(command)
    return command


def _read_config_file(path: Path) -> dict:
    text = path.read_text()
    if path.suffix == ".toml":
        import tomllib

        return tomllib.loads(text)
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise click.BadParameter("reading YAML needs PyYAML (pip install pyyaml); or use TOML or JSON",
                                     param_hint="--config") from None
        return yaml.safe_load(text) or {}
    if path.suffix == ".json":
        return json.loads(text)
    raise click.BadParameter(f"expected a .toml, .yaml or .json file, got {path.name!r}", param_hint="--config")


def _split_config(data: dict) -> tuple[Optional[str], dict, dict]:
    """A config file: ``preset``, method settings and run settings, either flat or under ``method``/``run``
    (the layout of the ``config.json`` a run writes, so a run's config can be replayed)."""
    data = dict(data)
    data.pop("resolved", None)
    preset = data.pop("preset", None)
    method, run = dict(data.pop("method", {}) or {}), dict(data.pop("run", {}) or {})
    run_names = {f.name for f in run_setting_fields()}
    method_names = {o.name for o in SETTINGS}
    for key, value in data.items():
        if key in run_names:
            run[key] = value
        elif key in method_names:
            method[key] = value
        else:
            raise click.BadParameter(f"unknown setting {key!r}", param_hint="--config")
    return preset, method, run


def resolve_config(preset: Optional[str], method_flags: dict, run_flags: dict, config_file: Optional[Path] = None):
    """The :class:`~rdpo_zoo.config.TrainConfig` of a command line: defaults ← preset ← config file ← flags."""
    from rdpo_zoo.config import TrainConfig
    from rdpo_zoo.parts import parse_assignments
    from rdpo_zoo.registry import merge_settings

    file_preset, file_method, file_run = (None, {}, {})
    if config_file is not None:
        file_preset, file_method, file_run = _split_config(_read_config_file(config_file))
    preset = preset or file_preset
    overrides = dict(file_method)
    for key, value in method_flags.items():
        if value is None:
            continue
        if key in PART_SETTINGS.values() and key in overrides:
            overrides[key] = {**overrides[key], **value}
        else:
            overrides[key] = value
    method = merge_settings(preset, overrides)
    run_values = dict(file_run)
    for key, value in run_flags.items():
        if value is None or value == ():
            continue
        if key in ("model_options", "reward_options"):
            value = {**run_values.get(key, {}), **parse_assignments(list(value), where=f"--{key.split('_')[0]}-opt")}
        run_values[key] = value
    try:
        run = RunSettings(**run_values)
    except TypeError as error:
        raise click.BadParameter(str(error), param_hint="--config") from None
    _check_run(run)
    return TrainConfig(method, run, preset)


def _check_run(run: RunSettings) -> None:
    from rdpo_zoo.registry import resolve_reward

    try:  # names, weights and options of the reward, before any compute
        resolve_reward(run.reward, run.reward_options)
    except (ValueError, LookupError) as error:
        raise click.BadParameter(str(error), param_hint="--reward") from None
    for f in run_setting_fields():
        meta, value = f.metadata, getattr(run, f.name)
        if "min" in meta and value is not None and value < meta["min"]:
            raise click.BadParameter(f"expected a value >= {meta['min']}, got {value!r}", param_hint=_flag(f.name))
        if "choices" in meta and value is not None and value not in meta["choices"]:
            raise click.BadParameter(f"expected one of {', '.join(meta['choices'])}, got {value!r}",
                                     param_hint=_flag(f.name))


@click.command()
@click.option("--preset", default=None, metavar="NAME",
              help="A method as data: ddpo, d3po, diffusion-dpo, spo, tailorpo, tailorpo-g, rdpo-star, rdpo "
                   "(`rdpo-zoo plugins --kind preset`). Flags override it.")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A TOML/YAML/JSON file of settings (flat, or `preset`/`method`/`run` as a run's config.json); "
                   "flags override it.")
@part_options("estimator")
@part_options("loss")
@part_options("penalty")
@click.option("--psi-lambda", type=float, default=None, help="λ of the penalty (Ψ for --loss rdpo); "
              "the same as --penalty-opt lambda=…")
@_method_options
@_run_options
@click.option("--dry-run", is_flag=True, help="Print the resolved configuration and exit without training.")
def train(preset, config_file, estimator, estimator_opt, loss, loss_opt, penalty, penalty_opt, psi_lambda, dry_run,
          **flags: Any) -> None:
    """Train a LoRA with a step-wise preference method: rollout (sampler + estimator → labelled step pairs)
    alternating with optimisation of the chosen loss.

    \b
    Examples:
      rdpo-zoo train --estimator delta-q --loss rdpo            # RDPO's parts on the embedded tiny model
      rdpo-zoo train --preset d3po --reward compressibility
      rdpo-zoo train --preset rdpo --psi-lambda 10 --iterations 20 --output-dir runs/rdpo-l10
    """
    method_names = {o.name for o in SETTINGS}
    method_flags = {k: v for k, v in flags.items() if k in method_names}
    run_flags = {k: v for k, v in flags.items() if k not in method_names}
    for kind, name, pairs in (("estimator", estimator, estimator_opt), ("loss", loss, loss_opt),
                              ("penalty", penalty, penalty_opt)):
        method_flags.update(part_overrides(kind, name, pairs))
    if psi_lambda is not None:
        method_flags["penalty_options"] = {**method_flags.get("penalty_options", {}), "lambda": psi_lambda}
    try:
        config = resolve_config(preset, method_flags, run_flags, config_file)
    except (OptionError, LookupError, ValueError) as error:
        raise click.UsageError(str(error)) from None
    _print_config(config)
    if dry_run:
        return
    import logging

    from rdpo_zoo.trainer import Trainer, TrainingError

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        trainer = Trainer(config)
    except (ValueError, LookupError, OSError) as error:
        raise click.UsageError(str(error)) from None
    try:
        evaluation = trainer.train()
    except TrainingError as error:
        raise click.ClickException(str(error)) from None
    if evaluation:
        _print_evaluation(evaluation)
    shown = "eval.json, eval.png: base above tuned, framed green where the checker accepts" if evaluation else "no evaluation: --eval-samples 0"
    click.echo(f"outputs: {config.run.output_dir} (config.json, metrics.jsonl, lora/, {shown})")


def _print_config(config) -> None:
    m, run = config.method, config.run
    penalty = m["penalty"]
    penalty_text = f" + {penalty} {m['penalty_options']}" if penalty else (
        f" (includes its penalty: {m['penalty_options']})" if m["penalty_options"] else "")
    click.echo(f"preset: {config.preset or '(none)'}; model {run.model}, reward {run.reward}, prompts {run.prompts}")
    click.echo(f"method: rollout {m['rollout']} (k={m['num_candidates']}), estimator {m['estimator']} "
               f"{m['estimator_options'] or ''}, loss {m['loss']} {m['loss_options']}{penalty_text}")
    click.echo(f"sampling: {m['scheduler']} eta={m['eta']} T={m['num_steps']} guidance={m['guidance_scale']}, "
               f"train timesteps {m['train_timesteps']}, threshold {m['threshold']}, gradient guidance "
               f"{_GUIDANCE_WORDS[m['gradient_guidance']]}, reduction {m['reduction']}, lr {m['learning_rate']}")
    click.echo(f"budget: {run.iterations} iterations × {run.prompts_per_iteration} prompts, {run.inner_epochs} "
               f"inner epoch(s), minibatch {run.minibatch_size}, LoRA rank {run.lora_rank}, seed {run.seed}")


_GUIDANCE_WORDS = {True: "on", False: "off",
                   None: "auto (on for a branching rollout with a differentiable reward)"}


def _print_evaluation(result: dict) -> None:
    from rdpo_zoo.evaluate import format_report

    click.echo(f"\nbase vs tuned on held-out prompts ({result['prompt_set']}):")
    for line in format_report(result):
        click.echo(line)
