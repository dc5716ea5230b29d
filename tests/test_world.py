"""The embedded world: determinism, prompt splits, the pixel checker, and the image rewards (ranking, differentiable
form, errors). Everything here is made by the tests; no model is loaded."""

from __future__ import annotations

import time

import pytest
import torch

from rdpo_zoo import world
from rdpo_zoo.image_rewards import (
    WORLD_REWARDS,
    JpegCompressibility,
    JpegIncompressibility,
    WorldAesthetic,
    WorldFidelity,
    make_reward,
)
from rdpo_zoo.rewards import RewardNotDifferentiableError


def _scene(**kw) -> world.Scene:
    base = dict(shape="circle", colour="red", background="white", size="large", cx=32.0, cy=32.0, half=16.0,
                rgb=world.COLOURS["red"], bg_rgb=world.BACKGROUNDS["white"])
    base.update(kw)
    if "colour" in kw and "rgb" not in kw:
        base["rgb"] = world.COLOURS[kw["colour"]]
    if "background" in kw and "bg_rgb" not in kw:
        base["bg_rgb"] = world.BACKGROUNDS[kw["background"]]
    return world.Scene(**base)


def _swap(prompt: str, attribute: str) -> str:
    """The prompt with one attribute changed to another world value."""
    a = world.parse_prompt(prompt)
    values = dict(shape=a.shape, colour=a.colour, background=a.background, size=a.size)
    options = {"shape": world.SHAPES, "colour": list(world.COLOURS), "background": list(world.BACKGROUNDS)}[attribute]
    values[attribute] = next(o for o in options if o != values[attribute])
    return world.prompt_of(**values)


# --------------------------------------------------------------------------------------------------- the world


def test_generator_is_deterministic_and_seeded():
    x1, p1 = world.make_batch(16, seed=7)
    x2, p2 = world.make_batch(16, seed=7)
    x3, p3 = world.make_batch(16, seed=8)
    assert torch.equal(x1, x2) and p1 == p2
    assert not torch.equal(x1, x3)
    assert x1.shape == (16, 3, 64, 64) and x1.dtype == torch.float32
    assert 0.0 <= x1.min() and x1.max() <= 1.0


def test_prompt_splits():
    train, ood = world.train_prompts(), world.ood_prompts()
    assert len(train) == 90 and len(ood) == 18
    assert not set(train) & set(ood)
    assert sorted(train + ood) == sorted(world.all_prompts())
    # Every single attribute is seen in training; only the held-out pairs are new.
    seen = [world.parse_prompt(p) for p in train]
    assert {a.colour for a in seen} == set(world.COLOURS)
    assert {a.shape for a in seen} == set(world.SHAPES)
    assert {a.background for a in seen} == set(world.BACKGROUNDS)
    drawn = world.sample_scenes(500, seed=1, split="train")
    assert not {(s.colour, s.shape) for s in drawn} & set(world.OOD_PAIRS)
    assert {(s.colour, s.shape) for s in world.sample_scenes(50, seed=1, split="ood")} <= set(world.OOD_PAIRS)


def test_prompt_round_trip_and_errors():
    p = world.prompt_of("triangle", "blue", "gray", "small")
    assert p == "a small blue triangle on a gray background"
    assert world.parse_prompt(p) == world.Attributes("triangle", "blue", "gray", "small")
    assert world.parse_prompt("A red square on a black background.") == world.Attributes("square", "red", "black", None)
    with pytest.raises(ValueError, match="prompt"):
        world.parse_prompt("a photo of a cat")
    with pytest.raises(ValueError, match="colour 'pink'"):
        world.parse_prompt("a pink circle on a white background")
    with pytest.raises(ValueError, match="shape"):
        world.prompt_of("hexagon", "red", "white")
    with pytest.raises(ValueError, match="split"):
        world.sample_scenes(2, seed=0, split="test")


def test_prompt_sets(tmp_path):
    assert world.prompt_set("ood") == world.ood_prompts()
    f = tmp_path / "prompts.txt"
    f.write_text("# animals\na cat\n\na dog\n")
    assert world.prompt_set(str(f)) == ["a cat", "a dog"]
    with pytest.raises(ValueError, match="prompts"):
        world.prompt_set("no-such-set")


def test_checker_reads_clean_renders():
    images, prompts = world.make_batch(600, seed=3, split="all")
    rates = world.evaluate(images, prompts)
    for key in ("colour", "shape", "background", "size", "all"):
        assert rates[key] == 1.0, (key, rates)


def test_checker_reads_a_blank_image_as_no_object():
    blank = torch.full((1, 3, 64, 64), 0.5)
    got = world.check(blank)[0]
    assert got.background == "gray" and got.shape is None and got.colour is None


# --------------------------------------------------------------------------------------------------- rewards


def test_fidelity_prefers_the_asked_attributes():
    images, prompts = world.make_batch(128, seed=5, split="all")
    reward = WorldFidelity()
    right = reward.score(images, prompts)
    assert right.min() > 0.8
    for attribute in ("shape", "colour", "background"):
        wrong = reward.score(images, [_swap(p, attribute) for p in prompts])
        assert (right > wrong + 0.1).all(), attribute


def test_aesthetic_ranks_clear_pairs():
    reward = WorldAesthetic()
    prompts = ["a large red circle on a white background"] * 2
    centred, corner = world.render([_scene(), _scene(cx=18.0, cy=18.0)])
    assert reward.score(torch.stack([centred, corner]), prompts).argmax() == 0
    blurred = torch.nn.functional.avg_pool2d(centred[None], 5, stride=1, padding=2, count_include_pad=False)[0]
    assert reward.score(torch.stack([centred, blurred]), prompts).argmax() == 0
    faint = world.render([_scene(colour="yellow")])[0]  # yellow on white: low contrast
    assert reward.score(torch.stack([centred, faint]), prompts).argmax() == 0
    noisy = (centred + 0.1 * torch.randn(centred.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    assert reward.score(torch.stack([centred, noisy]), prompts).argmax() == 0
    parts = reward.components(torch.stack([centred, corner]))
    assert set(parts) == {"contrast", "centring", "sharpness"}
    assert all(((v >= 0) & (v <= 1)).all() for v in parts.values())


def test_compressibility_ranks_flat_over_noisy():
    flat = world.render([_scene()])
    noisy = (flat + 0.2 * torch.randn(flat.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    images, prompts = torch.cat([flat, noisy]), ["x", "y"]
    c, i = JpegCompressibility().score(images, prompts), JpegIncompressibility().score(images, prompts)
    assert c[0] > c[1] and i[1] > i[0]
    assert torch.allclose(c, -i)
    assert 0.5 < -c[0] < 2.0  # a flat 64×64 image is ~1 kB, most of it header
    with pytest.raises(RewardNotDifferentiableError):
        JpegCompressibility().score_differentiable(images, prompts)
    with pytest.raises(ValueError, match="quality"):
        JpegCompressibility(quality=100)


@pytest.mark.parametrize("name", ["world-fidelity", "world-aesthetic"])
def test_differentiable_form_equals_score_and_has_a_gradient(name):
    reward = make_reward(name)
    assert reward.differentiable
    images, prompts = world.make_batch(8, seed=11, split="all")
    images = (images + 0.05 * torch.randn(images.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    x = images.clone().requires_grad_(True)
    value = reward.score_differentiable(x, prompts)
    assert torch.allclose(value.detach(), reward.score(images, prompts), atol=1e-6)
    value.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_rewards_are_deterministic_batched_and_fast():
    images, prompts = world.make_batch(64, seed=2, split="all")
    for name, cls in WORLD_REWARDS.items():
        reward = cls()
        whole = reward.score(images, prompts)
        assert whole.shape == (64,) and whole.dtype == torch.float32
        assert torch.equal(whole, reward.score(images, prompts))
        halves = torch.cat([reward.score(images[:32], prompts[:32]), reward.score(images[32:], prompts[32:])])
        assert torch.allclose(whole, halves, atol=1e-6), name
        assert reward.scale > 0 and reward.unit
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            reward.score(images, prompts)
            best = min(best, time.perf_counter() - start)
        # The contract is <= 1 ms per image (measured 0.1-0.5 ms on an idle core, docs/world.md); the bound here is
        # loose because tests share a busy 2-core CPU with other jobs.
        assert best / 64 < 1e-2, (name, best / 64)


def test_reward_input_errors():
    reward = WorldFidelity()
    with pytest.raises(ValueError, match="images"):
        reward.score(torch.zeros(2, 64, 64), ["a red circle on a white background"] * 2)
    with pytest.raises(ValueError, match="prompts"):
        reward.score(torch.zeros(2, 3, 64, 64), ["a red circle on a white background"])
    with pytest.raises(ValueError, match="prompt"):
        reward.score(torch.zeros(1, 3, 64, 64), ["a photo of a cat"])
    with pytest.raises(ValueError, match="reward"):
        make_reward("nope")


def test_rewards_and_tiny_are_registered_as_plugin_parts():
    import rdpo_zoo

    for name in WORLD_REWARDS:
        assert rdpo_zoo.get_part("reward", name).build().name == name
    assert rdpo_zoo.get_part("reward", "compressibility").build({"quality": "90"}).quality == 90
    assert rdpo_zoo.get_part("model", "tiny").name == "tiny"
