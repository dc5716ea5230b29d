"""The main job's reward, chosen and accepted by runs (issue: the main job aligns the model to its prompts).

    python -m benchmarks.main_job run --stage choose     # candidates × training seeds 3, 4, 5
    python -m benchmarks.main_job run --stage accept --candidate fidelity-guided   # seeds 0, 1, 2
    python -m benchmarks.main_job report                 # tables from the stored eval.json files

Every run is ``rdpo-zoo train --estimator delta-q --loss rdpo`` (the README's first command) with the candidate's
reward and guidance, one thread (``OMP_NUM_THREADS=1``), its own folder under ``runs/main-job``; a finished run
(``eval.json`` there) is skipped and an interrupted one resumes from its checkpoint, so the command can be rerun.
Each finished run's ``eval.json``, ``metrics.jsonl`` and ``config.json`` are copied to
``benchmarks/results/main-job/`` (the report reads them there). ``--jobs 2`` runs two at a time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUNS = ROOT / "runs" / "main-job"
RESULTS = ROOT / "benchmarks" / "results" / "main-job"

#: name -> the flags it adds to the README's first command
CANDIDATES = {
    "aesthetic-guided": ["--reward", "world-aesthetic"],  # the previous default, for comparison
    "fidelity-guided": ["--reward", "world-fidelity"],
    "fidelity-unguided": ["--reward", "world-fidelity", "--gradient-guidance", "false"],
    "fidelity+aesthetic0.5-guided": ["--reward", "world-fidelity+world-aesthetic:0.5"],
    "fidelity-guided-lr2e-3": ["--reward", "world-fidelity", "--learning-rate", "2e-3"],
}
STAGES = {"choose": (3, 4, 5), "accept": (0, 1, 2)}
#: the figures the non-inferiority rule reads: every world reward and checker attribute
WORLD_FIGURES = [("rewards", "world-fidelity"), ("rewards", "world-aesthetic"), ("checker", "colour"),
                 ("checker", "shape"), ("checker", "background"), ("checker", "size"), ("checker", "all")]
NOT_GATED = [("rewards", "compressibility")]  # JPEG size: reported, not gated


def run_one(candidate: str, seed: int, extra: list) -> Path:
    folder = RUNS / candidate / f"seed-{seed}"
    stored = RESULTS / candidate / f"seed-{seed}"
    if (stored / "eval.json").is_file():
        return stored
    command = [str(Path(sys.executable).with_name("rdpo-zoo")), "train", "--estimator", "delta-q", "--loss", "rdpo",
               *CANDIDATES[candidate], "--seed", str(seed), "--output-dir", str(folder), "--quiet", *extra]
    if any(folder.glob("checkpoint-*")):
        command.append("--resume")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    started = time.time()
    log = folder.parent / f"seed-{seed}.log"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        done = subprocess.run(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise RuntimeError(f"{candidate} seed {seed} failed ({done.returncode}); see {log}")
    stored.mkdir(parents=True, exist_ok=True)
    for name in ("eval.json", "metrics.jsonl", "config.json"):
        shutil.copy2(folder / name, stored / name)
    (stored / "wall_seconds.txt").write_text(f"{time.time() - started:.0f}\n")
    print(f"{candidate} seed {seed}: {time.time() - started:.0f} s", flush=True)
    return stored


def _get(report: dict, where: tuple) -> dict:
    section, name = where
    return report.get(section, {}).get(name)


def _pooled(rows: list) -> tuple:
    """Pooled paired change over seeds (equal n per seed): mean, s.e., and the base sample spread (std)."""
    k = len(rows)
    mean = sum(r["gain"]["mean"] for r in rows) / k
    se = math.sqrt(sum(r["gain"]["se"] ** 2 for r in rows)) / k
    spread = sum(r["base"]["se"] * math.sqrt(r["base"]["n"]) for r in rows) / k
    return mean, se, spread


def report(stage: str) -> str:
    seeds = STAGES[stage]
    lines = [f"### Stage {stage!r}: seeds {', '.join(map(str, seeds))}", ""]
    for candidate in CANDIDATES:
        reports = []
        for seed in seeds:
            path = RESULTS / candidate / f"seed-{seed}" / "eval.json"
            if path.is_file():
                reports.append((seed, json.loads(path.read_text())))
        if not reports:
            continue
        lines += [f"**{candidate}** (`{' '.join(CANDIDATES[candidate])}`), {reports[0][1]['n']} OOD prompt/seed pairs "
                  "per run, gain = tuned − base on the same noise, ± 1 s.e.:", ""]
        lines.append("| seed | checker all: base → tuned | gain | gain / s.e. | fidelity gain | aesthetic gain | "
                     "colour gain | shape gain | background gain | size gain | KL | pixel spread change |")
        lines.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for seed, r in reports:
            c = r["checker"]["all"]
            g = lambda where: "{:+.4f} ± {:.4f}".format(_get(r, where)["gain"]["mean"], _get(r, where)["gain"]["se"])
            ratio = c["gain"]["mean"] / c["gain"]["se"] if c["gain"]["se"] else float("nan")
            lines.append(f"| {seed} | {c['base']['mean']:.3f} → {c['tuned']['mean']:.3f} | {g(('checker', 'all'))} | "
                         f"{ratio:.1f} | {g(('rewards', 'world-fidelity'))} | {g(('rewards', 'world-aesthetic'))} | "
                         f"{g(('checker', 'colour'))} | {g(('checker', 'shape'))} | {g(('checker', 'background'))} | "
                         f"{g(('checker', 'size'))} | "
                         f"{r['kl']['expected']['mean']:.4f} | {r['pixel_spread']['gain']['mean']:+.3f} |")
        if len(reports) == len(seeds):
            trained = set(reports[0][1]["trained_on"])
            wins = all(r["checker"]["all"]["gain"]["mean"] > 2 * r["checker"]["all"]["gain"]["se"] for _, r in reports)
            lines += ["", f"- checker all-three gain > 2 s.e. at every seed: **{'yes' if wins else 'no'}**"]
            verdicts = []
            for where in WORLD_FIGURES + NOT_GATED:
                mean, se, spread = _pooled([_get(r, where) for _, r in reports])
                lower = mean - 1.645 * se
                bound = -0.25 * spread
                gated = where not in NOT_GATED and where[1] not in trained
                status = ("trained on" if where[1] in trained else "not gated") if not gated else (
                    "holds" if lower > bound else "FAILS")
                if gated:
                    verdicts.append(lower > bound)
                lines.append(f"- {where[0]} {where[1]}: pooled change {mean:+.4f} ± {se:.4f}, one-sided 95 % lower "
                             f"bound {lower:+.4f} vs −0.25 × base spread {bound:+.4f}: {status}")
            lines.append(f"- non-inferiority on every untrained figure: **{'yes' if all(verdicts) else 'no'}**")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.main_job")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run")
    run.add_argument("--stage", choices=list(STAGES), required=True)
    run.add_argument("--candidate", action="append", choices=list(CANDIDATES), default=None)
    run.add_argument("--jobs", type=int, default=2)
    run.add_argument("--extra", default="", help="more train flags, space-separated")
    rep = sub.add_parser("report")
    rep.add_argument("--stage", choices=list(STAGES), default=None)
    args = parser.parse_args(argv)
    if args.command == "report":
        for stage in ([args.stage] if args.stage else list(STAGES)):
            print(report(stage))
        return
    candidates = args.candidate or [c for c in CANDIDATES if c != "aesthetic-guided"]
    jobs = [(c, s) for s in STAGES[args.stage] for c in candidates]
    with ThreadPoolExecutor(args.jobs) as pool:
        for future in [pool.submit(run_one, c, s, args.extra.split()) for c, s in jobs]:
            future.result()
    print(report(args.stage))


if __name__ == "__main__":
    main()
