"""Noise schedules for masked (absorbing) diffusion, written as the keep-probability alpha(t).

alpha(0) = 1 (clean data) and alpha(1) = 0 (everything masked), decreasing in between. The
continuous-time NELBO weight is -alpha'(t) / (1 - alpha(t)) (MDLM, Sahoo et al. 2024, eq. 10).
"""

from __future__ import annotations

import math

import torch

from ..core.errors import UserError


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


class MD4Cosine(Schedule):
    """alpha(t) = 1 - cos(pi/2 (1 - t)) = 1 - sin(pi t / 2): MD4's cosine schedule (Shi et al. 2024, arXiv
    2406.04329, as its reference code's `cosine` MaskingSchedule; that code also squeezes alpha into [eps, 1 - eps],
    which we omit: t_min plays its part). Masks fast early (1 - alpha ~ pi t / 2), unlike `cosine`."""

    name = "md4-cosine"

    def alpha(self, t):
        return 1 - torch.sin(0.5 * math.pi * t)  # sin form: exact at both ends (alpha(1) = 0, no prior term)

    def alpha_prime(self, t):
        return -0.5 * math.pi * self._cos(t)

    def nelbo_weight(self, t):
        # -alpha'/(1 - alpha) = (pi/2) cot(pi t / 2): ~1/t at 0 (as loglinear), 0 at 1; no 1 - (1 - x) cancellation
        return 0.5 * math.pi * self._cos(t) / torch.sin(0.5 * math.pi * t).clamp_min(1e-12)

    @staticmethod
    def _cos(t):
        # cos(pi t / 2) >= 0 on [0, 1]; float32 pi/2 rounds up, so cos(pi/2) would come out -4e-8
        return torch.cos(0.5 * math.pi * t).clamp_min(0)


SCHEDULES = {cls.name: cls for cls in (LogLinear, Cosine, Linear, MD4Cosine)}


def get_schedule(name: str) -> Schedule:
    if name not in SCHEDULES:
        raise UserError(f"unknown schedule {name!r}: choose one of {', '.join(SCHEDULES)}")
    return SCHEDULES[name]()
