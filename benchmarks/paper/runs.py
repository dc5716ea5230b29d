"""One training run of the paper study: a method trained to a fixed UNet budget, probed and evaluated, cached.

A run is a :class:`RunSpec` (preset, method overrides, reward, seed, budget, model, evaluation plan). Its folder is
``benchmarks/results/paper/runs/<hash>/`` where the hash is of the *resolved* configuration (the trainer's
``TrainConfig`` after merging the preset and the overrides, plus the budget, the probe and the evaluation plan), so
any change of any setting is a new run and an unchanged one is never rerun. A finished run holds

- ``config.json``: the resolved configuration and the hash's input (``spec``);
- ``metrics.jsonl``: one line per iteration, the trainer's fields (reward_mean, r_w, r_l, margin, accuracy,
  psi_active, loss, unet_calls …) plus ``unet_calls_total`` (the budget spent so far: rollout *and* training
  forward passes, in UNet sample-evaluations, a CFG pair counting 2), ``pair_mean`` = (r_w + r_l)/2 and the probe on
  the fixed reference pairs (``ref_r_w``, ``ref_r_l``, ``ref_pair_mean``);
- ``eval.json``: per prompt set, per reward, the tuned model's per-sample rewards (and their mean ± s.e.);
- ``done``: written last; a folder without it is incomplete and is rerun from scratch.

The budget counts every UNet sample-evaluation the method makes, rollout and training forward passes alike (the
backward pass is not counted; it costs about twice a forward on the passes with a gradient). Training stops at the
end of the first iteration whose running total reaches the budget, so every method gets the budget plus at most one
iteration. The fixed-pair probe and the evaluation are not part of the budget.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[2]
#: Where results go; the CI's test points RDPO_PAPER_RESULTS at a temporary folder.
RESULTS = Path(os.environ.get("RDPO_PAPER_RESULTS") or ROOT / "benchmarks" / "results" / "paper")
RUNS = RESULTS / "runs"
STUDY_VERSION = 1  # bump when the meaning of every cached result changes
#: What a method setting means, versioned: hashed only into the runs that use the setting, so that a change of
#: meaning reruns just those. gradient_guidance 2: TailorPO-G's guidance_step in units of the step's noise norm
#: σ_t·√D (commit f6f63c9); 1 was a raw step, ~200× smaller on the embedded model.
SETTING_VERSIONS = {"gradient_guidance": 2}
#: Method settings added after the cache began, at the value that is the behaviour before them: left out of the key
#: there, so that every run made before a setting existed keeps its key. optimiser_step "minibatch": one step per
#: minibatch of random transitions (the DDPO and D3PO presets now step per trajectory, and their keys change).
SETTINGS_ADDED = {"optimiser_step": "minibatch"}

#: the run and method settings the cached keys were made with. A setting added to the package later enters a key only
#: where a run sets it away from its default, so adding one keeps every cached run's key (its old behaviour is the
#: default's); a test recomputes every cached key from its stored spec.
KEYED_RUN_SETTINGS = (
    "model", "model_options", "reward", "reward_options", "prompts", "eval_prompts", "output_dir", "iterations",
    "prompts_per_iteration", "inner_epochs", "minibatch_size", "gradient_accumulation", "max_grad_norm", "weight_decay",
    "warmup_iterations", "lora_rank", "lora_alpha", "lora_targets", "seed", "checkpoint_every", "keep_checkpoints",
    "resume", "eval_samples", "eval_batch_size", "mixed_precision", "gradient_checkpointing", "kernel_backend",
    "offline_pairs", "guidance_step", "gap_rule", "quiet")
KEYED_METHOD_SETTINGS = (
    "rollout", "num_candidates", "branch_start", "estimator", "estimator_options", "loss", "loss_options", "penalty",
    "penalty_options", "reduction", "scheduler", "eta", "num_steps", "guidance_scale", "gradient_guidance",
    "train_timesteps", "threshold", "learning_rate")

#: The sampler every evaluation uses (the paper's: DDIM η = 1, T = 20, CFG 5), whatever the method trained with.
EVAL_SAMPLER = {"sampler": "ddim", "eta": 1.0, "num_steps": 20, "guidance_scale": 5.0}
ALL_REWARDS = ("world-aesthetic", "compressibility", "world-fidelity")


@dataclass
class RunSpec:
    """A training run of the study. ``overrides`` are method settings merged over the preset (as CLI flags)."""

    preset: str
    reward: str = "world-aesthetic"
    seed: int = 0
    budget: int = 20000  # UNet sample-evaluations (rollout + training forwards)
    learning_rate: float = 1e-3
    overrides: dict = field(default_factory=dict)
    run: dict = field(default_factory=dict)  # RunSettings overrides (prompts_per_iteration, minibatch_size, …)
    model: str = "tiny"
    prompts: str = "train"
    probe_prompts: int = 4  # prompts of the fixed reference pairs (0: no probe)
    eval_sets: dict = field(default_factory=lambda: {"ood": 18, "train": 18})  # set -> first N prompts
    eval_seeds: tuple = (0, 1)
    eval_rewards: tuple = ALL_REWARDS
    max_iterations: int = 1000
    label: str = ""  # free text for tables; not hashed
    #: checkpointed evaluation (the long-horizon claim): every this many iterations (and at 0) on the held-out sets;
    #: 0: none. Both fields stay out of the key when absent, so that the runs made before them keep their keys.
    checkpoint_every: int = 0
    heldout: dict = field(default_factory=dict)  # name -> {"set", "prompts", "seeds", "pair_prompts"}

    def method_overrides(self) -> dict:
        return {**self.overrides, "learning_rate": self.learning_rate}

    def train_config(self, output_dir: str):
        from rdpo_zoo.config import RunSettings, TrainConfig, move_to_method
        from rdpo_zoo.resolve import merge_settings

        # a stored spec of an older run may hold guidance_step under run: it is a method setting now
        overrides, run = move_to_method(self.method_overrides(), self.run)
        method = merge_settings(self.preset, overrides)
        settings = dict(model=self.model, reward=self.reward, prompts=self.prompts, seed=self.seed,
                        output_dir=output_dir, iterations=self.max_iterations, eval_samples=0, quiet=True,
                        checkpoint_every=0)
        settings.update(run)
        return TrainConfig(method, RunSettings(**settings), self.preset)

    def key(self) -> dict:
        """What the hash is of: the resolved configuration (output_dir left out) and the study's own settings."""
        config = self.train_config("-").to_dict()
        _key_moved_settings_at_their_old_place(config)
        _drop_new_defaults(config)
        # where the outputs go, and settings that cannot change them (CPU threads, trackers), stay out of the hash
        for name in ("output_dir", "threads", "report_to"):
            config["run"].pop(name, None)
        for name, before in SETTINGS_ADDED.items():
            if config["method"].get(name) == before:
                config["method"].pop(name)
        key = {"version": STUDY_VERSION, "weights": _weights_id(self.model), "config": config, "budget": self.budget,
               "probe_prompts": self.probe_prompts, "eval_sets": self.eval_sets, "eval_seeds": list(self.eval_seeds),
               "eval_rewards": list(self.eval_rewards), "eval_sampler": EVAL_SAMPLER}
        if self.checkpoint_every:
            key["checkpoint_every"], key["heldout"] = self.checkpoint_every, self.heldout
        used = {name: v for name, v in SETTING_VERSIONS.items() if config["method"].get(name)}
        if used:  # absent otherwise, so that the runs not using a versioned setting keep their hashes
            key["setting_versions"] = used
        return key

    def digest(self) -> str:
        text = json.dumps(self.key(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def folder(self) -> Path:
        return RUNS / self.digest()

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        data["eval_seeds"] = list(self.eval_seeds)
        data["eval_rewards"] = list(self.eval_rewards)
        return data

    @staticmethod
    def from_json(data: dict) -> "RunSpec":
        data = dict(data)
        data["eval_seeds"] = tuple(data["eval_seeds"])
        data["eval_rewards"] = tuple(data["eval_rewards"])
        return RunSpec(**data)


def _key_moved_settings_at_their_old_place(config: dict) -> None:
    """guidance_step and gap_rule were run settings when the cache began (``rdpo_zoo.config.MOVED_TO_METHOD``): keyed
    under ``run`` still, so that every run whose behaviour their move does not change keeps its key. The SPO preset
    now filters with its own softmax rule, so its runs' keys change, except at threshold 0, where both rules keep
    exactly the pairs whose gap is above 0 (tanh(Δ/2) > 0 ⇔ Δ > 0): there the rule is keyed as raw."""
    from rdpo_zoo.config import MOVED_TO_METHOD

    for name in MOVED_TO_METHOD:
        config["run"][name] = config["method"].pop(name)
    if not config["method"].get("threshold"):
        config["run"]["gap_rule"] = "raw"


def _drop_new_defaults(config: dict) -> None:
    """Leave out of a key the settings added after the cache was made, where they hold their defaults."""
    from rdpo_zoo.config import RunSettings
    from rdpo_zoo.resolve import merge_settings

    for section, keyed, defaults in (("run", KEYED_RUN_SETTINGS, dataclasses.asdict(RunSettings())),
                                     ("method", KEYED_METHOD_SETTINGS, merge_settings(None, {}))):
        for name in [n for n in config[section] if n not in keyed]:
            if name in defaults and config[section][name] == defaults[name]:
                del config[section][name]


def is_done(spec: RunSpec) -> bool:
    return (spec.folder() / "done").is_file()


def load_metrics(spec: RunSpec) -> list[dict]:
    path = spec.folder() / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def load_eval(spec: RunSpec) -> dict:
    return json.loads((spec.folder() / "eval.json").read_text())


def load_checkpoints(spec: RunSpec) -> list[dict]:
    """The checkpointed evaluations of a run (``checkpoints.jsonl``), in iteration order."""
    path = spec.folder() / "checkpoints.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _summary(values) -> dict:
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else float("nan")
    return {"mean": mean, "se": math.sqrt(var / n) if n > 1 else float("nan"), "n": n}


def _register_test_parts_if_needed(model: str) -> None:
    if model.startswith("test-"):  # the CI's tiny random model part (tests/train_parts.py)
        import sys

        sys.path.insert(0, str(ROOT / "tests"))
        import rdpo_zoo
        from train_parts import TestParts

        try:
            rdpo_zoo.register(TestParts, name="test-parts")
        except Exception:  # already registered in this process
            pass


def execute(spec: RunSpec, log=print) -> Path:
    """Train, probe and evaluate ``spec`` unless its folder is complete; returns the folder."""
    folder = spec.folder()
    if is_done(spec):
        return folder
    _register_test_parts_if_needed(spec.model)
    import torch

    from rdpo_zoo.trainer import latest_checkpoint

    # a checkpointed run resumes from its last checkpoint; any other incomplete run restarts from scratch
    resume = bool(spec.checkpoint_every) and folder.is_dir() and latest_checkpoint(folder) is not None
    if not resume:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    (folder / "spec.json").write_text(json.dumps({"spec": spec.to_json(), "key": spec.key()}, indent=2, default=str))
    config = spec.train_config(str(folder))
    config.run.resume = resume  # the trainer refuses a folder holding a run unless told to continue it
    torch.manual_seed(spec.seed)
    trainer = BudgetTrainer(config)
    on_iteration = HeldOutEvaluation(trainer, spec) if spec.checkpoint_every else None
    t0 = time.time()
    trainer.train_to_budget(spec.budget, spec.probe_prompts, log=log, on_iteration=on_iteration, resume=resume)
    train_seconds = time.time() - t0
    evaluation = evaluate_run(trainer, spec)
    evaluation["train_seconds"] = train_seconds
    evaluation["eval_seconds"] = time.time() - t0 - train_seconds
    (folder / "eval.json").write_text(json.dumps(evaluation, indent=1))
    for path in [folder / "lora", *folder.glob("checkpoint-*")]:  # weights are not results (never commit them)
        shutil.rmtree(path, ignore_errors=True)
    (folder / "done").write_text(time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()) + "\n")
    return folder


class _BudgetTrainerMixin:
    """The trainer's own rollout and optimise, looped to a UNet budget instead of a number of iterations, with
    the log-ratios of the current policy on a fixed set of pairs sampled once from the reference model."""

    def sample_reference_pairs(self, n_prompts: int):
        """Pairs drawn once, by the method's own rollout, with the adapter disabled (the reference policy)."""
        import torch

        if n_prompts <= 0 or self.method["rollout"] in ("single", "noised-pairs"):
            return None
        keep = self.run.prompts_per_iteration
        self.run.prompts_per_iteration = n_prompts
        try:
            with torch.no_grad(), self.model.reference():
                result = self.rollout(10**6)  # its own prompt and noise stream, apart from training's
        finally:
            self.run.prompts_per_iteration = keep
        return result.pairs

    def pair_metrics(self, pairs, chunk: int = 32) -> dict:
        """The current policy's log-ratios on ``pairs`` (no gradient): r_w, r_l, their pair mean, the accuracy, the
        fraction with Ψ active (r_l > 0), β·(r_w − r_l), λ·max(0, r_l) (λ of a Ψ penalty, else 0) and the loss − log 2."""
        import torch

        self.model.denoiser.eval()
        rows, loss_sum = [], 0.0
        with torch.no_grad():
            for start in range(0, len(pairs), chunk):
                index = torch.arange(start, min(start + chunk, len(pairs)))
                loss, r = self.pair_loss(pairs.select(index))
                rows.append(r.float())
                loss_sum += float(loss) * len(index)
        r = torch.cat(rows)
        r_w, r_l = r[:, 0], r[:, 1]
        m = self.method
        lam = (m["penalty_options"] or {}).get("lambda", 0.0) if m["penalty"] in ("psi", "psi-literal") else 0.0
        return {"r_w": float(r_w.mean()), "r_l": float(r_l.mean()), "pair_mean": float(r.mean()),
                "accuracy": float((r_w > r_l).float().mean()), "psi_active": float((r_l > 0).float().mean()),
                "beta_margin": float((self.objective.beta * (r_w - r_l)).mean()),
                "psi_term": float(lam * r_l.clamp_min(0).mean()),
                "loss_minus_log2": loss_sum / len(pairs) - math.log(2.0), "pairs": len(pairs)}

    def probe(self, pairs, chunk: int = 32) -> dict:
        """Mean log-ratios of the current policy on the fixed reference pairs (no gradient)."""
        found = self.pair_metrics(pairs, chunk)
        return {f"ref_{k}": found[k] for k in ("r_w", "r_l", "pair_mean", "accuracy", "pairs")}

    def train_to_budget(self, budget: int, probe_prompts: int, log=print, on_iteration=None,
                        resume: bool = False) -> None:
        """Train until ``budget`` UNet evaluations are spent (or ``run.iterations``); ``on_iteration(i)`` is called
        at 0 and after every iteration i (its UNet calls are not counted). ``resume``: continue from the newest
        checkpoint in the output folder (its metrics are trimmed to it)."""
        run, model = self.run, self.model
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        start = self.load_checkpoint() if resume else 0
        if not start and self.metrics_path.exists():
            self.metrics_path.unlink()
        spent_before = load_jsonl(self.metrics_path)[-1]["unet_calls_total"] if start else 0
        fixed = self.sample_reference_pairs(probe_prompts)
        spent, probe_calls = spent_before, 0
        if fixed is not None and not start:
            before = model.unet_calls
            self._log({"iteration": 0, "unet_calls_total": 0, **self.probe(fixed)})
            probe_calls += model.unet_calls - before
        if on_iteration is not None:
            before = model.unet_calls
            on_iteration(start)
            probe_calls += model.unet_calls - before
        start_calls = model.unet_calls - probe_calls
        iteration = start
        t_start = time.perf_counter()
        while spent < budget and iteration < run.iterations:
            _, record = self.step(iteration)
            spent = spent_before + model.unet_calls - probe_calls - start_calls
            record["unet_calls_total"] = spent
            record["seconds_total"] = time.perf_counter() - t_start
            if "r_w" in record:
                record["pair_mean"] = (record["r_w"] + record["r_l"]) / 2
            if fixed is not None:
                before = model.unet_calls
                record.update(self.probe(fixed))
                probe_calls += model.unet_calls - before
            iteration += 1
            self.iteration = iteration
            self._log(record)
            if on_iteration is not None:
                before = model.unet_calls
                on_iteration(iteration)
                probe_calls += model.unet_calls - before
            log(f"  it {iteration}: spent {spent}/{budget} reward {record['reward_mean']:.4f} "
                f"r_w {record.get('r_w', float('nan')):.4g} r_l {record.get('r_l', float('nan')):.4g} "
                f"ref_r_l {record.get('ref_r_l', float('nan')):.4g} "
                f"({record['seconds_rollout'] + record['seconds_optimise']:.1f} s)")
        self.save_lora(self.output_dir / "lora")


def load_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _set_generator(seed: int):
    import torch

    return torch.Generator().manual_seed(seed * 1_000_003 + 4242)


class HeldOutEvaluation:
    """The checkpointed evaluation of a long run: at iteration 0, every ``spec.checkpoint_every`` iterations and at
    the last, on each held-out set (validation, test): the tuned model's samples of the set's prompts × seeds under
    the evaluation sampler (every reward, the pixel checker, the per-prompt spread of the trained reward and of the
    pixels), the method's own pairs rolled out on the set's first ``pair_prompts`` prompts by the current policy
    (r_w, r_l, pair mean, Ψ active, β·(r_w − r_l), λ·max(0, r_l), loss − log 2) and the same on pairs sampled once
    from the reference. One JSON line per checkpoint in ``checkpoints.jsonl``; after each (but the first) a trainer
    checkpoint, from which an interrupted run resumes."""

    def __init__(self, trainer, spec: RunSpec):
        self.trainer, self.spec = trainer, spec
        self.path = Path(trainer.output_dir) / "checkpoints.jsonl"
        self.reference_pairs = None

    def _pairs(self, name: str, reference: bool):
        import torch

        trainer, held = self.trainer, self.spec.heldout[name]
        if not held.get("pair_prompts") or trainer.method["rollout"] in ("single", "noised-pairs"):
            return None
        prompts = _eval_prompts(held["set"], held["prompts"])[:held["pair_prompts"]]
        trainer.model.denoiser.eval()
        with torch.no_grad():
            if reference:
                with trainer.model.reference():
                    result = trainer.rollout(0, prompts, _set_generator(held["seeds"][0]))
            else:
                result = trainer.rollout(0, prompts, _set_generator(held["seeds"][0] + 1))
        return result.pairs

    def __call__(self, iteration: int) -> None:
        trainer, every = self.trainer, self.spec.checkpoint_every
        if self.reference_pairs is None:  # first call (0, or the iteration resumed from): drop later records
            self.reference_pairs = {name: self._pairs(name, reference=True) for name in self.spec.heldout}
            kept = [r for r in load_jsonl(self.path) if r["iteration"] <= iteration]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
            if any(r["iteration"] == iteration for r in kept):
                return
        if iteration % every and iteration < trainer.run.iterations:
            return
        t0 = time.time()
        record = {"iteration": iteration, "sets": {name: self.evaluate(name) for name in self.spec.heldout}}
        record["seconds"] = time.time() - t0
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if iteration:
            trainer.save_checkpoint()

    def evaluate(self, name: str) -> dict:
        import torch

        from rdpo_zoo.evaluate import checker_hits, draw_samples, per_prompt_pixel_distance, per_prompt_spread, summary

        trainer, spec, held = self.trainer, self.spec, self.spec.heldout[name]
        prompts = _eval_prompts(held["set"], held["prompts"])
        trainer.model.denoiser.eval()
        with torch.no_grad():
            samples = draw_samples(eval_model(trainer.pipe), prompts, held["seeds"],
                                   _rewards(spec.eval_rewards, trainer.registry), batch_size=36)
        def kept(values) -> dict:  # per sample (per prompt for spreads): the same at every checkpoint, so paired
            return {"values": [float(v) for v in values], **summary(values)}

        out = {"rewards": {r: kept(values) for r, values in samples.rewards.items()},
               "checker": {figure: kept(h) for figure, h in checker_hits(samples.images, samples.prompts).items()},
               "spread": kept(per_prompt_spread(samples.rewards[spec.reward], samples.prompts)),
               "pixel_spread": kept(per_prompt_pixel_distance(samples.images, samples.prompts))}
        pairs = self._pairs(name, reference=False)
        if pairs is not None and len(pairs):
            out["pairs"] = trainer.pair_metrics(pairs)
        if self.reference_pairs.get(name) is not None and len(self.reference_pairs[name]):
            out["reference_pairs"] = trainer.pair_metrics(self.reference_pairs[name])
        return out


def _budget_trainer_class():
    from rdpo_zoo.trainer import Trainer

    return type("BudgetTrainer", (_BudgetTrainerMixin, Trainer), {})


def BudgetTrainer(config):  # noqa: N802 - a factory that reads like a class
    return _budget_trainer_class()(config)


def eval_model(pipe):
    from rdpo_zoo.diffusion import DiffusionModel

    return DiffusionModel(pipe, sampler=EVAL_SAMPLER["sampler"], eta=EVAL_SAMPLER["eta"],
                          num_steps=EVAL_SAMPLER["num_steps"], guidance_scale=EVAL_SAMPLER["guidance_scale"])


def _eval_prompts(name: str, n: int) -> list[str]:
    from rdpo_zoo.world import prompt_set

    prompts = prompt_set(name)
    if n >= len(prompts):
        return prompts
    step = len(prompts) / n  # spread over the set (train is ordered by attribute)
    return [prompts[int(i * step)] for i in range(n)]


def _rewards(names, registry=None):
    from rdpo_zoo.registry import get_registry

    registry = registry or get_registry()
    return {name: registry.get("reward", name).build({}) for name in names}


def evaluate_run(trainer, spec: RunSpec) -> dict:
    """The tuned model (adapter on) on every evaluation set with every reward, per-sample values kept."""
    import torch

    from rdpo_zoo.evaluate import sample_rewards

    model = eval_model(trainer.pipe)
    trainer.model.denoiser.eval()
    rewards = _rewards(spec.eval_rewards, trainer.registry)
    out = {"sampler": EVAL_SAMPLER, "seeds": list(spec.eval_seeds), "sets": {}}
    with torch.no_grad():
        for name, n in spec.eval_sets.items():
            prompts = _eval_prompts(name, n)
            values = sample_rewards(model, prompts, spec.eval_seeds, rewards, batch_size=36)
            out["sets"][name] = {"prompts": prompts, "rewards": {
                r: {"values": [float(v) for v in values[r]], **_summary([float(v) for v in values[r]])}
                for r in values}}
    return out


def base_eval(model: str = "tiny", eval_sets=None, eval_seeds=(0, 1), eval_rewards=ALL_REWARDS) -> dict:
    """The reference model's evaluation (no LoRA) on the same prompts and noise as :func:`evaluate_run`, cached."""
    eval_sets = eval_sets or {"ood": 18, "train": 18}
    key = {"version": STUDY_VERSION, "model": model, "eval_sets": eval_sets, "eval_seeds": list(eval_seeds),
           "eval_rewards": list(eval_rewards), "eval_sampler": EVAL_SAMPLER, "weights": _weights_id(model)}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = RUNS / f"base-{digest}" / "eval.json"
    if path.is_file():
        return json.loads(path.read_text())
    _register_test_parts_if_needed(model)
    import torch

    from rdpo_zoo.evaluate import sample_rewards
    from rdpo_zoo.registry import get_registry

    registry = get_registry()
    pipe = registry.get("model", model).build({})
    diffusion = eval_model(pipe)
    rewards = _rewards(eval_rewards, registry)
    out = {"key": key, "sampler": EVAL_SAMPLER, "seeds": list(eval_seeds), "sets": {}}
    with torch.no_grad():
        for name, n in eval_sets.items():
            prompts = _eval_prompts(name, n)
            values = sample_rewards(diffusion, prompts, eval_seeds, rewards, batch_size=36)
            out["sets"][name] = {"prompts": prompts, "rewards": {
                r: {"values": [float(v) for v in values[r]], **_summary([float(v) for v in values[r]])}
                for r in values}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    return out


def _weights_id(model: str) -> Optional[str]:
    """A fingerprint of the embedded weights, so a cache made on one snapshot is not read on another."""
    if model != "tiny":
        return None
    folder = ROOT / "rdpo_zoo" / "embedded" / "tiny"
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*.safetensors")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
