"""The flow-matching step table (flow-sde, dance-sde, cps) against diffusers' own Euler step and float64
re-implementations of the public samplers' updates (Flow-GRPO ``sde_step_with_logprob``, DanceGRPO ``flux_step``,
Flow-GRPO's ``sde_type="cps"``), with the same noise, at every step."""

import math

import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

from rdpo_zoo import paired_log_ratios, step_coefficients
from rdpo_zoo.errors import UserInputError
from rdpo_zoo.flow_steps import (
    FLOW_SDES,
    PUBLIC_CPS_LOG_PROB_STD,
    flow_add_noise,
    flow_schedule_coefficients,
    flow_step_coefficients,
    flow_step_index,
    flow_training_target,
    make_flow_scheduler,
    resolution_shift_options,
    sample_flow_train_timesteps,
)
from rdpo_zoo.reference import gaussian_log_prob, step_log_prob
from rdpo_zoo.schedulers import UnsupportedSchedulerError, flow_time_step, x0_coefficients

# The shipped scheduler configs of SD3.5 (static shift 3) and FLUX.1 (resolution-dependent shift).
SD3_CONFIG = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}
FLUX_CONFIG = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0,
               "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15, "base_image_seq_len": 256,
               "max_image_seq_len": 4096}
SHAPE = (2, 4, 6, 6)
STEPS = 10


def _sd3(steps=STEPS):
    return make_flow_scheduler(SD3_CONFIG, steps)


def _flux(steps=STEPS, image_seq_len=1024):
    return make_flow_scheduler(FLUX_CONFIG, steps, **resolution_shift_options(FLUX_CONFIG, steps, image_seq_len,
                                                                            flux_sigmas=True))


SCHEDULERS = {"sd3": _sd3, "flux": _flux}


def _state(seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(SHAPE, generator=g, dtype=dtype), torch.randn(SHAPE, generator=g, dtype=dtype),
            torch.randn(SHAPE, generator=g, dtype=dtype))


# --------------------------------------------------- the public updates, written as their code writes them
def flow_grpo_step(scheduler, index, v, x, eta, z):
    """Flow-GRPO ``sde_step_with_logprob`` (commit ac4c86e) in float64: (x', log_prob, mean)."""
    sigmas = scheduler.sigmas.double()
    sigma, sigma_prev = sigmas[index], sigmas[index + 1]
    sigma_max = sigmas[1].item()
    dt = sigma_prev - sigma
    std_dev_t = torch.sqrt(sigma / (1 - torch.where(sigma == 1, sigma_max, sigma))) * eta
    mean = x * (1 + std_dev_t**2 / (2 * sigma) * dt) + v * (1 + std_dev_t**2 * (1 - sigma) / (2 * sigma)) * dt
    prev = mean + std_dev_t * torch.sqrt(-1 * dt) * z
    log_prob = (-((prev - mean) ** 2) / (2 * ((std_dev_t * torch.sqrt(-1 * dt)) ** 2))
                - torch.log(std_dev_t * torch.sqrt(-1 * dt)) - torch.log(torch.sqrt(2 * torch.as_tensor(math.pi, dtype=torch.float64))))
    return prev, log_prob.mean(dim=tuple(range(1, log_prob.ndim))), mean


def dance_grpo_step(scheduler, index, v, x, eta, z):
    """DanceGRPO ``flux_step`` (fastvideo/train_grpo_flux.py, sde_solver=True) in float64: (x', mean)."""
    sigmas = scheduler.sigmas.double()
    sigma = sigmas[index]
    dsigma = sigmas[index + 1] - sigma
    mean = x + dsigma * v
    pred_original_sample = x - sigma * v
    delta_t = sigma - sigmas[index + 1]
    std_dev_t = eta * math.sqrt(delta_t)
    score_estimate = -(x - pred_original_sample * (1 - sigma)) / sigma**2
    log_term = -0.5 * eta**2 * score_estimate
    mean = mean + log_term * dsigma
    return mean + z * std_dev_t, mean


def cps_step(scheduler, index, v, x, eta, z):
    """Flow-GRPO's ``sde_type="cps"`` in float64: (x', public log_prob, mean)."""
    sigmas = scheduler.sigmas.double()
    sigma, sigma_prev = sigmas[index], sigmas[index + 1]
    std_dev_t = sigma_prev * math.sin(eta * math.pi / 2)
    pred_original_sample = x - sigma * v
    noise_estimate = x + v * (1 - sigma)
    mean = pred_original_sample * (1 - sigma_prev) + noise_estimate * torch.sqrt(sigma_prev**2 - std_dev_t**2)
    prev = mean + std_dev_t * z
    log_prob = -((prev - mean) ** 2)
    return prev, log_prob.mean(dim=tuple(range(1, log_prob.ndim))), mean


PUBLIC = {"flow-sde": flow_grpo_step, "dance-sde": dance_grpo_step, "cps": cps_step}


# ------------------------------------------------------------------------------------------------ the table
@pytest.mark.parametrize("model", sorted(SCHEDULERS))
@pytest.mark.parametrize("sde", FLOW_SDES)
def test_each_sde_equals_the_public_update_at_every_step(model, sde):
    scheduler = SCHEDULERS[model]()
    eta = 0.7
    table = flow_schedule_coefficients(scheduler, sde, eta)
    assert float(scheduler.sigmas[0]) == 1.0  # index 0 is the σ = 1 step that flow-sde special-cases
    for index in range(STEPS):
        x, v, z = _state(index)
        prev, mean = PUBLIC[sde](scheduler, index, v, x, eta, z)[:2] if sde == "dance-sde" else \
            (lambda r: (r[0], r[2]))(PUBLIC[sde](scheduler, index, v, x, eta, z))
        a, b, std = (float(c[index]) for c in table)
        torch.testing.assert_close(a * x + b * v, mean, atol=1e-12, rtol=0)
        torch.testing.assert_close(a * x + b * v + std * z, prev, atol=1e-12, rtol=0)
        # addressed by the scheduler's float timestep: the same row
        by_timestep = step_coefficients(scheduler, scheduler.timesteps[index], sde=sde, eta=eta)
        assert [float(c) for c in by_timestep] == [a, b, std]


def test_table_rows_in_closed_form():
    """The rows as the issue and DESIGN.md print them, including flow-sde's σ_i = 1 first step."""
    scheduler, eta = _sd3(), 0.7
    sigmas = scheduler.sigmas.double()
    for index in range(STEPS):
        s, n = float(sigmas[index]), float(sigmas[index + 1])
        dt = n - s
        if s == 1:
            flow = (1 - eta**2 / 2, dt, eta)
        else:
            flow = (1 - eta**2 * (s - n) / (2 * (1 - s)), (1 + eta**2 / 2) * dt,
                    eta * math.sqrt(s / (1 - s)) * math.sqrt(s - n))
        dance = (1 - eta**2 * (s - n) / (2 * s), dt * (1 + eta**2 * (1 - s) / (2 * s)), eta * math.sqrt(s - n))
        c = math.cos(eta * math.pi / 2)
        cps = ((1 - n) + n * c, -s * (1 - n) + (1 - s) * n * c, n * math.sin(eta * math.pi / 2))
        for sde, row in (("flow-sde", flow), ("dance-sde", dance), ("cps", cps)):
            got = [float(v) for v in flow_step_coefficients(s, n, sde, eta)]
            assert got == pytest.approx(row, abs=1e-14), (sde, index)


def test_flow_sde_log_prob_is_the_public_one():
    """The exact Gaussian log-prob of (a, b, std) with the mean reduction is Flow-GRPO's log_prob, at every step."""
    scheduler, eta = _flux(), 0.7
    table = flow_schedule_coefficients(scheduler, "flow-sde", eta)
    for index in range(STEPS):
        x, v, z = _state(100 + index)
        prev, public_log_prob, _ = flow_grpo_step(scheduler, index, v, x, eta, z)
        a, b, std = (c[index] for c in table)
        ours = step_log_prob(prev, x, v, a, b, std, reduction="mean")
        torch.testing.assert_close(ours, public_log_prob, atol=1e-10, rtol=0)


def test_cps_public_log_prob_is_the_gaussian_with_std_one_over_root_two():
    """CPS's public −mean (y − μ)² is log N(y; μ, ½) up to its constant, so its ratios equal those of std 1/√2."""
    scheduler, eta = _sd3(), 0.5
    a, b, _ = (c[3] for c in flow_schedule_coefficients(scheduler, "cps", eta))
    x, v, z = _state(7)
    prev, public_log_prob, mean = cps_step(scheduler, 3, v, x, eta, z)
    ours = step_log_prob(prev, x, v, a, b, PUBLIC_CPS_LOG_PROB_STD, reduction="mean")
    constant = -math.log(PUBLIC_CPS_LOG_PROB_STD) - 0.5 * math.log(2 * math.pi)
    torch.testing.assert_close(ours - constant, public_log_prob, atol=1e-12, rtol=0)


# ------------------------------------------------------------------------------- η = 0: diffusers' own step
@pytest.mark.parametrize("model", sorted(SCHEDULERS))
@pytest.mark.parametrize("sde", FLOW_SDES)
def test_eta_zero_is_diffusers_euler_step(model, sde):
    scheduler = SCHEDULERS[model]()
    x, v, _ = _state(1, torch.float32)
    table = flow_schedule_coefficients(scheduler, sde, 0.0)
    assert torch.all(table.a == 1) and torch.all(table.std == 0)
    for index, t in enumerate(scheduler.timesteps):
        expected = scheduler.step(v, t, x).prev_sample
        a, b, std = (float(c[index]) for c in table)
        torch.testing.assert_close(a * x.double() + b * v.double(), expected.double(), atol=1e-6, rtol=0)
        x = expected
    # with no sde and η = 0, step_coefficients is that Euler step too
    plain = step_coefficients(scheduler, scheduler.timesteps[2])
    assert [float(c) for c in plain] == [float(c[2]) for c in table]


def test_cps_eta_one_is_diffusers_stochastic_sampling_step():
    """At η = 1 CPS draws all-fresh noise: diffusers' ``stochastic_sampling=True`` step, with the same noise."""
    scheduler = make_flow_scheduler(dict(SD3_CONFIG, stochastic_sampling=True), STEPS)
    table = flow_schedule_coefficients(scheduler, "cps", 1.0)
    x, v, _ = _state(2, torch.float32)
    for index, t in enumerate(scheduler.timesteps):
        z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(index))
        expected = scheduler.step(v, t, x, generator=torch.Generator().manual_seed(index)).prev_sample
        a, b, std = (float(c[index]) for c in table)
        torch.testing.assert_close(a * x.double() + b * v.double() + std * z.double(), expected.double(),
                                   atol=2e-6, rtol=0)
        x = expected


def test_deterministic_steps_have_no_likelihood():
    """η = 0, and CPS's last step (σ_{i+1} = 0), give std = 0: refused for likelihoods as DDIM's σ = 0 is."""
    scheduler = _sd3()
    y, x_t, o = torch.randn(1, 2, 8), torch.randn(1, 8), torch.randn(1, 8)
    euler = step_coefficients(scheduler, scheduler.timesteps[3])
    cps_last = flow_schedule_coefficients(scheduler, "cps", 0.7)
    assert float(cps_last.std[-1]) == 0 and float(cps_last.std[-2]) > 0
    for a, b, std in (euler, [c[-1] for c in cps_last]):
        with pytest.raises(ValueError, match="sigma: step 0 has σ = 0"):
            paired_log_ratios(y, x_t, o, o + 0.1, a, b, std)


# ----------------------------------------------------------------------------------------- sampled steps
@pytest.mark.parametrize("sde", FLOW_SDES)
def test_public_samplers_draw_with_the_tables_mean_and_std(sde):
    """The public update drawing its own noise: the sample mean and std over many draws are (a·x + b·v, std)."""
    scheduler, eta, index, n = _sd3(), 0.7, 4, 40000
    g = torch.Generator().manual_seed(3)
    x, v = torch.randn(1, 4, generator=g, dtype=torch.float64), torch.randn(1, 4, generator=g, dtype=torch.float64)
    z = torch.randn(n, 4, generator=g, dtype=torch.float64)
    draws = PUBLIC[sde](scheduler, index, v.expand(n, 4), x.expand(n, 4), eta, z)[0]
    a, b, std = (float(c[index]) for c in flow_schedule_coefficients(scheduler, sde, eta))
    torch.testing.assert_close(draws.mean(0), (a * x + b * v)[0], atol=4 * std / math.sqrt(n) * 1.5, rtol=0)
    torch.testing.assert_close(draws.std(0), torch.full((4,), std, dtype=torch.float64), rtol=0.03, atol=0)


# ---------------------------------------------------------------------------------- schedules and shifts
def test_flux_shift_follows_the_resolution():
    """FLUX's μ grows with the image sequence length: larger images spend more steps at high noise."""
    small, large = _flux(image_seq_len=256), _flux(image_seq_len=4096)
    assert resolution_shift_options(FLUX_CONFIG, STEPS, 256, flux_sigmas=True)["mu"] == pytest.approx(0.5)
    assert resolution_shift_options(FLUX_CONFIG, STEPS, 4096, flux_sigmas=True)["mu"] == pytest.approx(1.15)
    assert torch.all(large.sigmas[1:-1] > small.sigmas[1:-1])
    # exactly the scheduler FluxPipeline builds: its sigmas and mu through set_timesteps
    reference = FlowMatchEulerDiscreteScheduler.from_config(FLUX_CONFIG)
    reference.set_timesteps(sigmas=[1 - i / STEPS for i in range(STEPS)], mu=0.5)
    torch.testing.assert_close(small.sigmas, reference.sigmas)
    # SD3: the static shift, no mu and no sigmas
    assert resolution_shift_options(SD3_CONFIG, STEPS, 4096, flux_sigmas=False) == {"mu": None, "sigmas": None}


def test_steps_addressed_by_timestep_and_index_agree():
    scheduler = _sd3()
    timesteps = scheduler.timesteps
    assert flow_step_index(scheduler, timesteps).tolist() == list(range(STEPS))
    printed = round(float(timesteps[1]), 3)  # as `rdpo-zoo schedule` prints it
    assert int(flow_step_index(scheduler, printed)) == 1
    batch = step_coefficients(scheduler, timesteps[[0, 5]], sde="dance-sde", eta=0.3)
    table = flow_schedule_coefficients(scheduler, "dance-sde", 0.3)
    torch.testing.assert_close(batch.b, table.b[[0, 5]])
    assert float(flow_time_step(scheduler, timesteps[5])) == pytest.approx(float(-(scheduler.sigmas[6] -
                                                                                    scheduler.sigmas[5])))
    p_x, p_o = x0_coefficients(scheduler, timesteps[5])
    assert (float(p_x), float(p_o)) == (1.0, -float(scheduler.sigmas[5]))


# --------------------------------------------------------------------------------- the forward process
def test_forward_process_and_velocity_target_are_diffusers_and_consistent():
    scheduler = _sd3()
    x0, noise, _ = _state(5, torch.float32)
    t = scheduler.timesteps[3]
    sigma = float(scheduler.sigmas[3])
    x_t = flow_add_noise(x0, noise, sigma)
    torch.testing.assert_close(x_t, scheduler.scale_noise(x0, t.reshape(1), noise))
    v = flow_training_target(x0, noise)
    # x̂0 = x_t − σ·v recovers x0, and the Euler step with the true velocity lands on the interpolant at σ_{i+1}
    torch.testing.assert_close(x_t - sigma * v, x0, atol=1e-6, rtol=0)
    a, b, _ = step_coefficients(scheduler, t)
    next_sigma = float(scheduler.sigmas[4])
    torch.testing.assert_close(float(a) * x_t + float(b) * v, flow_add_noise(x0, noise, next_sigma), atol=1e-6,
                               rtol=0)
    # per-sample sigmas broadcast over the latent dims
    per_sample = flow_add_noise(x0, noise, torch.tensor([0.2, 0.9]))
    torch.testing.assert_close(per_sample[1], flow_add_noise(x0[1:], noise[1:], 0.9)[0])


def test_training_timesteps_are_drawn_as_the_public_sd3_script_draws_them():
    from diffusers.training_utils import compute_density_for_timestep_sampling

    drawn = sample_flow_train_timesteps(SD3_CONFIG, 64, torch.Generator().manual_seed(0))
    u = compute_density_for_timestep_sampling("logit_normal", 64, 0.0, 1.0, 1.29,
                                              generator=torch.Generator().manual_seed(0))
    train = FlowMatchEulerDiscreteScheduler.from_config(SD3_CONFIG)
    torch.testing.assert_close(drawn, train.timesteps[(u * 1000).long()])
    uniform = sample_flow_train_timesteps(FLUX_CONFIG, 4000, torch.Generator().manual_seed(1), weighting="none")
    assert uniform.min() >= 1 and uniform.max() <= 1000 and abs(float(uniform.mean()) - 500) < 20
    # logit-normal puts more mass in the middle than uniform
    middle = sample_flow_train_timesteps(FLUX_CONFIG, 4000, torch.Generator().manual_seed(1))
    assert float(((middle > 250) & (middle < 750)).float().mean()) > 0.6


# -------------------------------------------------------------------------------------------- bad input
def test_bad_input_gets_one_line_errors():
    scheduler = _sd3()
    t = scheduler.timesteps[0]
    cases = [
        (lambda: step_coefficients(scheduler, t, sde="flow-sde", eta=-0.1), "eta: expected a finite number >= 0"),
        (lambda: step_coefficients(scheduler, t, sde="ode-sde", eta=0.5), "sde: expected one of flow-sde"),
        (lambda: step_coefficients(scheduler, t, eta=0.5), "sde: a flow scheduler's step with eta=0.5 needs"),
        (lambda: step_coefficients(scheduler, t, sde="cps", eta=1.5), r"eta: cps takes η in \[0, 1\]"),
        (lambda: step_coefficients(scheduler, 3, sde="cps", eta=0.5), "timestep: .* is not one of scheduler"),
        (lambda: make_flow_scheduler(FLUX_CONFIG, 10), "mu: this scheduler shifts its sigmas by resolution"),
        (lambda: make_flow_scheduler(SD3_CONFIG, 10, sigmas=[1.0, 0.5]), "sigmas: expected 10 values"),
        (lambda: make_flow_scheduler(dict(SD3_CONFIG, invert_sigmas=True), 10), "invert_sigmas=True"),
        (lambda: flow_step_coefficients(0.5, 0.6), r"sigma_next: expected values in \[0, sigma\)"),
        (lambda: sample_flow_train_timesteps(SD3_CONFIG, 4, torch.Generator(), weighting="cosine"),
         "weighting: expected one of"),
    ]
    for call, message in cases:
        with pytest.raises(UserInputError, match=message) as info:
            call()
        assert "\n" not in str(info.value)


def test_a_flow_sde_on_a_ddim_scheduler_is_refused():
    ddim = DDIMScheduler(clip_sample=False)
    ddim.set_timesteps(10)
    with pytest.raises(UserInputError, match="sde: 'flow-sde' is a flow-matching SDE.*DDIMScheduler takes eta only"):
        step_coefficients(ddim, int(ddim.timesteps[0]), sde="flow-sde", eta=0.7)
    with pytest.raises(UnsupportedSchedulerError, match="flow-sde needs a FlowMatchEulerDiscreteScheduler.*"
                                                        "got a scheduler with betas"):
        make_flow_scheduler(dict(ddim.config), 10)
    with pytest.raises(UnsupportedSchedulerError, match="got DDIMScheduler"):
        flow_schedule_coefficients(ddim, "cps", 0.5)


# ---------------------------------------------------------------------------------------- rdpo-zoo schedule
def test_schedule_prints_the_flow_table():
    import json

    from click.testing import CliRunner

    from rdpo_zoo.cli import main

    result = CliRunner().invoke(main, ["schedule", "--scheduler", "dance-sde", "--flow-model", "flux",
                                       "--resolution", "512", "--num-steps", "4", "--eta", "0.3", "--json"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    scheduler = make_flow_scheduler(FLUX_CONFIG, 4, **resolution_shift_options(FLUX_CONFIG, 4, 32 * 32,
                                                                             flux_sigmas=True))
    table = flow_schedule_coefficients(scheduler, "dance-sde", 0.3)
    assert [row["std"] for row in printed["steps"]] == table.std.tolist()
    assert [row["b"] for row in printed["steps"]] == table.b.tolist()
    assert [row["step"] for row in printed["steps"]] == [4, 3, 2, 1]
    text = CliRunner().invoke(main, ["schedule", "--scheduler", "flow-sde", "--num-steps", "3"]).stdout
    header, columns, first = text.splitlines()[:3]
    assert header.startswith("FLOW-SDE sd3 schedule (shift=3.0) T=3 eta=0.7")
    assert columns.split() == ["step", "timestep", "sigma", "a", "b", "std"]
    assert first.split()[:3] == ["3", "1000.000", "1.000000"] and float(first.split()[-1]) == pytest.approx(0.7)
