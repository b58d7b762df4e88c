"""Samplers for SEDD (Lou, Meng & Ermon, 2024): Euler and analytic (Tweedie tau-leaping) reverse steps.

Times run 1 = t_0 > t_1 > ... > t_steps = 0 on a uniform grid, one denoiser call per step:
  "sedd"           Euler steps: p(x_s^l = y | x_t) = dt sigma(t) Q(y -> x_t^l) s_theta(x_t)_{l,y} for y != x_t^l;
  "sedd_analytic"  analytic steps (sec. 4.2, eq. 19): p(x_s^l = y | x_t) ∝ [e^{-D Q} s_theta]_y e^{D Q}(x_t^l, y),
                   D = sigmabar(t) - sigmabar(s), exact for one token given the exact score;
and both end with the analytic step to clean data (sigmabar = 0) with [MASK] projected out, so no
[MASK] survives (the paper's final denoising step). Positions are updated independently in a step
(tau-leaping), which is exact only as steps grow. For absorb with the loglinear schedule the two
samplers coincide (both leave [MASK] with probability (t - s)/t) and equal MDLM's ancestral sampler.
The process computes the step probabilities (`SEDD.reverse_log_probs`); draws are float64 Gumbel-max.

Positions holding [MASK] in x are generated and start from the base distribution ([MASK] for absorb,
uniform tokens for uniform); every other position is fixed context and never changes. For absorb,
revealed tokens stay, rows with nothing left masked need no forward pass, and with a denoiser that
ignores t (the absorbing score needs no time input) a row that did not change reuses its last output.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..core.errors import UserError
from ..processes.sedd import SEDD
from .base import Frame, FrameRecorder, SampleResult, sample_categorical, store_rows


@dataclass
class SEDDEulerConfig:
    steps: int = 128  # denoiser calls; the last one is the final denoising step
    cache: bool = True  # reuse the output for unchanged rows, only when the denoiser ignores t


@dataclass
class SEDDAnalyticConfig:
    steps: int = 128
    cache: bool = True


def _run(model: nn.Module, process: SEDD, x: torch.Tensor, steps: int, cache: bool, method: str,
         generator: torch.Generator | None, record_frames: bool,
         on_step: Callable[[Frame], None] | None) -> SampleResult:
    if not isinstance(process, SEDD):
        raise UserError(f"the SEDD samplers need a SEDD process, got {type(process).__name__}")
    if not isinstance(steps, int) or steps <= 0:
        raise UserError(f"steps must be a positive integer, got {steps!r}")
    time_conditioned = bool(getattr(getattr(model, "cfg", None), "time_conditioning", True))
    use_cache = cache and not time_conditioned
    x = x.clone()
    todo = x == process.mask_id
    x[todo] = process.sample_base(int(todo.sum()), generator, x.device)
    ts = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64).tolist()
    recorder = FrameRecorder(record_frames, on_step)

    def emit(step: int, t: float) -> None:
        recorder(step, t, x)

    emit(0, 1.0)
    batch = x.shape[0]
    g: torch.Tensor | None = None  # the last parameterised output of every row, [B, L, V]
    stale = torch.ones(batch, dtype=torch.bool, device=x.device)
    nfe = 0
    for k in range(steps):
        t, s = ts[k], (ts[k + 1] if k < steps - 1 else None)  # the last step goes to clean data
        active = todo & process.moves(x)
        rows = active.any(dim=1)
        if rows.any():
            need = rows & stale if use_cache else rows
            if need.any():
                t_rows = torch.full((int(need.sum()),), t, dtype=torch.float64, device=x.device)
                g = store_rows(g, need, process.model_output(model, x[need], t_rows), batch)
                stale &= ~need
                nfe += 1
            logp = process.reverse_log_probs(g[active], x[active], t, s, method if s is not None else "analytic")
            new = sample_categorical(logp, generator)
            changed = torch.zeros_like(active).index_put((active,), new != x[active])
            x[active] = new
            stale |= changed.any(dim=1)
        emit(k + 1, 0.0 if s is None else s)
    return SampleResult(ids=x, nfe=nfe, frames=recorder.frames)


@torch.no_grad()
def sedd_euler_sample(model: nn.Module, process: SEDD, x: torch.Tensor, cfg: SEDDEulerConfig,
                      generator: torch.Generator | None = None, record_frames: bool = False,
                      on_step: Callable[[Frame], None] | None = None) -> SampleResult:
    """SEDD Euler sampler: x_s = x_t + dt * reverse rate, then a final analytic denoising step."""
    return _run(model, process, x, cfg.steps, cfg.cache, "euler", generator, record_frames, on_step)


@torch.no_grad()
def sedd_analytic_sample(model: nn.Module, process: SEDD, x: torch.Tensor, cfg: SEDDAnalyticConfig,
                         generator: torch.Generator | None = None, record_frames: bool = False,
                         on_step: Callable[[Frame], None] | None = None) -> SampleResult:
    """SEDD analytic sampler (Tweedie tau-leaping, eq. 19), ending with the denoising step."""
    return _run(model, process, x, cfg.steps, cfg.cache, "analytic", generator, record_frames, on_step)
