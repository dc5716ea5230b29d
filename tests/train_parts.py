"""Test parts for the trainer: a tiny random SD pipeline and a known reward, registered in-process.

Also runnable as a script (``python tests/train_parts.py OUTPUT_DIR [ITERATIONS] [--resume] [--kill-during-save N]``)
for the subprocess tests: multi-process training under torchrun and a SIGKILL in the middle of a checkpoint.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import rdpo_zoo  # noqa: E402
from rdpo_zoo import ModelPart, RewardPart  # noqa: E402
from tiny_pipelines import RedReward, tiny_sd_pipeline, tiny_sdxl_pipeline  # noqa: E402


class TestParts:
    @staticmethod
    @rdpo_zoo.hookimpl
    def register_models(register):
        register(ModelPart("test-tiny", "a tiny random SD1.5-shaped pipeline (tests)", tiny_sd_pipeline))
        register(ModelPart("test-tiny-xl", "a tiny random SDXL-shaped pipeline (tests)", tiny_sdxl_pipeline))
        register(ModelPart("test-tiny-loaded", "test-tiny as if loaded from files: building it leaves torch's global "
                           "generator as it was (tests)", tiny_sd_pipeline_loaded))

    @staticmethod
    @rdpo_zoo.hookimpl
    def register_rewards(register):
        register(RewardPart("test-red", "mean red minus green and blue (tests)", RedReward))


def tiny_sd_pipeline_loaded(**options):
    """The tiny SD pipeline built apart from torch's global generator (``tiny_sd_pipeline`` seeds it, which would hide
    any draw a trainer takes from it), as a pipeline loaded from files is: the embedded model, SD 1.5."""
    import torch

    with torch.random.fork_rng():
        return tiny_sd_pipeline(**options)


def small_config(output_dir, preset=None, iterations=2, **overrides):
    from rdpo_zoo.config import RunSettings, TrainConfig
    from rdpo_zoo.resolve import merge_settings

    method_overrides = {"num_steps": 4, "train_timesteps": "4,2"}
    if preset in ("d3po", "ddpo", "spo"):
        method_overrides["train_timesteps"] = "all"
    if preset == "spo":
        method_overrides.update(branch_start=1, threshold=0.0)
    if preset == "diffusion-dpo":
        method_overrides = {}
    if preset is None:
        method_overrides.update(estimator="delta-q", loss="rdpo")
    run_keys = set(RunSettings.__dataclass_fields__)
    method_overrides.update({k: v for k, v in overrides.items() if k not in run_keys})
    run = dict(model="test-tiny", reward="test-red", output_dir=str(output_dir), iterations=iterations,
               prompts_per_iteration=3, minibatch_size=8, eval_samples=0, quiet=True, seed=0)
    run.update({k: v for k, v in overrides.items() if k in run_keys})
    return TrainConfig(merge_settings(preset, method_overrides), RunSettings(**run), preset)


def main(argv):
    import signal

    import torch

    torch.set_num_threads(1)
    rdpo_zoo.register(TestParts, name="test-parts")
    from rdpo_zoo.trainer import Trainer

    output_dir, iterations = argv[0], int(argv[1]) if len(argv) > 1 else 2
    kill_at = int(argv[argv.index("--kill-during-save") + 1]) if "--kill-during-save" in argv else None
    config = small_config(output_dir, iterations=iterations, resume="--resume" in argv)
    trainer = Trainer(config)
    if kill_at is not None:
        original = torch.save

        def save_then_die(obj, path, *args, **kwargs):
            original(obj, path, *args, **kwargs)
            if trainer.iteration == kill_at:  # the state file is written, the folder not yet renamed
                os.kill(os.getpid(), signal.SIGKILL)

        torch.save = save_then_die
    trainer.train()
    if trainer.accelerator.num_processes > 1:
        from peft.utils import get_peft_model_state_dict

        state = get_peft_model_state_dict(trainer.unwrapped_denoiser())
        torch.save(state, os.path.join(output_dir, f"lora-rank{trainer.accelerator.process_index}.pt"))
        torch.save(trainer._iteration_prompts(0), os.path.join(output_dir, f"prompts-rank{trainer.accelerator.process_index}.pt"))


if __name__ == "__main__":
    main(sys.argv[1:])
