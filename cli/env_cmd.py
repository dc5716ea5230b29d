"""``rdpo-zoo env``: versions and devices, for bug reports."""

from __future__ import annotations

import json
import platform

import click


@click.command()
def env() -> None:
    """Print the versions of the stack and the devices torch sees, as JSON."""
    from importlib import metadata

    import torch

    versions = {}
    for dist in ("rdpo-zoo", "torch", "triton", "diffusers", "transformers", "peft", "accelerate", "pluggy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    devices = ["cpu"] + [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    click.echo(json.dumps({"python": platform.python_version(), "versions": versions, "devices": devices}, indent=2))
