"""The trainer: log-ratios at initialisation, every preset learns, resume equality, crash safety, LoRA round trip,
multi-process data parallel, offline pairs, and refusals before any compute."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

import rdpo_zoo
from rdpo_zoo.trainer import LORA_WEIGHT_NAME, Trainer, TrainingError, latest_checkpoint
from train_parts import TestParts, small_config

HERE = os.path.dirname(__file__)
PRESETS = ["d3po", "diffusion-dpo", "spo", "tailorpo", "tailorpo-g", "rdpo-star", "rdpo", "ddpo"]


@pytest.fixture(scope="module", autouse=True)
def test_parts():
    name = rdpo_zoo.register(TestParts, name="test-parts")
    yield
    rdpo_zoo.unregister(name)


def _margin(trainer, batch, advantages=None):
    """β-free progress measure of a fixed batch: the mean log-ratio gap (pairs), or for DDPO the
    advantage-weighted log-ratio against the sampler, mean(A·(log π_θ − log π_old)), which PPO raises."""
    with torch.no_grad():
        if trainer.per_sample:
            _, log_ratio = trainer.sample_loss(batch, advantages)
            return float((advantages[batch.sample_id] * log_ratio).mean())
        if trainer.method["rollout"] == "noised-pairs":  # averaged over several (t, ε) draws
            r = torch.cat([trainer.noised_pair_loss(batch, torch.Generator().manual_seed(s))[1] for s in range(8)])
        else:
            _, r = trainer.pair_loss(batch)
    return float((r[:, 0] - r[:, 1]).mean())


def test_log_ratios_are_exactly_zero_at_initialisation(tmp_path):
    """Policy = reference at init (LoRA B = 0): catches CFG, dtype or timestep mismatches between the passes."""
    trainer = Trainer(small_config(tmp_path))
    pairs = trainer.rollout(0).pairs
    loss, r = trainer.pair_loss(pairs)
    assert len(pairs) > 0 and torch.all(r == 0)
    assert float(loss.detach()) == pytest.approx(float(torch.nn.functional.softplus(torch.tensor(0.0))))
    trainer_d3po = Trainer(small_config(tmp_path / "d3po", "d3po"))
    _, r = trainer_d3po.pair_loss(trainer_d3po.rollout(0).pairs)
    assert torch.all(r == 0)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_ddpo_ratio_is_exactly_one_before_the_first_update_with_either_reduction(tmp_path, reduction):
    """The sampler's stored log-prob and the loss's recomputed one are reduced alike (a sum against a mean made the
    PPO ratio exp(sum − mean))."""
    trainer = Trainer(small_config(tmp_path, "ddpo", reduction=reduction))
    result = trainer.rollout(0)
    advantages = trainer.advantages(result.prompts, result.final_rewards)
    _, log_ratio = trainer.sample_loss(result.samples, advantages)
    torch.testing.assert_close(log_ratio, torch.zeros_like(log_ratio), atol=2e-3, rtol=0)


@pytest.mark.parametrize("preset", PRESETS)
def test_a_few_steps_of_every_preset_raise_its_margin(tmp_path, preset):
    trainer = Trainer(small_config(tmp_path, preset, learning_rate=3e-3, max_grad_norm=0.0))
    result = trainer.rollout(0)
    advantages = None
    if trainer.per_sample:
        batch = result.samples
        advantages = trainer.advantages(result.prompts, result.final_rewards)
    else:
        batch = result.pairs
    assert batch is not None and len(batch) > 0
    before = _margin(trainer, batch, advantages)
    for step in range(4):
        trainer.optimise(batch, iteration=step, advantages=advantages)
    after = _margin(trainer, batch, advantages)
    assert after > before, (preset, before, after)


def test_train_writes_metrics_config_checkpoints_and_a_loadable_lora(tmp_path):
    from tiny_pipelines import tiny_sd_pipeline

    trainer = Trainer(small_config(tmp_path, iterations=2, learning_rate=1e-3))
    trainer.train()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [1, 2]
    for key in ("reward_mean", "reward_std", "loss", "accuracy", "margin", "r_w", "r_l", "psi_active", "lr",
                "seconds_rollout", "seconds_optimise", "pairs", "unet_calls", "unet_calls_optimise"):
        assert key in records[-1], key
    assert records[-1]["unet_calls"] > 0 and records[-1]["unet_calls_optimise"] > 0
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["method"]["loss"] == "rdpo" and config["resolved"]["train_steps"] == [4, 2]
    assert latest_checkpoint(tmp_path).name == "checkpoint-000002"
    # diffusers' loader reproduces the trained UNet's output (it only logs unmatched keys: check numbers).
    pipe = tiny_sd_pipeline()
    pipe.load_lora_weights(str(tmp_path / "lora"), weight_name=LORA_WEIGHT_NAME)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([500, 20])
    hidden = torch.randn(2, 16, 32)
    trained = trainer.model.unet(x, t, encoder_hidden_states=hidden).sample
    reloaded = pipe.unet(x, t, encoder_hidden_states=hidden).sample
    base = tiny_sd_pipeline().unet(x, t, encoder_hidden_states=hidden).sample
    assert (trained - base).abs().max() > 1e-4  # training changed the output ...
    torch.testing.assert_close(reloaded, trained, atol=1e-5, rtol=0)  # ... and the saved LoRA carries it exactly
    # the end-of-run evaluation: eval.json (every world reward, the trained one, checker, spread, KL) and eval.png
    from PIL import Image

    result = trainer.evaluate(20)  # the 18 OOD prompts cycled: two of them twice
    stored = json.loads((tmp_path / "eval.json").read_text())
    assert result["n"] == 20 and stored["rewards"]["test-red"]["gain"]["n"] == 20
    assert stored["rewards"]["test-red"]["trained"] and not stored["rewards"]["world-aesthetic"]["trained"]
    assert set(stored["rewards"]) == {"world-fidelity", "world-aesthetic", "compressibility", "test-red"}
    assert set(stored["checker"]) == {"colour", "shape", "background", "size", "all"}
    assert stored["kl"]["expected"]["mean"] > 0 and stored["pixel_spread"]["base"]["n"] == 2
    assert stored["trained_on"] == ["test-red"]
    with Image.open(tmp_path / "eval.png") as png:
        assert png.size[0] > png.size[1] > 0


def test_resume_gives_the_same_lora_as_an_uninterrupted_run(tmp_path):
    from peft.utils import get_peft_model_state_dict

    straight = Trainer(small_config(tmp_path / "a", iterations=3, learning_rate=1e-3))
    straight.train()
    first = Trainer(small_config(tmp_path / "b", iterations=2, learning_rate=1e-3))
    first.train()
    resumed = Trainer(small_config(tmp_path / "b", iterations=3, learning_rate=1e-3, resume=True))
    resumed.train()
    a = get_peft_model_state_dict(straight.unwrapped_denoiser())
    b = get_peft_model_state_dict(resumed.unwrapped_denoiser())
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in lines] == [1, 2, 3]


def test_sigkill_during_a_save_keeps_the_last_good_checkpoint(tmp_path):
    run = subprocess.run([sys.executable, os.path.join(HERE, "train_parts.py"), str(tmp_path), "3",
                          "--kill-during-save", "2"], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == -9, run.stderr[-2000:]
    assert latest_checkpoint(tmp_path).name == "checkpoint-000001"
    assert any(p.name.startswith(".tmp-checkpoint-000002") for p in tmp_path.iterdir())  # the half-written one
    resumed = Trainer(small_config(tmp_path, iterations=2, resume=True))
    assert resumed.load_checkpoint() == 1
    resumed.train()
    assert latest_checkpoint(tmp_path).name == "checkpoint-000002"


def test_a_non_finite_loss_stops_the_run_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    trainer = Trainer(small_config(tmp_path, iterations=3))
    original = trainer.loss_path.loss
    calls = {"n": 0}

    def poisoned(pairs, *args):
        loss, r = original(pairs, *args)
        calls["n"] += 1
        return (loss * float("nan"), r) if trainer.iteration >= 1 else (loss, r)

    monkeypatch.setattr(trainer.loss_path, "loss", poisoned)
    with pytest.raises(TrainingError, match=r"non-finite loss nan at iteration 1.*checkpoint-000001.*is kept"):
        trainer.train()
    assert latest_checkpoint(tmp_path).name == "checkpoint-000001"


def test_offline_pairs_train_diffusion_dpo(tmp_path):
    from PIL import Image

    rows = []
    for i, prompt in enumerate(["a red circle", "a blue square", "a green triangle"]):
        for kind, colour in (("chosen", (220, 20, 20)), ("rejected", (20, 20, 220))):
            Image.new("RGB", (24, 24), colour).save(tmp_path / f"{i}-{kind}.png")
        rows.append({"prompt": prompt, "chosen": f"{i}-chosen.png", "rejected": f"{i}-rejected.png"})
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    trainer = Trainer(small_config(tmp_path / "out", "diffusion-dpo", offline_pairs=str(tmp_path), iterations=6,
                                   learning_rate=3e-3, checkpoint_every=0))
    assert len(trainer.offline) == 3
    batch = trainer.offline
    before = _margin(trainer, batch)
    trainer.train()
    assert _margin(trainer, batch) > before
    with pytest.raises(ValueError, match="offline_pairs: expected a JSONL file"):
        Trainer(small_config(tmp_path / "x", "diffusion-dpo", offline_pairs=str(tmp_path / "missing")))


def test_incompatible_combinations_are_refused_before_compute(tmp_path):
    with pytest.raises(ValueError, match="rollout 'single' .*ppo-clip"):
        Trainer(small_config(tmp_path, "ddpo", loss="dpo"))
    with pytest.raises(ValueError, match="lookahead variant needs a branching rollout"):
        Trainer(small_config(tmp_path, "d3po", estimator="delta-q", estimator_options={"variant": "lookahead"}))
    with pytest.raises(ValueError, match="reward: 'compressibility' has no differentiable form"):
        Trainer(small_config(tmp_path, "tailorpo-g", reward="compressibility"))
    with pytest.raises(ValueError, match="steps: step t=3"):
        Trainer(small_config(tmp_path, None, eta=0.0, train_timesteps="3"))
    with pytest.raises(ValueError, match="gradient_guidance: .*rollout 'two-trajectories' has none"):
        Trainer(small_config(tmp_path, "d3po", gradient_guidance=True))


def test_gradient_guidance_auto_is_on_exactly_for_branching_rollouts_with_a_differentiable_reward(tmp_path):
    """RDPO's parts without a preset are guided as RDPO is (RDPO* + Ψ, RDPO* on TailorPO-G); auto never turns on
    where guidance cannot act, and a preset's explicit value stands."""
    assert Trainer(small_config(tmp_path / "a", None)).guided  # branch-winner, test-red is differentiable
    assert not Trainer(small_config(tmp_path / "b", None, rollout="two-trajectories")).guided
    assert not Trainer(small_config(tmp_path / "c", None, reward="compressibility")).guided
    assert not Trainer(small_config(tmp_path / "d", "tailorpo")).guided  # TailorPO without -G: explicitly off
    # auto given over a preset's value (the CLI's --gradient-guidance auto passes "none": None means "not given")
    trainer = Trainer(small_config(tmp_path / "e", "tailorpo", gradient_guidance="none"))
    assert trainer.guided
    trainer.output_dir.mkdir(parents=True)
    trainer._write_config()
    assert json.loads((tmp_path / "e" / "config.json").read_text())["resolved"]["gradient_guidance"] is True


def test_presets_set_the_pair_filter_and_guidance_step_that_reach_the_rollout(tmp_path, monkeypatch):
    """SPO's preset filters its pairs with SPO's own softmax rule, and a preset, a flag or a config file sets the gap
    rule and the guidance step as method settings; an older run's config.json (both under run) still loads."""
    import rdpo_zoo.rollout as rollout
    from rdpo_zoo.cli.train_cmd import resolve_config
    from rdpo_zoo.config import TrainConfig

    seen = []
    real = rollout.rollout_branching

    def recording(*args, **kwargs):
        seen.append((kwargs["gap_rule"], kwargs["guidance"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(rollout, "rollout_branching", recording)
    Trainer(small_config(tmp_path / "spo", "spo")).rollout(0)
    assert seen[-1] == ("softmax", None)  # SPO: unguided, softmax([s_w, s_l]) gap rule
    Trainer(small_config(tmp_path / "g", "tailorpo-g", guidance_step=0.3, gap_rule="softmax")).rollout(0)
    assert seen[-1][0] == "softmax" and seen[-1][1].step_size == 0.3
    assert resolve_config("spo", {}, {}).method["gap_rule"] == "softmax"
    assert resolve_config("spo", {"gap_rule": "raw", "guidance_step": 0.2}, {}).method["gap_rule"] == "raw"
    (tmp_path / "old.toml").write_text('preset = "tailorpo-g"\n[run]\nguidance_step = 0.25\ngap_rule = "softmax"\n')
    method = resolve_config(None, {}, {}, tmp_path / "old.toml").method
    assert (method["guidance_step"], method["gap_rule"]) == (0.25, "softmax")
    stored = small_config(tmp_path, "spo").to_dict()
    for name in ("guidance_step", "gap_rule"):
        stored["run"][name] = stored["method"].pop(name)
    assert TrainConfig.from_dict(stored).method == small_config(tmp_path, "spo").method
    from rdpo_zoo.cli import main

    help_text = CliRunner().invoke(main, ["train", "--help"]).output
    assert "--gap-rule [raw|softmax]" in help_text and "--guidance-step FLOAT" in help_text


def test_cli_refuses_double_counted_psi_and_prints_the_implied_defaults():
    from rdpo_zoo.cli import main

    runner = CliRunner()
    result = runner.invoke(main, ["train", "--loss", "rdpo", "--penalty", "psi", "--dry-run"])
    assert result.exit_code == 2 and "count it twice" in result.output
    result = runner.invoke(main, ["train", "--estimator", "delta-q", "--loss", "rdpo", "--psi-lambda", "7", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "rollout branch-winner" in result.output and "'lambda': 7.0" in result.output
    assert "train timesteps 20,16,12,8,4" in result.output and "reward world-aesthetic" in result.output
    result = runner.invoke(main, ["train", "--loss", "dop", "--dry-run"])
    assert result.exit_code == 2 and "dpo" in result.output


def test_config_file_is_overridden_by_flags(tmp_path):
    from rdpo_zoo.cli import main

    (tmp_path / "run.toml").write_text('preset = "rdpo"\niterations = 3\nlearning_rate = 1e-4\n[penalty_options]\nlambda = 5.0\n')
    result = CliRunner().invoke(main, ["train", "--config", str(tmp_path / "run.toml"), "--learning-rate", "2e-4",
                                       "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "lr 0.0002" in result.output and "3 iterations" in result.output and "'lambda': 5.0" in result.output


def test_two_processes_keep_identical_lora_weights_and_split_the_rollout(tmp_path):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    run = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", os.path.join(HERE, "train_parts.py"),
                          str(tmp_path), "2"], capture_output=True, text=True, timeout=900,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    a, b = (torch.load(tmp_path / f"lora-rank{r}.pt") for r in (0, 1))
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert any(v.abs().sum() > 0 for k, v in a.items() if "lora_B" in k)  # trained, not still at init
    assert torch.load(tmp_path / "prompts-rank0.pt") != torch.load(tmp_path / "prompts-rank1.pt")
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["resolved"]["processes"] == 2


def test_eval_and_plot_commands_on_a_trained_run(tmp_path):
    from rdpo_zoo.cli import main

    Trainer(small_config(tmp_path / "run", iterations=2, learning_rate=1e-3)).train()
    runner = CliRunner()
    result = runner.invoke(main, ["eval", "--lora", str(tmp_path / "run"), "--reward", "test-red", "--prompts", "ood",
                                  "--limit", "3", "--seeds", "0,1", "--json", str(tmp_path / "eval.json")])
    assert result.exit_code == 0, result.output
    table = json.loads((tmp_path / "eval.json").read_text())
    row = table["rewards"]["test-red"]
    assert table["n"] == 6 and row["tuned"]["n"] == 6 and row["gain"]["mean"] != 0.0 and row["trained"]
    assert table["kl"]["expected"]["mean"] > 0 and set(table["checker"]) >= {"colour", "all"}
    assert "test-tiny + LoRA" in result.output
    result = runner.invoke(main, ["plot", str(tmp_path / "run"), "--out", str(tmp_path / "curves.png")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = runner.invoke(main, ["eval", "--lora", str(tmp_path)])
    assert result.exit_code == 2 and "no lora/" in result.output


def test_sdxl_shaped_pipeline_trains_and_its_lora_reloads(tmp_path):
    from tiny_pipelines import tiny_sdxl_pipeline

    trainer = Trainer(small_config(tmp_path, "rdpo", model="test-tiny-xl", iterations=1, learning_rate=1e-3))
    trainer.train()
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])["pairs"] > 0
    pipe = tiny_sdxl_pipeline()
    pipe.load_lora_weights(str(tmp_path / "lora"), weight_name=LORA_WEIGHT_NAME)
    x, t, hidden = torch.randn(1, 4, 8, 8), torch.tensor([300]), torch.randn(1, 16, 64)
    added = {"text_embeds": torch.randn(1, 32), "time_ids": torch.tensor([[16.0, 16, 0, 0, 16, 16]])}
    trained = trainer.model.unet(x, t, encoder_hidden_states=hidden, added_cond_kwargs=added).sample
    reloaded = pipe.unet(x, t, encoder_hidden_states=hidden, added_cond_kwargs=added).sample
    torch.testing.assert_close(reloaded, trained, atol=1e-5, rtol=0)


def test_optimise_takes_every_pair_once_per_epoch_and_reads_the_device_once(tmp_path, monkeypatch):
    """No padding by resampling (pairs not a multiple of the minibatch size are split, none repeated), and the
    statistics come back in one transfer: no scalar read per minibatch (each is a device sync on a GPU)."""
    trainer = Trainer(small_config(tmp_path, minibatch_size=4, inner_epochs=2))
    batch = trainer.rollout(0).pairs
    n = len(batch)
    assert n % 4, "the test needs a pair count that is no multiple of the minibatch size"
    seen = []
    select = type(batch).select

    def recording(self, index):
        seen.append(index.tolist())
        return select(self, index)

    monkeypatch.setattr(type(batch), "select", recording)
    reads = {"n": 0}
    import rdpo_zoo.kernels

    ours = tuple(os.path.dirname(m.__file__) + os.sep for m in (rdpo_zoo, rdpo_zoo.kernels))

    for name in ("item", "__float__", "__bool__", "__int__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            # reads by the project's own code (libraries read host tensors: AdamW its CPU step counts)
            if sys._getframe(1).f_code.co_filename.startswith(ours):
                reads["n"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    stats = trainer.optimise(batch, iteration=0)
    monkeypatch.undo()
    per_epoch = -(-n // 4)
    assert len(seen) == 2 * per_epoch and all(0 < len(ix) <= 4 for ix in seen)
    for epoch in range(2):
        assert sorted(i for ix in seen[epoch * per_epoch:(epoch + 1) * per_epoch] for i in ix) == list(range(n))
    assert reads["n"] <= 2, reads  # the pair count gathered over processes; nothing per minibatch
    assert all(isinstance(stats[k], float) for k in ("loss", "r_w", "r_l", "margin", "accuracy", "grad_norm"))


@pytest.mark.parametrize("preset", ["d3po", "ddpo"])
def test_ddpo_and_d3po_step_once_per_trajectory_with_the_gradient_over_its_steps(tmp_path, preset):
    """The public DDPO and D3PO code (BASELINES.md) takes one optimiser step per sample trajectory (D3PO: per pair of
    trajectories), its gradient accumulated over the trajectory's trained timesteps; the presets say so
    (``optimiser_step="trajectory"``), and the old random-transition minibatches stay reachable."""
    trainer = Trainer(small_config(tmp_path, preset, max_grad_norm=0.0, minibatch_size=2))
    assert trainer.method["optimiser_step"] == "trajectory"
    result = trainer.rollout(0)
    per_sample = trainer.per_sample
    batch = result.samples if per_sample else result.pairs
    advantages = trainer.advantages(result.prompts, result.final_rewards) if per_sample else None
    trajectories = len(result.prompts) if per_sample else len(result.prompts) // 2  # D3PO: 2 finals per pair
    steps_trained = len(trainer.train_steps)
    assert len(batch) == trajectories * steps_trained  # every pair kept (the test reward never ties)

    def loss_of(part):
        return trainer.sample_loss(part, advantages)[0] if per_sample else trainer.pair_loss(part)[0]

    def grad_of(part):
        trainer.optimiser.zero_grad(set_to_none=True)
        loss_of(part).backward()
        return torch.cat([p.grad.flatten() for p in trainer.trainable])

    # the gradients each optimiser step will see, taken one timestep at a time at the current parameters
    ids = (batch.sample_id if per_sample else batch.trajectory).cpu()
    first_step = {}
    seen, grads = [], []
    original_step = trainer.optimiser.step

    def recording_step(*args, **kwargs):
        grads.append(torch.cat([p.grad.flatten().clone() for p in trainer.trainable]))
        return original_step(*args, **kwargs)

    original_loss = trainer.loss_path.loss

    def recording_loss(part, *args):
        seen.append(part)
        return original_loss(part, *args)

    if not per_sample:
        for t in ids.unique().tolist():
            index = (ids == t).nonzero()[:, 0]
            per_step = [grad_of(batch.select(index[i:i + 1])) for i in range(len(index))]
            first_step[t] = torch.stack(per_step).mean(0)  # accumulated over the steps, each divided by their count
        trainer.optimiser.zero_grad(set_to_none=True)
    trainer.optimiser.step = recording_step
    trainer.loss_path.loss = recording_loss
    stats = trainer.optimise(batch, iteration=0, advantages=advantages)
    assert stats["optimiser_steps"] == len(grads) == trajectories
    for part in seen:  # each step's minibatch is exactly one trajectory's trained steps
        part_ids = (part.sample_id if per_sample else part.trajectory).cpu()
        assert part_ids.unique().numel() == 1 and len(part) == steps_trained
        assert sorted(part.step_index.tolist()) == sorted(batch.step_index[ids == part_ids[0]].tolist())
    assert sorted(int((p.sample_id if per_sample else p.trajectory)[0]) for p in seen) == sorted(ids.unique().tolist())
    if not per_sample:  # the first step's gradient is the mean of its trajectory's per-timestep gradients
        t = int(seen[0].trajectory[0])
        torch.testing.assert_close(grads[0], first_step[t], rtol=1e-4, atol=1e-4 * float(first_step[t].abs().max()))
        assert float(first_step[t].abs().max()) > 0
    # the earlier behaviour: minibatches of random transitions, one step each
    old = Trainer(small_config(tmp_path / "old", preset, max_grad_norm=0.0, minibatch_size=2,
                               optimiser_step="minibatch"))
    result = old.rollout(0)
    batch = result.samples if per_sample else result.pairs
    advantages = old.advantages(result.prompts, result.final_rewards) if per_sample else None
    assert old.optimise(batch, iteration=0, advantages=advantages)["optimiser_steps"] == -(-len(batch) // 2)


def test_trajectory_steps_are_refused_where_the_rollout_records_no_trajectories(tmp_path):
    with pytest.raises(ValueError, match="optimiser_step: 'trajectory'"):
        Trainer(small_config(tmp_path, "tailorpo", optimiser_step="trajectory"))


def test_a_second_mixed_precision_in_one_process_is_refused_by_name(tmp_path):
    from accelerate import Accelerator

    Accelerator(cpu=True)  # this process's accelerate state (other tests may have set it up already): fp32
    with pytest.raises(ValueError, match=r"mixed_precision: 'bf16' asked for, but this process already set up "
                                         r"accelerate with 'no'"):
        Trainer(small_config(tmp_path, None, iterations=1, mixed_precision="bf16"))
