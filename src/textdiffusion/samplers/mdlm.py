"""MDLM ancestral sampling (Sahoo et al., 2024, eq. 7), with the caching trick and infilling.

From t to s < t, each masked token is unmasked with probability (alpha_s - alpha_t)/(1 - alpha_t),
taking a value drawn from p_theta(x0 | x_t); unmasked tokens never change (SUBS). Fixed tokens of
an infilling prompt are simply unmasked from the start, so they are never resampled.

Caching: when no token of a sequence was unmasked in a step, that x_t did not change, so a
denoiser that does not look at t would return the same distribution: reuse it instead of calling
the model again. This is done per sequence, so a batch only recomputes the rows that changed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..processes.masked import MaskedDiffusion
from .base import (
    Frame,
    FrameRecorder,
    SampleResult,
    check_sampling_args,
    sample_categorical,
    select_from_logits,
    store_rows,
)
from .cfg import guided


@dataclass
class AncestralConfig:
    steps: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    cache: bool = True  # used only when the denoiser is not time-conditioned
    cfg_scale: float = 0.0  # LLaDA's classifier-free guidance on the fixed tokens (samplers/cfg.py); 0: none


@torch.no_grad()
def ancestral_sample(model: nn.Module, process: MaskedDiffusion, x: torch.Tensor, cfg: AncestralConfig,
                     generator: torch.Generator | None = None, record_frames: bool = False,
                     on_step: Callable[[Frame], None] | None = None) -> SampleResult:
    """Denoise `x` ([B, L]; [MASK] where text is to be generated, fixed tokens elsewhere)."""
    check_sampling_args(cfg.steps, cfg.temperature, cfg.top_p)
    mask_id = process.mask_id
    model = guided(model, x, mask_id, cfg.cfg_scale)
    time_conditioned = bool(getattr(getattr(model, "cfg", None), "time_conditioning", True))
    use_cache = cfg.cache and not time_conditioned
    x = x.clone()
    ts = torch.linspace(1.0, 0.0, cfg.steps + 1, dtype=torch.float64)
    alphas = process.schedule.alpha(ts)
    alphas[-1] = 1.0  # the last step reveals every remaining token, whatever the schedule's alpha(0)
    recorder = FrameRecorder(record_frames, on_step)

    def emit(step: int, t: float) -> None:
        recorder(step, t, x)

    emit(0, 1.0)
    batch = x.shape[0]
    logits: torch.Tensor | None = None  # the denoiser's last output for every row, [B, L, V]
    stale = torch.ones(batch, dtype=torch.bool, device=x.device)  # rows changed since their last pass
    nfe = 0
    for k in range(cfg.steps):
        masked = x == mask_id
        if not masked.any():  # finished early: nothing left to reveal, no forward pass needed
            emit(k + 1, float(ts[k + 1]))
            continue
        # Rows with nothing left to reveal never need the model again; with the cache, neither do
        # rows that did not change since their last forward pass.
        need = masked.any(dim=1) & (stale if use_cache else torch.ones_like(stale))
        if need.any():
            t_rows = torch.full((int(need.sum()),), float(ts[k]), device=x.device)
            logits = store_rows(logits, need, model(x[need], t_rows).float(), batch)
            stale &= ~need
            nfe += 1
        p_unmask = float((alphas[k + 1] - alphas[k]) / (1 - alphas[k]))
        u = torch.rand(x.shape, dtype=torch.float64, device=x.device, generator=generator)
        unmask = masked & (u < p_unmask)
        if unmask.any():
            chosen = logits[unmask]
            chosen[:, mask_id] = float("-inf")
            x[unmask] = sample_categorical(select_from_logits(chosen, cfg.temperature, cfg.top_p), generator)
            stale |= unmask.any(dim=1)
        emit(k + 1, float(ts[k + 1]))
    return SampleResult(ids=x, nfe=nfe, frames=recorder.frames)
