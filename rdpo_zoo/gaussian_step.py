"""The affine Gaussian form of one reverse step, shared by the DDIM/DDPM table (``rdpo_zoo.schedulers``) and the
flow-matching table (``rdpo_zoo.flow_steps``); both import it from here, so neither imports the other's module
for it (``schedulers.step_coefficients`` dispatches to the flow table)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rdpo_zoo.errors import UserInputError

__all__ = ["StepCoefficients", "UnsupportedSchedulerError"]


class UnsupportedSchedulerError(UserInputError):
    """The scheduler's reverse step is not a Gaussian with a mean affine in the network output (or not one that the
    chosen step family takes); the user fixes it by choosing another scheduler."""


@dataclass(frozen=True)
class StepCoefficients:
    """``x_{t-1} ~ N(a·x_t + b·o, sigma² I)``; each field is a float64 tensor of the timestep's shape.

    ``sigma`` is the step's standard deviation (``std`` is the same value under a name that cannot be confused
    with a flow scheduler's sigma, the noise level of x_t)."""

    a: torch.Tensor
    b: torch.Tensor
    sigma: torch.Tensor

    @property
    def std(self) -> torch.Tensor:
        return self.sigma

    def __iter__(self):
        return iter((self.a, self.b, self.sigma))
