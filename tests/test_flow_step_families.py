"""The flow step families (flow-sde, dance-sde, cps) on the step-family seam: registered like every part, built
from a pipeline's scheduler config as the SD3 and FLUX pipelines build their schedules, and answering the seam's
questions with the flow table of rdpo_zoo.flow_steps."""

import math

import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

from rdpo_zoo.errors import UserInputError
from rdpo_zoo.flow_step_families import CPSFamily, DanceSDEFamily, FlowSDEFamily
from rdpo_zoo.flow_steps import (
    FLOW_SDES,
    PUBLIC_CPS_LOG_PROB_STD,
    flow_add_noise,
    flow_schedule_coefficients,
    make_flow_scheduler,
    resolution_shift_options,
)

SD3_CONFIG = dict(FlowMatchEulerDiscreteScheduler(shift=3.0).config)
FLUX_CONFIG = dict(FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True).config)
FAMILIES = {"flow-sde": FlowSDEFamily, "dance-sde": DanceSDEFamily, "cps": CPSFamily}


def test_families_are_registered_and_listed():
    from click.testing import CliRunner

    from rdpo_zoo.cli import main
    from rdpo_zoo.registry import get_registry

    for name in FLOW_SDES:
        part = get_registry().get("step-family", name)
        assert part.load() is FAMILIES[name]
        family = part.build_family(SD3_CONFIG, 6, 0.5)
        assert isinstance(family, FAMILIES[name]) and family.eta == 0.5
    listed = CliRunner().invoke(main, ["plugins", "--kind", "step-family"]).stdout
    assert all(f"  {name} " in listed for name in ("ddim", "ddpm", *FLOW_SDES))


@pytest.mark.parametrize("name", FLOW_SDES)
def test_family_answers_with_the_flow_table(name):
    family = FAMILIES[name](SD3_CONFIG, 10, eta=0.6)
    scheduler = make_flow_scheduler(SD3_CONFIG, 10)
    assert family.timesteps.dtype == torch.float32 and torch.equal(family.timesteps, scheduler.timesteps)
    table = flow_schedule_coefficients(scheduler, name, 0.6)
    for index in range(10):
        assert [float(c) for c in family.coefficients(index)] == [float(c[index]) for c in table]
        assert family.x0_coefficients(index) == (1.0, -float(scheduler.sigmas[index]))
        assert family.flow_time_step(index) == pytest.approx(float(scheduler.sigmas[index] -
                                                                   scheduler.sigmas[index + 1]))
    assert family.eta == 0.6 and FAMILIES[name](SD3_CONFIG, 4).eta == 0.7  # Flow-GRPO's noise_level by default
    with pytest.raises(ValueError, match=r"index: expected a step index in \[0, 9\]"):
        family.coefficients(10)


def test_flux_schedule_comes_from_the_model_family_options():
    options = resolution_shift_options(FLUX_CONFIG, 8, 1024, flux_sigmas=True)
    family = FlowSDEFamily(FLUX_CONFIG, 8, **options)
    pipeline = FlowMatchEulerDiscreteScheduler.from_config(FLUX_CONFIG)
    pipeline.set_timesteps(8, sigmas=options["sigmas"], mu=options["mu"])  # as FluxPipeline.__call__ does
    assert torch.equal(family.timesteps, pipeline.timesteps)
    with pytest.raises(UserInputError, match="mu: this scheduler shifts its sigmas by resolution"):
        FlowSDEFamily(FLUX_CONFIG, 8)


def test_cps_public_log_prob_is_an_option_and_the_exact_gaussian_the_default():
    exact, public = CPSFamily(SD3_CONFIG, 10, eta=0.5), CPSFamily(SD3_CONFIG, 10, eta=0.5, log_prob="public")
    for index in (0, 5):
        assert float(exact.likelihood_coefficients(index).std) == float(exact.coefficients(index).std)
        assert float(public.likelihood_coefficients(index).std) == pytest.approx(PUBLIC_CPS_LOG_PROB_STD)
        assert float(public.coefficients(index).std) == float(exact.coefficients(index).std)  # sampling unchanged
    with pytest.raises(UserInputError, match="log_prob: 'public' is CPS's convention"):
        FlowSDEFamily(SD3_CONFIG, 10, log_prob="public")


def test_forward_process_of_the_family():
    family = DanceSDEFamily(SD3_CONFIG, 10)
    g = torch.Generator().manual_seed(0)
    t = family.sample_train_timesteps(3, g)
    assert t.shape == (3,) and t.dtype == torch.float32 and torch.all((t > 0) & (t <= 1000))
    x0, noise = torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 4, 2, 2, generator=g)
    x_t = family.add_noise(x0, noise, t)
    torch.testing.assert_close(x_t, flow_add_noise(x0, noise, t.double() / 1000))
    target = family.training_target(x0, noise, t)
    torch.testing.assert_close(x_t - (t / 1000).view(3, 1, 1, 1) * target, x0, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", FLOW_SDES)
def test_flow_family_on_a_ddim_scheduler_is_a_one_line_error(name):
    config = dict(DDIMScheduler().config)
    with pytest.raises(UserInputError, match=f"scheduler: {name} needs a FlowMatchEulerDiscreteScheduler") as info:
        FAMILIES[name](config, 10)
    assert "\n" not in str(info.value)


def test_bad_eta_and_options():
    with pytest.raises(UserInputError, match="eta: expected a finite number >= 0"):
        FlowSDEFamily(SD3_CONFIG, 10, eta=-0.5)
    with pytest.raises(UserInputError, match=r"eta: cps takes η in \[0, 1\]"):
        CPSFamily(SD3_CONFIG, 10, eta=math.pi)
    with pytest.raises(UserInputError, match="train_weighting: expected one of"):
        FlowSDEFamily(SD3_CONFIG, 10, train_weighting="cosmap")


def test_ddim_and_ddpm_refuse_a_flow_matching_config_in_one_line():
    """DDIMScheduler.from_config would silently invent the default betas for a flow model's config."""
    from rdpo_zoo.steps import DDIMFamily, DDPMFamily

    for family in (DDIMFamily, DDPMFamily):
        with pytest.raises(UserInputError, match=f"scheduler '{family.name}': the pipeline is a flow-matching model.*"
                                                 "use --scheduler flow-sde, dance-sde or cps") as info:
            family(SD3_CONFIG, 10)
        assert "\n" not in str(info.value)


def test_the_parts_options_are_the_families_choices():
    from rdpo_zoo.flow_steps import LOG_PROB_CONVENTIONS, TRAIN_WEIGHTINGS
    from rdpo_zoo.registry import get_registry

    for name in FLOW_SDES:
        options = {o.name: o for o in get_registry().get("step-family", name).options}
        assert set(options["train_weighting"].choices) == set(TRAIN_WEIGHTINGS)
    cps = {o.name: o for o in get_registry().get("step-family", "cps").options}
    assert set(cps["log_prob"].choices) == set(LOG_PROB_CONVENTIONS) and cps["log_prob"].default == "exact"
    public = get_registry().get("step-family", "cps").build_family(SD3_CONFIG, 5, 0.5, {"log_prob": "public"})
    assert public.log_prob == "public"
