"""A run that never lies: run folders that cannot mix two runs, seeded determinism, a resume that checks its
settings and survives a damaged checkpoint or a torn metrics line, and any checkpoint evaluable."""

import json
import logging

import pytest
import torch
from click.testing import CliRunner

import rdpo_zoo
from rdpo_zoo.run_folder import LORA_WEIGHT_NAME, RunFolderError
from rdpo_zoo.trainer import Trainer, TrainingError, latest_checkpoint
from train_parts import TestParts, small_config


@pytest.fixture(scope="module", autouse=True)
def test_parts():
    name = rdpo_zoo.register(TestParts, name="test-parts")
    yield
    rdpo_zoo.unregister(name)


def _snapshot(folder) -> dict:
    """Every file under ``folder`` with its bytes and modification time: what a refusal must leave as it was."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _metrics(folder) -> list:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def _lora(trainer) -> dict:
    from peft.utils import get_peft_model_state_dict

    return get_peft_model_state_dict(trainer.unwrapped_denoiser())


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


def test_a_folder_that_holds_a_run_is_refused_and_left_unchanged_and_overwrite_removes_only_run_files(tmp_path):
    from rdpo_zoo.cli import main

    run = tmp_path / "run"
    Trainer(small_config(run, iterations=2, eval_samples=2, eval_batch_size=2)).train()
    (run / "notes.txt").write_text("the user's own file")
    assert {"eval.json", "eval.png", "checkpoint-000002", "lora"} <= {p.name for p in run.iterdir()}
    before = _snapshot(run)
    with pytest.raises(RunFolderError, match=r"holds a run .*--resume to continue it, or --overwrite"):
        Trainer(small_config(run, iterations=1))
    with pytest.raises(RunFolderError, match="pass one of them"):
        Trainer(small_config(run, iterations=1, resume=True, overwrite=True))
    result = CliRunner().invoke(main, ["train", "--model", "test-tiny", "--reward", "test-red", "--estimator", "delta-q",
                                       "--loss", "rdpo", "--num-steps", "4", "--train-timesteps", "4,2",
                                       "--iterations", "1", "--eval-samples", "0", "--output-dir", str(run)])
    assert result.exit_code == 2 and "--resume" in result.output and "--overwrite" in result.output, result.output
    assert _snapshot(run) == before  # refused before anything was written
    # --overwrite: a fresh run; every file of the old one is gone (no old checkpoint for rotation or --resume to
    # pick up, no stale eval), and the user's own file stays
    Trainer(small_config(run, iterations=1, overwrite=True)).train()
    names = sorted(p.name for p in run.iterdir() if p.name != "tensorboard")  # written where tensorboard is installed
    assert names == ["checkpoint-000001", "config.json", "lora", "metrics.jsonl", "notes.txt"]
    assert (run / "notes.txt").read_text() == "the user's own file"
    assert [r["iteration"] for r in _metrics(run)] == [1]
    assert json.loads((run / "config.json").read_text())["run"]["iterations"] == 1
    assert "overwrite" not in json.loads((run / "config.json").read_text())["run"]  # an instruction, not a setting


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


def test_resume_with_other_settings_is_refused_before_any_write_and_resumable_ones_are_logged(tmp_path, caplog):
    run = tmp_path / "run"
    Trainer(small_config(run, iterations=1)).train()
    before = _snapshot(run)
    with pytest.raises(RunFolderError) as refused:
        Trainer(small_config(run, iterations=2, resume=True, lora_rank=8, learning_rate=0.5, loss="dpo"))
    message = str(refused.value)
    for difference in ("run.lora_rank: 4 → 8", "method.learning_rate: 0.001 → 0.5", "method.loss: 'rdpo' → 'dpo'"):
        assert difference in message, message
    assert "iterations" not in message.split(". Resume")[0]  # a resumable setting is not a difference
    assert _snapshot(run) == before
    # the budget and the evaluation may change: resumed, and named in the log
    with caplog.at_level(logging.INFO, logger="rdpo_zoo.trainer"):
        Trainer(small_config(run, iterations=2, resume=True, eval_samples=3)).train()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "run.iterations: 1 → 2" in logged and "run.eval_samples: 0 → 3" in logged, logged
    assert [r["iteration"] for r in _metrics(run)] == [1, 2]


def test_settings_changes_sort_resumable_from_refused_and_a_file_is_no_output_dir(tmp_path):
    from rdpo_zoo.run_folder import check_run_folder, settings_changes

    stored = small_config(tmp_path).to_dict()
    requested = small_config(tmp_path / "moved", iterations=9, quiet=False, seed=3, eta=0.5).to_dict()
    del stored["run"]["offline_pairs"]  # a setting an older version did not record
    allowed, refused = settings_changes(stored, requested)
    assert allowed == ["run.iterations: 2 → 9", f"run.output_dir: {str(tmp_path)!r} → {str(tmp_path / 'moved')!r}",
                       "run.quiet: True → False"]
    assert refused == ["method.eta: 1.0 → 0.5", "run.offline_pairs: (not set) → None", "run.seed: 0 → 3"]
    # an older run's config.json holds guidance_step and gap_rule under run: the same settings, not a difference
    older = small_config(tmp_path).to_dict()
    for name in ("guidance_step", "gap_rule"):
        older["run"][name] = older["method"].pop(name)
    assert settings_changes(older, small_config(tmp_path).to_dict()) == ([], [])
    older["run"]["gap_rule"] = "softmax"
    assert settings_changes(older, small_config(tmp_path).to_dict())[1] == ["method.gap_rule: 'softmax' → 'raw'"]
    (tmp_path / "file").write_text("")
    with pytest.raises(RunFolderError, match="output_dir: expected a folder, got the file"):
        check_run_folder(tmp_path / "file", resume=False, overwrite=False)


def test_a_truncated_training_state_falls_back_to_the_previous_intact_checkpoint(tmp_path, caplog):
    straight = Trainer(small_config(tmp_path / "straight", iterations=3, learning_rate=1e-3))
    straight.train()
    run = tmp_path / "run"
    Trainer(small_config(run, iterations=2, learning_rate=1e-3)).train()
    damaged = run / "checkpoint-000002" / "training_state.pt"
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    resumed = Trainer(small_config(run, iterations=3, learning_rate=1e-3, resume=True))
    with caplog.at_level(logging.WARNING, logger="rdpo_zoo.trainer"):
        resumed.train()
    assert any(str(damaged) in r.getMessage() and "falling back" in r.getMessage() for r in caplog.records)
    _assert_same_tensors(_lora(resumed), _lora(straight), "lora")  # iteration 2 redone from checkpoint 1: exact
    assert [r["iteration"] for r in _metrics(run)] == [1, 2, 3]
    # with no intact checkpoint left, the error says so and names each file
    for checkpoint in ("checkpoint-000002", "checkpoint-000003"):
        (run / checkpoint / "training_state.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(TrainingError, match=r"no intact checkpoint left .*checkpoint-000003.*checkpoint-000002"):
        Trainer(small_config(run, iterations=4, learning_rate=1e-3, resume=True)).train()


def test_a_torn_last_metrics_line_is_dropped_on_resume_with_a_warning(tmp_path, caplog):
    run = tmp_path / "run"
    Trainer(small_config(run, iterations=2)).train()
    with open(run / "metrics.jsonl", "a") as f:  # killed while writing iteration 3's line
        f.write('{"iteration": 3, "reward_mean": 0.12')
    with caplog.at_level(logging.WARNING, logger="rdpo_zoo.trainer"):
        Trainer(small_config(run, iterations=3, resume=True)).train()
    assert any("torn last line" in r.getMessage() for r in caplog.records)
    assert [r["iteration"] for r in _metrics(run)] == [1, 2, 3]
    # a malformed line before the last is not what a crash leaves: an error naming the line
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join([lines[0], "{oops", *lines[1:]]) + "\n")
    with pytest.raises(TrainingError, match=r"metrics.jsonl line 2 is not JSON"):
        Trainer(small_config(run, iterations=4, resume=True)).train()


def test_an_interrupted_run_is_evaluated_from_its_newest_checkpoint_or_any_checkpoint(tmp_path, monkeypatch):
    from rdpo_zoo.cli import main

    run = tmp_path / "run"
    trainer = Trainer(small_config(run, iterations=3, learning_rate=3e-3))
    original = trainer.step

    def interrupted(iteration):
        if iteration == 2:
            raise KeyboardInterrupt
        return original(iteration)

    monkeypatch.setattr(trainer, "step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert latest_checkpoint(run).name == "checkpoint-000002"
    # lora/ is refreshed at every checkpoint: the interrupted run has one, the newest checkpoint's
    assert (run / "lora" / LORA_WEIGHT_NAME).read_bytes() == (run / "checkpoint-000002" / LORA_WEIGHT_NAME).read_bytes()
    runner = CliRunner()
    tuned = {}
    for name, target in (("run", run), ("2", run / "checkpoint-000002"), ("1", run / "checkpoint-000001")):
        out = tmp_path / f"eval-{name}.json"
        result = runner.invoke(main, ["eval", "--lora", str(target), "--reward", "test-red", "--limit", "2",
                                      "--seeds", "0", "--json", str(out)])
        assert result.exit_code == 0, result.output
        tuned[name] = json.loads(out.read_text())["rewards"]["test-red"]["tuned"]["mean"]
        if name == "run":
            assert "checkpoint-000002 (its newest checkpoint: iteration 2 of 3; the run is unfinished)" in result.output
    assert tuned["run"] == tuned["2"] != tuned["1"]


def test_the_readme_loads_a_trained_lora_in_diffusers(tmp_path, monkeypatch):
    """The README's block, run as written (on a LoRA of the embedded model with non-zero weights), gives the trained
    UNet."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"```python\n(.*?load_lora_weights.*?)```", readme, re.S).group(1)
    trainer = Trainer(small_config(tmp_path / "runs" / "quickstart", model="tiny"))
    with torch.no_grad():
        for name, p in trainer.unwrapped_denoiser().named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.05)
    trainer.save_lora(trainer.output_dir / "lora")
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(block, "README.md", "exec"), namespace)
    assert (tmp_path / "tuned.png").stat().st_size > 0
    x, t = torch.randn(1, 4, 16, 16), torch.tensor([500])
    hidden = trainer.model.encode(["a small green circle on a white background"]).cond
    with torch.no_grad():
        trained = trainer.model.unet(x, t, encoder_hidden_states=hidden).sample
        loaded = namespace["pipe"].unet(x, t, encoder_hidden_states=hidden).sample
        with trainer.model.reference():
            base = trainer.model.unet(x, t, encoder_hidden_states=hidden).sample
    assert (trained - base).abs().max() > 1e-3
    torch.testing.assert_close(loaded, trained, atol=1e-5, rtol=0)
