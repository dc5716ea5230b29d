"""The trainer's iterations on a GPU: the embedded models, fp32 and bf16 autocast.

Cases (``--cases``): ``tiny:main`` — the main job's parts (ΔQ estimator, DPO + Ψ, TailorPO-G guidance; the README's
command without its evaluation) on the embedded SD model; ``tiny-flow:main`` — the same on the embedded flow model
with Flow-GRPO's SDE (``--scheduler flow-sde --eta 0.7``); ``tiny-flow:flow-grpo`` — the flow-grpo preset (GRPO's
clipped per-sample loss, G = 4) there. For each case and precision:

- the log-ratios of the first rollout (step pairs, or GRPO's per-sample PPO ratios) are exactly 0 before any update
  (policy = reference: catches CFG, dtype or timestep mismatches between the two passes on the device);
- two iterations train (seconds, metrics and whether the losses are finite are printed);
- the saved LoRA reloads into a fresh pipeline with diffusers' ``load_lora_weights`` and reproduces the trained
  UNet's output.

Prints one ``RESULT {json}`` line and exits 1 if a check fails. Needs diffusers, peft and accelerate (the script
``benchmarks/kernels_gpu.sh`` installs them from wheels carried beside the code). Runs on the CPU too (slowly):
``python3 -P benchmarks/gpu_trainer_check.py --precisions no --iterations 1``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time

import torch


#: case name -> (model part, preset or None, method settings beyond the preset's)
CASES = {
    "tiny:main": ("tiny", None, dict(estimator="delta-q", loss="rdpo")),
    "tiny-flow:main": ("tiny-flow", None, dict(estimator="delta-q", loss="rdpo", scheduler="flow-sde", eta=0.7)),
    "tiny-flow:flow-grpo": ("tiny-flow", "flow-grpo", dict(scheduler="flow-sde", eta=0.7)),
}


def check(case: str, mixed_precision: str, iterations: int, folder: str) -> dict:
    from rdpo_zoo.config import RunSettings, TrainConfig
    from rdpo_zoo.registry import get_registry
    from rdpo_zoo.resolve import merge_settings
    from rdpo_zoo.trainer import LORA_WEIGHT_NAME, Trainer

    model, preset, settings = CASES[case]
    method = merge_settings(preset, settings)
    run = RunSettings(output_dir=folder, iterations=iterations, eval_samples=0, quiet=True, seed=0, model=model,
                      mixed_precision=mixed_precision, checkpoint_every=0)
    out = {"case": case, "mixed_precision": mixed_precision}
    t0 = time.perf_counter()
    trainer = Trainer(TrainConfig(method, run, None))
    out["device"] = str(trainer.accelerator.device)
    r = trainer.rollout_log_ratios(0)
    out["log_ratios_at_init"] = r.numel()
    out["log_ratios_zero_at_init"] = bool(r.numel() > 0 and torch.all(r == 0))
    out["max_abs_log_ratio_at_init"] = float(r.abs().max())
    trainer.train()
    out["seconds_build_and_train"] = time.perf_counter() - t0
    records = [json.loads(line) for line in (trainer.metrics_path).read_text().splitlines()]
    out["metrics_last"] = {k: records[-1].get(k) for k in ("loss", "accuracy", "r_w", "r_l", "reward_mean", "pairs",
                                                           "seconds_rollout", "seconds_optimise", "unet_calls")}
    out["losses_finite"] = all(isinstance(r.get("loss"), float) and r["loss"] == r["loss"] for r in records)
    # the saved LoRA reloads exactly
    from rdpo_zoo.families import resolve_model_family

    part = get_registry().get("model", run.model)
    fresh = resolve_model_family(part.build(run.model_options), part.family)
    fresh.denoiser.to(trainer.accelerator.device)
    fresh.load_lora(f"{folder}/lora", weight_name=LORA_WEIGHT_NAME)
    family = trainer.model.family
    device, dtype = family.device, family.dtype
    g = torch.Generator().manual_seed(0)
    shape = (2, *trainer.model.latent_shape)
    x = torch.randn(shape, generator=g).to(device, dtype)
    t = trainer.model.timesteps[[0, -1]].to(device)
    cond = trainer.model.encode(["a red circle", "a red circle"])
    with torch.no_grad():
        trained = family.denoise(family.denoiser, x, t, cond.cond, cond.added_cond).float()
        reloaded = fresh.denoise(fresh.denoiser.to(dtype), x, t, cond.cond, cond.added_cond).float()
    out["lora_reload_max_abs_diff"] = float((trained - reloaded).abs().max())
    out["output_max_abs"] = float(trained.abs().max())
    # relative to the output's size: in bf16 one rounding of an output near 4 is 2^-6 (the fp32 LoRA of training
    # and the reloaded one cast to the model's dtype round differently); ~2.5 bf16 ulps allowed, fp32 near exact
    out["lora_reload_rel_diff"] = out["lora_reload_max_abs_diff"] / max(out["output_max_abs"], 1e-12)
    out["lora_reloads"] = out["lora_reload_rel_diff"] <= (1e-5 if dtype == torch.float32 else 1e-2)
    out["passed"] = bool(out["log_ratios_zero_at_init"] and out["losses_finite"] and out["lora_reloads"])
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--precisions", default="no,bf16", help="comma-separated: no (fp32), bf16, fp16")
    parser.add_argument("--iterations", type=int, default=2)
    args = parser.parse_args(argv)
    results = []
    cases = args.cases.split(",")
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"--cases: unknown {unknown}; expected some of {', '.join(CASES)}")
    combinations = [(case, precision) for case in cases for precision in args.precisions.split(",")]
    for case, precision in combinations:
        if len(combinations) > 1:  # one process each: accelerate's state (mixed precision) is fixed per process
            done = subprocess.run([sys.executable, "-P", __file__, "--cases", case, "--precisions", precision,
                                   "--iterations", str(args.iterations)], capture_output=True, text=True)
            lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            results.extend(json.loads(lines[-1][7:]) if lines else [
                {"case": case, "mixed_precision": precision, "passed": False,
                 "error": f"exit {done.returncode}: {(done.stderr.strip().splitlines() or [''])[-1]}"}])
        else:
            with tempfile.TemporaryDirectory(prefix="rdpo-gpu-check-") as folder:
                try:
                    results.append(check(case, precision, args.iterations, folder))
                except Exception as error:  # noqa: BLE001 - reported, and the other cases still run
                    results.append({"case": case, "mixed_precision": precision, "passed": False,
                                    "error": f"{type(error).__name__}: {error}"})
        print(json.dumps(results[-1]), flush=True)
    print("RESULT " + json.dumps(results))
    return 0 if all(r["passed"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
