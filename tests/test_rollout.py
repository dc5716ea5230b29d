"""Rollout modes and the built-in estimators, on tiny random pipelines and a hand-made reward."""

import pytest
import torch

from rdpo_zoo.diffusion import DiffusionModel
from rdpo_zoo.estimators import StepMeasurements
from rdpo_zoo.plugins.estimators import DeltaQ, FinalOrder, X0Hat
from rdpo_zoo.rollout import (
    Guidance,
    rollout_branching,
    rollout_single,
    rollout_trajectory_pairs,
)
from tiny_pipelines import RedReward, tiny_sd_pipeline, tiny_sdxl_pipeline

PROMPTS = ["a red circle", "a blue square", "a green triangle"]
T = 6


@pytest.fixture(scope="module")
def model():
    return DiffusionModel(tiny_sd_pipeline(), num_steps=T, guidance_scale=3.0)


@pytest.fixture(scope="module")
def cond(model):
    return model.encode(PROMPTS)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _q(model, x, index, cond):
    with torch.no_grad():
        o = model.guided_output(x, index, cond)
        return RedReward().score(model.decode(model.x0(x, o, index)), cond.prompts)


def test_branching_pairs_share_x_t_and_the_winner_continues(model, cond):
    steps = [6, 5, 4, 2]
    result = rollout_branching(model, cond, RedReward(), X0Hat(), steps, _gen(), k=2)
    pairs = result.pairs
    B = len(PROMPTS)
    assert pairs.shared and pairs.x_t.shape == (len(steps) * B, *model.latent_shape)
    assert pairs.y.shape == (len(steps) * B, 2, *model.latent_shape)
    assert sorted(set(pairs.step_index.tolist())) == [model.step_index(s) for s in sorted(steps, reverse=True)]
    assert torch.all(pairs.values[:, 0] > pairs.values[:, 1])
    by_step = {int(i): pairs.select((pairs.step_index == i).nonzero()[:, 0]) for i in pairs.step_index.unique()}
    # Steps 6 and 5 are consecutive: the state branched from at step 5 is the winner of step 6.
    assert torch.equal(by_step[model.step_index(5)].x_t, by_step[model.step_index(6)].y[:, 0])
    # Both children of a pair come from the same x_t with the same mean: their difference is σ·(ξ1 − ξ2) only,
    # and the recorded values are the children's x̂0 rewards.
    first = by_step[model.step_index(6)]
    torch.testing.assert_close(first.values[:, 0], _q(model, first.y[:, 0], model.step_index(5), first.cond))
    assert result.stats["pairs_kept_fraction"] == 1.0
    assert result.final_images.shape == (B, 3, model.resolution, model.resolution)


def test_continue_from_loser_and_random(model, cond):
    steps = [6, 5]
    loser = rollout_branching(model, cond, RedReward(), X0Hat(), steps, _gen(), continue_from="loser").pairs
    by_step = {int(i): loser.select((loser.step_index == i).nonzero()[:, 0]) for i in loser.step_index.unique()}
    assert torch.equal(by_step[model.step_index(5)].x_t, by_step[model.step_index(6)].y[:, 1])
    # "random" continues from a uniformly drawn child: each next state is one of the two children, and over a few
    # seeds both the winner and the loser are continued
    continued = []
    for seed in range(4):
        pairs = rollout_branching(model, cond, RedReward(), X0Hat(), steps, _gen(seed), continue_from="random").pairs
        first, second = (pairs.select((pairs.step_index == model.step_index(s)).nonzero()[:, 0]) for s in steps)
        for row in range(len(PROMPTS)):
            is_winner = torch.equal(second.x_t[row], first.y[row, 0])
            assert is_winner or torch.equal(second.x_t[row], first.y[row, 1])
            continued.append(is_winner)
    assert any(continued) and not all(continued)
    three = rollout_branching(model, cond, RedReward(), X0Hat(), steps, _gen(), continue_from="random", k=3)
    assert three.stats["pairs"] == len(steps) * len(PROMPTS)
    with pytest.raises(ValueError, match="continue_from: expected one of"):
        rollout_branching(model, cond, RedReward(), X0Hat(), steps, _gen(), continue_from="best")


def test_k_candidates_pair_best_and_worst_and_threshold_drops_pairs(model, cond):
    result = rollout_branching(model, cond, RedReward(), X0Hat(), [6, 4], _gen(), k=4)
    assert torch.all(result.pairs.values[:, 0] >= result.pairs.values[:, 1])
    none = rollout_branching(model, cond, RedReward(), X0Hat(), [6, 4], _gen(), k=4, threshold=1e6)
    assert none.pairs is None and none.stats["pairs"] == 0
    # SPO's rule tanh(Δ/(2·scale)) > threshold keeps fewer pairs as the threshold rises.
    gaps = (result.pairs.values[:, 0] - result.pairs.values[:, 1]) / RedReward.scale
    threshold = float(torch.tanh(gaps / 2).median())
    some = rollout_branching(model, cond, RedReward(), X0Hat(), [6, 4], _gen(), k=4, threshold=threshold,
                             gap_rule="softmax")
    assert 0 < some.stats["pairs"] < result.stats["pairs"]


def test_delta_q_equals_x0_hat_when_children_share_x_t(model, cond):
    """Q(x_t) cancels between children of one x_t: same pairs, same labels, same gap; only the values differ."""
    a = rollout_branching(model, cond, RedReward(), X0Hat(), [6, 3], _gen(7)).pairs
    b = rollout_branching(model, cond, RedReward(), DeltaQ(), [6, 3], _gen(7)).pairs
    assert torch.equal(a.x_t, b.x_t) and torch.equal(a.y, b.y)
    torch.testing.assert_close(a.values[:, 0] - a.values[:, 1], b.values[:, 0] - b.values[:, 1], rtol=0, atol=1e-6)
    assert not torch.allclose(a.values, b.values)
    # The guidance gradient: ∇_x ΔQ(x) = ∇_x Q(x) − 0, since Q(x_t) does not depend on the child.
    x = a.y[:3, 0].clone().requires_grad_()
    index = model.step_index(5)
    with torch.no_grad():
        o = model.guided_output(x, index, a.cond.index([0, 1, 2]))
    q = lambda z: RedReward().score_differentiable(model.decode(model.x0(z, o, index)), PROMPTS)  # noqa: E731
    q_parent = _q(model, a.x_t[:3], model.step_index(6), a.cond.index([0, 1, 2]))
    (g_x0,) = torch.autograd.grad(q(x).sum(), x)
    (g_dq,) = torch.autograd.grad((q(x) - q_parent).sum(), x)
    assert torch.equal(g_x0, g_dq) and g_x0.abs().sum() > 0


def test_delta_q_differs_from_x0_hat_with_per_branch_x_t(model, cond):
    m = StepMeasurements(q_parent=torch.tensor([[0.9, 0.0]]), q_children=torch.tensor([[1.0, 0.5]]))
    assert X0Hat().values(m).argmax(1).item() == 0  # the higher prediction ...
    assert DeltaQ().values(m).argmax(1).item() == 1  # ... but the larger improvement wins under ΔQ
    a = rollout_trajectory_pairs(model, cond, RedReward(), X0Hat(), [6, 4, 2], _gen(3)).pairs
    b = rollout_trajectory_pairs(model, cond, RedReward(), DeltaQ(), [6, 4, 2], _gen(3)).pairs
    assert not a.shared and a.x_t.shape[1] == 2
    # the same two trajectories, labelled per step by each estimator: ΔQ swaps winner and loser at some steps
    total = lambda p, k: p.y[:, k].flatten(1).sum(1)  # noqa: E731
    assert torch.equal(torch.stack([total(a, 0), total(a, 1)]).sort(0)[0], torch.stack([total(b, 0), total(b, 1)]).sort(0)[0])
    swapped = total(a, 0) != total(b, 0)
    assert 0 < int(swapped.sum()) < len(a)


def test_delta_q_variants():
    m = StepMeasurements(q_parent=torch.tensor([1.0, 1.0]), q_children=torch.tensor([[0.5, 0.8], [1.2, 0.9]]),
                         q_lookahead=torch.tensor([[0.9, 0.7], [1.0, 1.5]]))
    torch.testing.assert_close(DeltaQ().values(m), torch.tensor([[-0.5, -0.2], [0.2, -0.1]]))
    torch.testing.assert_close(DeltaQ(sign="before-minus-after").values(m), torch.tensor([[0.5, 0.2], [-0.2, 0.1]]))
    improvement = DeltaQ(variant="improvement")
    assert improvement.keep(improvement.values(m), m).tolist() == [False, True]
    torch.testing.assert_close(DeltaQ(variant="lookahead").values(m), torch.tensor([[0.4, -0.1], [-0.2, 0.6]]))
    with pytest.raises(ValueError, match="variant: expected one of"):
        DeltaQ(variant="ahead")


def test_delta_q_lookahead_and_improvement_run_in_a_rollout(model, cond):
    ahead = rollout_branching(model, cond, RedReward(), DeltaQ(variant="lookahead"), [6, 3], _gen())
    plain = rollout_branching(model, cond, RedReward(), DeltaQ(), [6, 3], _gen())
    assert ahead.stats["unet_calls"] > plain.stats["unet_calls"]  # the look-ahead costs passes
    improved = rollout_branching(model, cond, RedReward(), DeltaQ(variant="improvement"), [6, 3], _gen())
    # only pairs whose winner improves on its parent are kept: some, not all
    assert improved.pairs is not None and 0 < len(improved.pairs) < len(plain.pairs)
    assert torch.all(improved.pairs.values[:, 0] > 0)
    with pytest.raises(ValueError, match="look-ahead"):
        rollout_trajectory_pairs(model, cond, RedReward(), DeltaQ(variant="lookahead"), [6], _gen())


def test_trajectory_pairs_final_order_labels_by_the_final_images(model, cond):
    result = rollout_trajectory_pairs(model, cond, RedReward(), FinalOrder(), [6, 3, 1], _gen(1))
    B = len(PROMPTS)
    final = result.final_rewards.view(2, B).T  # [B, 2]: branch 0, branch 1 of each prompt
    pairs = result.pairs
    assert pairs.x_t.shape == (len(pairs), 2, *model.latent_shape)
    # Every step of a prompt's pair carries the same final-reward label, the higher one first.
    for p in range(len(pairs)):
        prompt = PROMPTS.index(pairs.cond.prompts[p])
        torch.testing.assert_close(pairs.values[p], final[prompt].sort(descending=True).values)
    # Both trajectories start from the same x_T: at the first step the two x_t are equal.
    first = pairs.step_index == model.step_index(6)
    assert torch.equal(pairs.x_t[first][:, 0], pairs.x_t[first][:, 1])
    assert not torch.equal(pairs.y[first][:, 0], pairs.y[first][:, 1])


def test_final_order_in_a_branching_rollout_completes_the_candidates(model, cond):
    result = rollout_branching(model, cond, RedReward(), FinalOrder(), [4], _gen(), k=2)
    assert result.stats["unet_calls"] > rollout_branching(model, cond, RedReward(), X0Hat(), [4], _gen()).stats["unet_calls"]


def test_guidance_raises_the_differentiable_reward(model, cond):
    steps = [6, 4, 2]
    plain = rollout_branching(model, cond, RedReward(), X0Hat(), steps, _gen(5))
    guided = rollout_branching(model, cond, RedReward(), X0Hat(), steps, _gen(5), guidance=Guidance(step_size=0.5))
    first_plain = plain.pairs.select((plain.pairs.step_index == model.step_index(6)).nonzero()[:, 0])
    first_guided = guided.pairs.select((guided.pairs.step_index == model.step_index(6)).nonzero()[:, 0])
    # Same x_t and the same loser; the winner moved up the reward's gradient.
    assert torch.equal(first_plain.x_t, first_guided.x_t)
    assert torch.equal(first_plain.y[:, 1], first_guided.y[:, 1])
    index = model.step_index(5)
    before = _q(model, first_plain.y[:, 0], index, first_plain.cond)
    after = _q(model, first_guided.y[:, 0], index, first_guided.cond)
    assert torch.all(after > before)
    with pytest.raises(ValueError, match="step_size"):
        Guidance(step_size=0.0)


def test_single_trajectories_store_the_sampler_log_prob(model, cond):
    from rdpo_zoo.reference import step_log_prob

    result = rollout_single(model, cond, RedReward(), [6, 2], _gen())
    samples = result.samples
    assert len(samples) == 2 * len(PROMPTS)
    # The stored log-prob (from the drawn noise) equals log N(y; a·x_t + b·o, σ²) recomputed with the policy.
    first = (samples.step_index == model.step_index(6)).nonzero()[:, 0]
    with torch.no_grad():
        o = model.guided_output(samples.x_t[first], model.step_index(6), samples.cond.index(first))
    a, b, sigma = model.coefficients(model.step_index(6))
    recomputed = step_log_prob(samples.y[first], samples.x_t[first], o, a, b, sigma)
    torch.testing.assert_close(samples.log_prob[first], recomputed, rtol=1e-4, atol=1e-4)
    # ... with the loss's reduction: summed over D it is the exact log-likelihood, D times the mean's
    summed = rollout_single(model, cond, RedReward(), [6, 2], _gen(), reduction="sum").samples
    recomputed = step_log_prob(summed.y[first], summed.x_t[first], o, a, b, sigma, reduction="sum")
    torch.testing.assert_close(summed.log_prob[first], recomputed, rtol=1e-4, atol=1e-2)
    with pytest.raises(ValueError, match="reduction"):
        rollout_single(model, cond, RedReward(), [6, 2], _gen(), reduction="max")


def test_steps_without_a_likelihood_are_refused():
    deterministic = DiffusionModel(tiny_sd_pipeline(), num_steps=4, eta=0.0, guidance_scale=1.0)
    cond = deterministic.encode(["x"])
    with pytest.raises(ValueError, match="steps: step t=4 .* has σ = 0"):
        rollout_branching(deterministic, cond, RedReward(), X0Hat(), [4], _gen())
    with pytest.raises(ValueError, match=r"steps: expected values in \[1, 4\]"):
        rollout_branching(deterministic, cond, RedReward(), X0Hat(), [5], _gen())


def test_sdxl_shaped_pipeline_rolls_out():
    model = DiffusionModel(tiny_sdxl_pipeline(), num_steps=4, guidance_scale=2.0)
    cond = model.encode(["a red circle", "a blue square"])
    assert set(cond.added_cond) == {"text_embeds", "time_ids"}
    result = rollout_branching(model, cond, RedReward(), DeltaQ(), [4, 2], _gen())
    assert result.pairs.y.shape == (4, 2, *model.latent_shape)


def test_the_coefficient_table_is_built_once_on_the_host(model, monkeypatch):
    """The trainer's coefficients: host tensors (the fused op checks them without a device sync), picked from a
    [T, 3] table built once per scheduler, equal to the per-step device scalars."""
    fresh = DiffusionModel(model.pipe, num_steps=T, guidance_scale=3.0)
    built = {"n": 0}
    original = fresh.steps.coefficients

    def counting(*args, **kwargs):
        built["n"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(fresh.steps, "coefficients", counting)
    steps = torch.tensor([T - 1, 0, 2, 2])
    for _ in range(3):
        a, b, sigma = fresh.coefficient_tensors(steps)
    assert built["n"] == T  # one row per step, once
    assert a.device.type == b.device.type == sigma.device.type == "cpu" and a.shape == (4,)
    for i, step in enumerate(steps.tolist()):
        want = fresh.coefficients(step)
        assert (float(a[i]), float(b[i]), float(sigma[i])) == tuple(float(v) for v in want)
    assert fresh.coefficients(1)[0].device == fresh.device
