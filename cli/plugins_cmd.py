"""``rdpo-zoo plugins``: every part by kind and where it came from; and the helpers other commands use to turn
parts' option schemas into ``--loss`` / ``--loss-opt KEY=VALUE`` flags.

Nothing here imports torch: the registry and the parts' options are plain data.
"""

from __future__ import annotations

import json
from typing import Optional

import click

from rdpo_zoo.parts import KINDS, PLURALS, OptionError


def _registry():
    from rdpo_zoo.registry import get_registry

    return get_registry()


# ------------------------------------------------------------------------------------ options for other commands


class _LazyHelpOption(click.Option):
    """A click option whose help text is computed when ``--help`` is shown (the registry loads then, not when
    the CLI is imported)."""

    def __init__(self, *args, help_factory=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._help_factory = help_factory

    def get_help_record(self, ctx):
        if self._help_factory is not None and not getattr(self, "_help_done", False):
            try:
                self.help = self._help_factory()
            except Exception as error:  # noqa: BLE001 -- help must render even when the registry cannot load
                self.help = f"(the plugin registry failed to load: {error})"
            self._help_done = True
        return super().get_help_record(ctx)


def kind_help(kind: str) -> str:
    """Help for ``--<kind>``: the known names with their descriptions."""
    parts = [p for p in _registry().parts(kind)]
    names = "; ".join(f"{p.name}: {p.description}" for p in parts) or "none registered"
    return f"The {kind} to use, by name ({names}). `rdpo-zoo plugins` lists every part."


def options_help(kind: str) -> str:
    """Help for ``--<kind>-opt``: every part's options, with types and defaults."""
    registry = _registry()
    lines = []
    parts = registry.parts(kind)
    common, varying = _common(parts)
    if common:
        lines.append("every " + kind + ": " + ", ".join(_option_text(o, o.name not in varying) for o in common))
    for part in parts:
        own = [o for o in part.common_options() if o.name in varying] + list(part.options)
        if own:
            lines.append(f"{part.name}: " + ", ".join(_option_text(o) for o in own))
    body = "; ".join(lines) if lines else f"no {kind} declares options"
    return f"An option of the chosen {kind}, KEY=VALUE (repeat the flag for several). Options: {body}."


def _option_text(option, with_default: bool = True) -> str:
    name = f"{option.name}={option.default}" if with_default else option.name
    return f"{name} ({option.describe()}: {option.help})"


def _common(parts) -> tuple:
    """The options common to the parts of a kind, and the names of those whose default differs per part (a
    penalty's λ): those are shown with each part."""
    common = parts[0].common_options() if parts else ()
    varying = {o.name for o in common if len({repr(p.option(o.name).default) for p in parts}) > 1}
    return common, varying


def part_options(kind: str, default: Optional[str] = None, help: Optional[str] = None):
    """A decorator adding ``--<kind> NAME`` and ``--<kind>-opt KEY=VALUE`` (repeatable) to a click command, with
    help generated from the registered parts' schemas when ``--help`` is shown. The command receives
    ``<kind>`` (a name, or ``default``) and ``<kind>_opt`` (a tuple of ``KEY=VALUE`` strings); turn them into a
    typed dict with :func:`parse_part_options` (or hand both to ``rdpo_zoo.merge_settings``/``build_loss``).
    """
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    flag = kind.replace("_", "-")

    def decorate(command):
        command = click.option(
            f"--{flag}-opt",
            f"{kind}_opt",
            multiple=True,
            metavar="KEY=VALUE",
            cls=_LazyHelpOption,
            help_factory=lambda: options_help(kind),
        )(command)
        command = click.option(
            f"--{flag}",
            kind,
            default=default,
            metavar="NAME",
            show_default=default is not None,
            cls=_LazyHelpOption,
            help_factory=(lambda: help) if help else (lambda: kind_help(kind)),
        )(command)
        return command

    return decorate


def parse_part_options(kind: str, name: str, pairs) -> dict:
    """The typed options of the part ``kind``/``name`` from ``KEY=VALUE`` strings, as click errors: an unknown
    part or option, or a bad value, becomes a ``click.BadParameter`` that names ``--<kind>-opt`` and the option."""
    from rdpo_zoo.registry import DuplicatePartError, UnknownPartError

    try:
        part = _registry().get(kind, name)
    except (UnknownPartError, DuplicatePartError) as error:
        raise click.BadParameter(str(error), param_hint=f"--{kind}") from None
    try:
        return part.parse_options(list(pairs))
    except OptionError as error:
        raise click.BadParameter(str(error), param_hint=f"--{kind}-opt") from None


def part_overrides(kind: str, name: Optional[str], pairs) -> dict:
    """``--<kind> NAME --<kind>-opt K=V ...`` as overrides for ``rdpo_zoo.merge_settings``: ``{kind: name,
    "<kind>_options": {"K": "V"}}``, leaving out what was not given (so the preset's values stand). The values stay
    strings; ``merge_settings`` types them with the part's options and names a bad one."""
    from rdpo_zoo.parts import parse_assignments

    overrides = {}
    if name is not None:
        overrides[kind] = name
    if pairs:
        try:
            overrides[f"{kind}_options"] = parse_assignments(list(pairs), where=f"--{kind}-opt")
        except OptionError as error:
            raise click.BadParameter(str(error), param_hint=f"--{kind}-opt") from None
    return overrides


# ------------------------------------------------------------------------------------------ rdpo-zoo plugins


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON (plugins, parts by kind, conflicts) for machines.")
@click.option("--kind", "kinds", type=click.Choice(KINDS), multiple=True, help="Only parts of this kind (repeatable).")
@click.option("--options", "show_options", is_flag=True, help="Show every part's options (types, defaults, help).")
@click.option("--traceback", "show_traceback", is_flag=True, help="Show the full traceback of broken plugins.")
def plugins(as_json: bool, kinds: tuple, show_options: bool, show_traceback: bool) -> None:
    """List every part by kind (estimators, losses, penalties, rewards, models, presets): its name, description,
    the distribution and version it came from, for losses the fused kernel form, and for learned rewards whether
    their weights are on this machine (at the default options). Broken plugins are listed
    with their error. RDPO_ZOO_PLUGINS chooses which plugins load (all, builtin, none, or a comma list of
    distributions and entry-point names)."""
    registry = _registry()
    kinds = kinds or KINDS
    if as_json:
        data = registry.to_dict()
        data["parts"] = {k: v for k, v in data["parts"].items() if k in kinds}
        if show_traceback:
            for plugin, info in zip(data["plugins"], registry.plugins):
                if info.broken:
                    plugin["traceback"] = info.traceback
        click.echo(json.dumps(data, indent=2, default=str))
        return
    conflicted = {(k, n) for k, n, _ in registry.conflicts()}
    for kind in kinds:
        parts = registry.parts(kind)
        click.secho(f"{PLURALS[kind]} ({len(parts)})", bold=True)
        if not parts:
            click.echo("  (none)")
        common, varying = _common(parts)
        if show_options and common:
            click.echo(f"  options of every {kind}:")
            for option in common:
                per_part = " (default: per part, below)" if option.name in varying else ""
                click.echo(f"      {_option_text(option, option.name not in varying)}{per_part}")
        width = max((len(p.name) for p in parts), default=0)
        for part in parts:
            source = part.source.describe() if part.source else "?"
            extra = []
            if kind in ("loss", "penalty"):
                extra.append(f"fused: {part.fused}" if part.fused else "fused: no (PyTorch only)")
            if kind == "loss" and part.penalty:
                extra.append(f"includes penalty {part.penalty}")
            weights = part.check_available() if kind == "reward" else None
            if weights is not None:
                extra.append("weights: on this machine" if weights[0] else "weights: NOT on this machine")
            if (kind, part.name) in conflicted:
                extra.append("CONFLICT: registered by more than one plugin")
            suffix = f"  [{'; '.join(extra)}]" if extra else ""
            click.echo(f"  {part.name:<{width}}  {part.description}  ({source}){suffix}")
            if weights is not None and (show_options or not weights[0]):
                click.echo(f"      weights: {weights[1]}")
            if show_options:
                for option in [o for o in part.common_options() if o.name in varying] + list(part.options):
                    click.echo(f"      {_option_text(option)}")
                if kind == "preset":
                    for key, value in part.settings.items():
                        click.echo(f"      {key} = {value!r}")
    broken = registry.broken
    if broken:
        click.secho(f"broken plugins ({len(broken)})", bold=True, fg="red")
        for info in broken:
            where = f" ({info.distribution} {info.version})" if info.distribution else ""
            click.echo(f"  {info.name}{where}: {info.error}")
            if show_traceback and info.traceback:
                click.echo("    " + info.traceback.rstrip().replace("\n", "\n    "))


def model_part(name: str, options: dict, option: str = "--model") -> tuple[str, dict]:
    """``--model``: a model part's name, or a diffusers pipeline folder (run by the ``diffusers`` part with
    ``id=FOLDER``), as ``sample --model`` takes one."""
    from pathlib import Path

    from rdpo_zoo.errors import UserInputError

    registry = _registry()
    if any(part.name == name for part in registry.parts("model")):
        return name, dict(options)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise UserInputError(f"{option}: {name!r} is a folder without model_index.json; expected a diffusers "
                                 "pipeline folder or a model part")
        return "diffusers", {**options, "id": str(path)}
    known = ", ".join(part.name for part in registry.parts("model"))
    raise UserInputError(f"{option}: expected a model part ({known}) or a diffusers pipeline folder; {name!r} is "
                         "neither")
