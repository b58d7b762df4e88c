"""SEDD's noise schedules: the total noise sigmabar(t) and its rate sigma(t) = d sigmabar / dt, in float64.

The forward process is p_{t|0} = exp(sigmabar(t) Q) (see `sedd.py`), with (`noise`):
  loglinear  sigmabar(t) = -log(1 - (1 - eps) t)             (sigma = (1 - eps) / (1 - (1 - eps) t))
  geometric  sigmabar(t) = sigma_min^(1-t) sigma_max^t         (sigma = sigmabar log(sigma_max / sigma_min))
"""

from __future__ import annotations

import math

import torch

from ..core.errors import UserError


class LogLinearNoise:
    """sigmabar(t) = -log(1 - (1 - eps) t): 1 - e^-sigmabar = (1 - eps) t grows linearly (the paper's default)."""

    name = "loglinear"

    def __init__(self, eps: float):
        if not 0 <= eps < 1:
            raise UserError(f"eps must be in [0, 1) (sigmabar(1) = -log eps), got {eps}")
        self.eps = float(eps)

    def total(self, t: torch.Tensor) -> torch.Tensor:
        return -torch.log1p(-(1 - self.eps) * t)

    def rate(self, t: torch.Tensor) -> torch.Tensor:
        return (1 - self.eps) / (1 - (1 - self.eps) * t)

    def log_expm1_total(self, t: torch.Tensor) -> torch.Tensor:
        """log(e^sigmabar(t) - 1) = log((1 - eps) t / (1 - (1 - eps) t))."""
        return torch.log((1 - self.eps) * t) - torch.log1p(-(1 - self.eps) * t)

    def log_rate_over_expm1(self, t: torch.Tensor) -> torch.Tensor:
        """log(sigma(t) / (e^sigmabar(t) - 1)) = -log t exactly, for every eps (finite even at t = 1, eps = 0)."""
        return -torch.log(t)

    def log_expm1_ratio(self, t: torch.Tensor, s: torch.Tensor | None) -> torch.Tensor:
        """log((e^(sigmabar_t - sigmabar_s) - 1) / (e^sigmabar_t - 1)) = log((t - s) / t); s None: clean data."""
        return torch.zeros_like(t) if s is None else torch.log(t - s) - torch.log(t)

    def delta(self, t: torch.Tensor, s: torch.Tensor | None) -> torch.Tensor:
        """sigmabar(t) - sigmabar(s); s None means clean data (sigmabar = 0)."""
        return self.total(t) if s is None else torch.log1p(-(1 - self.eps) * s) - torch.log1p(-(1 - self.eps) * t)

    def config(self) -> dict:
        return {"eps": self.eps}


class GeometricNoise:
    """sigmabar(t) = sigma_min^(1-t) sigma_max^t (the paper's schedule for its uniform models)."""

    name = "geometric"

    def __init__(self, sigma_min: float, sigma_max: float):
        if not 0 < sigma_min < sigma_max:
            raise UserError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.log_min, self.log_ratio = math.log(sigma_min), math.log(sigma_max / sigma_min)

    def total(self, t: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.log_min + t * self.log_ratio)

    def rate(self, t: torch.Tensor) -> torch.Tensor:
        return self.total(t) * self.log_ratio

    def log_expm1_total(self, t: torch.Tensor) -> torch.Tensor:
        return torch.log(torch.expm1(self.total(t)))

    def log_rate_over_expm1(self, t: torch.Tensor) -> torch.Tensor:
        return torch.log(self.rate(t)) - self.log_expm1_total(t)

    def log_expm1_ratio(self, t: torch.Tensor, s: torch.Tensor | None) -> torch.Tensor:
        if s is None:
            return torch.zeros_like(t)
        return torch.log(torch.expm1(self.delta(t, s))) - self.log_expm1_total(t)

    def delta(self, t: torch.Tensor, s: torch.Tensor | None) -> torch.Tensor:
        return self.total(t) if s is None else self.total(t) - self.total(s)

    def config(self) -> dict:
        return {"sigma_min": self.sigma_min, "sigma_max": self.sigma_max}
