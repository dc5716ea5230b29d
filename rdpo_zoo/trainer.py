"""One trainer for every method: rollout (sampler + estimator → labelled step pairs) alternating with optimisation
(the loss over the collected pairs) of a peft LoRA on the denoiser, with accelerate.

This module holds the set-up and the loop; the loss of a minibatch (step pairs, noised pairs, or per-sample policy
gradient) is a loss path of :mod:`rdpo_zoo.loss_paths`, chosen at set-up.

The policy is the pipeline's denoiser (the model family's: ``rdpo_zoo.families``) with a LoRA adapter; the
reference policy is the same denoiser with the adapter
disabled (no second copy of the weights). Only LoRA parameters train; the text encoder(s) and the VAE are frozen.

Method settings (rollout, estimator, loss, penalty, β, λ, timesteps, …) come from a preset merged with explicit
flags (``rdpo_zoo.resolve.merge_settings``); run settings (model, reward, LoRA, optimiser, budget, outputs) are
:class:`RunSettings`. Outputs under ``output_dir``: ``config.json`` (the resolved configuration),
``metrics.jsonl`` (one line per iteration), ``checkpoint-NNNNNN/`` (the LoRA in diffusers' format plus the
optimiser, scheduler and step state; written to a temporary folder and renamed, so a crash never corrupts the last
good one), ``lora/`` (the newest checkpoint's LoRA, refreshed at every checkpoint, loadable with
``pipe.load_lora_weights(dir, weight_name="pytorch_lora_weights.safetensors")``) and ``eval.json`` (base against
tuned on held-out prompts). A folder that holds a run is refused unless the run is resumed (with the same settings
but for the resumable ones) or overwritten: see :mod:`rdpo_zoo.run_folder`.

Every random draw comes from a generator seeded from ``seed``: the LoRA's initialisation, each iteration's prompts and
sampling noise, the minibatch order, the noised pairs' t and ε, the evaluation's noise. Two runs with the same
settings and thread count on one machine give bit-identical LoRAs, optimiser states and metrics (timings aside;
checked on the CPU: on a GPU, cuDNN's and attention's backward kernels may be non-deterministic unless torch is told
``torch.use_deterministic_algorithms(True)``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Optional

import torch

logger = logging.getLogger(__name__)

__all__ = ["RunSettings", "TrainConfig", "Trainer", "TrainingError", "train", "latest_checkpoint",
           "LORA_WEIGHT_NAME", "parse_train_timesteps"]

from rdpo_zoo.config import RunSettings, TrainConfig, parse_train_timesteps  # noqa: E402
from rdpo_zoo.run_folder import (  # noqa: E402
    CHECKPOINT_PREFIX, LORA_WEIGHT_NAME, RunFolderError, check_resumed_settings, check_run_folder,
    complete_checkpoints, latest_checkpoint, remove_run_files,
)
from rdpo_zoo.run_folder import atomic_write_text as _atomic_write_text  # noqa: E402
from rdpo_zoo.checkpoints import (  # noqa: E402
    STATE_FILE, read_checkpoint, trim_metrics, write_checkpoint, write_lora,
)
from rdpo_zoo.combination import check_combination, check_estimator_kind, resolve_guidance  # noqa: E402
from rdpo_zoo.loss_paths import build_loss_path, policy_gradient_loss  # noqa: E402
from rdpo_zoo.rollout_modes import rollout_mode  # noqa: E402

from rdpo_zoo.train_eval import EVAL_GRID_IMAGES  # noqa: E402,F401 (public here before train_eval existed)


class TrainingError(RuntimeError):
    """Training stopped or cannot continue (a non-finite loss, no intact checkpoint to resume from); the message
    names the step and the files."""


def _seed_for(*parts: int) -> int:
    value = 0x9E3779B1
    for part in parts:
        value = (value * 1_000_003 + int(part) + 0x7F4A7C15) % (2**63 - 1)
    return value


#: The stream of the LoRA's initialisation, apart from the per-iteration streams (whose first part, the iteration,
#: is never negative); the same on every process.
LORA_INIT_STREAM = -1


def _accelerator(run, trackers):
    """The run's Accelerator. accelerate keeps one state per process: a second run in the same process with another
    mixed precision is refused in one line naming the setting, not with accelerate's "restart your runtime"."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    try:
        return Accelerator(mixed_precision=run.mixed_precision, gradient_accumulation_steps=run.gradient_accumulation,
                           cpu=not torch.cuda.is_available(), log_with=trackers or None)
    except ValueError as error:
        if "already been initialized" not in str(error):
            raise
        raise ValueError(f"mixed_precision: {run.mixed_precision!r} asked for, but this process already set up "
                         f"accelerate with {AcceleratorState().mixed_precision!r}, and accelerate keeps one per "
                         "process: run it in a new process, or pass the Trainer an accelerator") from None


class Trainer:
    """Builds everything from a :class:`TrainConfig` and runs :meth:`train`."""

    def __init__(self, config: TrainConfig, accelerator=None, registry=None):
        from rdpo_zoo.registry import build_reward, get_registry
        from rdpo_zoo.resolve import build_loss

        self.config = config
        self.method, self.run = config.method, config.run
        self.registry = registry or get_registry()
        m, run = self.method, self.run
        check_combination(self.method, self.registry)
        self.output_dir = Path(run.output_dir)
        trackers = _trackers(run.report_to, self.output_dir)
        self.accelerator = accelerator or _accelerator(run, trackers)
        if accelerator is not None and trackers:  # a caller's accelerator: add ours to the trackers it starts
            accelerator.log_with = list(accelerator.log_with) + trackers
        self._check_output_dir()
        self.reward = build_reward(run.reward, run.reward_options, self.registry)
        self.estimator = None
        mode = rollout_mode(m.rollout)
        if m.estimator is not None and mode.yields != "samples":
            self.estimator = self.registry.get("estimator", m.estimator).build(m.estimator_options)
            check_estimator_kind(m, self.estimator, pairwise=True)
        loss_part = self.registry.get("loss", m.loss)
        self.per_sample = mode.yields == "samples"
        pg_options = None
        if self.per_sample:
            pg_loss, pg_options = policy_gradient_loss(loss_part, m.loss_options)
            self.advantages = self.registry.get("estimator", m.estimator or "advantage").build(m.estimator_options)
            check_estimator_kind(m, self.advantages, pairwise=False)
            self.objective = None
        else:
            self.objective = build_loss(loss_part, m.loss_options, m.penalty, m.penalty_options or None,
                                        registry=self.registry)
        self.guided = resolve_guidance(self.method, self.reward, self.run.reward)
        self._build_model()
        self._build_optimiser()
        #: the minibatch loss (rdpo_zoo.loss_paths), by the loss's type and what the rollout yields
        self.loss_path = build_loss_path(pg_loss if self.per_sample else self.objective, mode.yields, self.model,
                                         self.train_denoiser, self.accelerator, m.reduction, run.kernel_backend,
                                         pg_options)
        self.prompts = self._prompt_set(run.prompts)
        self.offline = None
        if run.offline_pairs is not None:
            if mode.yields != "noised-pairs":
                raise ValueError(f"offline_pairs: offline preference pairs train with rollout 'noised-pairs' "
                                 f"(Diffusion-DPO), not {m['rollout']!r}")
            from rdpo_zoo.noised_pairs import load_offline_pairs

            self.offline = load_offline_pairs(run.offline_pairs, self.model)
        self.iteration = 0
        self.metrics_path = self.output_dir / "metrics.jsonl"

    # ---------------------------------------------------------------------------------------------- setup
    def _check_output_dir(self) -> None:
        """Before any compute or write: a folder that holds a run is refused unless resumed or overwritten, and a
        resumed run's settings must be those stored in its ``config.json`` but for the resumable ones (named in the
        log). Reads only; every process checks, and :meth:`train` writes nothing before all have."""
        run = self.run
        check_run_folder(self.output_dir, run.resume, run.overwrite)
        stored = self.output_dir / "config.json"
        if run.resume and stored.is_file():
            try:
                data = json.loads(stored.read_text())
            except ValueError as error:
                raise RunFolderError(f"resume: {stored} is not readable JSON ({error}); the run's settings cannot "
                                     "be checked (start afresh with --overwrite)") from None
            changed = check_resumed_settings(data, self.config.to_dict(), stored, self.output_dir)
            if changed and self.accelerator.is_main_process:
                logger.info("resume: settings changed since the run began: %s", "; ".join(changed))

    def _build_model(self) -> None:
        from peft import LoraConfig

        from rdpo_zoo.diffusion import DiffusionModel
        from rdpo_zoo.families import resolve_model_family

        m, run = self.method, self.run
        model_part = self.registry.get("model", run.model)
        pipe = model_part.build(run.model_options)
        self.pipe = pipe
        family = resolve_model_family(pipe, model_part.family, self.registry)
        device = self.accelerator.device
        weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.accelerator.mixed_precision,
                                                                             torch.float32)
        family.prepare(device, weight_dtype)
        targets = [t.strip() for t in run.lora_targets.split(",") if t.strip()] or list(family.lora_target_modules)
        # peft draws the initial LoRA from torch's global generator: seed it from the run's seed for the draw only
        # (unseeded, two runs with one seed started from different LoRAs), and leave the caller's stream as it was
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(_seed_for(run.seed, LORA_INIT_STREAM))
            family.add_lora(LoraConfig(r=run.lora_rank, lora_alpha=run.lora_alpha, init_lora_weights="gaussian",
                                       target_modules=targets))
        denoiser = family.denoiser
        for p in denoiser.parameters():  # LoRA in fp32 under mixed precision (diffusers' cast_training_params)
            if p.requires_grad:
                p.data = p.data.float()
        if run.gradient_checkpointing:
            denoiser.enable_gradient_checkpointing()
        # η None: the step family's own default (DDIM's 1.0, the flow SDEs' 0.7)
        self.model = DiffusionModel(pipe, sampler=m.scheduler, eta=m.eta,
                                    num_steps=m.num_steps, guidance_scale=max(1.0, m.guidance_scale),
                                    family=family, registry=self.registry)
        self.train_steps = None
        if rollout_mode(m.rollout).yields != "noised-pairs":
            from rdpo_zoo.rollout import check_train_steps

            steps = parse_train_timesteps(m.train_timesteps, m.num_steps, m.branch_start)
            if m.train_timesteps == "all":  # "all" means every step that has a likelihood
                steps = [s for s in steps if self._has_likelihood(s)]
            check_train_steps(self.model, steps)
            self.train_steps = steps

    def _has_likelihood(self, step: int) -> bool:
        from rdpo_zoo.reference import DEFAULT_MIN_SIGMA

        a, b, sigma = self.model.coefficients(self.model.step_index(step))
        return float(sigma) > DEFAULT_MIN_SIGMA * max(abs(float(a)), abs(float(b)))

    def _build_optimiser(self) -> None:
        params = [p for p in self.model.denoiser.parameters() if p.requires_grad]
        if not params:
            raise RuntimeError("no trainable LoRA parameters: check lora_targets against the denoiser's module names")
        self.trainable = params
        optimiser = torch.optim.AdamW(params, lr=self.method.learning_rate, betas=(0.9, 0.999),
                                      weight_decay=self.run.weight_decay, eps=1e-8)
        warmup = self.run.warmup_iterations
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimiser, lambda it: min(1.0, (it + 1) / warmup) if warmup else 1.0)
        self.train_denoiser, self.optimiser = self.accelerator.prepare(self.model.denoiser, optimiser)
        self.lr_scheduler = scheduler

    def _prompt_set(self, name: str) -> list[str]:
        from rdpo_zoo.world import prompt_set

        return prompt_set(name)

    # ------------------------------------------------------------------------------------------- the loop
    def _generator(self, *parts: int) -> torch.Generator:
        return torch.Generator(device="cpu").manual_seed(
            _seed_for(self.run.seed, *parts, self.accelerator.process_index))

    def _iteration_prompts(self, iteration: int) -> list[str]:
        g = self._generator(iteration, 1)
        pick = torch.randint(len(self.prompts), (self.run.prompts_per_iteration,), generator=g)
        return [self.prompts[i] for i in pick.tolist()]

    def rollout(self, iteration: int, prompts: Optional[list] = None, generator: Optional[torch.Generator] = None):
        """The method's rollout of iteration ``iteration``'s prompts and noise, or of ``prompts`` with
        ``generator`` (an evaluation's fixed held-out set)."""
        from rdpo_zoo.rollout import Guidance, rollout

        m = self.method
        if self.offline is not None:
            return self._offline_chunk(iteration)
        prompts = self._iteration_prompts(iteration) if prompts is None else list(prompts)
        if rollout_mode(m.rollout).yields == "samples" and m.group_size > 1:  # GRPO: G trajectories per prompt, each from
            prompts = [p for p in prompts for _ in range(m.group_size)]  # its own noise
        generator = self._generator(iteration, 2) if generator is None else generator
        self.model.denoiser.eval()
        with self.accelerator.autocast():
            cond = self.model.encode(prompts)
            guidance = Guidance(m.guidance_step) if self.guided else None
            return rollout(m.rollout, self.model, cond, self.reward, self.estimator, self.train_steps, generator,
                           k=m.num_candidates, threshold=m.threshold or 0.0, gap_rule=m.gap_rule, guidance=guidance,
                           reduction=m.reduction)

    def _offline_chunk(self, iteration: int):
        """The next ``prompts_per_iteration`` offline pairs of this process (cycling through the data)."""
        from rdpo_zoo.rollout import RolloutResult

        n, size = len(self.offline), self.run.prompts_per_iteration
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        start = (iteration * world + rank) * size
        index = torch.arange(start, start + size) % n
        pairs = self.offline.select(index)
        values = pairs.values.flatten()
        return RolloutResult(pairs.x0[:, 0], torch.empty(0), values, list(pairs.cond.prompts) * 2, pairs=pairs,
                             stats={"pairs": len(pairs), "unet_calls": 0})

    # the loss paths (rdpo_zoo.loss_paths), by name, as before they moved there
    @property
    def kl_convention(self) -> Optional[str]:
        """The per-sample loss's KL to the reference ("exact", "public"), or ``None``."""
        return getattr(self.loss_path, "kl_convention", None)

    def noised_pair_loss(self, pairs, generator: torch.Generator):
        """Diffusion-DPO's loss on noised pairs: :meth:`rdpo_zoo.loss_paths.NoisedPairLossPath.loss`."""
        return self.loss_path.loss(pairs, generator)

    def pair_loss(self, pairs, steps: Optional[torch.Tensor] = None):
        """The preference loss of step pairs and their log-ratios: :meth:`rdpo_zoo.loss_paths.StepPairLossPath.loss`."""
        return self.loss_path.loss(pairs, steps)

    def sample_loss(self, samples, advantages, steps: Optional[torch.Tensor] = None, stats: Optional[dict] = None):
        """The per-sample policy-gradient loss: :meth:`rdpo_zoo.loss_paths.PolicyGradientLossPath.loss`."""
        return self.loss_path.loss(samples, advantages, steps, stats)

    def rollout_log_ratios(self, iteration: int = 0) -> torch.Tensor:
        """The log-ratios log π_θ/π_ref of iteration ``iteration``'s rollout as the update computes them (under the
        run's autocast): of its step pairs, or, for a per-sample loss, the PPO log-ratios of its samples, step by
        step as the rollout's batches saw them. Before the first update they are exactly 0 (the policy is the
        reference): a check that catches CFG, dtype or timestep mismatches between the rollout and the loss."""
        yields = rollout_mode(self.method.rollout).yields
        if yields == "noised-pairs":
            raise ValueError(f"rollout: {self.method.rollout!r} has no rollout log-ratios (its pairs are noised in "
                             "the loss)")
        result = self.rollout(iteration)
        with torch.no_grad(), self.accelerator.autocast():
            if yields == "step-pairs":
                return self.pair_loss(result.pairs)[1].flatten()
            advantages = self.advantages(result.prompts, result.final_rewards).to(self.accelerator.device)
            samples, ratios = result.samples, []
            for step in samples.step_index.unique().tolist():
                part = samples.select((samples.step_index == step).nonzero()[:, 0].cpu())
                ratios.append(self.sample_loss(part, advantages)[1].flatten())
            return torch.cat(ratios)

    def optimise(self, batch, iteration: int, advantages=None) -> dict:
        """Inner epochs of minibatches over the rollout's pairs (or samples). Every process takes the same number
        of optimiser steps (DDP needs it): ⌈most pairs on any process / minibatch_size⌉ per epoch, each process
        splitting its own pairs into that many minibatches (no pair repeated; a process with none takes part with
        a zero loss). The statistics stay on the device and come back in one transfer at the end, where the losses
        are checked: a non-finite one stops the run (once per iteration, before anything is saved: the last
        checkpoint on disk stays the last good state)."""
        run, acc = self.run, self.accelerator
        n_local = 0 if batch is None else len(batch)
        counts = acc.gather(torch.tensor([n_local], device=acc.device))
        n_max = int(counts.max())
        if n_max == 0:
            return {}
        self.model.denoiser.train()
        per_trajectory = self.method.optimiser_step == "trajectory"
        groups = []
        if per_trajectory:  # one optimiser step per trajectory (pair): every process takes the most trajectories'
            groups = self._trajectories(batch) if n_local else []
            n_max = int(acc.gather(torch.tensor([len(groups)], device=acc.device)).max())
        per_epoch = n_max if per_trajectory else math.ceil(n_max / run.minibatch_size)
        # the pairs' steps on the host, once: the loss gets host coefficients (no device sync per minibatch)
        steps = batch.step_index.cpu() if n_local and hasattr(batch, "step_index") else None
        stats = {key: [] for key in _OPTIMISE_STATS}
        minibatches = []  # (epoch, minibatch, host index) of each loss, for the error message
        optimiser_steps = 0
        empty = torch.empty(0, dtype=torch.long)
        for epoch in range(run.inner_epochs):
            g = self._generator(iteration, 3, epoch)
            if per_trajectory:  # its trained steps in one minibatch: the loss's mean over them is the public code's
                parts = [groups[int(i)] for i in torch.randperm(len(groups), generator=g)]  # accumulated gradient
                parts += [empty] * (per_epoch - len(parts))
            elif n_local:
                parts = torch.randperm(n_local, generator=g).tensor_split(per_epoch)
            else:
                parts = [empty] * per_epoch
            for mb, index in enumerate(parts):
                with acc.accumulate(self.train_denoiser):
                    if len(index):
                        loss = self.loss_path.minibatch_loss(
                            batch.select(index), None if steps is None else steps[index], stats,
                            noise=lambda: self._generator(iteration, 4, epoch, mb), first=epoch == 0 and mb == 0,
                            advantages=advantages)
                    else:  # nothing sampled here this time: take part in the gradient sync with a zero loss
                        loss = sum(p.sum() for p in self.trainable) * 0.0
                    acc.backward(loss)
                    if acc.sync_gradients:
                        norm = acc.clip_grad_norm_(self.trainable, run.max_grad_norm) if run.max_grad_norm else None
                        if norm is not None:
                            stats["grad_norm"].append(torch.as_tensor(norm, device=acc.device))
                    self.optimiser.step()
                    self.optimiser.zero_grad(set_to_none=True)
                    optimiser_steps += int(acc.sync_gradients)
                stats["loss"].append(loss.detach())
                minibatches.append((epoch, mb, index))
        values = _fetch_stats(stats)
        self._check_finite(values["loss"], minibatches, iteration)
        return {**{k: sum(v) / len(v) for k, v in values.items() if v}, "optimiser_steps": optimiser_steps}

    def _check_finite(self, losses: list, minibatches: list, iteration: int) -> None:
        """Raise ``TrainingError`` on every process if a loss of this iteration was not finite on any."""
        bad = next((i for i, value in enumerate(losses) if not math.isfinite(value)), None)
        acc = self.accelerator
        if acc.num_processes > 1:  # every process stops, or the others would wait for it in the next collective
            anywhere = int(acc.gather(torch.tensor([int(bad is not None)], device=acc.device)).sum())
            if bad is None and anywhere:
                raise TrainingError(f"non-finite loss on another process at iteration {iteration}; the last "
                                    f"checkpoint, {latest_checkpoint(self.output_dir) or 'none yet'}, is kept")
        if bad is not None:
            epoch, mb, index = minibatches[bad]
            last = latest_checkpoint(self.output_dir)
            raise TrainingError(
                f"non-finite loss {losses[bad]} at iteration {iteration}, epoch {epoch}, minibatch {mb} "
                f"(pairs {index.tolist()} of this rollout); the last checkpoint, {last or 'none yet'}, is kept")

    @staticmethod
    def _trajectories(batch) -> list[torch.Tensor]:
        """The indices of ``batch``'s transitions (pairs), one tensor per trajectory (pair of trajectories)."""
        ids = batch.sample_id if hasattr(batch, "sample_id") else batch.trajectory
        if ids is None:
            raise ValueError("optimiser_step: 'trajectory' needs pairs that record their trajectory; this rollout's "
                             "do not")
        ids = ids.cpu()
        return [(ids == t).nonzero()[:, 0] for t in ids.unique().tolist()]

    def step(self, iteration: int):
        """One iteration: rollout, optimisation over its pairs (or samples), the scheduler step. Returns the
        rollout's result and the iteration's metrics record (rewards and pair counts gathered over processes)."""
        acc = self.accelerator
        t0 = time.perf_counter()
        result = self.rollout(iteration)
        t1 = time.perf_counter()
        batch = result.samples if self.per_sample else result.pairs
        advantages = None
        if self.per_sample:
            advantages = self.advantages(result.prompts, result.final_rewards).to(acc.device)
        calls_before = self.model.unet_calls
        opt = self.optimise(batch, iteration, advantages)
        calls_optimise = self.model.unet_calls - calls_before  # policy and reference passes over the pairs
        self.lr_scheduler.step()
        t2 = time.perf_counter()
        rewards = acc.gather(result.final_rewards.to(acc.device).float())
        parts = {}
        if hasattr(self.reward, "part_scores") and result.final_images.numel():
            with torch.no_grad():  # each part's raw value (its own unit), so a combination can be read apart
                scores = self.reward.part_scores(result.final_images, result.prompts)
            parts = {f"reward/{name}": float(acc.gather(v.to(acc.device)).mean()) for name, v in scores.items()}
        record = {
            "iteration": iteration + 1,
            "reward_mean": float(rewards.mean()),
            "reward_std": float(rewards.std()) if rewards.numel() > 1 else 0.0,
            **parts,
            "pairs": int(acc.gather(torch.tensor([len(batch) if batch is not None else 0], device=acc.device)).sum()),
            "pairs_kept_fraction": result.stats.get("pairs_kept_fraction"),
            "unet_calls": result.stats.get("unet_calls"),  # the rollout's (sampling, estimating, guiding)
            "unet_calls_optimise": calls_optimise,
            "lr": self.lr_scheduler.get_last_lr()[0],
            "seconds_rollout": t1 - t0,
            "seconds_optimise": t2 - t1,
            **opt,
        }
        return result, record

    def train(self) -> dict:
        """Run (or resume) the loop; returns the final evaluation (or ``{}`` when ``eval_samples`` is 0)."""
        from tqdm.auto import tqdm

        acc, run = self.accelerator, self.run
        acc.wait_for_everyone()  # every process has checked the folder (in __init__) before anything is written
        # a resume reads its checkpoint first: one that does not load, or other settings, are refused before a write
        start = self.load_checkpoint() if run.resume else 0
        if acc.is_main_process:
            if run.overwrite:
                removed = remove_run_files(self.output_dir)
                if removed:
                    logger.info("overwrite: removed the earlier run's %s from %s",
                                ", ".join(p.name for p in removed), self.output_dir)
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self._write_config()
            if start == 0 and self.metrics_path.exists():
                self.metrics_path.unlink()  # a fresh run; a resumed one keeps (and trims) its metrics
        self._start_trackers()
        progress = tqdm(range(start, run.iterations), desc="train", initial=start, total=run.iterations,
                        disable=run.quiet or not sys.stderr.isatty() or not acc.is_main_process)
        for iteration in progress:
            _, record = self.step(iteration)
            self.iteration = iteration + 1
            self._log(record)
            if not run.quiet and acc.is_main_process:
                progress.set_postfix(reward=f"{record['reward_mean']:.3f}", loss=f"{record.get('loss', float('nan')):.4f}")
            if run.checkpoint_every and self.iteration % run.checkpoint_every == 0:
                self.save_checkpoint()
        if not run.checkpoint_every or self.iteration % run.checkpoint_every:
            self.save_checkpoint()  # which also writes lora/
        evaluation = {}
        if run.eval_samples:
            evaluation = self.evaluate()
        for tracker in acc.trackers:
            tracker.finish()
        return evaluation

    # ---------------------------------------------------------------------------------------------- outputs
    def _write_config(self) -> None:
        data = self.config.to_dict()
        data["resolved"] = {
            "train_steps": self.train_steps, "sampler": self.model.sampler, "eta": self.model.eta,
            "timesteps": self.model.timesteps.tolist(), "guidance_scale": self.model.guidance_scale,
            "resolution": self.model.resolution, "reward_scale": self.reward.scale,
            "processes": self.accelerator.num_processes, "gradient_guidance": self.guided,
        }
        _atomic_write_text(self.output_dir / "config.json", json.dumps(data, indent=2, default=str))

    def _start_trackers(self) -> None:
        """Start accelerate's trackers (``--report-to``); W&B also gets the configuration, flattened (TensorBoard
        would write it as hparams into a folder of its own; config.json holds it anyway)."""
        if not self.accelerator.log_with:
            return
        flat = {}
        for section, values in self.config.to_dict().items():
            for key, value in (values.items() if isinstance(values, dict) else [("", values)]):
                flat[f"{section}.{key}".rstrip(".")] = value if isinstance(value, (int, float, str, bool)) else str(value)
        self.accelerator.init_trackers("rdpo-zoo", config=flat if self.run.report_to == "wandb" else None)

    def _log(self, record: dict) -> None:
        if not self.accelerator.is_main_process:
            return
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.accelerator.trackers:
            self.accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "iteration"},
                                 step=record["iteration"])
        if not self.run.quiet and not sys.stderr.isatty():
            keys = ("reward_mean", "loss", "accuracy", "r_w", "r_l", "pairs")
            logger.info("iteration %d: %s", record["iteration"],
                        ", ".join(f"{k}={record[k]:.4g}" for k in keys if isinstance(record.get(k), (int, float))))

    def unwrapped_denoiser(self):
        """The trained denoiser without its distributed wrapper."""
        return self.accelerator.unwrap_model(self.train_denoiser)

    def save_lora(self, folder: Path) -> None:
        """The LoRA in the format the model family's ``load_lora(folder)`` (for SD/SDXL diffusers'
        ``pipe.load_lora_weights(folder, weight_name=LORA_WEIGHT_NAME)``) reads."""
        from peft.utils import get_peft_model_state_dict

        if self.accelerator.is_main_process:
            write_lora(folder, self.model.family, get_peft_model_state_dict(self.unwrapped_denoiser()))

    def save_checkpoint(self) -> Path:
        """``checkpoint-NNNNNN`` (the LoRA, the exact peft state, optimiser, scheduler, step) and a refreshed
        ``lora/``, crash-safe: :func:`rdpo_zoo.checkpoints.write_checkpoint`."""
        from peft.utils import get_peft_model_state_dict

        acc = self.accelerator
        acc.wait_for_everyone()
        final = self.output_dir / f"{CHECKPOINT_PREFIX}{self.iteration:06d}"
        if acc.is_main_process:
            peft_state = get_peft_model_state_dict(self.unwrapped_denoiser())
            state = {
                "iteration": self.iteration,
                "lora": {k: v.detach().cpu().clone() for k, v in peft_state.items()},
                "optimiser": self.optimiser.state_dict(),
                "lr_scheduler": self.lr_scheduler.state_dict(),
                "advantages": getattr(getattr(self, "advantages", None), "state_dict", lambda: None)(),
                "config": self.config.to_dict(),
            }
            final = write_checkpoint(self.output_dir, self.iteration, self.model.family, peft_state, state,
                                     self.run.keep_checkpoints)
        acc.wait_for_everyone()
        return final

    def load_checkpoint(self, path: Optional[Path] = None) -> int:
        """Restore the newest intact checkpoint (or ``path``); returns the iteration to continue from (0 if none).

        A checkpoint whose state does not load (a truncated file, say) is passed over for the one before it, with a
        warning naming the file; with none left the error says so. One stored with other settings than this run's
        (but for the resumable ones) is refused. The metrics of later iterations are dropped, and so is a torn last
        line (a write the crash interrupted), with a warning."""
        candidates = [Path(path)] if path is not None else complete_checkpoints(self.output_dir)[::-1]
        if not candidates:
            logger.warning("resume: no checkpoint in %s; starting from scratch", self.output_dir)
            return 0
        state, folder, failures = read_checkpoint(candidates, warn=self.accelerator.is_main_process)
        if state is None:
            raise TrainingError(f"resume: no intact checkpoint left in {self.output_dir}: "
                                + "; ".join(failures) + " (start afresh with --overwrite)")
        try:
            check_resumed_settings(state["config"], self.config.to_dict(), folder / STATE_FILE, self.output_dir)
        except RunFolderError as error:
            raise TrainingError(str(error)) from None
        self._restore(state, folder)
        self.iteration = int(state["iteration"])
        if self.accelerator.is_main_process and self.metrics_path.exists():
            trim_metrics(self.metrics_path, self.iteration, TrainingError)
        return self.iteration

    def _restore(self, state: dict, path: Path) -> None:
        from peft.utils import set_peft_model_state_dict

        result = set_peft_model_state_dict(self.unwrapped_denoiser(), state["lora"])
        unexpected = getattr(result, "unexpected_keys", None)
        if unexpected:
            raise RuntimeError(f"resume: {path} holds LoRA weights this model does not have: {unexpected[:5]}")
        self.optimiser.load_state_dict(state["optimiser"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        if state.get("advantages") is not None:
            self.advantages.load_state_dict(state["advantages"])

    # ------------------------------------------------------------------------------------------- evaluation
    def evaluate(self, n: Optional[int] = None) -> dict:
        """The final evaluation, base against tuned (:func:`rdpo_zoo.train_eval.evaluate_run`): writes
        ``eval.json`` and ``eval.png``."""
        from rdpo_zoo.train_eval import evaluate_run

        return evaluate_run(self, n)


def _trackers(report_to: str, output_dir: Path) -> list:
    """accelerate's tracker for ``--report-to`` (none: no tracker; metrics.jsonl is always written). TensorBoard
    writes under ``output_dir/tensorboard``; W&B runs offline into ``output_dir/wandb`` unless WANDB_MODE says
    otherwise. A tracker whose package is missing is refused here, before anything is built."""
    import importlib.util

    from rdpo_zoo.errors import UserInputError

    if report_to in (None, "none"):
        return []
    package = {"tensorboard": "tensorboard", "wandb": "wandb"}.get(report_to)
    if package is None:
        raise UserInputError(f"--report-to: expected tensorboard, wandb or none, got {report_to!r}")
    if importlib.util.find_spec(package) is None:
        raise UserInputError(f"--report-to {report_to}: the {package} package is not installed "
                             f"(pip install {package}), or pass --report-to none")
    if report_to == "tensorboard":
        from accelerate.tracking import TensorBoardTracker

        return [TensorBoardTracker("tensorboard", str(output_dir))]
    from accelerate.tracking import WandBTracker

    return [WandBTracker("rdpo-zoo", mode=os.environ.get("WANDB_MODE", "offline"), dir=str(output_dir))]


#: what ``optimise`` averages over its minibatches
_OPTIMISE_STATS = ("loss", "r_w", "r_l", "margin", "accuracy", "psi_active", "grad_norm", "ratio",
                   "ratio_before_update", "clip_fraction", "approx_kl", "kl")


def _fetch_stats(stats: dict) -> dict:
    """``{key: [floats]}`` from ``{key: [device scalars]}`` in one device-to-host transfer."""
    flat = [value.reshape(()).float() for key in stats for value in stats[key]]
    numbers = torch.stack(flat).tolist() if flat else []
    out, start = {}, 0
    for key, values in stats.items():
        out[key] = numbers[start:start + len(values)]
        start += len(values)
    return out


def train(config: TrainConfig, **kwargs) -> dict:
    """Build a :class:`Trainer` and run it."""
    return Trainer(config, **kwargs).train()
