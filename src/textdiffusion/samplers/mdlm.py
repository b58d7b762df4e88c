"""MDLM ancestral sampling (Sahoo et al., 2024, eq. 7), with the caching trick and infilling.

From t to s < t, each masked token is unmasked with probability (alpha_s - alpha_t)/(1 - alpha_t),
taking a value drawn from p_theta(x0 | x_t); unmasked tokens never change (SUBS). Fixed tokens of
an infilling prompt are simply unmasked from the start, so they are never resampled.

Caching: when no token was unmasked in a step, x_t did not change, so a denoiser that does not
look at t would return the same distribution: reuse it instead of calling the model again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..processes.masked import MaskedDiffusion
from .base import Frame, SampleResult, check_sampling_args, sample_categorical, select_from_logits


@dataclass
class AncestralConfig:
    steps: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    cache: bool = True  # used only when the denoiser is not time-conditioned


@torch.no_grad()
def ancestral_sample(model: nn.Module, process: MaskedDiffusion, x: torch.Tensor, cfg: AncestralConfig,
                     generator: torch.Generator | None = None, record_frames: bool = False,
                     on_step: Callable[[Frame], None] | None = None) -> SampleResult:
    """Denoise `x` ([B, L]; [MASK] where text is to be generated, fixed tokens elsewhere)."""
    check_sampling_args(cfg.steps, cfg.temperature, cfg.top_p)
    mask_id = process.mask_id
    time_conditioned = bool(getattr(getattr(model, "cfg", None), "time_conditioning", True))
    use_cache = cfg.cache and not time_conditioned
    x = x.clone()
    ts = torch.linspace(1.0, 0.0, cfg.steps + 1, dtype=torch.float64)
    alphas = process.schedule.alpha(ts)
    alphas[-1] = 1.0  # the last step reveals every remaining token, whatever the schedule's alpha(0)
    frames: list[Frame] = []

    def emit(step: int, t: float) -> None:
        frame = Frame(step=step, t=t, ids=x.detach().cpu().clone())
        if record_frames:
            frames.append(frame)
        if on_step is not None:
            on_step(frame)

    emit(0, 1.0)
    logp, nfe = None, 0
    for k in range(cfg.steps):
        masked = x == mask_id
        if not masked.any():
            break
        if logp is None or not use_cache:
            t_batch = torch.full((x.shape[0],), float(ts[k]), device=x.device)
            logits = model(x, t_batch).float()
            logits[..., mask_id] = float("-inf")
            logp = select_from_logits(logits, cfg.temperature, cfg.top_p)
            nfe += 1
        p_unmask = float((alphas[k + 1] - alphas[k]) / (1 - alphas[k]))
        u = torch.rand(x.shape, dtype=torch.float64, device=x.device, generator=generator)
        unmask = masked & (u < p_unmask)
        if unmask.any():
            x[unmask] = sample_categorical(logp[unmask], generator)
            logp = None  # x_t changed: the cached distribution is stale
        emit(k + 1, float(ts[k + 1]))
    return SampleResult(ids=x, nfe=nfe, frames=frames)
