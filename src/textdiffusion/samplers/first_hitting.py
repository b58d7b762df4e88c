"""The first-hitting sampler for masked diffusion (Zheng et al., 2024, arXiv 2409.02908).

In MDLM's continuous-time reverse process each of the n masked tokens of x_t is revealed at its own
time, and these reveal times are i.i.d. given x_t: a token masked at t is still masked at s < t with
probability (1 - alpha(s)) / (1 - alpha(t)). So the first of the n tokens to be revealed is hit at the
time tau with P(tau <= s) = ((1 - alpha(s)) / (1 - alpha(t)))^n, which inverse-CDF sampling gives as

    1 - alpha(tau) = (1 - alpha(t)) * u^(1/n),   u ~ U(0, 1)   (float64),

and by symmetry that token is one of the n masked positions chosen uniformly at random. Its value is
drawn from p_theta(x0 | x_tau) at the time tau (nothing else changes between t and tau). Repeating
until no mask is left simulates the continuous-time process *exactly*, with exactly one token per
denoiser call: there is no same-step (factorised) reveal, so with the true posterior the output is
the data distribution itself. The time only matters to a time-conditioned denoiser; for a
time-agnostic one the sampler is "reveal a uniformly random masked position, one at a time".

Rows of a batch run on their own clocks: a row with n masks needs n forward passes and leaves the
batch when it has none left, so one forward pass covers the rows still active and `nfe` (the number
of batched calls) is the largest number of masks in a row. Fixed tokens (not [MASK] in x) are never
changed. Frames: one per reveal, with t the current time of row 0 (0 once row 0 is finished).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..processes.masked import MaskedDiffusion
from ..processes.schedules import Cosine, Linear, LogLinear, Schedule
from .base import Frame, FrameRecorder, SampleResult, check_sampling_args, sample_categorical, select_from_logits
from .cfg import guided


@dataclass
class FirstHittingConfig:
    temperature: float = 1.0
    top_p: float = 1.0
    cfg_scale: float = 0.0  # LLaDA's classifier-free guidance on the fixed tokens (samplers/cfg.py); 0: none


def time_at_alpha(schedule: Schedule, alpha: torch.Tensor | float) -> torch.Tensor:
    """The t in [0, 1] with schedule.alpha(t) = alpha, float64.

    Closed forms for the built-in schedules; any other (decreasing) schedule is inverted by
    bisection to float64 resolution. Values of alpha outside [alpha(1), alpha(0)] give t = 1 or 0.
    """
    a = torch.as_tensor(alpha, dtype=torch.float64)
    if isinstance(schedule, LogLinear):
        t = 1 - a
    elif isinstance(schedule, Cosine):
        t = (2 / math.pi) * torch.acos(a.clamp(-1.0, 1.0))
    elif isinstance(schedule, Linear):
        t = (-torch.log(a.clamp_min(1e-300)) - schedule.sigma_min) / (schedule.sigma_max - schedule.sigma_min)
    else:
        lo, hi = torch.zeros_like(a), torch.ones_like(a)
        for _ in range(64):  # 2^-64: below float64 resolution on [0, 1]
            mid = (lo + hi) / 2
            later = schedule.alpha(mid).double() > a  # alpha decreases, so the answer lies after mid
            lo, hi = torch.where(later, mid, lo), torch.where(later, hi, mid)
        ends = schedule.alpha(torch.tensor([0.0, 1.0], dtype=torch.float64)).double()
        t = torch.where(a >= ends[0], 0.0, torch.where(a <= ends[1], 1.0, (lo + hi) / 2))
    return t.clamp(0.0, 1.0)


def _next_masked_fraction(masked_fraction: torch.Tensor, n_masked: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """1 - alpha(tau) for the first of n i.i.d. reveal times after t: (1 - alpha(t)) u^(1/n)."""
    return masked_fraction * u ** (1.0 / n_masked.double())


def _choose_positions(masked: torch.Tensor, logits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One masked position per row, uniformly at random (the first-hitting token; `logits` are unused)."""
    keys = torch.rand(masked.shape, dtype=torch.float64, device=masked.device, generator=generator)
    return torch.where(masked, keys, -1.0).argmax(dim=1)


@torch.no_grad()
def first_hitting_sample(
    model: nn.Module,
    process: MaskedDiffusion,
    x: torch.Tensor,
    cfg: FirstHittingConfig,
    generator: torch.Generator | None = None,
    record_frames: bool = False,
    on_step: Callable[[Frame], None] | None = None,
) -> SampleResult:
    """First-hitting sampler: one exact continuous-time reveal per forward pass (Zheng et al., 2024)."""
    check_sampling_args(1, cfg.temperature, cfg.top_p)
    mask_id = process.mask_id
    model = guided(model, x, mask_id, cfg.cfg_scale)
    schedule = process.schedule
    x = x.clone()
    batch, device = x.shape[0], x.device
    masked = x == mask_id
    remaining = masked.sum(dim=1)  # masks left in each row
    start = 1 - float(schedule.alpha(torch.tensor(1.0, dtype=torch.float64)))
    masked_fraction = torch.full((batch,), start, dtype=torch.float64, device=device)  # 1 - alpha(t) per row
    times = torch.ones(batch, dtype=torch.float64, device=device)
    recorder = FrameRecorder(record_frames, on_step)
    recorder(0, 1.0, x)
    nfe = 0
    while bool((remaining > 0).any()):
        rows = (remaining > 0).nonzero().squeeze(1)
        row0_active = bool(rows[0] == 0)
        u = torch.rand(len(rows), dtype=torch.float64, device=device, generator=generator)
        masked_fraction[rows] = _next_masked_fraction(masked_fraction[rows], remaining[rows], u)
        times[rows] = time_at_alpha(schedule, 1 - masked_fraction[rows])
        # the denoiser sees x at the hitting time: nothing changed between the previous reveal and tau
        logits = model(x[rows], times[rows].float()).float()
        nfe += 1
        pos = _choose_positions(masked[rows], logits, generator)
        chosen = logits[torch.arange(len(rows), device=device), pos]
        chosen[:, mask_id] = float("-inf")  # [MASK] is never a value
        x[rows, pos] = sample_categorical(select_from_logits(chosen, cfg.temperature, cfg.top_p), generator)
        masked[rows, pos] = False
        remaining[rows] -= 1
        recorder(nfe, float(times[0]) if row0_active else 0.0, x)
    return SampleResult(ids=x, nfe=nfe, frames=recorder.frames)
