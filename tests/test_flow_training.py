"""Every method trains on flow-matching steps unchanged: each preset, and each flow SDE, runs one iteration through
the Trainer on a flow schedule (the toy non-UNet model of tests/toy_families.py, whose scheduler config is a
flow-matching Euler one), with log-ratios exactly 0 (a PPO ratio exactly 1) before the first update."""

import json

import pytest
import torch

import rdpo_zoo
from rdpo_zoo.errors import UserInputError
from rdpo_zoo.flow_step_families import FlowStepFamily
from rdpo_zoo.registry import get_registry
from rdpo_zoo.trainer import Trainer
from toy_families import ToyPlugin
from train_parts import TestParts, small_config


@pytest.fixture(scope="module", autouse=True)
def plugins():
    names = [rdpo_zoo.register(TestParts, name="test-parts-flow"), rdpo_zoo.register(ToyPlugin, name="toy-flow-steps")]
    yield
    for name in names:
        rdpo_zoo.unregister(name)


def _config(tmp_path, preset=None, scheduler="flow-sde", **overrides):
    settings = dict(model="toy-model", reward="test-red", lora_targets="", scheduler=scheduler, **overrides)
    return small_config(tmp_path, preset, iterations=1, **settings)


def _check_untrained_policy_equals_reference(trainer):
    result = trainer.rollout(0)
    if trainer.method["rollout"] == "single":
        advantages = trainer.advantages(result.prompts, result.final_rewards)
        samples = result.samples
        for step in samples.step_index.unique().tolist():  # each step as the rollout's batch saw it
            part = samples.select((samples.step_index == step).nonzero()[:, 0].cpu())
            _, log_ratio = trainer.sample_loss(part, advantages)
            assert torch.all(log_ratio == 0)
    else:
        assert len(result.pairs) > 0
        _, r = trainer.pair_loss(result.pairs)
        assert torch.all(r == 0)


@pytest.mark.parametrize("preset", sorted(get_registry().names("preset")))
def test_every_preset_trains_one_iteration_on_flow_sde_steps(tmp_path, preset):
    overrides = {"group_size": 3} if preset == "flow-grpo" else {}
    trainer = Trainer(_config(tmp_path, preset, eta=0.7, **overrides))
    model = trainer.model
    assert model.sampler == "flow-sde" and isinstance(model.steps, FlowStepFamily) and model.eta == 0.7
    assert model.timesteps.dtype == torch.float32 and float(model.timesteps[0]) == 1000.0
    if trainer.method["rollout"] != "noised-pairs":
        _check_untrained_policy_equals_reference(trainer)
    trainer.train()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 1 and torch.isfinite(torch.tensor(records[0]["loss"]))


@pytest.mark.parametrize("scheduler", ["dance-sde", "cps"])
def test_each_flow_sde_trains_the_default_method(tmp_path, scheduler):
    trainer = Trainer(_config(tmp_path, scheduler=scheduler))
    assert trainer.model.sampler == scheduler and trainer.model.eta == 1.0  # the method's η, as given
    _check_untrained_policy_equals_reference(trainer)
    trainer.train()
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1


def test_eta_none_takes_the_flow_familys_default(tmp_path):
    trainer = Trainer(_config(tmp_path, "diffusion-dpo"))  # the preset's eta is None
    assert trainer.model.sampler == "flow-sde" and trainer.model.eta == 0.7


def test_cps_last_step_has_no_likelihood_and_is_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match=r"steps: step t=1 .* has σ = 0: no likelihood there \(cps, eta=0.5\)"):
        Trainer(_config(tmp_path, scheduler="cps", eta=0.5, train_timesteps="4,1"))
    trainer = Trainer(_config(tmp_path, "d3po", scheduler="cps", eta=0.5))  # "all": every step with a likelihood
    assert trainer.train_steps == [4, 3, 2]


def test_ddim_on_a_flow_model_is_a_one_line_error(tmp_path):
    with pytest.raises(UserInputError, match="scheduler 'ddim': the pipeline is a flow-matching model") as info:
        Trainer(_config(tmp_path, scheduler="ddim"))
    assert "\n" not in str(info.value)
