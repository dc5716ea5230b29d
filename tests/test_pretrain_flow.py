"""tiny-flow's pretraining (rdpo_zoo.pretrain_flow): a tiny-config run resumes to exactly the state of an
uninterrupted one, exports a StableDiffusion3Pipeline folder that loads and samples, and refuses a changed config."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from rdpo_zoo.pretrain_flow import FlowPretrainConfig, build_pipeline, export, is_flow_run, run, sample_images


def _tiny_config(**overrides) -> FlowPretrainConfig:
    settings = dict(text_hidden=16, text_heads=2, text_projection=8, layers=1, heads=2, head_dim=8, latent_pool=8,
                    steps=4, batch=2, warmup_steps=1, checkpoint_every=2, snapshot_every=2, log_every=1)
    return FlowPretrainConfig(**{**settings, **overrides})


def _state(run_dir):
    return torch.load(run_dir / "transformer.ckpt", weights_only=False)


def _assert_same(a, b, where="state"):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("flow")
    whole, resumed = root / "whole", root / "resumed"
    assert run(_tiny_config(), whole, max_minutes=10) is True
    # A zero time limit stops at the first checkpoint (step 2); the second call resumes and finishes.
    assert run(_tiny_config(), resumed, max_minutes=0) is False
    assert _state(resumed)["step"] == 2
    assert run(_tiny_config(), resumed, max_minutes=10) is True
    return whole, resumed


def test_resumed_run_equals_uninterrupted_run(runs):
    whole, resumed = runs
    a, b = _state(whole), _state(resumed)
    assert a["step"] == b["step"] == 4
    _assert_same(a, b)  # weights, optimiser moments and EMA, bit for bit
    log = [json.loads(line) for line in (resumed / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r.get("event") == "resume"] == [2]
    # and training moved the weights: the EMA snapshots at steps 2 and 4 differ
    from safetensors.torch import load_file

    snaps = [load_file(whole / "snapshots" / f"step-{n}" / "transformer" / "diffusion_pytorch_model.safetensors")
             for n in (2, 4)]
    assert any(not torch.equal(snaps[0][k], snaps[1][k]) for k in snaps[0])


def test_changed_config_is_refused(runs):
    with pytest.raises(ValueError, match="lr"):
        run(_tiny_config(lr=5e-4), runs[0])
    assert is_flow_run(runs[0])


def test_export_loads_offline_and_samples(runs, tmp_path):
    from diffusers import StableDiffusion3Pipeline
    from safetensors.torch import load_file

    out = export(runs[0], tmp_path / "pipe", shift=3.0)
    weights = load_file(out / "transformer" / "diffusion_pytorch_model.safetensors")
    assert all(v.dtype == torch.float16 for v in weights.values())
    pipe = StableDiffusion3Pipeline.from_pretrained(out, text_encoder_3=None, tokenizer_3=None, local_files_only=True)
    assert pipe.transformer.dtype == torch.float32 and pipe.text_encoder.dtype == torch.float32
    assert pipe.scheduler.config.shift == 3.0
    assert json.loads((out / "pretrain_config.json").read_text())["exported_snapshot"] == "step-4"
    assert pipe.vae.config.shift_factor is not None
    # The fp16 export samples what the run's fp32 snapshot samples, to fp16 precision.
    ref = build_pipeline(runs[0], shift=3.0)
    diff = (sample_images(pipe, ["a small red circle on a white background"], steps=2)
            - sample_images(ref, ["a small red circle on a white background"], steps=2)).abs().max()
    assert diff < 0.05


def test_cli_pretrain_flow_and_bad_options(tmp_path):
    from rdpo_zoo.cli import main

    cfg = tmp_path / "cfg.json"
    cfg.write_text(_tiny_config(steps=2).to_json())
    result = CliRunner().invoke(main, ["pretrain", "run", "--model", "tiny-flow", "--config", str(cfg), "--run-dir",
                                       str(tmp_path / "run"), "--transformer-steps", "1"])
    assert result.exit_code == 0, result.output
    assert _state(tmp_path / "run")["step"] == 1
    result = CliRunner().invoke(main, ["pretrain", "export", "--run-dir", str(tmp_path / "run"), "--fp32",
                                       "--output-dir", str(tmp_path / "out")])
    assert result.exit_code != 0 and "--fp32" in result.output
    result = CliRunner().invoke(main, ["pretrain", "run", "--model", "tiny-flow", "--unet-steps", "1"])
    assert result.exit_code != 0 and "--unet-steps" in result.output
    with pytest.raises(ValueError, match="t5_pad_lengths"):
        FlowPretrainConfig(t5_pad_lengths=(-1,))


def test_world_check_measures_flow_folders_and_runs(runs, tmp_path):
    from rdpo_zoo.cli import main

    out = export(runs[0], tmp_path / "pipe")
    for source in (["--model", str(out)], ["--run", str(runs[0]), "--snapshot", "2"]):
        result = CliRunner().invoke(main, ["world-check", *source, "-n", "2", "--num-steps", "2", "--shift", "2"])
        assert result.exit_code == 0, result.output
        rates = json.loads(result.stdout)
        assert rates["n"] == 2 and rates["sampler"] == "euler" and rates["shift"] == 2.0
    result = CliRunner().invoke(main, ["world-check", "--model", str(out), "-n", "2", "--eta", "0.5"])
    assert result.exit_code != 0 and "--eta" in result.output
    result = CliRunner().invoke(main, ["world-check", "-n", "2", "--shift", "2"])  # tiny is a DDIM model
    assert result.exit_code != 0 and "--shift" in result.output


def test_pooled_none_fixes_the_pooled_vector_at_zero_in_training_and_in_the_export(tmp_path):
    from safetensors.torch import load_file

    cfg = _tiny_config(pooled="none")
    assert run(cfg, tmp_path / "run", max_minutes=10) is True
    snapshot = tmp_path / "run" / "snapshots" / "step-4"
    for encoder in ("text_encoder", "text_encoder_2"):
        weights = load_file(snapshot / encoder / "model.safetensors")
        assert torch.count_nonzero(weights["text_projection.weight"]) == 0
    ckpt = _state(tmp_path / "run")  # the resumable state keeps it at zero too
    assert torch.count_nonzero(ckpt["text_encoder"]["text_projection.weight"]) == 0
    pipe = build_pipeline(tmp_path / "run", snapshot=4)
    _, _, pooled, _ = pipe.encode_prompt(["a red circle"], ["a red circle"], None, do_classifier_free_guidance=False,
                                         max_sequence_length=2)
    assert pooled.shape[-1] == 2 * cfg.text_projection and torch.count_nonzero(pooled) == 0


def test_pooled_takes_text_or_none():
    with pytest.raises(ValueError, match=r"pooled: expected one of \('text', 'none'\), got 'mean'"):
        _tiny_config(pooled="mean")
