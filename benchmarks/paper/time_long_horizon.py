"""CPU cost of the long-horizon study's pieces: ``python -m benchmarks.paper.time_long_horizon [--profile full]``.

Trains RDPO* and D3PO for 2 iterations in the profile's long-horizon setting (the most aggressive grid point) on one
thread, with the checkpointed evaluation at 0 and at the end, in a temporary results folder, and prints the CPU
seconds of an iteration and of a checkpointed evaluation, and the estimate for the profile's prioritised runs.
CPU time, not wall time: the development machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.paper.time_long_horizon", description=__doc__)
    parser.add_argument("--profile", default="full")
    parser.add_argument("--iterations", type=int, default=2)
    args = parser.parse_args(argv)
    os.environ["RDPO_PAPER_RESULTS"] = tempfile.mkdtemp(prefix="long-horizon-timing-")
    import torch

    torch.set_num_threads(1)
    from benchmarks.paper import claims, long_horizon, runs
    from rdpo_zoo.trainer import Trainer

    p = claims.profile(args.profile)
    cpu = {"step": [], "checkpoint": [], "probe": []}
    step, call, probe = Trainer.step, runs.HeldOutEvaluation.__call__, runs._BudgetTrainerMixin.probe

    def timed_step(self, iteration):
        t = time.process_time()
        out = step(self, iteration)
        cpu["step"].append(time.process_time() - t)
        return out

    def timed_call(self, iteration):
        t = time.process_time()
        call(self, iteration)
        if iteration == 0 or iteration == self.trainer.run.iterations:
            cpu["checkpoint"].append(time.process_time() - t)

    def timed_probe(self, pairs, chunk=32):
        t = time.process_time()
        out = probe(self, pairs, chunk)
        cpu["probe"].append(time.process_time() - t)
        return out

    Trainer.step, runs.HeldOutEvaluation.__call__, runs._BudgetTrainerMixin.probe = timed_step, timed_call, timed_probe
    found = {}
    for preset in ("rdpo-star", "d3po"):
        cpu["step"], cpu["checkpoint"], cpu["probe"] = [], [], []
        spec = long_horizon._long_spec(p, preset, long_horizon.grid(p)[-1], 0, label=preset)
        spec.max_iterations = args.iterations
        t0 = time.process_time()
        runs.execute(spec, log=lambda m: None)
        total = time.process_time() - t0
        per_iteration = sum(cpu["step"]) / len(cpu["step"])
        evaluation = cpu["checkpoint"][-1]  # the first also samples the fixed reference pairs
        probe_s = sum(cpu["probe"]) / len(cpu["probe"])  # the fixed reference pairs, after every iteration
        rest = total - sum(cpu["step"]) - sum(cpu["checkpoint"]) - sum(cpu["probe"])  # building, writing: once
        evaluations = p.long.iterations // p.long.checkpoint_every + 1
        run_s = (p.long.iterations * (per_iteration + probe_s) + evaluations * evaluation
                 + cpu["checkpoint"][0] - evaluation + rest)
        found[preset] = {"iteration_cpu_s": per_iteration, "probe_cpu_s": probe_s, "checkpoint_cpu_s": evaluation,
                         "first_checkpoint_cpu_s": cpu["checkpoint"][0], "once_cpu_s": rest, "total_cpu_s": total,
                         "estimated_run_cpu_s": run_s}
        print(preset, json.dumps(found[preset]), flush=True)
    specs = {s.digest(): s for s in long_horizon.specs(p)}
    d3po = sum(s.preset == "d3po" for s in specs.values())
    hours = ((len(specs) - d3po) * found["rdpo-star"]["estimated_run_cpu_s"]
             + d3po * found["d3po"]["estimated_run_cpu_s"]) / 3600
    print(f"{len(specs)} runs ({d3po} D3PO) as listed now: ~{hours:.1f} CPU-hours")
    return 0


if __name__ == "__main__":
    sys.exit(main())
