"""The ``rdpo-zoo`` command line. Thin: it parses, asks the engine and the registry, and prints.

Heavy modules (torch, diffusers, peft) are imported inside the commands, so ``rdpo-zoo --help`` is instant.
Each command lives in its own module of this package and is added to the group below.

Errors take one path (:class:`Main.main`): a user error (``rdpo_zoo.errors.UserInputError`` from anywhere, or a
click usage error) is printed as one line, ``Error: …``, and exits with status 2 (1 for errors that are not the
input's fault, such as a diverged run); anything else is a bug and keeps its traceback. ``--debug`` (anywhere on
the command line) or ``RDPO_ZOO_DEBUG=1`` shows the traceback of user errors too. docs/cli.md lists every bad input
and what it gets.
"""

from __future__ import annotations

import os
import sys

import click

from rdpo_zoo import __version__

DEBUG_FLAG = "--debug"


def one_line(text: str) -> str:
    """A message on one line (a plugin's or library's multi-line message, joined)."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def _take_debug(args: list[str]) -> tuple[list[str], bool]:
    """``--debug`` may stand anywhere before ``--``: remove it and say whether it was there."""
    end = args.index("--") if "--" in args else len(args)
    debug = DEBUG_FLAG in args[:end]
    kept = [a for i, a in enumerate(args) if not (i < end and a == DEBUG_FLAG)]
    return kept, debug or os.environ.get("RDPO_ZOO_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")


class Main(click.Group):
    """The group with the CLI's one error path (see the module's docstring)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        from rdpo_zoo.errors import UserInputError

        args, debug = _take_debug(list(sys.argv[1:] if args is None else args))
        if not standalone_mode:  # a caller that handles errors itself
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except (click.exceptions.Abort, KeyboardInterrupt, EOFError):
            click.echo("Aborted!", err=True)
            sys.exit(1)
        except (click.ClickException, UserInputError) as error:
            if debug:
                raise
            if isinstance(error, click.ClickException):
                message, status = error.format_message(), error.exit_code
            else:
                message, status = str(error), 2
            click.echo(f"Error: {one_line(message)}", err=True)
            sys.exit(status)
        sys.exit(code if isinstance(code, int) else 0)


@click.group(cls=Main, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="rdpo-zoo")
@click.option(DEBUG_FLAG, is_flag=True, expose_value=False,
              help="Show the traceback of user errors too (may stand anywhere on the line; or RDPO_ZOO_DEBUG=1).")
def main() -> None:
    """Step-wise DPO-style preference alignment of text-to-image diffusion models."""


def _add_commands() -> None:
    from rdpo_zoo.cli import best_of_n_cmd, env_cmd, eval_cmd, plot_cmd, plugins_cmd, pretrain_cmd, sample_cmd, schedule_cmd, train_cmd, world_cmd

    main.add_command(env_cmd.env)
    main.add_command(schedule_cmd.schedule)
    main.add_command(plugins_cmd.plugins)
    main.add_command(sample_cmd.sample)
    main.add_command(world_cmd.world_check)
    main.add_command(pretrain_cmd.pretrain)
    main.add_command(train_cmd.train)
    main.add_command(best_of_n_cmd.best_of_n)
    main.add_command(eval_cmd.evaluate)
    main.add_command(plot_cmd.plot)

    from rdpo_zoo.cli import bench_cmd

    main.add_command(bench_cmd.bench)


_add_commands()
