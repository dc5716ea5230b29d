"""Every preset (so every rollout mode) on the tiny SD3- and FLUX-shaped pipelines through the Trainer: the
log-ratios are exactly 0 before the first update, one iteration trains, and the saved LoRA reloads through
``pipe.load_lora_weights``."""

from __future__ import annotations

import json

import pytest
import torch

import rdpo_zoo
from rdpo_zoo import ModelPart
from tiny_pipelines import TINY_MAX_SEQUENCE_LENGTH, tiny_flux_pipeline, tiny_sd3_pipeline
from train_parts import TestParts, small_config

PRESETS = ["d3po", "diffusion-dpo", "spo", "tailorpo", "tailorpo-g", "rdpo-star", "rdpo", "ddpo", "flow-grpo"]
MODELS = {"sd3": "test-tiny-sd3", "flux": "test-tiny-flux"}


def _short(build):
    def factory():
        pipe = build()
        pipe.rdpo_max_sequence_length = TINY_MAX_SEQUENCE_LENGTH  # what the model parts' option sets
        return pipe

    return factory


class FlowTestParts:
    @staticmethod
    @rdpo_zoo.hookimpl
    def register_models(register):
        register(ModelPart("test-tiny-sd3", "a tiny random SD3-shaped pipeline (tests)", _short(tiny_sd3_pipeline),
                           family="sd3"))
        register(ModelPart("test-tiny-flux", "a tiny random FLUX-shaped pipeline (tests)",
                           _short(tiny_flux_pipeline), family="flux"))


@pytest.fixture(scope="module", autouse=True)
def test_parts():
    names = [rdpo_zoo.register(TestParts, name="test-parts"), rdpo_zoo.register(FlowTestParts, name="flow-parts")]
    yield
    for name in names:
        rdpo_zoo.unregister(name)


def _config(tmp_path, preset, family, **overrides):
    if preset == "flow-grpo":
        overrides.setdefault("group_size", 3)  # its 24 is a real run's
    # presets name DDIM (their papers' sampler): a flow model names its step family (docs/flow.md)
    return small_config(tmp_path, preset, model=MODELS[family], iterations=1, scheduler="flow-sde", eta=0.7,
                        lora_targets="", **overrides)


@pytest.mark.parametrize("family", ["sd3", "flux"])
@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_trains_one_iteration_from_exactly_zero_log_ratios(tmp_path, preset, family):
    from rdpo_zoo.trainer import Trainer

    trainer = Trainer(_config(tmp_path, preset, family, learning_rate=1e-2))
    assert trainer.model.family.name == family
    assert trainer.model.sampler in ("flow-sde", "dance-sde", "cps")
    result = trainer.rollout(0)
    advantages = None
    if trainer.per_sample:
        batch = result.samples
        advantages = trainer.advantages(result.prompts, result.final_rewards)
        for step in batch.step_index.unique().tolist():  # against the sampler, each step as the rollout's batch
            part = batch.select((batch.step_index == step).nonzero()[:, 0].cpu())  # saw it (a ratio of exactly 1)
            with torch.no_grad():
                _, log_ratio = trainer.sample_loss(part, advantages)
            assert torch.all(log_ratio == 0)
    else:
        batch = result.pairs
        with torch.no_grad():
            if trainer.method["rollout"] == "noised-pairs":
                _, r = trainer.noised_pair_loss(batch, torch.Generator().manual_seed(0))
            else:
                _, r = trainer.pair_loss(batch)
        assert len(r) > 0 and torch.all(r == 0)  # policy = reference before the first update
    before = [p.detach().clone() for p in trainer.trainable]
    stats = trainer.optimise(batch, iteration=0, advantages=advantages)
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in stats.values() if isinstance(v, (int, float)))
    assert any((p - q).abs().max() > 0 for p, q in zip(trainer.trainable, before))  # the LoRA moved


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_a_trained_flow_lora_reloads_through_load_lora_weights(tmp_path, family):
    from rdpo_zoo.trainer import LORA_WEIGHT_NAME, Trainer

    trainer = Trainer(_config(tmp_path, "rdpo", family, learning_rate=1e-2))
    trainer.train()
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])["pairs"] > 0
    pipe = tiny_sd3_pipeline() if family == "sd3" else tiny_flux_pipeline()
    pipe.load_lora_weights(str(tmp_path / "lora"), weight_name=LORA_WEIGHT_NAME)
    model = trainer.model
    cond = model.encode(["a red circle"])
    x = torch.randn(1, *model.latent_shape, generator=torch.Generator().manual_seed(0))
    t = model.timesteps[1:2]
    with torch.no_grad():
        trained = model.family.denoise(model.denoiser, x, t, cond.cond, cond.added_cond)
        reloaded = model.family.denoise(pipe.transformer, x, t, cond.cond, cond.added_cond)
        with model.reference():
            base = model.family.denoise(model.denoiser, x, t, cond.cond, cond.added_cond)
    assert (trained - base).abs().max() > 1e-5  # training changed the output ...
    torch.testing.assert_close(reloaded, trained, atol=1e-5, rtol=0)  # ... and the saved LoRA carries it


def test_the_cli_trains_and_evaluates_an_sd3_folder_saved_without_t5(tmp_path):
    """``--model sd3 --model-opt id=FOLDER``: the model part loads a local folder (no download; saved without T5),
    the run's LoRA is evaluated through the family's load_lora; without --scheduler the family's flow-sde samples it;
    DDIM asked for is a one-line error."""
    from click.testing import CliRunner

    from rdpo_zoo.cli import main

    tiny_sd3_pipeline(t5=False).save_pretrained(tmp_path / "sd3")
    model = ["--model", "sd3", "--model-opt", f"id={tmp_path / 'sd3'}", "--model-opt", "max_sequence_length=4",
             "--reward", "test-red", "--iterations", "1", "--num-steps", "4", "--prompts-per-iteration", "2",
             "--eval-samples", "0", "--quiet"]
    runner = CliRunner()
    result = runner.invoke(main, ["train", "--preset", "rdpo", "--scheduler", "flow-sde", "--eta", "0.7",
                                  "--train-timesteps", "4,2", "--lora-targets", "", "--learning-rate", "1e-2",
                                  "--output-dir", str(tmp_path / "run"), *model])
    assert result.exit_code == 0, result.output
    assert "sampling: flow-sde eta=0.7 T=4" in result.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["resolved"]["sampler"] == "flow-sde" and config["resolved"]["timesteps"][0] == 1000.0
    result = runner.invoke(main, ["eval", "--lora", str(tmp_path / "run"), "--reward", "test-red", "--prompts", "ood",
                                  "--limit", "2", "--seeds", "0"])
    assert result.exit_code == 0, result.output
    assert "sd3 + LoRA" in result.output
    # no --scheduler: the family's flow-sde (a note says so) instead of the preset's DDIM, which has no flow schedule
    result = runner.invoke(main, ["train", "--preset", "rdpo", "--train-timesteps", "4,2", "--dry-run",
                                  "--output-dir", str(tmp_path / "default"), *model])
    assert result.exit_code == 0, result.output
    assert "which ddim cannot sample" in result.output and "sampling: flow-sde eta=0.7 T=4" in result.output
    result = runner.invoke(main, ["train", "--preset", "rdpo", "--scheduler", "ddim", "--output-dir",
                                  str(tmp_path / "ddim"), *model])
    assert result.exit_code != 0
    error = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert error == [error[0]] and "scheduler 'ddim': the pipeline is a flow-matching model" in error[0]


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_step_wise_best_of_n_runs_on_flow_models(family):
    """RDPO's Table-4 best-of-N on flow steps: choosing children by the reward of x̂0 = x_t − σ·v helps, at
    1 + n·(T − 1) network passes per sample."""
    from rdpo_zoo.best_of_n import best_of_n
    from rdpo_zoo.diffusion import DiffusionModel
    from rdpo_zoo.plugins.estimators import X0Hat
    from tiny_pipelines import RedReward

    pipe = (tiny_sd3_pipeline if family == "sd3" else tiny_flux_pipeline)()
    pipe.rdpo_max_sequence_length = TINY_MAX_SEQUENCE_LENGTH
    model = DiffusionModel(pipe, sampler="flow-sde", eta=0.7, num_steps=4, guidance_scale=1.0, family=family)
    result = best_of_n(model, ["a", "b", "c"], RedReward(), {"x0-hat": X0Hat()}, n=4, seeds=[0, 1], batch_size=6)
    rows = result["methods"]
    assert result["samples"] == 6 and rows["plain"]["unet_calls_per_sample"] == 4
    assert rows["x0-hat"]["unet_calls_per_sample"] == 1 + 4 * 3
    assert rows["x0-hat"]["gain"]["mean"] > 0


def test_offline_pairs_train_diffusion_dpo_on_sd3(tmp_path):
    """Offline preference images go through the family's encode_images (VAE shift and scale) and train
    Diffusion-DPO's flow form (the velocity target) from log-ratios of exactly 0."""
    from PIL import Image

    from rdpo_zoo.trainer import Trainer

    rows = []
    for i, prompt in enumerate(["a red circle", "a blue square"]):
        for kind, colour in (("chosen", (220, 20, 20)), ("rejected", (20, 20, 220))):
            Image.new("RGB", (16, 16), colour).save(tmp_path / f"{i}-{kind}.png")
        rows.append({"prompt": prompt, "chosen": f"{i}-chosen.png", "rejected": f"{i}-rejected.png"})
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    trainer = Trainer(_config(tmp_path / "out", "diffusion-dpo", "sd3", offline_pairs=str(tmp_path),
                              checkpoint_every=0))
    pairs = trainer.offline
    assert len(pairs) == 2 and pairs.x0.shape[1:] == (2, 4, 8, 8)
    red = pairs.x0[0, 0]
    expected = trainer.model.family.encode_images(torch.tensor([[[[220 / 255]], [[20 / 255]], [[20 / 255]]]]).expand(
        1, 3, 16, 16))[0]
    torch.testing.assert_close(red, expected, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        _, r = trainer.noised_pair_loss(pairs, torch.Generator().manual_seed(0))
    assert torch.all(r == 0)
    trainer.train()
    assert len((tmp_path / "out" / "metrics.jsonl").read_text().splitlines()) == 1
