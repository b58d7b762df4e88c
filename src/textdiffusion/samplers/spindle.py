"""Ancestral sampling for the spindle schedule (processes/spindle.py): one schedule per token value.

From t to s < t a masked position becomes token j with probability mu(j) (alpha_j(s) - alpha_j(t)) /
(1 - alpha_j(t)), mu = p_theta(x0 | x_t), and stays masked otherwise: the mixture over x0 of the forward
posterior q(x_s | x_t, x0) (GenMD4, Shi et al. 2024, Sec. 6; DiffusionBERT samples the same way). It is drawn
as: x0_hat ~ mu, then keep x0_hat with its own token's probability. For the exact posterior mu this is the exact
reverse law of each position; positions are drawn independently given x_t, as in MDLM's sampler. Tokens with
more information were masked earlier, so they are revealed later: frequent tokens come first. The last step
(s = 0, alpha = 1) reveals every remaining token. Fixed tokens (infilling) are never changed; the cache reuses
a row's logits while it is unchanged and the denoiser does not read t (as samplers/mdlm.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..core.errors import UserError
from ..processes.spindle import SpindleMaskedDiffusion
from .base import (
    Frame,
    FrameRecorder,
    SampleResult,
    check_sampling_args,
    sample_categorical,
    select_from_logits,
    store_rows,
)


@dataclass
class SpindleConfig:
    steps: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    cache: bool = True  # used only when the denoiser is not time-conditioned


def spindle_step(process: SpindleMaskedDiffusion, logits: torch.Tensor, x: torch.Tensor, t: float, s: float,
                 generator: torch.Generator | None = None, temperature: float = 1.0,
                 top_p: float = 1.0) -> torch.Tensor:
    """One reverse step t -> s of `x` [B, L] given the denoiser's `logits` [B, L, V] at x: the new x (a copy)."""
    masked = x == process.mask_id
    x = x.clone()
    if not masked.any():
        return x
    chosen = logits[masked].double()
    chosen[:, process.mask_id] = float("-inf")
    guess = sample_categorical(select_from_logits(chosen, temperature, top_p), generator)  # x0_hat ~ mu
    keep = process.keep_probs(t, s, x.device)[guess]
    u = torch.rand(guess.shape, dtype=torch.float64, device=x.device, generator=generator)
    rows = masked.nonzero(as_tuple=True)
    reveal = u < keep
    x[rows[0][reveal], rows[1][reveal]] = guess[reveal]
    return x


@torch.no_grad()
def spindle_sample(model: nn.Module, process: SpindleMaskedDiffusion, x: torch.Tensor, cfg: SpindleConfig,
                   generator: torch.Generator | None = None, record_frames: bool = False,
                   on_step: Callable[[Frame], None] | None = None) -> SampleResult:
    """Denoise `x` ([B, L]; [MASK] where text is to be generated, fixed tokens elsewhere)."""
    if not isinstance(process, SpindleMaskedDiffusion):
        raise UserError(f"sampler 'spindle' runs masked-spindle models (one schedule per token); this one is "
                        f"{process.name!r}: use its own default sampler")
    check_sampling_args(cfg.steps, cfg.temperature, cfg.top_p)
    time_conditioned = bool(getattr(getattr(model, "cfg", None), "time_conditioning", True))
    use_cache = cfg.cache and not time_conditioned
    x = x.clone()
    ts = torch.linspace(1.0, 0.0, cfg.steps + 1, dtype=torch.float64).tolist()
    ts[-1] = 0.0
    recorder = FrameRecorder(record_frames, on_step)
    recorder(0, 1.0, x)
    batch = x.shape[0]
    logits: torch.Tensor | None = None
    stale = torch.ones(batch, dtype=torch.bool, device=x.device)  # rows changed since their last pass
    nfe = 0
    for k in range(cfg.steps):
        masked = x == process.mask_id
        if masked.any():
            need = masked.any(dim=1) & (stale if use_cache else torch.ones_like(stale))
            if need.any():
                t_rows = torch.full((int(need.sum()),), ts[k], device=x.device)
                logits = store_rows(logits, need, model(x[need], t_rows).float(), batch)
                stale &= ~need
                nfe += 1
            new = spindle_step(process, logits, x, ts[k], ts[k + 1], generator, cfg.temperature, cfg.top_p)
            stale |= (new != x).any(dim=1)
            x = new
        recorder(k + 1, ts[k + 1], x)
    return SampleResult(ids=x, nfe=nfe, frames=recorder.frames)
