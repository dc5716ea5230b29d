"""A toy non-UNet model family and a toy flow-matching step family, as a plugin would write them: the acceptance
test of the two seams (``rdpo_zoo.families``, ``rdpo_zoo.steps``) registers them in-process and trains through the
Trainer with no edit outside the seams.

The denoiser is a small token mixer (``pipe.transformer``, not a UNet) with its own prompt embedding and decoder; the
step family is a rectified flow x_s = (1 − s)·x0 + s·ε with shifted sigmas, so its timesteps are floats (960.1…),
velocity prediction, and Euler steps with Gaussian noise: x_next = x + (s_next − s)·v + σ·ξ.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

import rdpo_zoo
from rdpo_zoo import ModelFamilyPart, ModelPart, Option, StepFamilyPart
from rdpo_zoo.families import ModelFamily
from rdpo_zoo.schedulers import StepCoefficients
from rdpo_zoo.steps import StepFamily

CHANNELS, SIDE, EMBED, TOKENS = 4, 4, 8, 6


class ToyTransformer(torch.nn.Module):
    """o(x, t, text): every latent position is a token; projections named like attention's (LoRA targets)."""

    def __init__(self):
        super().__init__()
        self.to_q = torch.nn.Linear(CHANNELS, 16)
        self.to_v = torch.nn.Linear(EMBED, 16)
        self.time = torch.nn.Linear(1, 16)
        self.to_out = torch.nn.Linear(16, CHANNELS)

    def forward(self, x, t, hidden):
        B, C, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # [B, hw, C]
        mixed = self.to_q(tokens) + self.to_v(hidden.mean(1))[:, None] + self.time(t.float()[:, None] / 1000)[:, None]
        return self.to_out(torch.tanh(mixed)).transpose(1, 2).reshape(B, C, h, w)


class ToyPipeline:
    """What a loaded pipeline holds: a transformer, a text embedding, a scheduler config; no UNet, no VAE."""

    def __init__(self, seed: int = 0):
        torch.manual_seed(seed)
        self.transformer = ToyTransformer()
        self.text_encoder = torch.nn.Embedding(128, EMBED)
        self.scheduler_config = {"shift": 2.9, "num_train_timesteps": 1000}


class ToyFamily(ModelFamily):
    name: ClassVar[str] = "toy"
    default_step_family: ClassVar[str] = "toy-flow"
    lora_target_modules: ClassVar[tuple] = ("to_q", "to_v")
    frozen_components: ClassVar[tuple] = ("text_encoder", "transformer")

    @classmethod
    def matches(cls, pipe) -> bool:
        return isinstance(pipe, ToyPipeline)

    def __init__(self, pipe):
        super().__init__(pipe)
        self.denoiser = pipe.transformer

    @property
    def scheduler_config(self) -> dict:
        return dict(self.pipe.scheduler_config)

    def latent_shape(self, resolution: int) -> tuple:
        if resolution % 2:
            raise ValueError(f"resolution: expected an even number, got {resolution}")
        return (CHANNELS, resolution // 2, resolution // 2)

    def default_resolution(self) -> int:
        return 2 * SIDE

    def _embed(self, prompts, device):
        ids = torch.tensor([[ord(c) % 128 for c in (p + " " * TOKENS)[:TOKENS]] for p in prompts], device=device)
        return self.pipe.text_encoder(ids)

    def encode(self, prompts, device, resolution):
        from rdpo_zoo.conditioning import Conditioning

        return Conditioning(list(prompts), self._embed(prompts, device), self._embed([""] * len(prompts), device))

    def denoise(self, denoiser, x, t, hidden, added):
        return denoiser(x, t, hidden.to(self.dtype))

    def decode(self, latents):
        rgb = torch.nn.functional.interpolate(latents[:, :3].float(), scale_factor=2, mode="nearest")
        return torch.sigmoid(rgb)

    def encode_images(self, images):
        small = torch.nn.functional.avg_pool2d(images.float(), 2).clamp(1e-3, 1 - 1e-3)
        logit = torch.log(small / (1 - small))
        return torch.cat([logit, logit.mean(1, keepdim=True)], 1).to(self.device)


class ToyFlowSteps(StepFamily):
    """Euler steps of a shifted rectified flow with noise σ = η·√|dt|·½ (a toy SDE), velocity prediction."""

    name: ClassVar[str] = "toy-flow"

    def __init__(self, scheduler_config, num_steps, eta=None, **options):
        super().__init__(scheduler_config, num_steps, 1.0 if eta is None else float(eta), **options)
        shift = float(scheduler_config["shift"])
        s = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
        self.sigmas = shift * s / (1 + (shift - 1) * s)
        self.timesteps = (self.sigmas[:-1] * 1000).float()
        self.init_noise_sigma = 1.0

    @classmethod
    def check_scheduler(cls, scheduler_config):
        if "shift" not in scheduler_config:
            raise ValueError("scheduler 'toy-flow': the pipeline's scheduler config has no shift")

    def coefficients(self, index):
        index = self._check_index(index)
        dt = self.sigmas[index + 1] - self.sigmas[index]
        sigma = self.eta * 0.5 * math.sqrt(float(-dt))
        return StepCoefficients(torch.tensor(1.0, dtype=torch.float64), dt, torch.tensor(sigma, dtype=torch.float64))

    def x0_coefficients(self, index):
        return 1.0, -float(self.sigmas[self._check_index(index)])

    def flow_time_step(self, index):
        index = self._check_index(index)
        return float(self.sigmas[index] - self.sigmas[index + 1])

    def sample_train_timesteps(self, n, generator):
        return torch.rand(n, generator=generator) * 1000

    def _s(self, x0, t):
        return (t.float() / 1000).view(t.shape[0], *([1] * (x0.dim() - 1)))

    def add_noise(self, x0, noise, t):
        s = self._s(x0, t)
        return (1 - s) * x0 + s * noise

    def training_target(self, x0, noise, t):
        return noise - x0


class ToyPlugin:
    @staticmethod
    @rdpo_zoo.hookimpl
    def register_model_families(register):
        register(ModelFamilyPart("toy", "a toy token-mixer denoiser (tests)", ToyFamily))

    @staticmethod
    @rdpo_zoo.hookimpl
    def register_step_families(register):
        register(StepFamilyPart("toy-flow", "a toy shifted rectified flow with float timesteps (tests)", ToyFlowSteps))

    @staticmethod
    @rdpo_zoo.hookimpl
    def register_models(register):
        register(ModelPart("toy-model", "a toy non-UNet pipeline (tests)", ToyPipeline,
                           (Option("seed", int, 0, "the weights' seed"),)))
