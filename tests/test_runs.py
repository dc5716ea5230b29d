"""A run that never lies: run folders that cannot mix two runs, seeded determinism, a resume that checks its
settings and survives a damaged checkpoint or a torn metrics line, and any checkpoint evaluable."""

import json

import pytest
import torch

import rdpo_zoo
from rdpo_zoo.trainer import Trainer
from train_parts import TestParts, small_config


@pytest.fixture(scope="module", autouse=True)
def test_parts():
    name = rdpo_zoo.register(TestParts, name="test-parts")
    yield
    rdpo_zoo.unregister(name)


def _metrics(folder) -> list:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def _lora(trainer) -> dict:
    from peft.utils import get_peft_model_state_dict

    return get_peft_model_state_dict(trainer._unwrapped_unet())


def _assert_same_tensors(a, b, where=""):
    """Nested dicts / lists of tensors and numbers, compared bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same_tensors(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_two_runs_with_one_seed_are_bit_identical_whatever_the_global_generator(tmp_path):
    """LoRA, optimiser state and metrics (timings aside) of two runs with one seed, each started from another state
    of torch's global generator (a fresh process starts from a random one), on a model part that leaves it alone."""
    runs = []
    for global_seed, name in ((1, "a"), (2, "b")):
        torch.manual_seed(global_seed)
        trainer = Trainer(small_config(tmp_path / name, model="test-tiny-loaded", iterations=2, learning_rate=1e-3))
        trainer.train()
        state = torch.load(tmp_path / name / "checkpoint-000002" / "training_state.pt", weights_only=False)
        metrics = [{k: v for k, v in r.items() if not k.startswith("seconds_")} for r in _metrics(tmp_path / name)]
        runs.append((_lora(trainer), state["optimiser"], metrics))
    (lora_a, optimiser_a, metrics_a), (lora_b, optimiser_b, metrics_b) = runs
    _assert_same_tensors(lora_a, lora_b, "lora")
    _assert_same_tensors(optimiser_a, optimiser_b, "optimiser")
    assert metrics_a == metrics_b and len(metrics_a) == 2
    # ... and the seed is what decides the LoRA's initialisation (draws from it, not from one fixed stream)
    init = [_lora(Trainer(small_config(tmp_path / f"init-{seed}", model="test-tiny-loaded", seed=seed)))
            for seed in (0, 1)]
    a_keys = [k for k in init[0] if "lora_A" in k]
    assert a_keys and not any(torch.equal(init[0][k], init[1][k]) for k in a_keys)
