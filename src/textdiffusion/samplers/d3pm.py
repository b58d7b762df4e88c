"""Ancestral sampling for D3PM (Austin et al., 2021): x_T ~ prior, then x_s ~ p(x_s | x_t) down to x_0.

Each step calls the denoiser once for p~(x0 | x_t), applies temperature / top-p to that x0
prediction, and draws every generated token from
    p(x_s | x_t) = sum_x0 q(x_s | x_t, x0) p~(x0 | x_t)        (see processes/d3pm.py)
in float64. `steps=None` visits all T times; fewer steps use evenly strided times t > s and the
multi-step posterior q(x_s | x_t, x0) between them, Q_{s->t} = Q_{s+1} ... Q_t (exact for the forward
process; the factorised reverse is then coarser, as with any few-step sampler).

Positions holding [MASK] in x are generated: they start from the prior (uniform tokens for uniform
and embedding, [MASK] for absorbing). All other positions are fixed context and never change. For
absorbing, tokens that are already revealed stay as they are, and rows with nothing left masked need
no forward pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..core.errors import UserError
from ..processes.d3pm import D3PM
from .base import Frame, SampleResult, check_sampling_args, sample_categorical, select_from_logits


@dataclass
class D3PMConfig:
    steps: int | None = None  # None: all T steps; fewer: evenly strided times (more than T: all T)
    temperature: float = 1.0  # applied to the x0 prediction
    top_p: float = 1.0


@torch.no_grad()
def d3pm_sample(model: nn.Module, process: D3PM, x: torch.Tensor, cfg: D3PMConfig,
                generator: torch.Generator | None = None, record_frames: bool = False,
                on_step: Callable[[Frame], None] | None = None) -> SampleResult:
    """Denoise `x` ([B, L]; [MASK] where text is to be generated, fixed tokens elsewhere)."""
    if not isinstance(process, D3PM):
        raise UserError(f"the d3pm sampler needs a D3PM process, got {type(process).__name__}")
    check_sampling_args(process.num_steps if cfg.steps is None else cfg.steps, cfg.temperature, cfg.top_p)
    mask_id, big_t = process.mask_id, process.num_steps
    times = process.sampling_times(cfg.steps)
    x = x.clone()
    todo = x == mask_id
    x[todo] = process.sample_prior(int(todo.sum()), generator, x.device)
    frames: list[Frame] = []

    def emit(step: int, t: int) -> None:
        frame = Frame(step=step, t=t / big_t, ids=x.detach().cpu().clone())
        if record_frames:
            frames.append(frame)
        if on_step is not None:
            on_step(frame)

    emit(0, big_t)
    nfe = 0
    for k in range(len(times) - 1):
        t, s = times[k], times[k + 1]
        active = todo & (x == mask_id) if process.transition == "absorbing" else todo
        rows = active.any(dim=1)
        if rows.any():
            xr = x[rows]
            logits = model(xr, torch.full((xr.shape[0],), t / big_t, device=x.device)).float()
            nfe += 1
            logits[..., mask_id] = float("-inf")
            sel = active[rows]
            log_x0 = select_from_logits(logits[sel], cfg.temperature, cfg.top_p)  # float64
            n = log_x0.shape[0]
            t_vec = torch.full((n,), t, dtype=torch.long, device=x.device)
            s_vec = torch.full((n,), s, dtype=torch.long, device=x.device)
            log_post = process.reverse_log_probs(log_x0, xr[sel], s_vec, t_vec)
            xr[sel] = sample_categorical(log_post, generator)
            x[rows] = xr
        emit(k + 1, s)
    return SampleResult(ids=x, nfe=nfe, frames=frames)
