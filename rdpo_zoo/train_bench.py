"""``rdpo-zoo bench --train``: one training iteration of the real trainer on an SD-1.5-shaped model, timed.

For each rollout (``branching``: the ``rdpo`` preset, branch-winner with TailorPO-G guidance and ΔQ labels;
``trajectory``: the ``d3po`` preset, two trajectories from one x_T) and each gradient-checkpointing setting, a
``Trainer`` is built on a randomly initialised pipeline (``SIZES``: ``sd15`` is SD 1.5's UNet, 860 M parameters,
at 512×512 with SD's VAE and a 2-layer text encoder of SD's width; ``tiny`` runs on a CPU in seconds) and runs
two iterations: the first warms up (compilation, allocator, autotuning), the second is measured. Reported per
iteration:

- seconds: rollout (sampling, estimating, guiding, of which ``reward``: decoding and scoring), optimise (of which
  ``loss``: the fused preference loss's forward calls), and the whole;
- UNet evaluations (samples through the UNet; a CFG pair counts 2) per second, over the iteration;
- peak device memory (CUDA): over the whole iteration, and over the optimisation alone (the phase the plain
  loop repeats; the rollout's peak, with gradient guidance through the VAE, can be the higher);
- beside it, the same pairs optimised by a **plain loop**: per minibatch the policy and reference outputs, then
  every step's log-probability recomputed for both branches under both policies with
  ``rdpo_zoo.reference.step_log_prob`` (the public D3PO/SPO code's way), the DPO loss on their differences; same
  minibatches, same optimiser. Its optimise seconds, loss seconds and peak memory sit beside the trainer's.

Imports diffusers, peft and accelerate (the trainer's stack) when it runs: ``rdpo-zoo bench`` itself does not.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import math
import platform
import time
from typing import Callable, Optional

import torch

__all__ = ["SIZES", "ROLLOUTS", "run_train_bench", "format_train_table", "random_pipeline"]

TRAIN_SCHEMA = "rdpo-zoo.bench-train/1"
#: model shapes: UNet2DConditionModel / AutoencoderKL / text-encoder configs, and the iteration's size
SIZES = {
    "sd15": dict(
        unet=dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, sample_size=64, in_channels=4,
                  out_channels=4, cross_attention_dim=768, attention_head_dim=8,
                  down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                  up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3),
        vae=dict(block_out_channels=(128, 256, 512, 512), in_channels=3, out_channels=3, latent_channels=4,
                 down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                 layers_per_block=2, sample_size=512, scaling_factor=0.18215),
        text=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=2),
        run=dict(prompts_per_iteration=2, minibatch_size=8), method=dict(num_steps=20)),
    "tiny": dict(
        unet=dict(block_out_channels=(16, 32), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
                  cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8,
                  down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")),
        vae=dict(block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4,
                 down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                 norm_num_groups=8, sample_size=16),
        text=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2),
        run=dict(prompts_per_iteration=2, minibatch_size=4), method=dict(num_steps=4, train_timesteps="4,2")),
}
#: name → (preset, method overrides)
ROLLOUTS = {"branching": ("rdpo", {}), "trajectory": ("d3po", {})}
_MODEL_PART, _REWARD_PART = "bench-random", "bench-red"


def random_pipeline(size: str, device=None, seed: int = 0):
    """A ``StableDiffusionPipeline`` of random weights in the shape of ``SIZES[size]`` (no download), built on
    ``device`` (on a GPU the initialisation of 860 M parameters takes a moment there, minutes on a CPU)."""
    import tempfile

    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from rdpo_zoo.pretrain import build_tokenizer

    shape = SIZES[size]
    folder = tempfile.mkdtemp(prefix="rdpo-bench-tokenizer-")
    build_tokenizer(folder, max_length=16)
    tokenizer = CLIPTokenizer.from_pretrained(folder, model_max_length=16)
    torch.manual_seed(seed)
    with torch.device(device) if device is not None else contextlib.nullcontext():
        unet = UNet2DConditionModel(**shape["unet"])
        vae = AutoencoderKL(**shape["vae"])
        text = CLIPTextModel(CLIPTextConfig(
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id, vocab_size=len(tokenizer), max_position_embeddings=16,
            projection_dim=shape["text"]["hidden_size"], **shape["text"]))
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
                              steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _bench_parts(size: str, device):
    """The bench's model and reward parts, registered in-process for the run."""
    import rdpo_zoo
    from rdpo_zoo import ModelPart, RewardPart
    from rdpo_zoo.rewards import Reward

    class RedReward(Reward):
        """Mean red minus mean green and blue: cheap, differentiable (guidance needs a gradient)."""

        name = _REWARD_PART
        scale = 0.05
        differentiable = True

        def score(self, images, prompts, timesteps=None):
            self.check_images(images, prompts)
            return (images[:, 0] - 0.5 * (images[:, 1] + images[:, 2])).mean((1, 2)).float()

        def score_differentiable(self, images, prompts, timesteps=None):
            return self.score(images, prompts, timesteps)

    class Parts:
        @staticmethod
        @rdpo_zoo.hookimpl
        def register_models(register):
            register(ModelPart(_MODEL_PART, "random SD-1.5-shaped pipeline (bench --train)",
                               lambda **options: random_pipeline(size, device)))

        @staticmethod
        @rdpo_zoo.hookimpl
        def register_rewards(register):
            register(RewardPart(_REWARD_PART, "mean red minus green and blue (bench --train)", RedReward))

    return Parts


class _Clock:
    """Seconds spent inside wrapped calls (synchronising a GPU before and after, so the split is the device's)."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"
        self.seconds = {}

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def wrap(self, bucket: str, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            self.sync()
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.sync()
                self.seconds[bucket] = self.seconds.get(bucket, 0.0) + time.perf_counter() - t0
        return timed


def plain_optimise(trainer, batch, iteration: int) -> None:
    """The same minibatches as ``Trainer.optimise``, the loss written as a plain loop: both branches'
    log-probabilities under the policy and the reference recomputed with ``step_log_prob``, then DPO."""
    from rdpo_zoo import losses
    from rdpo_zoo.loss_paths import denoiser_inputs
    from rdpo_zoo.reference import step_log_prob

    run, acc, model = trainer.run, trainer.accelerator, trainer.model
    per_epoch = math.ceil(len(batch) / run.minibatch_size)
    steps = batch.step_index.cpu()
    obj = trainer.objective
    for epoch in range(run.inner_epochs):
        g = trainer._generator(iteration, 3, epoch)
        for index in torch.randperm(len(batch), generator=g).tensor_split(per_epoch):
            pairs = batch.select(index)
            P = len(pairs)
            x_in, cond_in, index_in = denoiser_inputs(pairs)
            with acc.autocast():
                o_theta = model.guided_output(x_in, index_in, cond_in, denoiser=trainer.train_denoiser)
                with torch.no_grad(), model.reference():
                    o_ref = model.guided_output(x_in, index_in, cond_in)
            a, b, sigma = (v.to(acc.device) for v in model.coefficient_tensors(steps[index]))
            x_t = pairs.x_t if not pairs.shared else pairs.x_t.unsqueeze(1).expand_as(pairs.y)
            o_t = o_theta.view(P, -1, *pairs.y.shape[2:]).expand_as(pairs.y).float()
            o_r = o_ref.view(P, -1, *pairs.y.shape[2:]).expand_as(pairs.y).float()
            r = torch.stack([
                step_log_prob(pairs.y[:, k], x_t[:, k].float(), o_t[:, k], a, b, sigma, trainer.method.reduction)
                - step_log_prob(pairs.y[:, k], x_t[:, k].float(), o_r[:, k], a, b, sigma, trainer.method.reduction)
                for k in (0, 1)], 1)
            loss = losses.preference_loss(r, **obj.kwargs())
            acc.backward(loss)
            if acc.sync_gradients and run.max_grad_norm:
                acc.clip_grad_norm_(trainer.trainable, run.max_grad_norm)
            trainer.optimiser.step()
            trainer.optimiser.zero_grad(set_to_none=True)


def _peak_reset(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak_mb(device) -> Optional[float]:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20
    return None


def _one_config(size: str, rollout: str, checkpointing: bool, device, mixed_precision: str, output_dir: str,
                iterations: int = 2) -> dict:
    import rdpo_zoo.kernels as kernels
    from rdpo_zoo.config import RunSettings, TrainConfig
    from rdpo_zoo.resolve import merge_settings
    from rdpo_zoo.trainer import Trainer

    shape = SIZES[size]
    preset, overrides = ROLLOUTS[rollout]
    method = merge_settings(preset, {**shape["method"], **overrides})
    run = RunSettings(model=_MODEL_PART, reward=_REWARD_PART, output_dir=output_dir, iterations=iterations,
                      eval_samples=0, quiet=True, seed=0, mixed_precision=mixed_precision,
                      gradient_checkpointing=checkpointing, checkpoint_every=0, **shape["run"])
    trainer = Trainer(TrainConfig(method, run, preset))
    model = trainer.model
    record = None
    for iteration in range(iterations):
        clock = _Clock(device)
        originals = (trainer.rollout, trainer.optimise, model.decode, trainer.reward.score,
                     trainer.reward.score_differentiable, kernels.preference_loss)
        trainer.rollout = clock.wrap("rollout", originals[0])
        peaks = {}

        def optimise_measured(*args, _optimise=originals[1], **kwargs):
            # the optimisation's own peak, the phase the plain loop repeats (the rollout's, with gradient guidance
            # through the VAE, can be higher): read what came before, reset, measure the phase
            peaks["rollout"] = _peak_mb(device)
            _peak_reset(device)
            try:
                return _optimise(*args, **kwargs)
            finally:
                peaks["optimise"] = _peak_mb(device)

        trainer.optimise = clock.wrap("optimise", optimise_measured)
        model.decode = clock.wrap("reward", originals[2])
        trainer.reward.score = clock.wrap("reward", originals[3])
        trainer.reward.score_differentiable = clock.wrap("reward", originals[4])
        kernels.preference_loss = clock.wrap("loss", originals[5])
        try:
            calls0 = model.unet_calls
            _peak_reset(device)
            clock.sync()
            t0 = time.perf_counter()
            result, _ = trainer.step(iteration)
            clock.sync()
            total = time.perf_counter() - t0
            calls = model.unet_calls - calls0
            measured = [v for v in (peaks.get("rollout"), _peak_mb(device)) if v is not None]
            peak = max(measured) if measured else None  # the whole iteration's
            batch = result.pairs
            # the plain loop over the same pairs
            plain = _Clock(device)
            kernels.preference_loss = originals[5]
            from rdpo_zoo import reference

            step_log_prob = reference.step_log_prob
            reference.step_log_prob = plain.wrap("loss", step_log_prob)
            _peak_reset(device)
            plain.sync()
            t1 = time.perf_counter()
            try:
                if batch is not None and len(batch):
                    plain_optimise(trainer, batch, iteration)
            finally:
                reference.step_log_prob = step_log_prob
            plain.sync()
            plain_seconds = time.perf_counter() - t1
            plain_peak = _peak_mb(device)
        finally:
            (trainer.rollout, trainer.optimise, model.decode, trainer.reward.score,
             trainer.reward.score_differentiable, kernels.preference_loss) = originals
        record = dict(
            rollout=rollout, preset=preset, gradient_checkpointing=checkpointing, iteration=iteration,
            pairs=0 if batch is None else len(batch), unet_evaluations=calls,
            unet_evaluations_per_s=calls / total if total else None,
            seconds=dict(total=total, rollout=clock.seconds.get("rollout", 0.0),
                         reward=clock.seconds.get("reward", 0.0), optimise=clock.seconds.get("optimise", 0.0),
                         loss=clock.seconds.get("loss", 0.0)),
            peak_memory_mb=peak, optimise_peak_memory_mb=peaks.get("optimise"),
            plain_loop=dict(optimise_seconds=plain_seconds, loss_seconds=plain.seconds.get("loss", 0.0),
                            peak_memory_mb=plain_peak),
            warm_up=iteration < iterations - 1,
        )
    del trainer
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
    return record


def run_train_bench(size: str = "sd15", device: Optional[str] = None, mixed_precision: Optional[str] = None,
                    rollouts=tuple(ROLLOUTS), checkpointing=(False, True), output_dir: Optional[str] = None,
                    on_record: Callable[[dict], None] = lambda result: None,
                    log: Callable[[str], None] = lambda s: None) -> dict:
    """Every (rollout, checkpointing) configuration; ``on_record(result)`` after each (for partial JSON)."""
    import tempfile

    import rdpo_zoo

    if size not in SIZES:
        raise ValueError(f"size: expected one of {', '.join(SIZES)}, got {size!r}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = torch.device(device).type == "cuda"
    if mixed_precision is None:
        mixed_precision = "bf16" if cuda else "no"
    name = rdpo_zoo.register(_bench_parts(size, device), name="rdpo-zoo-bench-train")
    result = {
        "schema": TRAIN_SCHEMA, "size": size, "device": torch.cuda.get_device_name() if cuda else
        f"cpu ({platform.processor() or platform.machine()})", "mixed_precision": mixed_precision,
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "what": "the second of two iterations (the first warms up); seconds synchronised around each part",
        "records": [],
    }
    try:
        import diffusers

        result["versions"]["diffusers"] = diffusers.__version__
        with tempfile.TemporaryDirectory(prefix="rdpo-bench-train-") as tmp:
            for rollout in rollouts:
                for ckpt in checkpointing:
                    log(f"bench --train: {rollout}, gradient checkpointing {'on' if ckpt else 'off'}")
                    record = _one_config(size, rollout, ckpt, device, mixed_precision, f"{tmp}/{rollout}-{ckpt}")
                    result["records"].append(record)
                    on_record(result)
    finally:
        rdpo_zoo.unregister(name)
    return result


def format_train_table(result: dict) -> str:
    head = ["rollout", "ckpt", "pairs", "UNet evals/s", "total s", "rollout s", "reward s", "optimise s", "loss s",
            "peak MB", "optimise peak MB", "plain optimise s", "plain loss s", "plain peak MB"]
    lines = [head]

    def f(v, spec=".3g"):
        return "—" if v is None else format(v, spec)

    for r in result["records"]:
        s, plain = r["seconds"], r["plain_loop"]
        lines.append([r["rollout"], "on" if r["gradient_checkpointing"] else "off", str(r["pairs"]),
                      f(r["unet_evaluations_per_s"]), f(s["total"]), f(s["rollout"]), f(s["reward"]),
                      f(s["optimise"]), f(s["loss"]), f(r["peak_memory_mb"], ".0f"),
                      f(r.get("optimise_peak_memory_mb"), ".0f"), f(plain["optimise_seconds"]),
                      f(plain["loss_seconds"]), f(plain["peak_memory_mb"], ".0f")])
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    text = ["  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text)
