"""The learned reward models (rdpo_zoo.reward_models, plugins/reward_models.py): tiny models of the real
architectures with fixed weights (tests/reward_models_reference.py), checked against the official packages'
scores of the same tiny models (GOLDEN), loaded through the plugins from files in the official layouts, and the
offline behaviour: missing weights fail before any compute, naming the files and how to get them; no network."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import rdpo_zoo
import reward_models_reference as ref
from rdpo_zoo.reward_models import sources
from rdpo_zoo.reward_models.aesthetic import Aesthetic, AestheticMLP, load_aesthetic_mlp
from rdpo_zoo.reward_models.hpsv2 import HPSv2, open_clip_to_transformers
from rdpo_zoo.reward_models.image_reward import ImageReward, VPScore, load_blip_tokenizer
from rdpo_zoo.reward_models.pickscore import PickScore
from rdpo_zoo.reward_models.preprocess import ClipPreprocess, pil_weights
from rdpo_zoo.reward_models.weights import WeightsNotFoundError, cached_hub_file, check, resolve

# Scores of the tiny models by the official code paths, on ref.test_images() (224×224, then 256×320) and
# ref.PROMPTS: `python tests/reward_models_reference.py` in an environment with image-reward 1.5, open_clip 2.24,
# transformers 4.55.4, torch 2.14.1 (see that module). Aesthetic: D3PO's aesthetic_scorer (uint8 tensors through
# CLIPProcessor, CLIP, L2 norm, MLP); PickScore: its model card; HPSv2: open_clip's model and eval transform, the
# raw cosine (token ids ref.HPS_TOKENS); ImageReward: the package's ImageReward.score.
GOLDEN = {
    "aesthetic": [0.639603853225708, 0.4790344536304474],
    "pickscore": [5.159145355224609, 2.4489457607269287],
    "hpsv2": [-0.5764925479888916, 0.11006595939397812],
    "image_reward": [-25.01013946533203, -22.078636169433594],
}
# the official tokenisations of ref.PROMPTS (PickScore's processor; ImageReward's BLIP tokenizer, first 12 of 35)
PICKSCORE_IDS = [
    [512, 320, 79, 71, 78, 83, 334, 78, 325, 320, 66, 64, 339, 513],
    [512, 320, 81, 68, 323, 82, 80, 84, 64, 81, 324, 78, 333, 83, 71, 324, 70, 81, 68, 68, 333, 66, 72, 81, 66, 75,
     324, 267, 79, 64, 72, 77, 83, 72, 77, 326, 513],
]
IMAGE_REWARD_IDS = [[2, 5, 6, 7, 5, 8, 3, 0, 0, 0, 0, 0], [2, 5, 10, 12, 13, 14, 16, 17, 19, 18, 3, 0]]

IMAGES = ref.as_tensor(ref.test_images())


@pytest.fixture(autouse=True)
def _offline_hub(tmp_path, monkeypatch):
    """An empty Hugging Face cache, the hub off, and no socket may connect: nothing here reaches the network."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise AssertionError("a reward test tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    torch.set_num_threads(1)


def close(a, b, rel=2e-5):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return torch.allclose(a, b, rtol=rel, atol=rel * 1e-2)


def scores_one_by_one(reward, images, prompts):
    return torch.stack([reward(x, [p])[0] for x, p in zip(images, prompts)])


def check_reward_contract(reward, images, prompts):
    """Batch of 3 = three singles, deterministic, float32 [B] on the images' device, differentiable form equal to
    the score with a non-zero gradient to the images."""
    batch = torch.cat(images)
    first = reward(batch, prompts)
    assert first.shape == (len(prompts),) and first.dtype == torch.float32
    assert torch.equal(first, reward(batch, prompts))  # deterministic
    singles = torch.cat([reward(batch[i : i + 1], [p]) for i, p in enumerate(prompts)])
    assert torch.allclose(first, singles, rtol=1e-5, atol=1e-6)
    x = batch.clone().requires_grad_(True)
    value = reward.score_differentiable(x, prompts)
    assert value.requires_grad and torch.allclose(value.detach(), first, rtol=1e-5, atol=1e-6)
    value.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert reward.differentiable and isinstance(reward.scale, float) and reward.scale > 0 and reward.unit
    assert not any(p.requires_grad for p in reward.model.parameters())  # the reward model stays frozen


# ------------------------------------------------------------------------------------------- preprocessing


@pytest.mark.parametrize("size", [(224, 224), (256, 320), (320, 256), (512, 512), (300, 229), (64, 96)])
def test_preprocess_is_clip_image_processor_bit_for_bit(size):
    """Resize (PIL bicubic of the shortest side), centre crop and normalise as CLIPProcessor does it on a PIL
    image: the same pixel values, exactly (PIL's fixed-point passes are emulated), for noise and a smooth image."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    h, w = size
    noise = np.random.default_rng(h * 1000 + w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    smooth = (127 + 120 * np.sin(xx / 7.0)[..., None] * np.cos(yy / 11.0)[..., None] * np.array([1.0, 0.5, -0.7]))
    for array in (noise, smooth.round().clip(0, 255).astype(np.uint8)):
        expected = CLIPImageProcessorPil()(images=Image.fromarray(array), return_tensors="pt")["pixel_values"]
        mine = ClipPreprocess()(torch.from_numpy(array).permute(2, 0, 1)[None].float() / 255.0)
        assert mine.shape == expected.shape == (1, 3, 224, 224)
        assert torch.allclose(mine, expected, atol=1e-6), (mine - expected).abs().max()


def test_preprocess_torchvision_crop_rounds_the_offset():
    """open_clip and ImageReward crop as torchvision does: offset round((H − h) / 2) (transformers: floor)."""
    from PIL import Image as PILImage

    array = np.random.default_rng(3).integers(0, 256, (224, 251, 3), dtype=np.uint8)  # margin 27: 13 vs 14
    resized = PILImage.fromarray(array)  # already 224 on the short side: no resampling
    left = int(round((251 - 224) / 2.0))
    crop = np.asarray(resized.crop((left, 0, left + 224, 224)), dtype=np.float32) / 255.0
    mean, std = np.array(ClipPreprocess().mean), np.array(ClipPreprocess().std)
    expected = torch.from_numpy(((crop - mean) / std).astype(np.float32)).permute(2, 0, 1)[None]
    x = torch.from_numpy(array).permute(2, 0, 1)[None].float() / 255.0
    assert torch.allclose(ClipPreprocess(rounding="round")(x), expected, atol=1e-6)
    assert not torch.allclose(ClipPreprocess(rounding="floor")(x), expected, atol=1e-3)


def test_preprocess_batched_differentiable_and_from_config(tmp_path):
    x = torch.rand(3, 3, 96, 80, dtype=torch.float32, requires_grad=True)
    pre = ClipPreprocess()
    out = pre(x)
    assert out.shape == (3, 3, 224, 224) and out.dtype == torch.float32
    assert torch.equal(out[1:2], pre(x[1:2].detach()))
    out.square().sum().backward()
    assert x.grad.abs().sum() > 0
    # PIL's weights: each row sums to 1 up to the fixed point, and the matrix is banded
    w = pil_weights(320, 280)
    assert w.shape == (280, 320) and np.allclose(w.sum(1), 1.0, atol=1e-5)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(
        {"size": {"shortest_edge": 64}, "crop_size": {"height": 48, "width": 56}, "resample": 3,
         "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]}))
    configured = ClipPreprocess.from_config(str(tmp_path))
    assert (configured.size, configured.crop, configured.mean) == (64, (48, 56), (0.5, 0.5, 0.5))
    assert configured(torch.rand(1, 3, 70, 90)).shape == (1, 3, 48, 56)
    assert ClipPreprocess.from_config(None) == ClipPreprocess()


# ------------------------------------------------------------------------------------------- aesthetic


def _aesthetic_files(tmp_path):
    clip_dir = tmp_path / "clip"
    ref.tiny_clip_model().save_pretrained(clip_dir)
    mlp_path = tmp_path / "sac+logos+ava1-l14-linearMSE.pth"
    torch.save(ref.state_from_layout(ref.aesthetic_mlp_layout()), mlp_path)  # the upstream key layout
    return str(clip_dir), str(mlp_path)


def test_aesthetic_golden_batching_and_gradient():
    mlp = AestheticMLP()
    mlp.load_state_dict(ref.state_from_layout(ref.aesthetic_mlp_layout()))
    reward = Aesthetic.from_modules(ref.tiny_clip_model(), mlp)
    assert close(scores_one_by_one(reward, IMAGES, ["x", "y"]), GOLDEN["aesthetic"])
    same_size = [IMAGES[0], IMAGES[0].flip(-1), IMAGES[0].roll(17, -2)]
    check_reward_contract(reward, same_size, ["a", "b", "c"])


def test_aesthetic_plugin_loads_local_files(tmp_path, caplog):
    clip_dir, mlp_path = _aesthetic_files(tmp_path)
    reward = rdpo_zoo.get_part("reward", "aesthetic").build({"clip": clip_dir, "weights": mlp_path})
    assert isinstance(reward, Aesthetic)
    assert close(scores_one_by_one(reward, IMAGES, ["x", "y"]), GOLDEN["aesthetic"])
    # not the sac+logos+ava1 file (its git blob id differs): loaded, with a warning
    assert any("is not sac+logos+ava1-l14-linearMSE.pth" in r.getMessage() for r in caplog.records)


def test_aesthetic_mlp_key_layout_is_checked(tmp_path):
    bad = {k.replace("layers.7", "layers.8"): v for k, v in ref.state_from_layout(ref.aesthetic_mlp_layout()).items()}
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"missing \['layers.7.bias', 'layers.7.weight'\], unexpected"):
        load_aesthetic_mlp(str(tmp_path / "bad.pth"))


def test_aesthetic_dtype_option(tmp_path):
    clip_dir, mlp_path = _aesthetic_files(tmp_path)
    full = Aesthetic(clip=clip_dir, weights=mlp_path)
    half = Aesthetic(clip=clip_dir, weights=mlp_path, dtype="bfloat16")
    a, b = full(IMAGES[0], ["x"]), half(IMAGES[0], ["x"])
    assert b.dtype == torch.float32 and torch.allclose(a, b, atol=0.05)


# ------------------------------------------------------------------------------------------- pickscore


def _clip_tokenizer(tmp_path):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(ref.write_clip_vocab(str(tmp_path / "clip-tokenizer")))


def test_pickscore_golden_tokens_batching_and_gradient(tmp_path):
    tokenizer = _clip_tokenizer(tmp_path)
    assert [tokenizer(p, truncation=True, max_length=77)["input_ids"] for p in ref.PROMPTS] == PICKSCORE_IDS
    reward = PickScore.from_modules(ref.tiny_clip_model(projection_dim=16), tokenizer)
    assert close(scores_one_by_one(reward, IMAGES, ref.PROMPTS), GOLDEN["pickscore"])
    # prompts of different lengths in one batch (padding) score as they do alone
    same_size = [IMAGES[0], IMAGES[0].flip(-1), IMAGES[0]]
    check_reward_contract(reward, same_size, [ref.PROMPTS[0], ref.PROMPTS[1], "a dog"])


def test_pickscore_plugin_loads_local_folders(tmp_path):
    model_dir = tmp_path / "pickscore"
    ref.tiny_clip_model(projection_dim=16).save_pretrained(model_dir)
    processor_dir = ref.write_clip_vocab(str(tmp_path / "processor"))
    with open(os.path.join(processor_dir, "preprocessor_config.json"), "w") as handle:
        json.dump({"size": {"shortest_edge": 224}, "crop_size": {"height": 224, "width": 224}, "resample": 3,
                   "image_mean": list(ClipPreprocess().mean), "image_std": list(ClipPreprocess().std)}, handle)
    reward = rdpo_zoo.get_part("reward", "pickscore").build({"model": str(model_dir), "processor": processor_dir})
    assert close(scores_one_by_one(reward, IMAGES, ref.PROMPTS), GOLDEN["pickscore"])


# ------------------------------------------------------------------------------------------- hpsv2


def test_hpsv2_conversion_matches_open_clip_golden(tmp_path):
    """The open_clip state dict (official key layout) converted to transformers' CLIP gives open_clip's scores."""
    reward = HPSv2.from_open_clip_state_dict(ref.state_from_layout(ref.open_clip_layout()), _clip_tokenizer(tmp_path))
    tokens = torch.tensor(ref.HPS_TOKENS)
    got = torch.stack([reward.model.score_tokens(x, tokens[i : i + 1])[0] for i, x in enumerate(IMAGES)])
    assert close(got, GOLDEN["hpsv2"])
    config, _ = open_clip_to_transformers(ref.state_from_layout(ref.open_clip_layout()))
    assert (config.vision_config.num_attention_heads, config.text_config.num_attention_heads) == (2, 2)
    assert config.vision_config.hidden_act == "gelu" and config.projection_dim == 24


def test_hpsv2_plugin_loads_checkpoint_and_batches(tmp_path):
    path = tmp_path / "HPS_v2.1_compressed.pt"
    torch.save({"state_dict": ref.state_from_layout(ref.open_clip_layout())}, path)  # as hpsv2 saves it
    tokenizer_dir = ref.write_clip_vocab(str(tmp_path / "tok"))
    reward = rdpo_zoo.get_part("reward", "hpsv2").build({"weights": str(path), "tokenizer": tokenizer_dir})
    assert isinstance(reward, HPSv2) and reward.scale == 0.01
    same_size = [IMAGES[0], IMAGES[0].flip(-1), IMAGES[0].roll(5, -1)]
    check_reward_contract(reward, same_size, ["a cat", "a red square", "a photo of a dog on the green circle"])
    value = reward(IMAGES[0], ["a cat"])
    assert -1.0 <= float(value) <= 1.0  # a raw cosine


def test_hpsv2_conversion_refuses_unknown_keys():
    state = ref.state_from_layout(ref.open_clip_layout())
    state["visual.attn_pool.query"] = torch.zeros(4)
    with pytest.raises(ValueError, match="visual.attn_pool.query"):
        open_clip_to_transformers(state)


def test_hpsv2_open_clip_backend_needs_open_clip(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)  # not installable beside this stack
    with pytest.raises(ImportError, match="backend=open_clip needs open_clip"):
        HPSv2(weights=str(tmp_path / "x.pt"), backend="open_clip")


# ------------------------------------------------------------------------------------------- image-reward


def _blip_tokenizer(tmp_path):
    return load_blip_tokenizer(ref.write_bert_vocab(str(tmp_path / "bert")))


def _med_config(tmp_path) -> str:
    path = tmp_path / "med_config.json"
    path.write_text(json.dumps(ref.IMAGE_REWARD_TINY["med"]))
    return str(path)


def test_image_reward_golden_tokens_and_contract(tmp_path):
    tokenizer = _blip_tokenizer(tmp_path)
    ids = [tokenizer(p, padding="max_length", truncation=True, max_length=35)["input_ids"] for p in ref.PROMPTS]
    assert [i[:12] for i in ids] == IMAGE_REWARD_IDS and all(len(i) == 35 for i in ids)
    reward = ImageReward.from_state_dict(ref.state_from_layout(ref.image_reward_layout()), tokenizer,
                                         med_config=ref.IMAGE_REWARD_TINY["med"])
    assert close(scores_one_by_one(reward, IMAGES, ref.PROMPTS), GOLDEN["image_reward"])
    same_size = [IMAGES[0], IMAGES[0].flip(-1), IMAGES[0]]
    check_reward_contract(reward, same_size, [ref.PROMPTS[0], ref.PROMPTS[1], "a dog"])


def test_image_reward_and_vp_score_plugins_load_checkpoints(tmp_path):
    state = ref.state_from_layout(ref.image_reward_layout())
    state["blip.vision_proj.weight"] = torch.zeros(4, 128)  # in the official checkpoint, unused by the score
    state["blip.text_encoder.embeddings.position_ids"] = torch.arange(64)[None]
    path = tmp_path / "ImageReward.pt"
    torch.save(state, path)
    tokenizer_dir = ref.write_bert_vocab(str(tmp_path / "bert"))
    options = {"weights": str(path), "tokenizer": tokenizer_dir, "med_config": _med_config(tmp_path)}
    reward = rdpo_zoo.get_part("reward", "image-reward").build(options)
    assert isinstance(reward, ImageReward) and reward.scale == 1.0
    assert close(scores_one_by_one(reward, IMAGES, ref.PROMPTS), GOLDEN["image_reward"])
    vp = rdpo_zoo.get_part("reward", "vp-score").build(options)
    assert isinstance(vp, VPScore) and vp.name == "vp-score"
    assert close(scores_one_by_one(vp, IMAGES, ref.PROMPTS), GOLDEN["image_reward"])


def test_image_reward_refuses_foreign_checkpoints(tmp_path):
    state = ref.state_from_layout(ref.image_reward_layout())
    state["blip.itm_head.weight"] = torch.zeros(2, 32)
    with pytest.raises(ValueError, match="unknown keys .*blip.itm_head.weight"):
        ImageReward.from_state_dict(state, _blip_tokenizer(tmp_path), med_config=ref.IMAGE_REWARD_TINY["med"])


# ------------------------------------------------------------------------------------------- offline, errors


@pytest.mark.parametrize(
    "name, options, expected",
    [
        ("aesthetic", {}, ["openai/clip-vit-large-patch14", "aesthetic-model.pth", "sac%2Blogos%2Bava1-l14-linearMSE.pth",
                           "hf download", "--reward-opt weights=PATH", "--reward-opt clip=PATH"]),
        ("pickscore", {}, ["yuvalkirstain/PickScore_v1", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", "hf download"]),
        ("hpsv2", {}, ["xswu/HPSv2/HPS_v2.1_compressed.pt", "hf download xswu/HPSv2 HPS_v2.1_compressed.pt"]),
        ("hpsv2", {"version": "v2.0"}, ["HPS_v2_compressed.pt"]),
        ("image-reward", {}, ["THUDM/ImageReward/ImageReward.pt", "google-bert/bert-base-uncased", "hf download"]),
        ("vp-score", {}, ["option 'weights' is required", "arXiv:2404.15100"]),
        ("aesthetic", {"weights": "/no/such/file.pth"}, ["no such file '/no/such/file.pth'"]),
        ("aesthetic", {"clip": "someorg/some-clip"}, ["someorg/some-clip is not in the local Hugging Face cache"]),
    ],
)
def test_missing_weights_fail_before_compute(name, options, expected, monkeypatch):
    """Offline with nothing cached, building fails at once (no file is read, no model is made) with every missing
    file, how to get it, and the option that points at a local copy; the socket guard proves no connection."""
    import safetensors.torch
    import transformers

    def no_loading(*args, **kwargs):
        raise AssertionError("a reward loaded weights before checking that all of them are here")

    monkeypatch.setattr(torch, "load", no_loading)
    monkeypatch.setattr(safetensors.torch, "load_file", no_loading)
    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", classmethod(no_loading))
    with pytest.raises(WeightsNotFoundError) as info:
        rdpo_zoo.get_part("reward", name).build(options)
    message = str(info.value)
    for text in expected:
        assert text in message, (text, message)
    assert message.startswith(f"reward {name!r}: its weights are not on this machine")


def test_resolution_rules(tmp_path, monkeypatch):
    """Local paths as given; defaults from the cache only; a named hub id may be downloaded only online."""
    cache = tmp_path / "hf-cache" / "models--org--model"
    (cache / "refs").mkdir(parents=True)
    (cache / "refs" / "main").write_text("abc123")
    snapshot = cache / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "weights.pt").write_bytes(b"x")
    assert cached_hub_file("org/model", "weights.pt") == str(snapshot / "weights.pt")
    assert cached_hub_file("org/model", "other.pt") is None
    source = sources.FileSource("a file", "weights", (("org/model", "weights.pt"),), "get it")
    assert resolve("r", [(source, None)])[0].path == str(snapshot / "weights.pt")
    assert resolve("r", [(source, "org/model/weights.pt")])[0].path == str(snapshot / "weights.pt")
    assert resolve("r", [(source, str(snapshot))])[0].path == str(snapshot / "weights.pt")  # a folder with it
    with pytest.raises(WeightsNotFoundError, match="org/other/w.pt is not in the local Hugging Face cache"):
        resolve("r", [(source, "org/other/w.pt")])
    monkeypatch.delenv("HF_HUB_OFFLINE")
    named = resolve("r", [(source, "org/other/w.pt")])[0]
    assert named.path is None and named.download == ("org/other", "w.pt")  # online and named: may download
    empty = sources.FileSource("another", "weights", (("org/absent", "w.pt"),), "")
    with pytest.raises(WeightsNotFoundError):  # a default is never downloaded, online or not
        resolve("r", [(empty, None)])
    assert check([(source, None)]) == (True, f"found {snapshot / 'weights.pt'}")
    assert check([(empty, None)])[0] is False


# ------------------------------------------------------------------------------------------- plugins listing


def _populate_cache(root, repo_id, files):
    folder = root / ("models--" + repo_id.replace("/", "--"))
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text("0" * 40)
    snapshot = folder / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True, exist_ok=True)
    for name in files:
        (snapshot / name).write_text("{}")
    return snapshot


def test_plugins_lists_weight_availability(tmp_path):
    from rdpo_zoo.cli.plugins_cmd import plugins

    result = CliRunner().invoke(plugins, ["--kind", "reward"])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.output.splitlines() if line.startswith("  ") and not line.startswith("      ")}
    for name in ("aesthetic", "pickscore", "hpsv2", "image-reward", "vp-score"):
        assert "[weights: NOT on this machine]" in lines[name], lines[name]
    assert "weights" not in lines["compressibility"]
    assert "missing openai/clip-vit-large-patch14, trl-lib/ddpo-aesthetic-predictor/aesthetic-model.pth" in result.output

    cache = tmp_path / "hf-cache"
    _populate_cache(cache, "openai/clip-vit-large-patch14", ["config.json", "model.safetensors"])
    _populate_cache(cache, "trl-lib/ddpo-aesthetic-predictor", ["aesthetic-model.pth"])
    result = CliRunner().invoke(plugins, ["--kind", "reward", "--json"])
    parts = {p["name"]: p for p in json.loads(result.output)["parts"]["reward"]}
    assert parts["aesthetic"]["weights"]["available"] is True
    assert parts["pickscore"]["weights"]["available"] is False
    assert parts["compressibility"]["weights"] is None
    result = CliRunner().invoke(plugins, ["--kind", "reward"])
    assert "aesthetic" in result.output and "[weights: on this machine]" in result.output


def test_reward_part_availability_contract():
    from rdpo_zoo.parts import RewardPart

    with pytest.raises(ValueError, match="availability must be a callable"):
        RewardPart("r", "a reward", "x.y:Z", availability="not a target")
    part = RewardPart("r", "a reward", "x.y:Z", [rdpo_zoo.Option("path", str, "p", "where")],
                      availability=lambda path: (path == "here", f"looked at {path}"))
    assert part.check_available() == (False, "looked at p")
    assert part.check_available({"path": "here"}) == (True, "looked at here")

    def broken(**_):
        raise RuntimeError("boom")

    assert RewardPart("b", "a reward", "x.y:Z", availability=broken).check_available() == (
        False, "the availability check failed: RuntimeError: boom")
    assert RewardPart("n", "a reward", "x.y:Z").check_available() is None


def test_listing_rewards_imports_no_torch():
    code = (
        "import sys, json; from click.testing import CliRunner; from rdpo_zoo.cli.plugins_cmd import plugins; "
        "r = CliRunner().invoke(plugins, ['--kind', 'reward', '--json']); "
        "names = [p['name'] for p in json.loads(r.output)['parts']['reward']]; "
        "print(json.dumps([names, sorted(m for m in ('torch', 'transformers', 'huggingface_hub.file_download') "
        "if m in sys.modules)]))"
    )
    env = dict(os.environ, RDPO_ZOO_PLUGINS="builtin", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    names, heavy = json.loads(out.strip().splitlines()[-1])
    assert {"aesthetic", "pickscore", "hpsv2", "image-reward", "vp-score"} <= set(names)
    assert heavy == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_rewards_follow_the_images_to_the_gpu(tmp_path):
    """The model moves to the images' device on first use; the PIL-exact preprocessing is exact there too."""
    x = torch.cat([IMAGES[1], IMAGES[1].flip(-1)])
    assert torch.equal(ClipPreprocess()(x.cuda()).cpu(), ClipPreprocess()(x))
    reward = ImageReward.from_state_dict(ref.state_from_layout(ref.image_reward_layout()), _blip_tokenizer(tmp_path),
                                         med_config=ref.IMAGE_REWARD_TINY["med"])
    cpu = reward(x, ref.PROMPTS)
    gpu = reward(x.cuda(), ref.PROMPTS)
    assert gpu.device.type == "cuda" and reward.device.type == "cuda"
    assert torch.allclose(gpu.cpu(), cpu, rtol=1e-3, atol=1e-3)
    half = ImageReward.from_state_dict(ref.state_from_layout(ref.image_reward_layout()), _blip_tokenizer(tmp_path),
                                       med_config=ref.IMAGE_REWARD_TINY["med"], dtype="float16")
    assert half(x.cuda(), ref.PROMPTS).dtype == torch.float32


def test_named_hub_ids_download_only_what_loading_needs(tmp_path, monkeypatch):
    """Online, a named id is fetched by huggingface_hub (faked here): configs, tokenizer files and one weights
    format, not every format a repository holds."""
    import huggingface_hub

    from rdpo_zoo.reward_models.common import hub_path

    calls = []

    def fake_snapshot(repo_id, allow_patterns=None, **kwargs):
        calls.append((repo_id, tuple(allow_patterns)))
        folder = tmp_path / "snap"
        folder.mkdir(exist_ok=True)
        (folder / "config.json").write_text("{}")
        if "pytorch_model*.bin" in allow_patterns:
            (folder / "pytorch_model.bin").write_bytes(b"")
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo, name, **kw: calls.append((repo, name)) or "f")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    clip, mlp = resolve("aesthetic", sources.aesthetic_sources(clip="org/clip", weights="org/mlp/head.pth"))
    assert (clip.download, mlp.download) == ("org/clip", ("org/mlp", "head.pth"))
    assert hub_path(clip) == str(tmp_path / "snap") and hub_path(mlp) == "f"
    assert calls == [("org/clip", ("*.json", "*.txt", "*.safetensors")),
                     ("org/clip", ("*.json", "*.txt", "pytorch_model*.bin")), ("org/mlp", "head.pth")]


def test_an_incomplete_cached_model_is_named(tmp_path):
    _populate_cache(tmp_path / "hf-cache", "openai/clip-vit-large-patch14", ["config.json"])  # no weights
    available, detail = sources.aesthetic_available()
    assert not available and "openai/clip-vit-large-patch14 (incomplete)" in detail
    with pytest.raises(WeightsNotFoundError, match=r"is cached without model.safetensors or pytorch_model.bin"):
        resolve("aesthetic", sources.aesthetic_sources())
