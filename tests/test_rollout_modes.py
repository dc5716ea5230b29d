"""Rollout modes as one table of records (rdpo_zoo.rollout_modes), one labelling helper for every pair-producing
rollout (rdpo_zoo.labels), and a toy rollout mode registered in-process that trains through the Trainer."""

import json

import pytest
import torch

import rdpo_zoo
from rdpo_zoo.labels import label_candidates
from rdpo_zoo.parts import SETTINGS
from rdpo_zoo.rollout_modes import (ROLLOUT_TABLE, RolloutMode, register_rollout_mode, rollout_mode,
                                    unregister_rollout_mode)
from rdpo_zoo.trainer import Trainer
from train_parts import TestParts, small_config


@pytest.fixture(scope="module", autouse=True)
def parts():
    name = rdpo_zoo.register(TestParts, name="test-parts-modes")
    yield
    rdpo_zoo.unregister(name)


def test_every_record_names_a_function_that_takes_its_arguments():
    import inspect

    assert {"single", "two-trajectories", "noised-pairs", "branch-random", "branch-winner", "branch-loser"} <= set(
        ROLLOUT_TABLE)
    for mode in ROLLOUT_TABLE.values():
        accepted = inspect.signature(mode.load()).parameters
        assert {"model", "cond", "reward", "generator", *mode.arguments} <= set(accepted), mode.name
        assert mode.branching == ("continue_from" in mode.arguments)
    with pytest.raises(ValueError, match="rollout: expected one of single, .*, got 'branch-winer'"):
        rollout_mode("branch-winer")
    with pytest.raises(rdpo_zoo.OptionError, match="did you mean 'branch-winner'"):
        rdpo_zoo.merge_settings(None, {"rollout": "branch-winer"})


def test_one_label_rule_for_every_pair():
    values = torch.tensor([[0.1, 0.5, 0.3], [0.2, 0.2, 0.2], [0.9, 0.0, 0.4], [0.30, 0.31, 0.0]])
    labels = label_candidates(values, scale=1.0, threshold=0.05, gap_rule="raw")
    assert labels.winner.tolist() == [1, 0, 0, 1] and labels.loser.tolist() == [0, 0, 1, 2]
    assert labels.keep.tolist() == [True, False, True, True]  # a tie gives no pair
    torch.testing.assert_close(labels.gap, torch.tensor([0.4, 0.0, 0.9, 0.31]))
    softmax = label_candidates(values, scale=1.0, threshold=0.2, gap_rule="softmax")  # tanh(Δ/2) > 0.2
    assert softmax.keep.tolist() == [False, False, True, False]
    extra = label_candidates(values, 1.0, 0.0, "raw", extra_keep=torch.tensor([True, True, False, True]))
    assert extra.keep.tolist() == [True, False, False, True]
    with pytest.raises(ValueError, match="gap_rule: expected one of"):
        label_candidates(values, 1.0, 0.0, "soft")


def _reversed_trajectory_pairs(model, cond, reward, generator, estimator, steps, threshold, gap_rule):
    """A toy mode: D3PO's pairs with the preference turned round (the loser trained up)."""
    from rdpo_zoo.rollout import rollout_trajectory_pairs

    result = rollout_trajectory_pairs(model, cond, reward, estimator, steps, generator, threshold, gap_rule)
    pairs = result.pairs
    pairs.x_t, pairs.y, pairs.values = pairs.x_t.flip(1), pairs.y.flip(1), pairs.values.flip(1)
    return result


def test_a_rollout_mode_registered_in_process_trains_through_the_trainer(tmp_path):
    register_rollout_mode(RolloutMode(
        "toy-reversed", f"{__name__}:_reversed_trajectory_pairs", ("estimator", "steps", "threshold", "gap_rule"),
        "step-pairs", needs_estimator=True, needs_sampler=True, records_trajectory=True,
        description="D3PO's pairs, turned round (tests)"))
    try:
        config = small_config(tmp_path, "d3po", rollout="toy-reversed")
        assert config.method.rollout == "toy-reversed"
        trainer = Trainer(config)
        pairs = trainer.rollout(0).pairs
        assert len(pairs) > 0 and torch.all(pairs.values[:, 0] <= pairs.values[:, 1])  # turned round
        trainer.train()
        assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])["pairs"] > 0
    finally:
        unregister_rollout_mode("toy-reversed")
    with pytest.raises(rdpo_zoo.OptionError, match="rollout"):
        small_config(tmp_path, "d3po", rollout="toy-reversed")
