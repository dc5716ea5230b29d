"""The ``rdpo-zoo`` command line. Thin: it parses, asks the engine and the registry, and prints.

Heavy modules (torch, diffusers, peft) are imported inside the commands, so ``rdpo-zoo --help`` is instant.
Each command lives in its own module of this package and is added to the group below.
"""

from __future__ import annotations

import click

from rdpo_zoo import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="rdpo-zoo")
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
