"""Checkpoint files, written so that a crash never corrupts the last good state: a file or folder is written under a
temporary name, flushed to disk, then renamed into place. Shared by the trainer (``checkpoint-NNNNNN/``, ``lora/``)
and the pretraining (``rdpo_zoo.pretrain``'s state files).

A training checkpoint folder holds the LoRA in the model family's format (``LORA_WEIGHT_NAME``) and
``training_state.pt``: the iteration, the exact peft state, the optimiser's, the learning-rate scheduler's and the
advantage estimator's state, and the run's configuration.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Callable, Optional, Sequence

from rdpo_zoo.run_folder import (
    CHECKPOINT_PREFIX, LORA_WEIGHT_NAME, atomic_write_text, complete_checkpoints,
)

logger = logging.getLogger(__name__)

__all__ = ["fsync_dir", "replace_dir", "atomic_save", "write_lora", "write_checkpoint", "read_checkpoint",
           "trim_metrics", "STATE_FILE", "STATE_KEYS"]

STATE_FILE = "training_state.pt"
#: what a training state must hold
STATE_KEYS = ("iteration", "lora", "optimiser", "lr_scheduler", "config")


def fsync_dir(folder: Path) -> None:
    """Flush every file of ``folder`` to disk."""
    for path in folder.iterdir():
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a finished folder into place; an older folder of the same name is moved aside first, then removed.
    Its files get the mode the umask gives new files (safetensors writes 0600: a shared run folder's LoRA could not
    be read by anyone else)."""
    umask = os.umask(0)
    os.umask(umask)
    for path in tmp.iterdir():
        if path.is_file():
            path.chmod(0o666 & ~umask)
    if final.exists():
        aside = final.with_name(f".old-{final.name}-{os.getpid()}")
        os.replace(final, aside)
        os.replace(tmp, final)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(tmp, final)


def atomic_save(obj, path: Path) -> None:
    """``torch.save(obj, path)`` through a temporary file renamed into place."""
    import torch

    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_lora(folder: Path, family, peft_state: dict) -> None:
    """The LoRA ``peft_state`` in ``folder``, in the model family's format (``family.save_lora``)."""
    tmp = folder.with_name(f".tmp-{folder.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    family.save_lora(tmp, peft_state)
    replace_dir(tmp, folder)


def write_checkpoint(output_dir: Path, iteration: int, family, peft_state: dict, state: dict, keep: int) -> Path:
    """``checkpoint-NNNNNN`` under ``output_dir``: the LoRA (the family's format) and ``training_state.pt``
    (``state``, which holds the iteration, the peft state, …); the oldest checkpoints beyond ``keep`` are removed and
    ``lora/`` is refreshed with this LoRA (so an interrupted run has one). Each folder is written under a temporary
    name and renamed: a crash mid-save leaves the previous checkpoint and ``lora/`` intact."""
    import torch

    final = output_dir / f"{CHECKPOINT_PREFIX}{iteration:06d}"
    tmp = output_dir / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    family.save_lora(tmp, peft_state)
    torch.save(state, tmp / STATE_FILE)
    fsync_dir(tmp)
    replace_dir(tmp, final)
    found = complete_checkpoints(output_dir)
    for old in found[: max(0, len(found) - keep)]:
        shutil.rmtree(old, ignore_errors=True)
    lora_tmp = output_dir / f".tmp-lora-{os.getpid()}"
    shutil.rmtree(lora_tmp, ignore_errors=True)
    lora_tmp.mkdir()
    shutil.copyfile(final / LORA_WEIGHT_NAME, lora_tmp / LORA_WEIGHT_NAME)
    fsync_dir(lora_tmp)
    replace_dir(lora_tmp, output_dir / "lora")
    return final


def read_checkpoint(candidates: Sequence[Path], warn: bool = True) -> tuple[Optional[dict], Optional[Path], list]:
    """The state of the first of ``candidates`` (newest first) whose ``training_state.pt`` loads and holds
    :data:`STATE_KEYS`, and its folder; one that does not load is passed over for the next, with a warning naming the
    file (``warn``). Returns ``(None, None, failures)`` when none loads."""
    import torch

    failures = []
    for candidate in candidates:
        file = candidate / STATE_FILE
        try:
            state = torch.load(file, map_location="cpu", weights_only=False)
            missing = set(STATE_KEYS) - set(state)
            if missing:
                raise ValueError(f"it lacks {', '.join(sorted(missing))}")
        except Exception as error:  # whatever a damaged file raises: try the previous checkpoint
            failures.append(f"{file} ({type(error).__name__}: {error})")
            if candidate is not candidates[-1] and warn:
                logger.warning("resume: %s does not load (%s: %s); falling back to the previous checkpoint",
                               file, type(error).__name__, error)
            continue
        return state, candidate, failures
    return None, None, failures


def trim_metrics(metrics_path: Path, iteration: int, error: Callable[[str], Exception]) -> None:
    """Keep the metrics lines up to ``iteration``; a torn last line is dropped with a warning, a malformed line
    before it raises ``error(message)`` (that is not what a crash leaves)."""
    lines = [line for line in metrics_path.read_text().splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append((json.loads(line), line))
        except ValueError:
            if number < len(lines):
                raise error(f"resume: {metrics_path} line {number} is not JSON ({line[:80]!r}); "
                            "only a torn last line is dropped") from None
            logger.warning("resume: dropped the torn last line of %s (a write the interruption cut short): %r",
                           metrics_path, line[:80])
    kept = [line for record, line in records if record["iteration"] <= iteration]
    atomic_write_text(metrics_path, "".join(line + "\n" for line in kept))
