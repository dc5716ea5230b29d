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
    log_ratios = trainer.rollout_log_ratios(0)
    assert log_ratios.numel() > 0 and torch.all(log_ratios == 0)


@pytest.mark.parametrize("preset", sorted(get_registry().names("preset")))
def test_every_preset_trains_one_iteration_on_flow_sde_steps(tmp_path, preset):
    overrides = {"group_size": 3} if preset == "flow-grpo" else {}
    trainer = Trainer(_config(tmp_path, preset, eta=0.7, **overrides))
    model = trainer.model
    assert model.sampler == "flow-sde" and isinstance(model.steps, FlowStepFamily) and model.eta == 0.7
    assert model.timesteps.dtype == torch.float32 and float(model.timesteps[0]) == 1000.0
    if trainer.method.rollout != "noised-pairs":
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


def test_cps_public_log_prob_reaches_every_likelihood_and_not_the_sampler(tmp_path):
    """``log_prob="public"`` (the cps family's option): log-ratios and the PPO log-probs stored at rollout read std
    1/√2, the sampler draws with the step's std; the ratio is still exactly 1 before the first update."""
    from rdpo_zoo import StepFamilyPart
    from rdpo_zoo.flow_step_families import CPSFamily
    from rdpo_zoo.flow_steps import PUBLIC_CPS_LOG_PROB_STD, flow_schedule_coefficients

    class PublicCPS(CPSFamily):  # as a plugin would offer the public convention under its own name
        def __init__(self, *args, **options):
            super().__init__(*args, log_prob="public", **options)

    class Plugin:
        @staticmethod
        @rdpo_zoo.hookimpl
        def register_step_families(register):
            register(StepFamilyPart("cps-public-test", "cps with the public log-prob (tests)", PublicCPS))

    name = rdpo_zoo.register(Plugin, name="cps-public-test")
    try:
        trainer = Trainer(_config(tmp_path, "flow-grpo", scheduler="cps-public-test", eta=0.5, group_size=2,
                                  train_timesteps="4,3,2"))
        model = trainer.model
        index = torch.tensor([0, 1, 2])
        _, _, likelihood_std = model.coefficient_tensors(index)
        assert torch.allclose(likelihood_std, torch.full((3,), PUBLIC_CPS_LOG_PROB_STD))
        sampling_std = torch.stack([model.coefficients(i)[2].cpu() for i in range(3)])
        expected = flow_schedule_coefficients(model.scheduler, "cps", 0.5).std[:3].float()
        torch.testing.assert_close(sampling_std, expected)
        assert torch.all(sampling_std < PUBLIC_CPS_LOG_PROB_STD)
        _check_untrained_policy_equals_reference(trainer)
        trainer.train()
    finally:
        rdpo_zoo.unregister(name)
