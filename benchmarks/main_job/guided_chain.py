"""What TailorPO-G's guided rollout chain does to prompt fidelity before any training.

    python -m benchmarks.main_job.guided_chain [--seeds 8] [--out benchmarks/results/main-job/guided-chain.json]

On the embedded model with the main job's sampling (DDIM η = 1, T = 20, CFG 5) and its branching (k = 2 children at
t = 20, 16, 12, 8, 4, ranked by ΔQ, continued from the winner moved 0.1 of the step's noise norm up the reward's
gradient), every OOD prompt × seeds 0 … N−1 is sampled three ways on the same initial noise: plain sampling, the chain
guided by world-fidelity and the chain guided by world-aesthetic. Reported per way: the pixel checker's accuracies
and every world reward, mean ± s.e., and the paired change against plain sampling. No LoRA is trained: this is the
rollout the trainer learns from, so it shows what each reward's chain teaches.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

GUIDES = ("world-fidelity", "world-aesthetic")
STEPS = [20, 16, 12, 8, 4]


def measure(seeds: int, batch_size: int = 18) -> dict:
    from rdpo_zoo.diffusion import DiffusionModel
    from rdpo_zoo.evaluate import checker_hits, paired
    from rdpo_zoo.registry import build_reward, get_registry
    from rdpo_zoo.rollout import Guidance, rollout_branching
    from rdpo_zoo.world import ood_prompts

    registry = get_registry()
    model = DiffusionModel(registry.get("model", "tiny").build({}), sampler="ddim", eta=1.0, num_steps=20,
                           guidance_scale=5.0)
    estimator = registry.get("estimator", "delta-q").build({})
    scorers = {name: build_reward(name) for name in ("world-fidelity", "world-aesthetic", "compressibility")}
    prompts = ood_prompts()
    ways = {"plain": [], **{f"guided by {g}": [] for g in GUIDES}}
    chunks = []
    with torch.no_grad():
        for seed in range(seeds):
            for start in range(0, len(prompts), batch_size):
                chunk = prompts[start:start + batch_size]
                chunks += chunk
                cond = model.encode(chunk)
                images = model.decode(model.sample(cond, torch.Generator().manual_seed(seed * 1000 + start)))
                ways["plain"].append(images)
                for guide in GUIDES:
                    result = rollout_branching(model, cond, build_reward(guide), estimator, STEPS,
                                               torch.Generator().manual_seed(seed * 1000 + start),
                                               guidance=Guidance(0.1), store_pairs=False)
                    ways[f"guided by {guide}"].append(result.final_images)
    report = {"samples": len(chunks), "steps": STEPS, "guidance_step": 0.1, "ways": {}}
    figures = {}
    for way, parts in ways.items():
        images = torch.cat(parts).float().cpu()
        values = {f"checker {k}": v for k, v in checker_hits(images, chunks).items()}
        values.update({name: r.score(images, chunks).float().cpu() for name, r in scorers.items()})
        figures[way] = values
    for way, values in figures.items():
        report["ways"][way] = {name: paired(figures["plain"][name], v) for name, v in values.items()}
    return report


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.main_job.guided_chain")
    parser.add_argument("--seeds", type=int, default=8, help="seeds per OOD prompt (18 prompts each)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/main-job/guided-chain.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    report = measure(args.seeds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"{report['samples']} OOD prompt/seed pairs; change = way − plain on the same initial noise, ± 1 s.e.")
    for way, rows in report["ways"].items():
        print(f"{way}:")
        for name, row in rows.items():
            print(f"  {name:<22} {row['tuned']['mean']:.4f} ± {row['tuned']['se']:.4f}   change "
                  f"{row['gain']['mean']:+.4f} ± {row['gain']['se']:.4f}")


if __name__ == "__main__":
    main()
