"""The embedded tiny pipeline: it ships, loads offline and fast, samples, and `rdpo-zoo sample` runs; the pretraining
code builds, checkpoints, resumes and exports (the last two as slow tests)."""

from __future__ import annotations

import json
import time

import pytest
import torch

from rdpo_zoo import world
from rdpo_zoo.embedded import load_pipeline, load_tiny_pipeline, tiny_path


@pytest.fixture(scope="module")
def pipe():
    return load_tiny_pipeline()


def test_the_pipeline_folder_ships_small():
    path = tiny_path()
    for part in ("model_index.json", "unet", "vae", "text_encoder", "tokenizer", "scheduler", "pretrain_config.json"):
        assert (path / part).exists(), part
    assert (path / "tokenizer" / "vocab.json").is_file() and (path / "tokenizer" / "merges.txt").is_file()
    weights = sum(f.stat().st_size for f in path.rglob("*.safetensors"))
    assert weights < 15e6, weights


def test_loads_offline_and_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from diffusers import StableDiffusionPipeline

    StableDiffusionPipeline  # imported before timing: the import itself costs seconds
    start = time.perf_counter()
    p = StableDiffusionPipeline.from_pretrained(str(tiny_path()), safety_checker=None, requires_safety_checker=False)
    # ~0.6 s on an idle machine; the bound is loose because tests share a busy 2-core CPU with other jobs.
    assert time.perf_counter() - start < 20.0
    # A plain from_pretrained gives a consistent fp32 pipeline (the stored fp16 UNet/VAE are upcast).
    assert {p.unet.dtype, p.vae.dtype, p.text_encoder.dtype} == {torch.float32}


def test_scheduler_and_tokenizer(pipe):
    cfg = pipe.scheduler.config
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    assert cfg.clip_sample is False and cfg.set_alpha_to_one is False and cfg.steps_offset == 1
    assert cfg.prediction_type == "epsilon"
    for word in ("a", "on", "background", *world.SHAPES, *world.COLOURS, *world.BACKGROUNDS, *world.SIZES):
        assert len(pipe.tokenizer(word, add_special_tokens=False).input_ids) == 1, word
    assert pipe.tokenizer.model_max_length == pipe.text_encoder.config.max_position_embeddings
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size


def test_samples_small_images_deterministically(pipe):
    from rdpo_zoo.preview import sample_images

    prompts = world.ood_prompts()[:2]
    a = sample_images(pipe, prompts, seed=3, steps=3, eta=1.0)
    b = sample_images(pipe, prompts, seed=3, steps=3, eta=1.0)
    assert a.shape == (2, 3, 64, 64) and 0.0 <= a.min() and a.max() <= 1.0
    assert torch.equal(a, b)


def test_load_pipeline_by_name_and_errors():
    assert load_pipeline("tiny").unet.config.sample_size == 16
    with pytest.raises(ValueError, match="model"):
        load_pipeline("")
    with pytest.raises(TypeError, match="dtype"):
        load_tiny_pipeline(dtype="float32")


def test_cli_sample(tmp_path):
    from click.testing import CliRunner

    from rdpo_zoo.cli import main

    out = tmp_path / "samples"
    result = CliRunner().invoke(
        main, ["sample", "--model", "tiny", "--prompts", "ood", "-n", "3", "--num-steps", "2", "--seed", "1",
              "--output-dir", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert (out / "grid.png").is_file()
    report = json.loads((out / "rewards.json").read_text())
    assert len(report["images"]) == 3
    assert set(report["images"][0]["rewards"]) == {"compressibility", "incompressibility", "world-fidelity", "world-aesthetic"}
    assert report["images"][0]["prompt"] == world.ood_prompts()[0]
    assert set(report["check_rates"]) >= {"colour", "shape", "background"}


def test_cli_sample_rejects_an_unknown_prompt_set(tmp_path):
    from click.testing import CliRunner

    from rdpo_zoo.cli import main

    result = CliRunner().invoke(main, ["sample", "--prompts", "nope", "--output-dir", str(tmp_path)])
    assert result.exit_code != 0 and "--prompts" in result.output


@pytest.mark.slow
def test_pretraining_resumes_and_exports(tmp_path):
    from rdpo_zoo.pretrain import PretrainConfig, build_pipeline, export, run

    cfg = PretrainConfig(vae_steps=4, unet_steps=4, vae_batch=2, unet_batch=2, checkpoint_every=2, snapshot_every=2,
                         log_every=1)
    run_dir = tmp_path / "run"
    # A zero time limit stops at the first checkpoint after the start (or after a stage's end); each call resumes.
    assert run(cfg, run_dir, max_minutes=0) is False  # VAE stops at step 2
    assert run(cfg, run_dir, max_minutes=0) is False  # VAE resumes and finishes; the UNet stops at step 2
    assert torch.load(run_dir / "unet.ckpt", weights_only=False)["step"] == 2
    assert run(cfg, run_dir, max_minutes=10) is True
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r.get("event") == "resume"] == [2, 2]
    with pytest.raises(ValueError, match="unet_lr"):
        run(PretrainConfig(vae_steps=4, unet_steps=4, vae_batch=2, unet_batch=2, checkpoint_every=2,
                           snapshot_every=2, log_every=1, unet_lr=5e-4), run_dir)
    out = export(run_dir, tmp_path / "pipe")
    p = load_tiny_pipeline(path=out)
    assert p.unet.config.sample_size == 16
    assert build_pipeline(run_dir, snapshot=2).unet.config.sample_size == 16
