"""The step-coefficient table against diffusers' own ``scheduler.step``."""

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
)

from rdpo_zoo import paired_log_ratios, step_coefficients
from rdpo_zoo.schedulers import UnsupportedSchedulerError, _prediction_table, x0_coefficients

SD15 = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
PREDICTION_TYPES = ["epsilon", "v_prediction", "sample"]
SHAPE = (2, 4, 8, 8)


def _ddim(prediction_type="epsilon", set_alpha_to_one=False, steps=20, **kw):
    scheduler = DDIMScheduler(
        **SD15, prediction_type=prediction_type, clip_sample=False, set_alpha_to_one=set_alpha_to_one,
        steps_offset=1, **kw,
    )
    scheduler.set_timesteps(steps)
    return scheduler


def _ddpm(prediction_type="epsilon", variance_type="fixed_small", steps=20, **kw):
    scheduler = DDPMScheduler(
        **SD15, prediction_type=prediction_type, clip_sample=False, variance_type=variance_type, steps_offset=1, **kw
    )
    scheduler.set_timesteps(steps)
    return scheduler


def _random_state(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)


def _assert_step_matches(scheduler, t, prev_sample, x, o, noise, coefficients):
    a, b, sigma = (float(c) for c in coefficients)
    expected = a * x.double() + b * o.double() + sigma * noise.double()
    # float32 precision of diffusers' own arithmetic, relative to the size of its intermediate terms (x̂0 and ε̂
    # can be ~1/sqrt(1 − ᾱ_t) larger than the result, e.g. sample-prediction at the last step).
    (p_x, p_o), (e_x, e_o) = _prediction_table(scheduler, scheduler.alphas_cumprod[t].double())
    x_size = abs(a) + abs(float(p_x)) + abs(float(e_x))
    o_size = abs(b) + abs(float(p_o)) + abs(float(e_o))
    scale = x_size * x.abs().max() + o_size * o.abs().max() + sigma * noise.abs().max()
    torch.testing.assert_close(prev_sample.double(), expected, atol=float(scale) * 2e-6, rtol=0)


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("set_alpha_to_one", [False, True])
def test_ddim_matches_diffusers_step(prediction_type, eta, set_alpha_to_one):
    scheduler = _ddim(prediction_type, set_alpha_to_one)
    timesteps = scheduler.timesteps.tolist()
    for index in (0, 1, len(timesteps) // 2, len(timesteps) - 1):  # first, second, middle, last
        t = timesteps[index]
        x, o, noise = _random_state(index)
        prev = scheduler.step(o, t, x, eta=eta, variance_noise=noise).prev_sample
        coefficients = step_coefficients(scheduler, t, eta=eta)
        _assert_step_matches(scheduler, t, prev, x, o, noise, coefficients)
        if eta == 0.0:
            assert float(coefficients.sigma) == 0.0


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_small_log", "fixed_large"])
def test_ddpm_matches_diffusers_step(prediction_type, variance_type):
    scheduler = _ddpm(prediction_type, variance_type)
    timesteps = scheduler.timesteps.tolist()
    for index in (0, 1, len(timesteps) // 2, len(timesteps) - 1):
        t = timesteps[index]
        x, o, _ = _random_state(index)
        seed = 1234 + index
        prev = scheduler.step(o, t, x, generator=torch.Generator().manual_seed(seed)).prev_sample
        # DDPM draws its noise with the generator (randn_tensor); draw the same noise again.
        noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))
        _assert_step_matches(scheduler, t, prev, x, o, noise, step_coefficients(scheduler, t, eta=None))


def test_ddpm_last_step_without_noise_has_sigma_zero():
    scheduler = DDPMScheduler(**SD15, clip_sample=False)  # steps_offset=0: the last timestep is 0
    scheduler.set_timesteps(10)
    assert int(scheduler.timesteps[-1]) == 0
    assert float(step_coefficients(scheduler, 0).sigma) == 0.0


def test_tensor_timesteps_match_scalar_ones():
    for scheduler, eta in ((_ddim("v_prediction"), 0.7), (_ddpm("epsilon"), None)):
        timesteps = scheduler.timesteps[[0, 5, 19, 3]]
        batched = step_coefficients(scheduler, timesteps, eta=eta)
        assert batched.a.shape == (4,)
        for i, t in enumerate(timesteps.tolist()):
            single = step_coefficients(scheduler, t, eta=eta)
            for got, want in zip(batched, single):
                assert float(got[i]) == float(want)


def test_explicit_prev_timestep_overrides_the_derived_one():
    scheduler = _ddim()
    t = int(scheduler.timesteps[2])
    derived = step_coefficients(scheduler, t, eta=1.0)
    explicit = step_coefficients(scheduler, t, prev_timestep=t - 50, eta=1.0)
    other = step_coefficients(scheduler, t, prev_timestep=t - 100, eta=1.0)
    assert torch.equal(derived.a, explicit.a) and torch.equal(derived.sigma, explicit.sigma)
    assert not torch.equal(derived.sigma, other.sigma)


def test_ddim_eta_one_equals_ddpm_fixed_small_except_last_step():
    """DDIM with η = 1 and DDPM with fixed_small variance take the same Gaussian step on the same timesteps; they
    differ only at the last step, where DDIM uses final_alpha_cumprod and DDPM uses ᾱ_prev = 1."""
    for prediction_type in PREDICTION_TYPES:
        ddim, ddpm = _ddim(prediction_type), _ddpm(prediction_type)
        assert torch.equal(ddim.timesteps, ddpm.timesteps)
        timesteps = ddim.timesteps
        c_ddim = step_coefficients(ddim, timesteps, eta=1.0)
        c_ddpm = step_coefficients(ddpm, timesteps)
        for got, want in zip(c_ddim, c_ddpm):
            torch.testing.assert_close(got[:-1], want[:-1], rtol=1e-10, atol=1e-12)
        assert not torch.allclose(c_ddim.sigma[-1], c_ddpm.sigma[-1])


def test_x0_coefficients_match_diffusers_pred_original_sample():
    for prediction_type in PREDICTION_TYPES:
        scheduler = _ddim(prediction_type)
        t = int(scheduler.timesteps[4])
        x, o, noise = _random_state(0)
        out = scheduler.step(o, t, x, eta=1.0, variance_noise=noise)
        p_x, p_o = x0_coefficients(scheduler, t)
        torch.testing.assert_close(out.pred_original_sample.double(), float(p_x) * x.double() + float(p_o) * o.double(),
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "scheduler_cls", [EulerDiscreteScheduler, PNDMScheduler, DPMSolverMultistepScheduler]
)
def test_non_gaussian_affine_schedulers_are_refused_with_a_remedy(scheduler_cls):
    scheduler = scheduler_cls(**SD15)
    scheduler.set_timesteps(10)
    with pytest.raises(UnsupportedSchedulerError, match=rf"{scheduler_cls.__name__}.*DDIMScheduler\.from_config"):
        step_coefficients(scheduler, int(scheduler.timesteps[0]))


@pytest.mark.parametrize("variance_type", ["learned", "learned_range", "fixed_large_log"])
def test_ddpm_variances_that_are_not_fixed_gaussians_are_refused(variance_type):
    scheduler = _ddpm(variance_type=variance_type)
    with pytest.raises(UnsupportedSchedulerError, match=rf"variance_type='{variance_type}'.*fixed_small"):
        step_coefficients(scheduler, int(scheduler.timesteps[0]))


def test_clipping_and_thresholding_are_refused():
    clipped = DDIMScheduler(**SD15, clip_sample=True)
    clipped.set_timesteps(10)
    with pytest.raises(UnsupportedSchedulerError, match="clip_sample=True"):
        step_coefficients(clipped, int(clipped.timesteps[0]), eta=1.0)
    thresholded = DDIMScheduler(**SD15, clip_sample=False, thresholding=True)
    thresholded.set_timesteps(10)
    with pytest.raises(UnsupportedSchedulerError, match="thresholding=True"):
        step_coefficients(thresholded, int(thresholded.timesteps[0]), eta=1.0)


def test_bad_arguments_are_named():
    ddim, ddpm = _ddim(), _ddpm()
    with pytest.raises(ValueError, match="eta: DDPMScheduler has no η"):
        step_coefficients(ddpm, int(ddpm.timesteps[0]), eta=1.0)
    with pytest.raises(ValueError, match="eta: expected a finite number >= 0"):
        step_coefficients(ddim, int(ddim.timesteps[0]), eta=-1.0)
    with pytest.raises(ValueError, match="eta: 2.0 makes"):
        step_coefficients(ddim, int(ddim.timesteps[0]), eta=2.0)
    with pytest.raises(ValueError, match=r"timestep: expected values in \[0, 999\]"):
        step_coefficients(ddim, 1000, eta=1.0)
    with pytest.raises(ValueError, match="timestep: expected integer timesteps"):
        step_coefficients(ddim, 10.5, eta=1.0)
    with pytest.raises(ValueError, match="timestep: 7 is not in scheduler.timesteps"):
        step_coefficients(ddpm, 7)
    with pytest.raises(ValueError, match="prev_timestep: expected a value below"):
        step_coefficients(ddim, 500, prev_timestep=600, eta=1.0)
    fresh = DDIMScheduler(**SD15, clip_sample=False)
    with pytest.raises(ValueError, match="set_timesteps"):
        step_coefficients(fresh, 500, eta=1.0)


def test_deterministic_step_has_no_likelihood():
    scheduler = _ddim()
    a, b, sigma = step_coefficients(scheduler, int(scheduler.timesteps[3]), eta=0.0)
    y, o_theta, o_ref = torch.randn(1, 2, 8), torch.randn(1, 8), torch.randn(1, 8)
    with pytest.raises(ValueError, match="sigma: step 0 has σ = 0"):
        paired_log_ratios(y, torch.randn(1, 8), o_theta, o_ref, a, b, sigma)


def test_ddpm_clamped_last_variance_is_refused_as_degenerate():
    """DDPM clamps the last variance to 1e-20 (σ = 1e-10): technically Gaussian, but a likelihood with weights of
    1e19 is meaningless, so the log-ratio refuses it and tells the caller to skip the step."""
    scheduler = _ddpm()
    t_last = int(scheduler.timesteps[-1])
    a, b, sigma = step_coefficients(scheduler, t_last)
    assert 0 < float(sigma) < 1e-9
    y, x_t, o = torch.randn(1, 2, 8), torch.randn(1, 8), torch.randn(1, 8)
    with pytest.raises(ValueError, match="skip_degenerate_steps"):
        paired_log_ratios(y, x_t, o, o + 0.1, a, b, sigma)
