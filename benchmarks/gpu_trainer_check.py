"""The main job's training iteration on a GPU: the embedded tiny model, fp32 and bf16 autocast.

For each precision: a Trainer of the main job's parts (ΔQ estimator, DPO + Ψ, TailorPO-G guidance; the README's
command without its evaluation), then

- the log-ratios of the first rollout's pairs are exactly 0 before any update (policy = reference: catches CFG,
  dtype or timestep mismatches between the two passes on the device);
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
import sys
import tempfile
import time

import torch


def check(mixed_precision: str, iterations: int, folder: str) -> dict:
    from rdpo_zoo.config import RunSettings, TrainConfig
    from rdpo_zoo.registry import get_registry
    from rdpo_zoo.resolve import merge_settings
    from rdpo_zoo.trainer import LORA_WEIGHT_NAME, Trainer

    method = merge_settings(None, dict(estimator="delta-q", loss="rdpo"))
    run = RunSettings(output_dir=folder, iterations=iterations, eval_samples=0, quiet=True, seed=0,
                      mixed_precision=mixed_precision, checkpoint_every=0)
    out = {"mixed_precision": mixed_precision}
    t0 = time.perf_counter()
    trainer = Trainer(TrainConfig(method, run, None))
    out["device"] = str(trainer.accelerator.device)
    pairs = trainer.rollout(0).pairs
    _, r = trainer.pair_loss(pairs)
    out["pairs_at_init"] = len(pairs)
    out["log_ratios_zero_at_init"] = bool(torch.all(r == 0))
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
    out["lora_reloads"] = out["lora_reload_max_abs_diff"] <= (1e-5 if dtype == torch.float32 else 1e-2)
    out["passed"] = bool(out["log_ratios_zero_at_init"] and out["losses_finite"] and out["lora_reloads"])
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precisions", default="no,bf16", help="comma-separated: no (fp32), bf16, fp16")
    parser.add_argument("--iterations", type=int, default=2)
    args = parser.parse_args(argv)
    results = []
    for precision in args.precisions.split(","):
        with tempfile.TemporaryDirectory(prefix="rdpo-gpu-check-") as folder:
            try:
                results.append(check(precision, args.iterations, folder))
            except Exception as error:  # noqa: BLE001 - reported, and the other precision still runs
                results.append({"mixed_precision": precision, "passed": False,
                                "error": f"{type(error).__name__}: {error}"})
        print(json.dumps(results[-1]), flush=True)
    print("RESULT " + json.dumps(results))
    return 0 if all(r["passed"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
