"""The model family and step family seams: a toy non-UNet denoiser family and a toy flow step family (float
timesteps), registered in-process, train through the Trainer; the built-in families reproduce what they replace."""

import json

import pytest
import torch

import rdpo_zoo
from rdpo_zoo.trainer import LORA_WEIGHT_NAME, Trainer
from toy_families import ToyFamily, ToyPipeline, ToyPlugin
from train_parts import TestParts, small_config


@pytest.fixture(scope="module", autouse=True)
def plugins():
    names = [rdpo_zoo.register(TestParts, name="test-parts-seams"), rdpo_zoo.register(ToyPlugin, name="toy-seams")]
    yield
    for name in names:
        rdpo_zoo.unregister(name)


def _toy_config(tmp_path, preset=None, **overrides):
    settings = dict(model="toy-model", reward="test-red", lora_targets="", **overrides)
    if preset is None:
        settings.update(scheduler="toy-flow")
    return small_config(tmp_path, preset, iterations=1, **settings)


def test_a_toy_denoiser_and_step_family_train_one_iteration_through_the_trainer(tmp_path):
    trainer = Trainer(_toy_config(tmp_path))
    model = trainer.model
    assert isinstance(model.family, ToyFamily) and model.sampler == "toy-flow"
    assert model.timesteps.is_floating_point() and not torch.equal(model.timesteps, model.timesteps.round())
    seen = []
    model.denoiser.register_forward_hook(lambda module, args, out: seen.append(args[1].detach().clone()))
    pairs = trainer.rollout(0).pairs
    assert len(pairs) > 0
    # the denoiser received the family's float timesteps as they are (960.1…, not rounded)
    assert any(torch.isin(t.float(), model.timesteps).all() and not torch.equal(t, t.round()) for t in seen)
    _, r = trainer.pair_loss(pairs)
    assert torch.all(r == 0)  # policy = reference at init: the LoRA is on, its B is 0, and disabling works

    evaluation = trainer.train()
    assert evaluation == {}
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 1 and records[0]["pairs"] > 0 and torch.isfinite(torch.tensor(records[0]["loss"]))
    stored = json.loads((tmp_path / "config.json").read_text())["resolved"]["timesteps"]
    assert stored == pytest.approx(model.timesteps.tolist())

    # the saved LoRA reloads through the family into a fresh pipeline and gives the trained outputs
    fresh = ToyFamily(ToyPipeline())
    x, t, hidden = torch.randn(2, 4, 4, 4), model.timesteps[:2], torch.randn(2, 6, 8)
    base = fresh.denoiser(x, t, hidden)
    fresh.load_lora(tmp_path / "lora", LORA_WEIGHT_NAME)
    with torch.no_grad():
        trained = model.denoiser(x, t, hidden)
        reloaded = fresh.denoiser(x, t, hidden)
    torch.testing.assert_close(reloaded, trained)
    assert not torch.allclose(reloaded, base)


def test_noised_pairs_use_the_step_familys_training_process(tmp_path):
    """Diffusion-DPO through the toy family: the pair's x_t and target come from the step family (flow velocity:
    one per image), and one iteration trains."""
    from rdpo_zoo.noised_pairs import noised_inputs

    trainer = Trainer(_toy_config(tmp_path, "diffusion-dpo"))
    assert trainer.model.sampler == "toy-flow"  # the preset names no sampler: the model family's default
    x0 = torch.randn(3, 2, 4, 4, 4)
    x_t, y, t = noised_inputs(trainer.model, x0, torch.Generator().manual_seed(0))
    s = (t / 1000).view(3, 1, 1, 1, 1)
    eps = (x_t - (1 - s) * x0) / s
    torch.testing.assert_close(eps[:, 0], eps[:, 1])  # one noise per pair
    torch.testing.assert_close(y, eps - x0)
    trainer.train()
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1


def test_a_pipeline_no_family_drives_is_refused_in_one_line():
    from rdpo_zoo.families import resolve_model_family

    class Nothing:
        pass

    with pytest.raises(ValueError, match=r"model family: no family matches pipeline Nothing \(has no unet/transformer\)"):
        resolve_model_family(Nothing())


def test_an_unknown_step_family_is_refused_with_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match=r"sampler: expected a step family, one of .*'ddim'.*'toy-flow'.*got 'dddim'"):
        Trainer(small_config(tmp_path, scheduler="dddim"))


def test_the_ddim_and_ddpm_families_give_the_schedulers_coefficients():
    from rdpo_zoo.schedulers import step_coefficients, x0_coefficients
    from rdpo_zoo.steps import DDIMFamily, DDPMFamily
    from tiny_pipelines import tiny_sd_pipeline

    config = dict(tiny_sd_pipeline().scheduler.config)
    for family, eta in ((DDIMFamily(config, 5, 0.7), 0.7), (DDPMFamily(config, 5), None)):
        assert family.timesteps.dtype == torch.int64 and len(family.timesteps) == 5
        for index, t in enumerate(family.timesteps.tolist()):
            assert tuple(family.coefficients(index)) == tuple(step_coefficients(family.scheduler, t, eta=eta))
            assert family.x0_coefficients(index) == tuple(float(v) for v in x0_coefficients(family.scheduler, t))
    with pytest.raises(ValueError, match=r"index: expected a step index in \[0, 4\], got 5"):
        family.coefficients(5)
