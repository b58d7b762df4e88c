"""What every sampler shares: float64 categorical draws, temperature / top-p, frames."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..errors import UserError


@dataclass
class Frame:
    """The state of the sequence after `step` of `steps` reverse steps, at noise level t."""

    step: int
    t: float
    ids: torch.Tensor  # [B, L], on the CPU


class FrameRecorder:
    """Snapshots of the sequence as a sampler runs: kept for the filmstrip and/or passed to a callback."""

    def __init__(self, record: bool, on_step: Callable[[Frame], None] | None):
        self.record, self.on_step = record, on_step
        self.frames: list[Frame] = []

    def __call__(self, step: int, t: float, x: torch.Tensor) -> None:
        if not self.record and self.on_step is None:
            return
        frame = Frame(step=step, t=float(t), ids=x.detach().cpu().clone())
        if self.record:
            self.frames.append(frame)
        if self.on_step is not None:
            self.on_step(frame)


@dataclass
class SampleResult:
    ids: torch.Tensor  # [B, L]
    nfe: int  # number of denoiser forward passes
    frames: list[Frame] = field(default_factory=list)


def store_rows(store: torch.Tensor | None, rows: torch.Tensor | None, out: torch.Tensor, batch: int) -> torch.Tensor:
    """Keep each row's latest denoiser output: write `out` (the outputs of `rows`, a bool mask or an index
    over the batch; None = every row) into `store` ([batch, ...], allocated on first use) and return it.

    Samplers recompute only rows whose input changed and reuse the rest (MDLM's caching trick)."""
    if store is None:  # zeros, not empty: rows never computed must still hold finite numbers
        store = torch.zeros((batch, *out.shape[1:]), dtype=out.dtype, device=out.device)
    if rows is None:
        store.copy_(out)
    else:
        store[rows] = out
    return store


def check_sampling_args(steps: int, temperature: float, top_p: float) -> None:
    if not isinstance(steps, int) or steps <= 0:
        raise UserError(f"steps must be a positive integer, got {steps!r}")
    if temperature < 0:
        raise UserError(f"temperature must be >= 0 (0 means greedy), got {temperature}")
    if not 0 < top_p <= 1:
        raise UserError(f"top_p must be in (0, 1], got {top_p}")


def select_from_logits(logits: torch.Tensor, temperature: float = 1.0, top_p: float = 1.0) -> torch.Tensor:
    """Logits -> float64 log-probabilities after temperature and nucleus (top-p) truncation.

    temperature 0 gives a point mass on the argmax.
    """
    logits = logits.double()
    if temperature == 0:
        return torch.where(
            torch.arange(logits.shape[-1], device=logits.device) == logits.argmax(-1, keepdim=True),
            0.0, float("-inf")).double()
    logp = torch.log_softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_logp, order = logp.sort(dim=-1, descending=True)
        mass_before = sorted_logp.exp().cumsum(-1) - sorted_logp.exp()
        drop_sorted = mass_before >= top_p  # keep the smallest prefix whose mass reaches top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logp = torch.log_softmax(logp.masked_fill(drop, float("-inf")), dim=-1)
    return logp


def sample_categorical(logp: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Gumbel-max draw from log-probabilities, with float64 noise.

    float32 Gumbel noise truncates the tail and lowers sample entropy (the MDLM sampler bug that
    ReMDM, BD3-LM and DUO later fixed).
    """
    u = torch.rand(logp.shape, dtype=torch.float64, device=logp.device, generator=generator)
    gumbel = -torch.log(-torch.log(u.clamp_min(torch.finfo(torch.float64).tiny)))
    return (logp.double() + gumbel).argmax(dim=-1)
