"""Behaviour check of a refactoring: a short main job trained by two checkouts gives the same LoRA (bit for bit) and
the same metrics.jsonl but for its ``seconds_*`` fields.

    python benchmarks/behaviour_check.py run PYTHON OUTPUT_DIR [--iterations 5]
        trains the main job's method with explicit flags (--reward world-aesthetic --psi-lambda 0.1, one thread, no
        final evaluation) with the interpreter PYTHON (a checkout's venv: its own rdpo_zoo is the one trained)
    python benchmarks/behaviour_check.py compare DIR_A DIR_B
        compares two such runs: every LoRA tensor with torch.equal, every metrics line field by field

Exit status 0 when the runs match. Typical use (issue 15): run the old commit twice (old == old shows the check
can pass), then the new code once, and compare each pair.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

#: the main job's method (plain `rdpo-zoo train`: RDPO's parts) with the flags the comparison fixes explicitly, so
#: that a later change of a default does not blur it; `--threads 1` is torch.set_num_threads(1)
TRAIN_FLAGS = ("--reward", "world-aesthetic", "--psi-lambda", "0.1", "--threads", "1", "--eval-samples", "0",
               "--quiet", "--overwrite")
LORA_FILE = Path("lora") / "pytorch_lora_weights.safetensors"


def run(python: str, output_dir: Path, iterations: int) -> int:
    env = dict(os.environ, OMP_NUM_THREADS="1", RDPO_ZOO_PLUGINS="builtin")
    env.pop("PYTHONPATH", None)
    output_dir = output_dir.resolve()
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    command = [python, "-m", "rdpo_zoo.cli", "train", *TRAIN_FLAGS, "--iterations", str(iterations),
               "--output-dir", str(output_dir)]
    print("$", " ".join(command), flush=True)
    # run outside any checkout: `python -m` puts the working folder first on sys.path, and a checkout's rdpo_zoo/
    # there would shadow the interpreter's own installed one
    return subprocess.call(command, env=env, cwd=output_dir.parent)


def compare(a: Path, b: Path) -> list[str]:
    """The differences between two runs' LoRAs and metrics (empty: identical)."""
    import torch
    from safetensors.torch import load_file

    problems = []
    lora_a, lora_b = load_file(str(a / LORA_FILE)), load_file(str(b / LORA_FILE))
    if set(lora_a) != set(lora_b):
        problems.append(f"LoRA keys differ: {sorted(set(lora_a) ^ set(lora_b))[:5]}")
    for key in sorted(set(lora_a) & set(lora_b)):
        if not torch.equal(lora_a[key], lora_b[key]):
            diff = (lora_a[key].double() - lora_b[key].double()).abs().max().item()
            problems.append(f"LoRA tensor {key} differs (max |Δ| {diff:.3g})")
    rows_a, rows_b = ([json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines() if line.strip()]
                      for d in (a, b))
    if len(rows_a) != len(rows_b):
        problems.append(f"metrics.jsonl: {len(rows_a)} against {len(rows_b)} lines")
    for number, (row_a, row_b) in enumerate(zip(rows_a, rows_b), 1):
        keep = lambda row: {k: v for k, v in row.items() if not k.startswith("seconds_")}  # noqa: E731
        row_a, row_b = keep(row_a), keep(row_b)
        for key in sorted(set(row_a) | set(row_b)):
            if row_a.get(key, "<missing>") != row_b.get(key, "<missing>"):
                problems.append(f"metrics.jsonl line {number} {key}: {row_a.get(key, '<missing>')!r} against "
                                f"{row_b.get(key, '<missing>')!r}")
    print(f"{a} against {b}: {len(lora_a)} LoRA tensors, {len(rows_a)} metrics lines: "
          + ("identical (LoRA bit for bit, metrics but seconds_*)" if not problems else f"{len(problems)} differences"))
    for problem in problems[:20]:
        print("  " + problem)
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run")
    p_run.add_argument("python")
    p_run.add_argument("output_dir", type=Path)
    p_run.add_argument("--iterations", type=int, default=5)
    p_compare = sub.add_parser("compare")
    p_compare.add_argument("a", type=Path)
    p_compare.add_argument("b", type=Path)
    args = parser.parse_args(argv)
    if args.command == "run":
        return run(args.python, args.output_dir, args.iterations)
    return 1 if compare(args.a, args.b) else 0


if __name__ == "__main__":
    sys.exit(main())
