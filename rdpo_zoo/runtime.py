"""The machine a command runs on: CPU threads, devices, and writable output folders, checked before any compute.

Nothing here imports torch at module level (the CLI imports this module to build its options).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional

from rdpo_zoo.errors import UserInputError

__all__ = ["cpu_cores", "default_threads", "apply_threads", "check_device", "check_output_dir", "MAX_DEFAULT_THREADS"]

#: Past this, more intra-op threads did not pay on the embedded model's small batches (docs/cli.md, "Threads").
MAX_DEFAULT_THREADS = 8


def cpu_cores() -> int:
    """The cores this process may run on (its affinity, which containers and ``taskset`` narrow), not the load."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def default_threads() -> int:
    """torch's intra-op threads when ``--threads`` is not given: half the cores (at least 1, at most 8).

    Half, because these CPUs are shared: torch's own default (every core) collapsed when another job held a core
    (``eval`` took 106 s at 2 threads where 1 thread took 7.5 s on a loaded 2-core machine), while one thread per
    two cores loses little on an idle machine (the measurement is in docs/cli.md)."""
    return max(1, min(MAX_DEFAULT_THREADS, cpu_cores() // 2))


def apply_threads(threads: Optional[int]) -> int:
    """Set torch's intra-op threads (``None``: :func:`default_threads`) and return the number set."""
    import torch

    n = default_threads() if threads is None else int(threads)
    if n < 1:
        raise UserInputError(f"--threads: expected a positive integer, got {threads!r}")
    torch.set_num_threads(n)
    return n


def check_device(device: str, option: str = "--device") -> None:
    """Refuse a torch device this machine does not have, before anything is loaded onto it."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserInputError(f"{option}: expected a torch device such as cpu, cuda or cuda:1, got {device!r}") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserInputError(f"{option}: {device!r} asked for, but torch sees no CUDA device here "
                                 f"(torch {torch.__version__}); use --device cpu")
        if parsed.index is not None and parsed.index >= count:
            raise UserInputError(f"{option}: {device!r} asked for, but torch sees {count} CUDA device(s)")
    elif parsed.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise UserInputError(f"{option}: 'mps' asked for, but torch sees no MPS device here; use --device cpu")


def check_output_dir(path, option: str, keep: bool = True) -> None:
    """Refuse an output folder that is a file or cannot be written, before any compute: create what is missing and
    write and delete a probe file. ``keep=False`` (a dry run) removes the folders this check created; the default
    keeps them, since the command writes there next (and the processes of a multi-process launch check the same
    folder at once: one must not remove what another is probing)."""
    folder = Path(path).expanduser()
    blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        what = "is" if blocker == folder else f"is inside {blocker}, which is"
        raise UserInputError(f"{option}: {str(path)!r} {what} a file; expected a folder (or a path to create one)")
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".rdpo-zoo-write-check-"):
            pass
    except OSError as error:
        raise UserInputError(f"{option}: cannot write in {str(path)!r} ({error.strerror or error}); expected a "
                             "writable folder") from None
    finally:
        for made in created if not keep else ():  # deepest first
            try:
                made.rmdir()
            except OSError:
                pass
