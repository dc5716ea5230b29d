"""``rdpo-zoo schedule``: the affine Gaussian table (a, b, σ) of every reverse step of a sampler."""

from __future__ import annotations

import json

import click

from rdpo_zoo.cli.common import Command

# Stable Diffusion 1.5's noise schedule (its scheduler_config.json), the default of the paper's experiments.
SD15_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
# The flow-matching schedules as SD3.5 and FLUX.1 ship them (their scheduler_config.json).
FLOW_SCHEDULES = {
    "sd3": dict(num_train_timesteps=1000, shift=3.0),
    "flux": dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                 base_image_seq_len=256, max_image_seq_len=4096),
}
FLOW_SDES = ("flow-sde", "dance-sde", "cps")  # rdpo_zoo.flow_steps.FLOW_SDES (not imported: --help stays torch-free)
DDIM_ETA, FLOW_ETA = 1.0, 0.7  # the paper's DDIM η; Flow-GRPO's noise_level (rdpo_zoo.flow_steps.DEFAULT_FLOW_ETA)


@click.command(cls=Command)
@click.option("--scheduler", "kind", type=click.Choice(["ddim", "ddpm", *FLOW_SDES]), default="ddim",
              show_default=True, help="Sampler whose reverse steps are tabulated (flow-sde, dance-sde, cps: a "
              "flow-matching model's FlowMatchEulerDiscreteScheduler, see docs/flow.md).")
@click.option("--num-steps", "steps", type=click.IntRange(min=1), default=20, show_default=True, help="Inference steps T.")
@click.option("--eta", type=click.FloatRange(min=0.0), default=None,
              help=f"Noise level η: DDIM's (default {DDIM_ETA}), or the flow SDE's (default {FLOW_ETA}); ignored for "
              "DDPM, whose variance is fixed_small.")
@click.option("--prediction-type", type=click.Choice(["epsilon", "v_prediction", "sample"]), default="epsilon",
              show_default=True, help="What the network predicts (DDIM/DDPM; flow models predict the velocity).")
@click.option("--flow-model", type=click.Choice(sorted(FLOW_SCHEDULES)), default="sd3", show_default=True,
              help="Flow schedule: SD3.5's static shift 3, or FLUX's resolution-dependent shift.")
@click.option("--resolution", type=click.IntRange(min=16), default=1024, show_default=True,
              help="Image side in pixels, for FLUX's shift (image_seq_len = (resolution/16)²).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def schedule(kind: str, steps: int, eta, prediction_type: str, flow_model: str, resolution: int,
             as_json: bool) -> None:
    """Print x_{t-1} ~ N(a·x_t + b·o, σ²) for every step of a Stable-Diffusion-1.5-shaped schedule, or, for a flow
    SDE, x_(i+1) ~ N(a·x_i + b·v, std²) for every step of an SD3.5- or FLUX-shaped one.

    Steps with σ = 0 (η = 0, or a last step without noise) have no likelihood and cannot be fine-tuned.
    """
    if kind in FLOW_SDES:
        _flow_table(kind, steps, FLOW_ETA if eta is None else eta, flow_model, resolution, as_json)
        return
    from diffusers import DDIMScheduler, DDPMScheduler

    from rdpo_zoo.schedulers import step_coefficients

    eta = DDIM_ETA if eta is None else eta
    common = dict(SD15_SCHEDULE, prediction_type=prediction_type, clip_sample=False, steps_offset=1)
    if kind == "ddim":
        scheduler = DDIMScheduler(**common, set_alpha_to_one=False)
    else:
        scheduler = DDPMScheduler(**common, variance_type="fixed_small")
    scheduler.set_timesteps(steps)
    rows = []
    for index, t in enumerate(scheduler.timesteps.tolist()):
        a, b, sigma = step_coefficients(scheduler, t, eta=eta if kind == "ddim" else None)
        rows.append({"step": steps - index, "timestep": t, "a": float(a), "b": float(b), "sigma": float(sigma)})
    if as_json:
        click.echo(json.dumps({"scheduler": kind, "eta": eta, "prediction_type": prediction_type, "steps": rows}))
        return
    click.echo(f"{kind.upper()} T={steps} eta={eta} prediction_type={prediction_type}: x_(t-1) ~ N(a·x_t + b·o, σ²)")
    click.echo(f"{'step':>5} {'timestep':>8} {'a':>12} {'b':>12} {'sigma':>12}")
    for row in rows:
        click.echo(f"{row['step']:>5} {row['timestep']:>8} {row['a']:>12.6f} {row['b']:>12.6f} {row['sigma']:>12.6f}")


def _flow_table(sde: str, steps: int, eta: float, flow_model: str, resolution: int, as_json: bool) -> None:
    from rdpo_zoo.flow_steps import flow_schedule_coefficients, make_flow_scheduler, resolution_shift_options

    config = FLOW_SCHEDULES[flow_model]
    image_seq_len = (resolution // 16) ** 2  # VAE factor 8, then 2×2 patches (both pipelines)
    options = resolution_shift_options(config, steps, image_seq_len, flux_sigmas=flow_model == "flux")
    scheduler = make_flow_scheduler(config, steps, **options)
    table = flow_schedule_coefficients(scheduler, sde, eta)
    sigmas = scheduler.sigmas.tolist()
    rows = [
        {"step": steps - index, "timestep": float(t), "sigma": sigmas[index], "sigma_next": sigmas[index + 1],
         "a": float(table.a[index]), "b": float(table.b[index]), "std": float(table.std[index])}
        for index, t in enumerate(scheduler.timesteps.tolist())
    ]
    shift = f"mu={options['mu']:.4f} (resolution {resolution})" if options["mu"] is not None else \
        f"shift={config['shift']}"
    if as_json:
        click.echo(json.dumps({"scheduler": sde, "eta": eta, "flow_model": flow_model, "mu": options["mu"],
                               "steps": rows}))
        return
    click.echo(f"{sde.upper()} {flow_model} schedule ({shift}) T={steps} eta={eta}: "
               "x_(i+1) ~ N(a·x_i + b·v, std²), sigma = the scheduler's noise level, v the velocity")
    click.echo(f"{'step':>5} {'timestep':>9} {'sigma':>9} {'a':>12} {'b':>12} {'std':>12}")
    for row in rows:
        click.echo(f"{row['step']:>5} {row['timestep']:>9.3f} {row['sigma']:>9.6f} {row['a']:>12.6f} "
                   f"{row['b']:>12.6f} {row['std']:>12.6f}")
