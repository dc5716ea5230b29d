"""The embedded tiny-flow pipeline: it ships small, loads offline and fast, samples, is the model part `tiny-flow`
(family sd3), and the main job and Flow-GRPO train one iteration on it with log-ratios exactly 0 before the update."""

from __future__ import annotations

import json
import time

import pytest
import torch

from rdpo_zoo import world
from rdpo_zoo.embedded import TINY_FLOW_T5_TOKENS, load_pipeline, load_tiny_flow_pipeline, tiny_flow_path


@pytest.fixture(scope="module")
def pipe():
    return load_tiny_flow_pipeline()


def test_the_pipeline_folder_ships_small():
    path = tiny_flow_path()
    for part in ("model_index.json", "transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer",
                 "tokenizer_2", "scheduler", "pretrain_config.json"):
        assert (path / part).exists(), part
    assert not (path / "text_encoder_3").exists()
    weights = sum(f.stat().st_size for f in path.rglob("*.safetensors"))
    assert weights <= 15e6, weights
    config = json.loads((path / "pretrain_config.json").read_text())
    assert config["exported_snapshot"].startswith("step-") and "t5_pad_lengths" in config
    assert TINY_FLOW_T5_TOKENS in config["t5_pad_lengths"]


def test_loads_offline_and_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from diffusers import StableDiffusion3Pipeline

    StableDiffusion3Pipeline  # imported before timing: the import itself costs seconds
    start = time.perf_counter()
    p = StableDiffusion3Pipeline.from_pretrained(str(tiny_flow_path()), text_encoder_3=None, tokenizer_3=None)
    # ~1 s on an idle machine (docs/world.md); the bound is loose because tests share a busy 2-core CPU.
    assert time.perf_counter() - start < 20.0
    # A plain from_pretrained gives a consistent fp32 pipeline (the stored fp16 transformer/VAE are upcast).
    assert {p.transformer.dtype, p.vae.dtype, p.text_encoder.dtype, p.text_encoder_2.dtype} == {torch.float32}


def test_scheduler_tokenizer_and_shapes(pipe):
    assert type(pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    config = json.loads((tiny_flow_path() / "pretrain_config.json").read_text())
    assert pipe.scheduler.config.shift == config["shift"]
    for word in ("a", "on", "background", *world.SHAPES, *world.COLOURS, *world.BACKGROUNDS, *world.SIZES):
        assert len(pipe.tokenizer(word, add_special_tokens=False).input_ids) == 1, word
    assert pipe.transformer.config.joint_attention_dim == 2 * pipe.text_encoder.config.hidden_size
    assert pipe.vae.config.shift_factor is not None
    assert pipe.rdpo_max_sequence_length == TINY_FLOW_T5_TOKENS
    assert type(load_pipeline("tiny-flow")).__name__ == "StableDiffusion3Pipeline"


def test_samples_small_images_deterministically(pipe):
    from rdpo_zoo.pretrain_flow import sample_images

    prompts = world.ood_prompts()[:2]
    a = sample_images(pipe, prompts, seed=3, steps=3)
    b = sample_images(pipe, prompts, seed=3, steps=3)
    assert a.shape == (2, 3, 64, 64) and 0.0 <= a.min() and a.max() <= 1.0
    assert torch.equal(a, b)


def test_preview_samples_a_flow_model_with_its_pipelines_euler_steps_and_refuses_eta(pipe):
    from rdpo_zoo.errors import UserInputError
    from rdpo_zoo.pretrain_flow import sample_images as sample_flow
    from rdpo_zoo.preview import sample_images

    prompts = world.ood_prompts()[:2]
    # the same initial latents from the seed as the pretraining sampler, the same ODE: the same images
    assert torch.equal(sample_images(pipe, prompts, seed=3, steps=2), sample_flow(pipe, prompts, seed=3, steps=2))
    with pytest.raises(UserInputError, match="^eta: .*takes no η"):
        sample_images(pipe, prompts, seed=3, steps=2, eta=1.0)


def test_cli_sample_best_of_n_and_eval_on_a_flow_model_use_its_samplers(tmp_path):
    from click.testing import CliRunner

    from rdpo_zoo.cli import main

    out = tmp_path / "samples"
    result = CliRunner().invoke(main, ["sample", "--model", "tiny-flow", "-n", "1", "--num-steps", "2",
                                       "--output-dir", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "rewards.json").read_text())
    assert (report["sampler"], report["eta"]) == ("euler", None) and len(report["images"]) == 1
    refused = CliRunner().invoke(main, ["sample", "--model", "tiny-flow", "-n", "1", "--eta", "0",
                                        "--output-dir", str(out)])
    assert refused.exit_code == 2 and "--eta" in refused.output and "Traceback" not in refused.output
    chosen = CliRunner().invoke(main, ["best-of-n", "--model", "tiny-flow", "--limit", "1", "--seeds", "0",
                                       "--num-candidates", "2", "--num-steps", "2"])
    assert chosen.exit_code == 0, chosen.output
    assert "flow-sde T=2, η=0.7" in chosen.output  # the family's sampler at its default η, not DDIM's
    scored = CliRunner().invoke(main, ["eval", "--model", "tiny-flow", "--limit", "1", "--seeds", "0",
                                       "--num-steps", "2"])
    assert scored.exit_code == 0, scored.output
    assert "(flow-sde η=0.7, T=2, CFG 5)" in scored.output


def test_the_model_part_is_an_sd3_family_model():
    from rdpo_zoo.families import resolve_model_family
    from rdpo_zoo.registry import get_registry

    part = get_registry().get("model", "tiny-flow")
    assert part.family == "sd3"
    built = part.build({"max_sequence_length": 2})
    assert built.rdpo_max_sequence_length == 2
    assert resolve_model_family(built, "sd3").max_sequence_length == 2


@pytest.mark.parametrize("preset", [None, "flow-grpo"])
def test_the_main_job_and_flow_grpo_train_one_iteration(tmp_path, preset):
    from test_flow_training import _check_untrained_policy_equals_reference
    from train_parts import small_config

    from rdpo_zoo.trainer import Trainer

    overrides = {"group_size": 3} if preset == "flow-grpo" else {}
    trainer = Trainer(small_config(tmp_path, preset, iterations=1, model="tiny-flow", reward="world-fidelity",
                                   scheduler="flow-sde", eta=0.7, **overrides))
    assert trainer.model.sampler == "flow-sde"
    _check_untrained_policy_equals_reference(trainer)  # log-ratios (PPO ratios - 1) exactly 0 before the update
    trainer.train()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 1 and torch.isfinite(torch.tensor(records[0]["loss"]))


@pytest.mark.parametrize("flags, sampler, eta", [
    (["--estimator", "delta-q", "--loss", "rdpo"], "flow-sde", 0.7),  # the command, as written
    (["--preset", "flow-grpo"], "flow-sde", 0.7),
    (["--eta", "0.5"], "flow-sde", 0.5),
    (["--scheduler", "dance-sde"], "dance-sde", 1.0),  # asked for: kept, with the method's η
])
def test_train_on_a_flow_model_takes_its_familys_sampler_unless_one_is_asked_for(tmp_path, flags, sampler, eta):
    from click.testing import CliRunner

    from rdpo_zoo.cli import main

    result = CliRunner().invoke(main, ["train", "--model", "tiny-flow", *flags, "--dry-run", "--output-dir",
                                       str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert f"sampling: {sampler} eta={eta} " in result.output
    assert ("flow-matching model, which ddim cannot sample" in result.output) == ("--scheduler" not in flags)


def test_train_on_a_flow_model_refuses_ddim_when_asked_for(tmp_path):
    from click.testing import CliRunner

    from rdpo_zoo.cli import main

    result = CliRunner().invoke(main, ["train", "--model", "tiny-flow", "--scheduler", "ddim", "--dry-run",
                                       "--output-dir", str(tmp_path / "run")])
    assert result.exit_code != 0 and "use --scheduler flow-sde, dance-sde or cps" in result.output
