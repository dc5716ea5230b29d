"""A colour-saturation reward, with a differentiable form (so it can drive gradient guidance)."""

import torch

from rdpo_zoo.rewards import Reward


class Saturation(Reward):
    """The mean saturation of an image's pixels: HSV's (max − min)/max, or the chroma max − min. Grey is 0."""

    name = "saturation"
    scale = 0.05  # a visible difference in mean saturation
    unit = "saturation (0–1)"
    differentiable = True

    def __init__(self, measure: str = "hsv"):
        if measure not in ("hsv", "chroma"):
            raise ValueError(f"measure: expected 'hsv' or 'chroma', got {measure!r}")
        self.measure = measure

    def score_differentiable(self, images, prompts, timesteps=None):
        self.check_images(images, prompts)
        x = images.float().clamp(0.0, 1.0)
        high, low = x.amax(dim=1), x.amin(dim=1)
        per_pixel = high - low if self.measure == "chroma" else (high - low) / (high + 1e-6)
        return per_pixel.mean(dim=(1, 2))

    def score(self, images, prompts, timesteps=None):
        with torch.no_grad():
            return self.score_differentiable(images, prompts, timesteps)
