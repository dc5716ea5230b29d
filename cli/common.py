"""Options and behaviour shared by the commands: ``--threads``, and deprecated flag names that still work.

The canonical vocabulary (docs/cli.md): ``--num-steps`` is a sampler's step count T everywhere, ``--guidance-scale``
the classifier-free guidance, ``--num-candidates`` the children drawn per step, ``--output-dir`` an output folder,
``--threads`` torch's CPU threads.
"""

from __future__ import annotations

import click

#: Old flag → canonical flag, per command; the old names work, with a warning, for one release.
DEPRECATED = {
    "sample": {"--steps": "--num-steps", "--guidance": "--guidance-scale", "--out": "--output-dir"},
    "world-check": {"--steps": "--num-steps", "--guidance": "--guidance-scale", "--n": "--num-images"},
    "schedule": {"--steps": "--num-steps"},
    "best-of-n": {"--steps": "--choice-timesteps", "--n": "--num-candidates"},
    "export": {"--out": "--output-dir"},
}


class Command(click.Command):
    """A command that accepts its deprecated flag names (:data:`DEPRECATED`), rewriting each to the canonical one
    with a warning on stderr."""

    def parse_args(self, ctx, args):
        renamed = DEPRECATED.get(self.name, {})
        if renamed:
            end = args.index("--") if "--" in args else len(args)
            out = []
            for i, arg in enumerate(args):
                flag, eq, value = arg.partition("=")
                if i < end and flag in renamed:
                    click.echo(f"warning: {flag} is deprecated; use {renamed[flag]} (the old name goes in the next "
                               "release)", err=True)
                    arg = renamed[flag] + eq + value
                out.append(arg)
            args = out
        return super().parse_args(ctx, args)


def threads_option(command):
    """``--threads N``: torch's CPU threads for this command (default: by the core count, docs/cli.md)."""
    return click.option("--threads", type=click.IntRange(min=1), default=None,
                        help="torch CPU threads [default: half the cores, at most 8 (docs/cli.md)]")(command)


def output_dir_checked(path, option: str = "--output-dir"):
    """The folder, refused as one line if it is a file or cannot be written (before any compute)."""
    from rdpo_zoo.runtime import check_output_dir

    check_output_dir(path, option)
    return path


def output_file_checked(path, option: str):
    """A file to write: its folder is checked as :func:`output_dir_checked`, and the path must not be a folder."""
    from rdpo_zoo.errors import UserInputError

    if path is None:
        return None
    if path.is_dir():
        raise UserInputError(f"{option}: {str(path)!r} is a folder; expected a file name")
    output_dir_checked(path.parent, option)
    return path


def model_family_class(model: str):
    """The family class of a registered model part (``rdpo_zoo.families.ModelFamily``); None for a folder or a
    plugin model without a registered family (its family is known only when the pipeline is loaded)."""
    from rdpo_zoo.registry import get_registry

    registry = get_registry()
    try:
        return registry.get("model-family", registry.get("model", model).family).load()
    except (LookupError, AttributeError):
        return None
