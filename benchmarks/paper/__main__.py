"""``python -m benchmarks.paper CLAIM --profile quick|full [--jobs N]``: train what a claim needs (cached runs are
never rerun), then write its JSON, markdown table and PNG under ``benchmarks/results/paper/<profile>/``.

CLAIM is one of lr-pilot, long-horizon, fig1, fig3, table3, table1, table4, table5, table6, table8,
spo-threshold-0, ``all`` (every claim in the study's order of priority: the long horizon, Fig. 1, Fig. 3, Table 3,
Table 1, Table 4, Tables 5, 6, 8) or ``report`` (tables and plots from whatever is cached, training nothing).
``--list`` prints the runs a claim needs and whether each is done.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from benchmarks.paper import claims
from benchmarks.paper.runs import ROOT, RUNS, RunSpec, execute, is_done


def _log(message: str) -> None:
    print(time.strftime("%H:%M:%S ") + message, flush=True)


def _run_subprocess(spec: RunSpec) -> bool:
    """One run in its own process (one thread: on a 2-core machine two single-threaded runs beat one with two)."""
    RUNS.mkdir(parents=True, exist_ok=True)
    logs = RUNS / "logs"
    logs.mkdir(exist_ok=True)
    digest = spec.digest()
    spec_file = logs / f"{digest}.spec.json"
    spec_file.write_text(json.dumps(spec.to_json()))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    t0 = time.time()
    _log(f"start {spec.label or spec.preset} [{spec.reward}, seed {spec.seed}] -> runs/{digest}")
    with open(logs / f"{digest}.log", "w") as out:
        code = subprocess.call([sys.executable, "-m", "benchmarks.paper", "_run", str(spec_file)], cwd=ROOT,
                               stdout=out, stderr=subprocess.STDOUT, env=env)
    _log(f"{'done' if code == 0 else f'FAILED ({code}), see runs/logs/{digest}.log'} {spec.label or spec.preset} "
         f"[{spec.reward}, seed {spec.seed}] in {time.time() - t0:.0f} s")
    return code == 0


def run_specs(specs, jobs: int) -> None:
    unique, seen = [], set()
    for spec in specs:
        digest = spec.digest()
        if digest not in seen and not is_done(spec):
            seen.add(digest)
            unique.append(spec)
    if not unique:
        return
    _log(f"{len(unique)} runs to train ({jobs or 'in-process'} at a time)")
    if jobs <= 0:
        import torch

        torch.set_num_threads(1)
        for spec in unique:
            _log(f"start {spec.label or spec.preset} [{spec.reward}, seed {spec.seed}]")
            execute(spec, log=lambda m: None)
        return
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(_run_subprocess, unique))


def _run_bon_subprocess(profile_name: str, model: str, rewards) -> bool:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    (RUNS / "logs").mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    _log("start table4 best-of-N")
    with open(RUNS / "logs" / f"bon-{profile_name}.log", "w") as out:
        code = subprocess.call([sys.executable, "-m", "benchmarks.paper", "_bon", "--profile", profile_name, "--model",
                                model, "--rewards", ",".join(rewards)], cwd=ROOT, stdout=out,
                               stderr=subprocess.STDOUT, env=env)
    _log(f"{'done' if code == 0 else f'FAILED ({code})'} table4 best-of-N in {time.time() - t0:.0f} s")
    return code == 0


def run_all(profile, jobs: int) -> None:
    """Every claim's runs in one queue, in the study's order of priority, ``jobs`` at a time; the reports are
    rewritten after every finished run, so a session cut short still leaves tables of what was done."""
    import threading

    def queue(first: bool) -> list:
        tasks = []
        for name in claims.ORDER:
            if name == "table4" and first:
                tasks.append(("bon", None))
            for spec in claims.CLAIMS[name][0](profile):
                digest = spec.digest()
                if digest not in seen and not is_done(spec):
                    seen.add(digest)
                    tasks.append(("run", spec))
        return tasks

    seen = set()
    tasks = queue(first=True)
    lock = threading.Lock()

    def reports() -> None:
        from benchmarks.paper.doc import verdicts

        with lock:
            for name in claims.ORDER:
                try:
                    claims.CLAIMS[name][1](profile)
                except Exception as error:  # noqa: BLE001 - a report of partial results must not stop the queue
                    _log(f"report {name} failed: {type(error).__name__}: {error}")
            try:
                verdicts(profile)
            except Exception as error:  # noqa: BLE001
                _log(f"verdicts failed: {type(error).__name__}: {error}")

    def work(task) -> None:
        kind, spec = task
        if kind == "bon":
            _run_bon_subprocess(profile.name, claims.MODEL["name"], claims.MODEL["rewards"])
        else:
            _run_subprocess(spec)
        reports()

    _log(f"{sum(k == 'run' for k, _ in tasks)} runs to train and best-of-N ({jobs} at a time)")
    reports()  # the base model's evaluation first, then tables of what is cached
    while tasks:  # specs that depend on finished runs (the long-horizon setting, its confirmation) come in later rounds
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            list(pool.map(work, tasks))
        tasks = queue(first=False)
    reports()


def run_claim(name: str, profile, jobs: int) -> None:
    specs_fn, report_fn, compute_fn = claims.CLAIMS[name]
    _log(f"== {name} ({profile.name})")
    # a claim's specs may depend on its earlier runs (the long-horizon setting on tier 0): train until none is left
    todo = [s for s in specs_fn(profile) if not is_done(s)]
    while todo:
        run_specs(todo, jobs)
        left = [s for s in specs_fn(profile) if not is_done(s)]
        if {s.digest() for s in left} >= {s.digest() for s in todo}:
            break  # nothing finished (failed runs): stop rather than loop
        todo = left
    if compute_fn is not None:
        compute_fn(profile, log=_log)
    report_fn(profile)
    _log(f"{name}: reports written under benchmarks/results/paper/{profile.name}/")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.paper", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("claim", choices=[*claims.CLAIMS, "all", "report", "verdicts", "_run", "_bon"])
    parser.add_argument("spec_file", nargs="?", help=argparse.SUPPRESS)
    parser.add_argument("--profile", default="quick", choices=sorted(claims.PROFILES))
    parser.add_argument("--jobs", type=int, default=2, help="training runs at a time, each in its own single-threaded "
                                                              "process (0: in this process) [2]")
    parser.add_argument("--model", default="tiny", help="model part (the CI uses the test part test-tiny) [tiny]")
    parser.add_argument("--rewards", default=None, help="comma-separated rewards, the first is trained on "
                                                        "[world-aesthetic,compressibility,world-fidelity]")
    parser.add_argument("--list", action="store_true", help="list the runs the claim needs, done or not; train nothing")
    args = parser.parse_args(argv)
    if args.claim == "_run":
        import torch

        torch.set_num_threads(1)
        spec = RunSpec.from_json(json.loads(open(args.spec_file).read()))
        claims.MODEL["name"] = spec.model
        execute(spec, log=_log)
        return 0
    claims.MODEL["name"] = args.model
    if args.rewards:
        rewards = tuple(r.strip() for r in args.rewards.split(",") if r.strip())
        claims.MODEL["rewards"], claims.MODEL["train_reward"] = rewards, rewards[0]
    profile = claims.profile(args.profile)
    if args.claim == "_bon":
        import torch

        torch.set_num_threads(1)
        claims.table4_compute(profile, log=_log)
        return 0
    names = list(claims.ORDER) if args.claim in ("all", "report") else [args.claim]
    if args.list:
        if "long-horizon" in names and profile.long is not None:
            setting, why = claims.long_horizon.chosen_setting(profile)
            print(f"long-horizon setting: lr {setting['lr']:g}, guidance step {setting['guidance_step']:g} ({why})")
        for name in names:
            for spec in claims.CLAIMS[name][0](profile):
                print(f"{name:8} {'done' if is_done(spec) else 'todo':4} runs/{spec.digest()} {spec.label} "
                      f"[{spec.reward}, seed {spec.seed}]")
        return 0
    if args.claim == "verdicts":
        from benchmarks.paper.doc import verdicts

        print("\n".join(verdicts(profile)))
        return 0
    if args.claim == "report":
        for name in names:
            claims.CLAIMS[name][1](profile)
        from benchmarks.paper.doc import verdicts

        verdicts(profile)
        return 0
    if args.claim == "all" and args.jobs > 0:
        run_all(profile, args.jobs)
        return 0
    for name in names:
        run_claim(name, profile, args.jobs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
