"""``rdpo-zoo schedule``: the affine Gaussian table (a, b, σ) of every reverse step of a sampler."""

from __future__ import annotations

import json

import click

from rdpo_zoo.cli.common import Command

# Stable Diffusion 1.5's noise schedule (its scheduler_config.json), the default of the paper's experiments.
SD15_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


@click.command(cls=Command)
@click.option("--scheduler", "kind", type=click.Choice(["ddim", "ddpm"]), default="ddim", show_default=True,
              help="Sampler whose reverse steps are tabulated.")
@click.option("--num-steps", "steps", type=click.IntRange(min=1), default=20, show_default=True, help="Inference steps T.")
@click.option("--eta", type=click.FloatRange(min=0.0), default=1.0, show_default=True,
              help="DDIM's η (ignored for DDPM, whose variance is fixed_small).")
@click.option("--prediction-type", type=click.Choice(["epsilon", "v_prediction", "sample"]), default="epsilon",
              show_default=True, help="What the network predicts.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def schedule(kind: str, steps: int, eta: float, prediction_type: str, as_json: bool) -> None:
    """Print x_{t-1} ~ N(a·x_t + b·o, σ²) for every step of a Stable-Diffusion-1.5-shaped schedule.

    Steps with σ = 0 (η = 0, or a last step without noise) have no likelihood and cannot be fine-tuned.
    """
    from diffusers import DDIMScheduler, DDPMScheduler

    from rdpo_zoo.schedulers import step_coefficients

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
