"""Gaussian diffusion math that more than one family uses: the signal levels abar_t of a noise schedule, the
posterior q(x_s | x_t, x_0) and the DDIM / ancestral reverse step. Tensors of any shape: Diffusion-LM's token
embeddings (gaussian.py), whole-sentence embeddings (concept.py).

Forward marginals q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) for levels t = 0..T."""

from __future__ import annotations

import math

import torch

from ..core.errors import UserError

NOISE_SCHEDULES = ("sqrt", "cosine", "linear")
MAX_BETA = 0.999  # the last levels' betas are clipped here, as in improved-diffusion (Nichol & Dhariwal, 2021)


def signal_levels(schedule: str, num_steps: int) -> torch.Tensor:
    """abar_t for levels t = 0..T, float64 [T + 1], strictly decreasing, in (0, 1).

    Level t sits at time u_t = (t + 1) / (T + 1) of a continuous curve g(u) with g(0) = 1; the betas
    beta_t = 1 - g(u_t) / g(u_{t-1}) (u_{-1} = 0) are clipped to MAX_BETA and abar_t = prod_{k<=t} (1 - beta_k).
      sqrt:   g(u) = 1 - sqrt(u + 1e-4)                   (Diffusion-LM, section 4.3)
      cosine: g(u) = cos^2(pi/2 (u + 0.008) / 1.008)      (Nichol & Dhariwal, 2021)
      linear: betas linear from 0.1 to 20 over T + 1 levels, divided by T + 1 (Ho et al. 2020 at T = 1000)
    """
    if schedule not in NOISE_SCHEDULES:
        raise UserError(f"unknown noise_schedule {schedule!r}: choose one of {', '.join(NOISE_SCHEDULES)}")
    n = num_steps + 1
    u = torch.arange(n + 1, dtype=torch.float64) / n  # u_{-1} = 0, u_0, ..., u_T = 1
    if schedule == "linear":
        betas = torch.linspace(0.1, 20.0, n, dtype=torch.float64) / n
    else:
        if schedule == "sqrt":
            g = 1 - torch.sqrt(u + 1e-4)
        else:
            g = torch.cos(0.5 * math.pi * (u + 0.008) / 1.008) ** 2
        betas = 1 - g[1:] / g[:-1]
        betas = torch.where(g[1:] > 0, betas, torch.ones_like(betas))  # g may reach or cross 0 at u = 1
    return torch.cumprod(1 - betas.clamp(0.0, MAX_BETA), dim=0)


def posterior(abar: torch.Tensor, s: int | torch.Tensor, t: int | torch.Tensor) -> tuple[torch.Tensor, ...]:
    """q(x_s | x_t, x_0) = N(a x_0 + b x_t, v I) for 0 <= s < t: (a, b, v), in abar's dtype.

    With abar_{t|s} = abar_t / abar_s: a = sqrt(abar_s) (1 - abar_{t|s}) / (1 - abar_t),
    b = sqrt(abar_{t|s}) (1 - abar_s) / (1 - abar_t), v = (1 - abar_{t|s}) (1 - abar_s) / (1 - abar_t)
    (Ho et al. 2020, eq. 7, over several steps)."""
    abar_s, abar_t = abar[s], abar[t]
    abar_ts = abar_t / abar_s
    a = abar_s.sqrt() * (1 - abar_ts) / (1 - abar_t)
    b = abar_ts.sqrt() * (1 - abar_s) / (1 - abar_t)
    v = (1 - abar_ts) * (1 - abar_s) / (1 - abar_t)
    return a, b, v


def ddim_step(abar: torch.Tensor, xt: torch.Tensor, x0_hat: torch.Tensor, t: int, s: int, eta: float,
              noise: torch.Tensor) -> torch.Tensor:
    """x_s from x_t and a prediction x0_hat of x_0, `noise` ~ N(0, I) shaped like xt:
        x_s = sqrt(abar_s) x0_hat + sqrt(1 - abar_s - sigma^2) epshat + sigma noise,
        epshat = (x_t - sqrt(abar_t) x0_hat) / sqrt(1 - abar_t),  sigma^2 = eta^2 v(s, t)
    (DDIM, Song et al. 2021, eq. 12). eta = 1 is exactly q(x_s | x_t, x_0 = x0_hat) (ancestral); eta = 0 is
    deterministic DDIM."""
    abar_t, abar_s = float(abar[t]), float(abar[s])
    var = eta * eta * float(posterior(abar, s, t)[2])
    eps_hat = (xt - math.sqrt(abar_t) * x0_hat) / math.sqrt(1 - abar_t)
    return math.sqrt(abar_s) * x0_hat + math.sqrt(max(1 - abar_s - var, 0.0)) * eps_hat + math.sqrt(var) * noise


def sampling_times(num_steps: int, steps: int | None = None) -> list[int]:
    """T = t_0 > t_1 > ... > t_n = 0: every level (None) or `steps` evenly strided ones (at most T)."""
    n = num_steps if steps is None else min(steps, num_steps)
    return [int(x) for x in torch.linspace(num_steps, 0, n + 1, dtype=torch.float64).round()]
