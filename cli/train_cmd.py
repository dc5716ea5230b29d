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

from rdpo_zoo.cli.common import model_family_class
from rdpo_zoo.cli.plugins_cmd import model_part, part_options, part_overrides
from rdpo_zoo.config import RunSettings, SettingError, check_value_type, move_to_method, run_setting_fields
from rdpo_zoo.errors import UserInputError
from rdpo_zoo.parts import PART_SETTINGS, SETTINGS, OptionError

#: What plain `rdpo-zoo train` runs when no preset, rollout, estimator, loss or penalty is given: the main job's
#: method, RDPO's parts (README's first command, `--estimator delta-q --loss rdpo`, resolves to exactly this).
MAIN_METHOD = {"estimator": "delta-q", "loss": "rdpo"}
_METHOD_CHOICE = ("rollout", "estimator", "loss", "penalty")

_CLICK_TYPES = {int: click.INT, float: click.FLOAT, str: click.STRING, bool: click.BOOL}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _setting_flags(command):
    """One flag per setting, the method's (``rdpo_zoo.parts.SETTINGS``: a preset may fix them) and the run's
    (``RunSettings``) alike, from their :class:`~rdpo_zoo.Option`; every default is "not given", so that a preset's
    or a config file's value stands. The part settings (--estimator, --loss-opt, …) come from ``part_options``."""
    from rdpo_zoo.config import run_setting_options

    method = [(o, True) for o in SETTINGS if o.name not in PART_SETTINGS and o.name not in PART_SETTINGS.values()]
    run = [(o, False) for o in run_setting_options()]
    for option, of_method in reversed(method + run):
        flag, callback, multiple, metavar = _flag(option.name), None, False, None
        shown = f" [preset's, else {option.default}]" if of_method else f" [default: {option.default}]"
        if of_method and option.default is None:
            shown = ""
        if option.type is dict:  # --model-opt KEY=VALUE, repeated
            flag, kind, multiple, metavar, shown = "--" + option.name.split("_")[0] + "-opt", None, True, "KEY=VALUE", ""
        elif option.type is bool and option.nullable:  # true / false / auto (None: the setting decides itself)
            kind, shown = click.Choice(["true", "false", "auto"], case_sensitive=False), " [preset's, else auto]"
            callback = _auto_is_none
        elif option.type is bool:
            flag, kind = f"{flag}/--no-{option.name.replace('_', '-')}", None
        elif option.choices:
            kind = click.Choice([str(c) for c in option.choices if c is not None])
        else:
            kind = _CLICK_TYPES[option.type]
        extra = {"type": kind} if kind is not None else {}
        if multiple:
            extra.update(multiple=True, metavar=metavar)
        else:
            extra["default"] = None
        command = click.option(flag, option.name, callback=callback, help=option.help + shown, **extra)(command)
    return command


def _auto_is_none(ctx, param, value):
    # "auto" given explicitly must still override a preset's value: the settings parser reads "none" as None
    return "none" if value is not None and value.lower() == "auto" else value


def _read_config_file(path: Path) -> dict:
    """A config file's data; a syntax error names the file and its line."""
    where = f"--config {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserInputError(f"{where}: not a UTF-8 text file; expected TOML, YAML or JSON") from None
    if path.suffix == ".toml":
        import tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:  # its message ends with "(at line L, column C)"
            raise UserInputError(f"{where}: not valid TOML: {error}") from None
    elif path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise UserInputError(f"{where}: reading YAML needs PyYAML (pip install pyyaml); or use TOML or JSON") \
                from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            line = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            raise UserInputError(f"{where}: not valid YAML{line}: {getattr(error, 'problem', None) or error}") from None
    elif path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise UserInputError(f"{where}: not valid JSON at line {error.lineno}, column {error.colno}: "
                                 f"{error.msg}") from None
    else:
        raise UserInputError(f"{where}: expected a .toml, .yaml or .json file, got {path.name!r}")
    if not isinstance(data, dict):
        raise UserInputError(f"{where}: expected a table of settings at the top, got {type(data).__name__}")
    return data


def _split_config(data: dict, where: str = "--config") -> tuple[Optional[str], dict, dict]:
    """A config file: ``preset``, method settings and run settings, either flat or under ``method``/``run``
    (the layout of the ``config.json`` a run writes, so a run's config can be replayed). Every value must have its
    setting's type (a string is not an integer, nor a boolean)."""
    from rdpo_zoo.parts import closest

    data = dict(data)
    data.pop("resolved", None)
    preset = data.pop("preset", None)
    if preset is not None and not isinstance(preset, str):
        raise UserInputError(f"{where}: preset: expected a preset's name, got {preset!r}")
    method, run = data.pop("method", {}) or {}, data.pop("run", {}) or {}
    for section, values in (("method", method), ("run", run)):
        if not isinstance(values, dict):
            raise UserInputError(f"{where}: {section}: expected a table of settings, got {values!r}")
    method, run = move_to_method(method, run)  # guidance_step, gap_rule: run settings before they were the method's
    run_fields = {f.name: f for f in run_setting_fields()}
    method_options = {o.name: o for o in SETTINGS}
    for key, value in data.items():
        if key in run_fields:
            run[key] = value
        elif key in method_options:
            method[key] = value
        else:
            hint = closest(key, [*run_fields, *method_options])
            raise UserInputError(f"{where}: unknown setting {key!r}" + (f" (did you mean {hint!r}?)" if hint else ""))
    for key, value in run.items():
        if key not in run_fields:
            raise UserInputError(f"{where}: unknown run setting {key!r}")
        check_value_type(key, value, run_fields[key].type, where=f"{where}: ")
    for key, value in method.items():
        option = method_options.get(key)
        if option is None:
            raise UserInputError(f"{where}: unknown method setting {key!r}")
        if option.nullable and isinstance(value, str) and value.strip().lower() in ("none", "auto"):
            continue  # TOML has no null: "none" (and "auto" for a setting that decides itself) stand for it
        check_value_type(key, value, option.type.__name__, option.nullable, where=f"{where}: ")
    return preset, method, run


def resolve_config(preset: Optional[str], method_flags: dict, run_flags: dict, config_file: Optional[Path] = None):
    """The :class:`~rdpo_zoo.config.TrainConfig` of a command line: defaults ← preset ← config file ← flags."""
    from rdpo_zoo.config import TrainConfig
    from rdpo_zoo.parts import parse_assignments
    from rdpo_zoo.resolve import merge_settings

    file_preset, file_method, file_run = (None, {}, {})
    if config_file is not None:
        file_preset, file_method, file_run = _split_config(_read_config_file(config_file), f"--config {config_file}")
    preset = preset or file_preset
    overrides = dict(file_method)
    chosen = [k for k in _METHOD_CHOICE if overrides.get(k) is not None or method_flags.get(k) is not None]
    if preset is None and not chosen:  # plain `rdpo-zoo train`: the main job's method
        overrides.update(MAIN_METHOD)
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
        run = RunSettings(**run_values)  # checks every field: type, bounds, choices
    except SettingError as error:
        raise click.BadParameter(str(error).split(": ", 1)[-1], param_hint=_flag(error.setting)) from None
    _check_run(run)
    run.model, run.model_options = model_part(run.model, run.model_options)
    if "scheduler" not in overrides:
        method = _model_default_sampler(method, run.model, eta_given="eta" in overrides)
    if "guidance_scale" not in overrides:
        method = _model_default_guidance(method, run.model)
    return TrainConfig(method, run, preset)


def _model_default_guidance(method: dict, model: str) -> dict:
    """The model family's guidance (FLUX.1's 3.5 in its guidance embedding) in place of the method's CFG, unless
    --guidance-scale was given; a note says so."""
    family = model_family_class(model)
    default = getattr(family, "default_guidance_scale", None)
    if default is None or method.get("guidance_scale") == default:
        return method
    click.echo(f"note: model {model} takes guidance {default:g} by default (its family's, {family.name}), not the "
               f"method's {method.get('guidance_scale'):g}; --guidance-scale sets another", err=True)
    return {**method, "guidance_scale": default}


def _model_default_sampler(method: dict, model: str, eta_given: bool) -> dict:
    """A method whose sampler the model cannot run, unless the sampler was asked for: the presets and the main job
    name DDIM (their papers' sampler on SD), which has no flow-matching schedule, so on a flow model (SD3, FLUX,
    tiny-flow) the model family's default step family (Flow-GRPO's SDE) takes its place, with that family's
    default η unless --eta was given, and a note says so. A --scheduler given is kept (and refused if it cannot
    run)."""
    from rdpo_zoo.registry import get_registry
    from rdpo_zoo.steps import AlphaBarFamily

    registry = get_registry()
    family = model_family_class(model)
    if family is None:
        return method
    try:
        chosen = registry.get("step-family", method["scheduler"]).load()
        default = registry.get("step-family", family.default_step_family).load()
    except (LookupError, AttributeError):
        return method
    if not (issubclass(chosen, AlphaBarFamily) and not issubclass(default, AlphaBarFamily)):
        return method
    eta = method["eta"] if eta_given else getattr(default, "default_eta", None)
    method = {**method, "scheduler": family.default_step_family, "eta": eta}
    click.echo(f"note: model {model} is a flow-matching model, which {chosen.name} cannot sample: "
               f"the sampler is its family's default, {method['scheduler']} at η {eta}" + ("" if eta_given else
               " (its default)") + "; --scheduler chooses another", err=True)
    return method


def _check_run(run: RunSettings) -> None:
    from rdpo_zoo.registry import resolve_reward

    try:  # names, weights and options of the reward, before any compute
        resolve_reward(run.reward, run.reward_options)
    except (ValueError, LookupError) as error:
        raise click.BadParameter(str(error), param_hint="--reward") from None


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
@_setting_flags
@click.option("--dry-run", is_flag=True,
              help="Resolve the configuration, build the run (model, reward, parts) and run every check train runs, "
                   "then exit without sampling, training or writing anything.")
def train(preset, config_file, estimator, estimator_opt, loss, loss_opt, penalty, penalty_opt, psi_lambda, dry_run,
          **flags: Any) -> None:
    """Train a LoRA with a step-wise preference method: rollout (sampler + estimator → labelled step pairs)
    alternating with optimisation of the chosen loss. With no preset and no parts it runs the main job's method
    (RDPO's parts: --estimator delta-q --loss rdpo).

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
    except (OptionError, LookupError) as error:
        raise click.UsageError(str(error)) from None
    _print_config(config)
    import logging

    from rdpo_zoo.runtime import apply_threads

    check_before_compute(config, dry_run)
    threads = apply_threads(config.run.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from rdpo_zoo.trainer import Trainer, TrainingError

    try:
        trainer = Trainer(config)  # builds and checks everything; nothing is sampled yet
    except (ValueError, LookupError, OSError) as error:
        raise click.UsageError(str(error)) from None
    if dry_run:
        click.echo(f"dry run: every check passed ({threads} CPU thread(s)); nothing was sampled, trained or written")
        return
    try:
        evaluation = trainer.train()
    except TrainingError as error:
        raise click.ClickException(str(error)) from None
    if evaluation:
        _print_evaluation(evaluation)
    shown = "eval.json, eval.png: base above tuned, framed green where the checker accepts" if evaluation else "no evaluation: --eval-samples 0"
    click.echo(f"outputs: {config.run.output_dir} (config.json, metrics.jsonl, lora/, {shown})")


def check_before_compute(config, dry_run: bool = False) -> None:
    """The checks of a run's inputs that need no model: its folders, prompt files and devices. The rest (parts that
    fit together, train timesteps against the sampler) runs when the trainer is built, which --dry-run also does."""
    import torch

    from rdpo_zoo.runtime import check_output_dir
    from rdpo_zoo.world import prompt_set

    run = config.run
    check_output_dir(run.output_dir, "--output-dir", keep=not dry_run)
    if run.offline_pairs is None:
        prompt_set(run.prompts, option="--prompts")
    if run.eval_samples:
        prompt_set(run.eval_prompts, option="--eval-prompts")
    on_gpu = torch.cuda.is_available()
    if run.kernel_backend == "triton":
        from rdpo_zoo.kernels import select_backend

        try:
            select_backend("triton", torch.device("cuda" if on_gpu else "cpu"))
        except RuntimeError as error:
            raise UserInputError("--kernel-backend triton: " + str(error).split(": ", 1)[-1].replace(
                "backend='reference'", "--kernel-backend reference")) from None
    if run.mixed_precision == "fp16" and not on_gpu:
        click.echo("warning: --mixed-precision fp16 on the CPU has no fast fp16 kernels (a run was measured ~6x slower "
                   "than fp32): use it on a GPU, or --mixed-precision no", err=True)


def _print_config(config) -> None:
    m, run = config.method, config.run
    penalty = m.penalty
    penalty_text = f" + {penalty} {m.penalty_options}" if penalty else (
        f" (includes its penalty: {m.penalty_options})" if m.penalty_options else "")
    rollout = m.rollout
    group = m.group_size
    shape = {"single": f" ({group} trajectories per prompt)" if group > 1 else "", "two-trajectories": " (2 trajectories per prompt)",
             "noised-pairs": " (2 images per prompt, noised with one t and ε)"}.get(
        rollout, f" (k={m.num_candidates}" + (f", branching after step {m.branch_start})" if m.branch_start
                                                  else ")"))
    preset = config.preset or ("(none: the main job's method)" if all(m[k] == v for k, v in MAIN_METHOD.items())
                               else "(none)")
    click.echo(f"preset: {preset}; model {run.model}, reward {run.reward}, prompts {run.prompts}")
    click.echo(f"method: rollout {rollout}{shape}, estimator {m.estimator} "
               f"{m.estimator_options or ''}, loss {m.loss} {m.loss_options}{penalty_text}")
    # the sampler that draws the rollout's images (noised pairs sample their final images with the default one)
    sampler = m.scheduler or "the model family's default (ddim on SD, flow-sde on flow models)"
    eta = m.eta if m.eta is not None else "its default"
    click.echo(f"sampling: {sampler} eta={eta} T={m.num_steps} guidance={m.guidance_scale}, "
               f"train timesteps {m.train_timesteps}, threshold {m.threshold}, gradient guidance "
               f"{_GUIDANCE_WORDS[m.gradient_guidance]}, reduction {m.reduction}, lr {m.learning_rate}")
    click.echo(f"budget: {run.iterations} iterations × {run.prompts_per_iteration} prompts, {run.inner_epochs} "
               f"inner epoch(s), minibatch {run.minibatch_size}, LoRA rank {run.lora_rank}, seed {run.seed}; "
               f"metrics to {run.report_to if run.report_to != 'none' else 'metrics.jsonl only'}")


_GUIDANCE_WORDS = {True: "on", False: "off",
                   None: "auto (on for a branching rollout with a differentiable reward)"}


def _print_evaluation(result: dict) -> None:
    from rdpo_zoo.evaluate import format_report

    click.echo(f"\nbase vs tuned on held-out prompts ({result['prompt_set']}):")
    for line in format_report(result):
        click.echo(line)
