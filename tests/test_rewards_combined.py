"""Combined rewards (``NAME[:WEIGHT]+...``) and the base-vs-tuned report's KL: parsing, errors before compute, the
value and gradient of a combination, per-part logging, and a KL of exactly 0 at initialisation."""

import json

import pytest
import torch
from click.testing import CliRunner

import rdpo_zoo
from rdpo_zoo.rewards import CombinedReward, RewardNotDifferentiableError, RewardSpecError, parse_reward_spec
from rdpo_zoo.world import make_batch
from train_parts import TestParts, small_config


@pytest.fixture(scope="module", autouse=True)
def test_parts():
    name = rdpo_zoo.register(TestParts, name="test-parts")
    yield
    rdpo_zoo.unregister(name)


def test_parse_reward_spec():
    assert parse_reward_spec("world-fidelity") == [("world-fidelity", 1.0)]
    assert parse_reward_spec(" world-fidelity + world-aesthetic:0.5 ") == [("world-fidelity", 1.0),
                                                                           ("world-aesthetic", 0.5)]


@pytest.mark.parametrize("spec, words", [
    ("world-fidelity+", "empty part"), ("", "expected NAME"), ("world-fidelity:0", "positive"),
    ("world-fidelity:-1", "positive"), ("world-fidelity:nan", "finite"), ("world-fidelity:x", "'x'"),
    ("world-fidelity+world-aesthetic:2+world-fidelity", "appears twice"),
])
def test_bad_reward_specs_are_refused_naming_the_problem(spec, words):
    with pytest.raises(RewardSpecError, match=words):
        parse_reward_spec(spec)


def test_unknown_part_and_options_routing():
    with pytest.raises(rdpo_zoo.UnknownPartError, match="nonsense"):
        rdpo_zoo.build_reward("world-fidelity+nonsense")
    reward = rdpo_zoo.build_reward("compressibility+world-fidelity:2", {"compressibility.quality": "80"})
    assert [(n, w) for n, w, _ in reward.parts] == [("compressibility", 1.0), ("world-fidelity", 2.0)]
    assert reward.parts[0][2].quality == 80 and reward.scale == 1.0 and not reward.differentiable
    with pytest.raises(RewardSpecError, match="PART.KEY"):
        rdpo_zoo.build_reward("compressibility+world-fidelity", {"quality": "80"})
    with pytest.raises(rdpo_zoo.OptionError, match="quality"):
        rdpo_zoo.build_reward("compressibility+world-fidelity", {"compressibility.quality": "200"})
    single = rdpo_zoo.build_reward("compressibility", {"quality": "80"})  # a plain name is the part itself
    assert not isinstance(single, CombinedReward) and single.quality == 80


def test_combined_value_and_gradient_are_the_weighted_sum_of_the_parts():
    images, prompts = make_batch(5, seed=3, split="all")
    noisy = (images + 0.1 * torch.randn(images.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    combined = rdpo_zoo.build_reward("world-fidelity+world-aesthetic:0.5")
    fidelity, aesthetic = (rdpo_zoo.build_reward(n) for n in ("world-fidelity", "world-aesthetic"))
    assert combined.differentiable and combined.name == "world-fidelity+world-aesthetic:0.5"
    x1 = noisy.clone().requires_grad_(True)
    x2 = noisy.clone().requires_grad_(True)
    value = combined.score_differentiable(x1, prompts)
    expected = fidelity.score_differentiable(x2, prompts) / 0.3 + 0.5 * aesthetic.score_differentiable(x2, prompts) / 0.12
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(combined.score(noisy, prompts), expected.detach())
    weights = torch.rand(5)
    (g1,) = torch.autograd.grad((value * weights).sum(), x1)
    (g2,) = torch.autograd.grad((expected * weights).sum(), x2)
    assert g1.abs().sum() > 0
    torch.testing.assert_close(g1, g2)
    parts = combined.part_scores(noisy, prompts)
    torch.testing.assert_close(parts["world-aesthetic"], aesthetic.score(noisy, prompts))


def test_guidance_with_a_non_differentiable_part_is_refused_naming_it(tmp_path):
    reward = rdpo_zoo.build_reward("world-aesthetic+compressibility:0.5")
    with pytest.raises(RewardNotDifferentiableError, match="'compressibility'"):
        reward.score_differentiable(*make_batch(2, seed=0))
    from rdpo_zoo.trainer import Trainer

    with pytest.raises(ValueError, match="part 'compressibility'"):
        Trainer(small_config(tmp_path, reward="world-aesthetic+compressibility:0.5", gradient_guidance=True))


def test_train_refuses_a_bad_reward_before_compute(tmp_path):
    from rdpo_zoo.cli import main

    for spec, words in (("world-fidelity+world-fidelity", "appears twice"), ("world-fidelity:zero", "'zero'"),
                        ("world-fidelty", "unknown reward")):
        result = CliRunner().invoke(main, ["train", "--estimator", "delta-q", "--loss", "rdpo", "--reward", spec,
                                           "--output-dir", str(tmp_path / "run")])
        assert result.exit_code == 2 and words in result.output and "--reward" in result.output, result.output
        assert "Traceback" not in result.output and not (tmp_path / "run").exists()
    result = CliRunner().invoke(main, ["eval", "--reward", "nonsense", "--prompts", "ood"])
    assert result.exit_code == 2 and "unknown reward 'nonsense'" in result.output


def test_each_part_is_logged_and_the_kl_is_zero_at_initialisation_then_positive(tmp_path):
    from rdpo_zoo.evaluate import compare_models
    from rdpo_zoo.trainer import Trainer
    from rdpo_zoo.world import ood_prompts

    trainer = Trainer(small_config(tmp_path, iterations=1, learning_rate=3e-3, max_grad_norm=0.0,
                                   reward="world-aesthetic+test-red:0.5"))
    prompts = ood_prompts()[:3]
    rewards = {"test-red": trainer.reward.parts[1][2]}
    before = compare_models(trainer.model, prompts, [0], rewards, batch_size=3)
    assert before["kl"]["expected"]["mean"] == 0.0 and before["kl"]["sampled"]["mean"] == 0.0
    assert before["rewards"]["test-red"]["gain"]["mean"] == 0.0  # the LoRA starts as the identity
    trainer.train()
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert {"reward/world-aesthetic", "reward/test-red"} <= set(record)
    for _ in range(3):
        trainer.optimise(trainer.rollout(1).pairs, iteration=1)
    after = compare_models(trainer.model, prompts, [0], rewards, batch_size=3)
    assert after["kl"]["expected"]["mean"] > 0


def test_prompts_outside_the_world_skip_the_checker_with_a_note(tmp_path):
    from rdpo_zoo.evaluate import compare_models, format_report, report_rewards
    from rdpo_zoo.registry import get_registry
    from rdpo_zoo.trainer import Trainer

    trainer = Trainer(small_config(tmp_path, reward="world-fidelity+test-red"))
    prompts = ["a photo of a cat", "a watercolour of a lighthouse"]
    rewards, trained, notes = report_rewards(get_registry(), trainer.run.reward, trainer.reward, prompts)
    assert set(rewards) == {"world-aesthetic", "compressibility"} and trained == []
    assert any("checker skipped" in n for n in notes) and any("reads world prompts" in n for n in notes)
    report = compare_models(trainer.model, prompts * 2, [0], rewards, trained, batch_size=4, notes=notes)
    assert "checker" not in report and report["pixel_spread"]["base"]["n"] == 2
    assert any("note: checker skipped" in line for line in format_report(report))
