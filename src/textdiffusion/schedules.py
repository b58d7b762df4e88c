"""Noise schedules for masked (absorbing) diffusion, written as the keep-probability alpha(t).

alpha(0) = 1 (clean data) and alpha(1) = 0 (everything masked), decreasing in between. The
continuous-time NELBO weight is -alpha'(t) / (1 - alpha(t)) (MDLM, Sahoo et al. 2024, eq. 10).
"""

from __future__ import annotations

import math

import torch

from .errors import UserError


class Schedule:
    name: str

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def alpha_prime(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def nelbo_weight(self, t: torch.Tensor) -> torch.Tensor:
        """-alpha'(t) / (1 - alpha(t)), >= 0."""
        return -self.alpha_prime(t) / (1 - self.alpha(t)).clamp_min(1e-12)


class LogLinear(Schedule):
    """alpha(t) = 1 - t: the masked fraction grows linearly; the weight is 1/t."""

    name = "loglinear"

    def alpha(self, t):
        return 1 - t

    def alpha_prime(self, t):
        return -torch.ones_like(t)


class Cosine(Schedule):
    """alpha(t) = cos(pi t / 2)."""

    name = "cosine"

    def alpha(self, t):
        return torch.cos(0.5 * math.pi * t)

    def alpha_prime(self, t):
        return -0.5 * math.pi * torch.sin(0.5 * math.pi * t)


class Linear(Schedule):
    """Total noise sigma(t) linear from sigma_min to sigma_max; alpha(t) = exp(-sigma(t))."""

    name = "linear"

    def __init__(self, sigma_min: float = 1e-4, sigma_max: float = 20.0):
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def alpha(self, t):
        return torch.exp(-(self.sigma_min + t * (self.sigma_max - self.sigma_min)))

    def alpha_prime(self, t):
        return -(self.sigma_max - self.sigma_min) * self.alpha(t)


SCHEDULES = {cls.name: cls for cls in (LogLinear, Cosine, Linear)}


def get_schedule(name: str) -> Schedule:
    if name not in SCHEDULES:
        raise UserError(f"unknown schedule {name!r}: choose one of {', '.join(SCHEDULES)}")
    return SCHEDULES[name]()
