"""Run configuration as plain data (no torch import: the CLI builds its options and help from it).

:class:`RunSettings` holds everything about a run that is not the method (model, reward, LoRA, optimiser, budget,
outputs); the method's settings (rollout, estimator, loss, …) are ``rdpo_zoo.parts.SETTINGS``, merged with a preset
by ``rdpo_zoo.resolve.merge_settings``. Each field's ``help`` is the CLI's help text, so the two cannot drift.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

__all__ = ["RunSettings", "TrainConfig", "parse_train_timesteps", "run_setting_fields", "check_value_type",
           "MOVED_TO_METHOD", "move_to_method"]

#: Settings that were run settings and are now method settings (so that a preset can fix them: SPO's gap rule,
#: TailorPO-G's guidance step). Config files and the ``config.json`` of older runs may still hold them under ``run``.
MOVED_TO_METHOD = ("guidance_step", "gap_rule")


def move_to_method(method: dict, run: dict) -> tuple[dict, dict]:
    """``(method, run)`` with the settings of :data:`MOVED_TO_METHOD` found in ``run`` moved to ``method`` (copies;
    a value already in ``method`` wins, as it is the newer layout)."""
    method, run = dict(method), dict(run)
    for name in MOVED_TO_METHOD:
        if name in run:
            value = run.pop(name)
            method.setdefault(name, value)
    return method, run


def _field(default, help: str, **kw):
    if default is dict:
        return field(default_factory=dict, metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class RunSettings:
    """Everything about a run that is not the method: model, reward, LoRA, optimiser, budget, outputs.

    Each field's ``help`` is the CLI's help text (the options are generated from this class, so they cannot drift).
    ``resumable=True`` marks the settings a resumed run may change (the budget, checkpointing, evaluation, logging);
    any other difference from the stored configuration is refused. ``recorded=False`` marks an instruction to one
    invocation, not a setting of the run: it is left out of ``config.json`` (and of the paper study's cache keys).
    """

    model: str = _field("tiny", "model part: tiny (the embedded default), sd15, sdxl, or diffusers (any id/path)")
    model_options: dict = _field(dict, "the model part's options (KEY=VALUE)")
    reward: str = _field("world-aesthetic", "the reward that scores images: a reward part (see `rdpo-zoo plugins`) or a "
                         "combination NAME[:WEIGHT]+NAME[:WEIGHT]... scored Σ weight·reward/scale (e.g. "
                         "world-fidelity+world-aesthetic:0.5); a --preset trains on this reward too")
    reward_options: dict = _field(dict, "the reward's options, KEY=VALUE (in a combination PART.KEY=VALUE)")
    prompts: str = _field("train", "training prompts: a named set (train, ood, all: the embedded world's) or a text file")
    eval_prompts: str = _field("ood", "held-out prompts for the base-vs-tuned evaluation at the end", resumable=True)
    output_dir: str = _field("runs/train", "where config.json, metrics.jsonl, checkpoints, lora/ and eval.json go",
                             resumable=True)  # the folder may have moved
    iterations: int = _field(40, "rollout + optimisation rounds", min=1, resumable=True)
    prompts_per_iteration: int = _field(8, "prompts sampled per rollout (per process)", min=1)
    inner_epochs: int = _field(1, "passes over each rollout's pairs", min=1)
    minibatch_size: int = _field(16, "pairs per optimiser minibatch", min=1)
    gradient_accumulation: int = _field(1, "minibatches per optimiser step", min=1)
    max_grad_norm: float = _field(1.0, "gradient clipping norm (0: off)", min=0.0)
    weight_decay: float = _field(1e-4, "AdamW weight decay (D3PO/SPO code: 1e-4)", min=0.0)
    warmup_iterations: int = _field(0, "linear learning-rate warm-up, in iterations", min=0)
    lora_rank: int = _field(4, "LoRA rank (D3PO/SPO code: 4)", min=1)
    lora_alpha: float = _field(4.0, "LoRA alpha (scale = alpha / rank)", min=0.0)
    lora_targets: str = _field("to_q,to_k,to_v,to_out.0", "comma-separated module names of the denoiser that get "
                               "LoRA (empty: the model family's own list)")
    seed: int = _field(0, "seed of every random draw: LoRA initialisation, prompts, noise, pair shuffling, evaluation "
                          "(a resumed run continues the same streams)")
    checkpoint_every: int = _field(1, "iterations between checkpoints (0: only the final one)", min=0, resumable=True)
    keep_checkpoints: int = _field(2, "how many checkpoints to keep", min=1, resumable=True)
    resume: bool = _field(False, "continue the run in output_dir from its newest intact checkpoint (its settings "
                                 "must match, but for iterations, checkpointing, evaluation and logging)", resumable=True)
    overwrite: bool = _field(False, "start afresh in an output_dir that holds a run, removing the files a run writes "
                                    "there (and no others)", recorded=False)
    eval_samples: int = _field(256, "prompt/seed pairs for base vs tuned at the end (0: skip; the eval prompts "
                               "cycle, each pair with its own noise)", min=0, resumable=True)
    eval_batch_size: int = _field(32, "images per evaluation batch", min=1, resumable=True)
    mixed_precision: str = _field("no", "no, fp16 or bf16 (GPU)", choices=("no", "fp16", "bf16"))
    gradient_checkpointing: bool = _field(False, "recompute UNet activations in the backward (saves memory)")
    kernel_backend: Optional[str] = _field(None, "force the log-ratio kernels' backend: triton or reference",
                                           choices=("triton", "reference"))
    offline_pairs: Optional[str] = _field(None, "a JSONL of {prompt, chosen, rejected} image paths (Diffusion-DPO "
                                                "data): train on these pairs instead of online rollouts")
    quiet: bool = _field(False, "no progress bars or per-iteration lines", resumable=True)
    threads: Optional[int] = _field(None, "torch CPU threads (default: half the cores, at most 8; docs/cli.md)", min=1,
                                    resumable=True)
    report_to: str = _field("none", "also log the metrics to tensorboard (under output_dir/tensorboard) or wandb "
                            "(offline unless WANDB_MODE=online); none: metrics.jsonl only",
                            choices=("tensorboard", "wandb", "none"), resumable=True)


def _default(f: dataclasses.Field):
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()
    return f.default


@dataclass
class TrainConfig:
    """A resolved run: the method's settings (typed, merged with its preset) and the run's settings."""

    method: dict
    run: RunSettings
    preset: Optional[str] = None

    def to_dict(self) -> dict:
        recorded = {f.name for f in dataclasses.fields(self.run) if f.metadata.get("recorded", True)}
        run = {name: value for name, value in dataclasses.asdict(self.run).items() if name in recorded}
        return {"preset": self.preset, "method": self.method, "run": run}

    @staticmethod
    def from_dict(data: dict) -> "TrainConfig":
        method, run = move_to_method(data["method"], data["run"])
        return TrainConfig(method, RunSettings(**run), data.get("preset"))


def parse_train_timesteps(value: str, num_steps: int, branch_start: int = 0) -> Optional[list[int]]:
    """``all`` → every step t = T − branch_start … 1; ``uniform`` → ``None`` (noised pairs draw t ~ U);
    ``"20,16,12"`` → those steps (t of T)."""
    text = str(value).strip().lower()
    if text == "uniform":
        return None
    if text == "all":
        return list(range(num_steps - branch_start, 0, -1))
    try:
        steps = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"train_timesteps: expected all, uniform or a comma-separated list of steps, got {value!r}") from None
    if not steps:
        raise ValueError(f"train_timesteps: expected at least one step, got {value!r}")
    return steps




#: the types a config file's value must have, by annotation (strings for numbers or booleans are refused: a TOML
#: `iterations = "three"` or `quiet = "no"` is a mistake, not a spelling)
_VALUE_TYPES = {"int": ((int,), "an integer"), "float": ((int, float), "a number"), "str": ((str,), "a string"),
                "bool": ((bool,), "true or false"), "dict": ((dict,), "a table of KEY = VALUE")}


def check_value_type(key: str, value, annotation: str, nullable: bool = False, where: str = "") -> None:
    """Refuse a config file's ``value`` whose type is not ``annotation`` (``int``, ``float``, ``str``, ``bool``,
    ``dict``, or ``Optional[…]``), naming the file (``where``) and the setting. Booleans are not numbers here."""
    from rdpo_zoo.errors import UserInputError

    annotation = str(annotation)
    if annotation.startswith("Optional[") and annotation.endswith("]"):
        annotation, nullable = annotation[len("Optional["):-1], True
    if value is None and nullable:
        return
    kinds, words = _VALUE_TYPES[annotation]
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        raise UserInputError(f"{where}{key}: expected {words}{' or none' if nullable else ''}, got {value!r}")


def run_setting_fields() -> list:
    """The fields of :class:`RunSettings` with their help, type, choices and bounds (for the CLI)."""
    return list(dataclasses.fields(RunSettings))
