"""Each extension point of docs/extending.md that no other test covers end to end: a toy loss and a toy estimator,
registered in-process, train one iteration through the Trainer. (A rollout mode: tests/test_rollout_modes.py; a model
family and a step family: tests/test_seams.py; a policy-gradient loss: tests/test_grpo.py.)"""

import json

import pytest
import torch

import rdpo_zoo
from rdpo_zoo import EstimatorPart, LossPart
from rdpo_zoo.estimators import Estimator
from rdpo_zoo.losses import LossInputs, PairwiseLoss
from rdpo_zoo.trainer import Trainer
from train_parts import TestParts, small_config

CALLS = {"loss": 0, "estimator": 0}


def _squared_hinge(inputs: LossInputs) -> torch.Tensor:
    CALLS["loss"] += 1
    return torch.relu(inputs.options["margin_target"] - inputs.margin) ** 2


class WorstFirst(Estimator):
    """Prefers the child whose x̂0 scores lower (a deliberately inverted x0-hat)."""

    name = "worst-first"
    needs_children = True

    def values(self, m):
        CALLS["estimator"] += 1
        return -m.q_children


class ToyParts:
    @staticmethod
    @rdpo_zoo.hookimpl
    def register_losses(register):
        register(LossPart("squared-hinge", "max(0, target − z)² (tests)",
                          lambda: PairwiseLoss("squared-hinge", _squared_hinge, "max(0, target − z)²"),
                          [rdpo_zoo.Option("margin_target", float, 1.0, "the margin aimed at")]))

    @staticmethod
    @rdpo_zoo.hookimpl
    def register_estimators(register):
        register(EstimatorPart("worst-first", "the lower x̂0 reward wins (tests)", WorstFirst))


@pytest.fixture(scope="module", autouse=True)
def plugins():
    names = [rdpo_zoo.register(TestParts, name="test-parts-ext"), rdpo_zoo.register(ToyParts, name="toy-ext")]
    yield
    for name in names:
        rdpo_zoo.unregister(name)


def test_a_toy_loss_and_estimator_train_through_the_trainer(tmp_path):
    config = small_config(tmp_path, estimator="worst-first", loss="squared-hinge",
                          loss_options={"margin_target": 0.5}, penalty=None, gradient_guidance=False)
    trainer = Trainer(config)
    assert trainer.objective.loss_name == "squared-hinge" and trainer.objective.options == {"margin_target": 0.5}
    pairs = trainer.rollout(0).pairs
    assert len(pairs) > 0 and torch.all(pairs.values[:, 0] > pairs.values[:, 1])
    before = dict(CALLS)
    loss, r = trainer.pair_loss(pairs)
    assert float(loss.detach()) == pytest.approx(0.25)  # r = 0 at init: max(0, 0.5 − 0)²
    trainer.train()
    assert CALLS["loss"] > before["loss"] and CALLS["estimator"] > 0
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["pairs"] > 0 and record["loss"] > 0
