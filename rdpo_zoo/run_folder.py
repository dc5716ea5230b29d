"""A training run's folder: what a run writes there, the refusal to mix two runs in one folder, the comparison of a
resumed run's settings with the stored ones, and where a run's LoRA is (``lora/`` or a checkpoint).

Plain files and JSON only (no torch import): the CLI's ``eval`` and the trainer share it.

A run writes ``config.json``, ``metrics.jsonl``, ``checkpoint-NNNNNN/``, ``lora/``, ``eval.json``, ``eval.png`` and
``tensorboard/``; an interrupted atomic write leaves ``.tmp-NAME-PID`` (or ``.old-NAME-PID``) beside them. Those, and
only those, are what ``--overwrite`` removes: other files in the folder are the user's.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

__all__ = ["LORA_WEIGHT_NAME", "CHECKPOINT_PREFIX", "RunFolderError", "run_entries", "check_run_folder",
           "remove_run_files", "complete_checkpoints", "latest_checkpoint", "settings_changes", "LoraSource",
           "check_resumed_settings", "find_lora", "atomic_write_text"]


LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
CHECKPOINT_PREFIX = "checkpoint-"
#: What a run writes into its folder (besides its checkpoints).
RUN_FILES = ("config.json", "metrics.jsonl", "eval.json", "eval.png")
RUN_FOLDERS = ("lora", "tensorboard", "wandb")
_CHECKPOINT = re.compile(re.escape(CHECKPOINT_PREFIX) + r"(\d+)")
_LEFTOVER = re.compile(r"\.(?:tmp|old)-(.+)-\d+")  # an atomic write that was interrupted (see atomic_write_text)


class RunFolderError(ValueError):
    """The output folder holds another run (or one whose settings differ from those asked for)."""


def _is_run_name(name: str) -> bool:
    return name in RUN_FILES or name in RUN_FOLDERS or _CHECKPOINT.fullmatch(name) is not None


def run_entries(folder) -> list[Path]:
    """The files and folders of ``folder`` that a training run wrote (none if it does not exist)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.iterdir()):
        leftover = _LEFTOVER.fullmatch(path.name)
        if _is_run_name(path.name) or (leftover and _is_run_name(leftover.group(1))):
            found.append(path)
    return found


def check_run_folder(folder, resume: bool, overwrite: bool) -> None:
    """Refuse a new run in a folder that holds a run, unless it is resumed or overwritten (reads only)."""
    if resume and overwrite:
        raise RunFolderError("resume, overwrite: --resume continues the run in the folder and --overwrite removes it; "
                             "pass one of them")
    if Path(folder).exists() and not Path(folder).is_dir():
        raise RunFolderError(f"output_dir: expected a folder, got the file {folder}")
    if resume or overwrite:
        return
    found = run_entries(folder)
    if found:
        names = ", ".join(p.name for p in found[:6]) + (", …" if len(found) > 6 else "")
        raise RunFolderError(f"output_dir: {folder} holds a run ({names}); pass --resume to continue it, or "
                             f"--overwrite to start afresh (removing only the files a run writes), or choose another "
                             f"--output-dir")


def remove_run_files(folder) -> list[Path]:
    """Remove what :func:`run_entries` lists; returns it."""
    found = run_entries(folder)
    for path in found:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    return found


def complete_checkpoints(folder) -> list[Path]:
    """The complete checkpoint folders, oldest first (temporary ones are never complete: they are renamed when
    done)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and _CHECKPOINT.fullmatch(p.name)
             and (p / "training_state.pt").is_file()]
    return sorted(found, key=lambda p: int(_CHECKPOINT.fullmatch(p.name).group(1)))


def latest_checkpoint(folder) -> Optional[Path]:
    """The newest complete checkpoint folder, or ``None``."""
    found = complete_checkpoints(folder)
    return found[-1] if found else None


def _resumable_run_settings() -> set[str]:
    from rdpo_zoo.config import run_setting_fields

    return {f.name for f in run_setting_fields() if f.metadata.get("resumable")}


def _plain(data: dict) -> dict:
    return json.loads(json.dumps(data, default=str))  # as config.json holds it (tuples → lists, paths → str)


_UNSET = object()


def _shown(settings: dict, name: str) -> str:
    return repr(settings[name]) if name in settings else "(not set)"


def settings_changes(stored: dict, requested: dict) -> tuple[list[str], list[str]]:
    """The differences between a stored run configuration (``TrainConfig.to_dict()``, e.g. ``config.json``) and a
    requested one, as ``"run.iterations: 2 → 3"`` lines: ``(allowed, refused)``, where allowed are the run settings
    marked ``resumable`` (the budget, checkpointing, evaluation, logging) and everything else is refused."""
    from rdpo_zoo.config import move_to_method

    stored, requested = _plain(stored), _plain(requested)
    for config in (stored, requested):  # an older run's config.json holds guidance_step and gap_rule under run
        config["method"], config["run"] = move_to_method(config.get("method") or {}, config.get("run") or {})
    resumable = _resumable_run_settings()
    allowed, refused = [], []
    if stored.get("preset") != requested.get("preset"):
        refused.append(f"preset: {stored.get('preset')!r} → {requested.get('preset')!r}")
    for section in ("method", "run"):
        old, new = stored.get(section) or {}, requested.get(section) or {}
        for name in sorted(set(old) | set(new)):
            if name == "resume" and section == "run":
                continue  # the instruction to resume, not a setting of the run
            if old.get(name, _UNSET) == new.get(name, _UNSET):
                continue
            line = f"{section}.{name}: {_shown(old, name)} → {_shown(new, name)}"
            (allowed if section == "run" and name in resumable else refused).append(line)
    return allowed, refused


def check_resumed_settings(stored: dict, requested: dict, stored_in, folder) -> list[str]:
    """Refuse (:class:`RunFolderError`, naming each difference) to resume the run in ``folder`` with settings that
    differ from those ``stored_in`` a file of it, but for the resumable ones; returns the allowed changes."""
    allowed, refused = settings_changes(stored, requested)
    if refused:
        resumable = ", ".join(sorted(_resumable_run_settings() - {"resume", "output_dir"}))
        raise RunFolderError(
            f"resume: the run in {folder} was started with other settings ({stored_in}): " + "; ".join(refused)
            + f". Resume it with its own settings (e.g. --config {Path(folder) / 'config.json'} --resume; only "
            f"{resumable} may change), or start afresh with --overwrite or another --output-dir")
    return allowed


@dataclass
class LoraSource:
    """Where a run's LoRA is: ``folder`` holds ``LORA_WEIGHT_NAME``; ``run_config`` is the run's ``config.json``
    (``{}`` when there is none); ``description`` says which LoRA this is, for the user."""

    folder: Path
    run_config: dict
    description: str


def _read_config(folder: Path) -> dict:
    path = folder / "config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def find_lora(path) -> LoraSource:
    """The LoRA of a run folder (its newest checkpoint's, which ``lora/`` mirrors: an unfinished run has one too),
    or of a folder that holds the weights file itself (``RUN/checkpoint-N``, ``RUN/lora``)."""
    path = Path(path)
    if (path / LORA_WEIGHT_NAME).is_file():
        run_config = _read_config(path.parent)
        match = _CHECKPOINT.fullmatch(path.name)
        if match:
            return LoraSource(path, run_config, f"{path} (iteration {int(match.group(1))}"
                                                f"{_of_total(run_config)})")
        return LoraSource(path, run_config, str(path))
    run_config = _read_config(path)
    with_weights = [p for p in complete_checkpoints(path) if (p / LORA_WEIGHT_NAME).is_file()]
    if with_weights:
        newest = with_weights[-1]
        iteration = int(_CHECKPOINT.fullmatch(newest.name).group(1))
        total = (run_config.get("run") or {}).get("iterations")
        unfinished = "; the run is unfinished" if total is not None and iteration < total else ""
        return LoraSource(newest, run_config, f"{newest} (its newest checkpoint: iteration {iteration}"
                                              f"{_of_total(run_config)}{unfinished})")
    if (path / "lora" / LORA_WEIGHT_NAME).is_file():
        return LoraSource(path / "lora", run_config, str(path / "lora"))
    raise RunFolderError(f"{path} holds no LoRA: no lora/{LORA_WEIGHT_NAME} and no checkpoint-N/ with one (expected a "
                         "training run's folder, or one of its checkpoint-N/ folders)")


def _of_total(run_config: dict) -> str:
    total = (run_config.get("run") or {}).get("iterations")
    return "" if total is None else f" of {total}"


def atomic_write_text(path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename: a reader (or a crash)
    sees the old file or the new one, never a part."""
    path = Path(path)
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
