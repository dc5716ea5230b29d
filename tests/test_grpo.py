"""GRPO (Flow-GRPO's objective): the loss against a plain re-implementation of the public formula, the KL and its
convention factor, group-normalised advantages, the ratio and KL at initialisation, and the preset through the
Trainer."""

import json
import math

import pytest
import torch

import rdpo_zoo
from rdpo_zoo.losses import POLICY_GRADIENT_LOSSES, PolicyGradientLoss, grpo_loss
from rdpo_zoo.reference import step_kl, step_log_prob
from train_parts import TestParts, small_config


@pytest.fixture(scope="module", autouse=True)
def test_parts():
    name = rdpo_zoo.register(TestParts, name="test-parts")
    yield
    rdpo_zoo.unregister(name)


def _public_grpo(log_prob, old_log_prob, advantages, mean_theta, mean_ref, std_dev_t, clip_range, adv_clip_max, beta):
    """yifan123/flow_grpo scripts/train_sd3.py, line by line (BASELINES.md §7)."""
    advantages = torch.clamp(advantages, -adv_clip_max, adv_clip_max)
    ratio = torch.exp(log_prob - old_log_prob)
    unclipped_loss = -advantages * ratio
    clipped_loss = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    policy_loss = torch.mean(torch.maximum(unclipped_loss, clipped_loss))
    kl_loss = ((mean_theta - mean_ref) ** 2).mean(dim=(1, 2, 3), keepdim=True) / (2 * std_dev_t ** 2)
    return policy_loss + beta * torch.mean(kl_loss)


def _step(N=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (N, 4, 3, 5)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    o_ref = torch.randn(shape, generator=g, dtype=torch.float64)
    o_theta = (o_ref + 0.05 * torch.randn(shape, generator=g, dtype=torch.float64)).requires_grad_()
    a = 1 + 0.1 * torch.rand(N, generator=g, dtype=torch.float64)
    b = -0.2 - 0.1 * torch.rand(N, generator=g, dtype=torch.float64)
    sigma = 0.1 + 0.2 * torch.rand(N, generator=g, dtype=torch.float64)
    dt = 0.05 + 0.1 * torch.rand(N, generator=g, dtype=torch.float64)
    y = a.view(-1, 1, 1, 1) * x + b.view(-1, 1, 1, 1) * o_ref + sigma.view(-1, 1, 1, 1) * torch.randn(
        shape, generator=g, dtype=torch.float64)
    # rewards-derived advantages beyond ±adv_clip_max too, so the clamp is exercised
    advantages = 4 * torch.randn(N, generator=g, dtype=torch.float64)
    return x, y, o_theta, o_ref, a, b, sigma, dt, advantages


@pytest.mark.parametrize("beta", [0.0, 0.04, 3.0])
def test_grpo_equals_the_public_formula_in_value_and_gradient(beta):
    x, y, o_theta, o_ref, a, b, sigma, dt, advantages = _step()
    old_log_prob = step_log_prob(y, x, o_ref, a, b, sigma) + 1e-4 * torch.randn(len(y), dtype=torch.float64)
    log_prob = step_log_prob(y, x, o_theta, a, b, sigma)
    kl = step_kl(o_theta, o_ref, b, sigma, "mean", "public", dt)
    ours = grpo_loss(log_prob, old_log_prob, advantages, clip_range=1e-4, adv_clip_max=5.0, kl_beta=beta,
                     kl="public", reference_kl=kl).mean()
    view = (-1, 1, 1, 1)
    mean_theta = a.view(view) * x + b.view(view) * o_theta
    mean_ref = a.view(view) * x + b.view(view) * o_ref
    std_dev_t = sigma.view(view) / dt.view(view).sqrt()  # Flow-GRPO's step std is std_dev_t·√|dt|
    public = _public_grpo(log_prob, old_log_prob, advantages, mean_theta, mean_ref, std_dev_t, 1e-4, 5.0, beta)
    torch.testing.assert_close(ours, public, rtol=1e-12, atol=1e-14)
    (g_ours,) = torch.autograd.grad(ours, o_theta, retain_graph=True)
    (g_public,) = torch.autograd.grad(public, o_theta)
    assert g_public.abs().max() > 0
    torch.testing.assert_close(g_ours, g_public, rtol=1e-10, atol=1e-14)


def test_the_public_kl_is_dt_times_the_exact_kl_of_the_two_step_gaussians():
    x, y, o_theta, o_ref, a, b, sigma, dt, _ = _step(seed=1)
    exact = step_kl(o_theta, o_ref, b, sigma, "mean")
    # the exact KL is E_{y~π_θ}[log π_θ − log π_ref]: check it against its Monte-Carlo definition
    g = torch.Generator().manual_seed(2)
    view = (-1, 1, 1, 1)
    draws = [a.view(view) * x + b.view(view) * o_theta + sigma.view(view) * torch.randn(y.shape, generator=g,
                                                                                        dtype=y.dtype)
             for _ in range(4000)]
    mc = torch.stack([step_log_prob(d, x, o_theta, a, b, sigma, "sum") - step_log_prob(d, x, o_ref, a, b, sigma, "sum")
                      for d in draws]).mean(0) / y[0].numel()
    torch.testing.assert_close(exact.detach(), mc.detach(), rtol=0.1, atol=2e-3)
    public = step_kl(o_theta, o_ref, b, sigma, "mean", "public", dt)
    torch.testing.assert_close(public, dt * exact)
    summed = step_kl(o_theta, o_ref, b, sigma, "sum")
    torch.testing.assert_close(summed, exact * y[0].numel())
    with pytest.raises(ValueError, match="dt: the public KL convention needs"):
        step_kl(o_theta, o_ref, b, sigma, "mean", "public")


def test_flow_time_step_of_ddim_is_the_snr_matched_rectified_flow_time():
    from diffusers import DDIMScheduler

    from rdpo_zoo.schedulers import flow_time_step

    scheduler = DDIMScheduler(set_alpha_to_one=False, steps_offset=1, clip_sample=False)
    scheduler.set_timesteps(10)
    steps = [float(flow_time_step(scheduler, int(t))) for t in scheduler.timesteps]
    alpha = scheduler.alphas_cumprod.double()
    t0, t1 = int(scheduler.timesteps[0]), int(scheduler.timesteps[1])

    def tau(ab):
        return float((1 - ab).sqrt() / (ab.sqrt() + (1 - ab).sqrt()))

    assert steps[0] == pytest.approx(tau(alpha[t0]) - tau(alpha[t1]), rel=1e-12)
    assert all(s > 0 for s in steps)
    # the steps tile the flow-time interval from the first timestep to DDIM's final ᾱ
    assert sum(steps) == pytest.approx(tau(alpha[t0]) - tau(scheduler.final_alpha_cumprod.double()), rel=1e-9)


def test_group_advantages_are_normalised_within_each_prompt_group():
    from rdpo_zoo.plugins.policy_gradient import GroupAdvantage

    prompts = ["a"] * 4 + ["b"] * 4 + ["a"] * 2  # a prompt drawn twice forms one group, as in the public code
    rewards = torch.tensor([1.0, 2.0, 3.0, 6.0, 10.0, 10.0, 10.0, 14.0, 0.0, 8.0])
    advantages = GroupAdvantage()(prompts, rewards).double()
    for name in ("a", "b"):
        rows = [i for i, p in enumerate(prompts) if p == name]
        group = rewards[rows].double()
        want = (group - group.mean()) / (group.std(correction=0) + 1e-4)  # np.std + 1e-4
        torch.testing.assert_close(advantages[rows], want, rtol=1e-6, atol=1e-6)
        assert abs(float(advantages[rows].mean())) < 1e-6
    glob = GroupAdvantage(global_std=True)(prompts, rewards).double()
    rows = [i for i, p in enumerate(prompts) if p == "b"]
    torch.testing.assert_close(glob[rows], (rewards[rows].double() - 11.0) / (rewards.double().std(correction=0) + 1e-4),
                               rtol=1e-6, atol=1e-6)


def test_the_grpo_part_is_a_policy_gradient_loss_with_the_public_defaults():
    part = rdpo_zoo.get_registry().get("loss", "grpo")
    assert isinstance(part.load(), PolicyGradientLoss) and part.load() is POLICY_GRADIENT_LOSSES["grpo"]
    options = part.parse_options({})
    assert (options["clip_range"], options["adv_clip_max"], options["kl_beta"], options["kl"]) == (1e-4, 5.0, 0.0, "public")
    with pytest.raises(rdpo_zoo.OptionError, match="kl"):
        part.parse_options({"kl": "approx"})
    with pytest.raises(ValueError, match="reference_kl: grpo with kl_beta > 0"):
        grpo_loss(torch.zeros(2), torch.zeros(2), torch.ones(2), kl_beta=0.1)


def test_ratio_is_exactly_one_and_kl_exactly_zero_at_initialisation(tmp_path):
    from rdpo_zoo.trainer import Trainer

    trainer = Trainer(small_config(tmp_path, "flow-grpo", group_size=3, train_timesteps="4,3,2", iterations=1))
    result = trainer.rollout(0)
    assert len(result.prompts) == 3 * 3 and result.prompts[0] == result.prompts[1] == result.prompts[2]
    # G trajectories of one prompt from independent noise: distinct final images
    assert not torch.equal(result.final_latents[0], result.final_latents[1])
    advantages = trainer.advantages(result.prompts, result.final_rewards)
    samples = result.samples
    # each step's transitions as the rollout's UNet call saw them (the same batch: a CPU convolution's reduction
    # order may depend on the batch size, ~1 ulp): the loss's log-prob is then bitwise the sampler's
    for step in samples.step_index.unique().tolist():
        stats = {k: [] for k in ("ratio", "approx_kl", "clip_fraction", "kl")}
        part = samples.select((samples.step_index == step).nonzero()[:, 0].cpu())
        assert len(part) == 9
        loss, log_ratio = trainer.sample_loss(part, advantages, stats=stats)
        assert torch.all(log_ratio == 0) and float(stats["ratio"][0]) == 1.0 and float(stats["kl"][0]) == 0.0
        assert float(stats["clip_fraction"][0]) == 0.0 and float(stats["approx_kl"][0]) == 0.0
        # at ratio 1 the loss is −mean(clamped A): the policy term's value at the sampler
        want = -advantages.clamp(-5, 5)[part.sample_id].mean()
        assert float(loss.detach()) == pytest.approx(float(want), abs=1e-7)


def test_a_third_party_policy_gradient_loss_takes_the_per_sample_path(tmp_path):
    from rdpo_zoo import LossPart, Option
    from rdpo_zoo.trainer import Trainer

    seen = {}

    def reinforce(log_prob, old_log_prob, advantages, scale=1.0, reference_kl=None):
        seen["kl"] = reference_kl
        return -scale * advantages * log_prob

    class Plugin:
        @rdpo_zoo.hookimpl
        def register_losses(self, register):
            register(LossPart("reinforce-kl", "REINFORCE with a KL the engine computes", lambda: PolicyGradientLoss(
                "reinforce-kl", reinforce, "REINFORCE", reference_kl=lambda options: "exact"),
                options=(Option("scale", float, 1.0, "x"),)))

    name = rdpo_zoo.register(Plugin(), name="reinforce-kl-plugin")
    try:
        trainer = Trainer(small_config(tmp_path, "flow-grpo", loss="reinforce-kl", group_size=2,
                                       train_timesteps="4,3", iterations=1))
        assert trainer.per_sample and trainer.kl_convention == "exact"
        record = trainer.step(0)[1]
        assert seen["kl"] is not None and record["optimiser_steps"] > 0 and "kl" in record
        with pytest.raises(ValueError, match="per-sample policy-gradient loss; it needs rollout 'single'"):
            Trainer(small_config(tmp_path / "b", "d3po", loss="reinforce-kl"))
    finally:
        rdpo_zoo.unregister(name)
    with pytest.raises(ValueError, match="group_size: groups of trajectories"):
        Trainer(small_config(tmp_path / "c", "d3po", group_size=4))


def test_flow_grpo_preset_trains_one_iteration_and_logs_its_metrics(tmp_path):
    from rdpo_zoo.trainer import Trainer

    settings = rdpo_zoo.merge_settings("flow-grpo")
    # the budget (G, trained steps) is cut to fit the embedded model's 5 minutes; what defines Flow-GRPO is public
    assert (settings["group_size"], settings["train_timesteps"], settings["num_steps"]) == (4, "10,9,8", 10)
    options = settings["loss_options"]
    assert (options["clip_range"], options["adv_clip_max"], options["kl_beta"], options["kl"]) == (1e-4, 5.0, 0.04, "public")
    assert (settings["learning_rate"], settings["guidance_scale"], settings["estimator"]) == (3e-4, 4.5, "group-advantage")
    trainer = Trainer(small_config(tmp_path, "flow-grpo", group_size=4, train_timesteps="4,3,2", iterations=1))
    trainer.train()
    (record,) = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert record["ratio_before_update"] == 1.0  # the Flow-GRPO README's sanity check, logged
    for key in ("ratio", "clip_fraction", "approx_kl", "kl", "loss"):
        assert math.isfinite(record[key]), key
    assert record["kl"] > 0 and record["optimiser_steps"] > 1  # later minibatches see an updated policy
    assert record["pairs"] == 3 * 4 * 3  # prompts × G × trained steps
