"""Infilling on held-out text: mask a span inside each window, then score and resample it.

Two numbers per span length:
- NLL of the true fill per token, given the context (a NELBO bound for diffusion models, which see
  both sides; exact for the autoregressive baseline, which sees only the left context);
- token accuracy of a sampled fill against the true one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.errors import UserError
from ..processes.likelihood import LikelihoodResult


@dataclass
class InfillResult:
    span: int  # tokens masked per window
    nll: LikelihoodResult  # of the true fill given its context, per fill token
    accuracy: float  # fraction of sampled fill tokens equal to the true ones
    n_examples: int
    sampler: str
    nfe: int  # forward passes for all fills
    seconds: float


def span_masks(n: int, length: int, span: int, seed: int = 0) -> torch.Tensor:
    """[n, length] bool, one span of `span` tokens per row, starting in the middle half of the window
    so that there is context on both sides."""
    if not 0 < span < length:
        raise UserError(f"an infill span must be from 1 to {length - 1} tokens, got {span}")
    free = length - span
    low, high = free // 4, max(free // 4 + 1, (3 * free) // 4 + 1)
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(low, high, (n,), generator=gen)
    pos = torch.arange(length)
    return (pos[None] >= starts[:, None]) & (pos[None] < starts[:, None] + span)


def evaluate_infill(pipe, chunks: torch.Tensor, span: int, seed: int = 0, t_samples: int = 8,
                    batch_size: int = 16, sampler: str | None = None, **sampler_options) -> InfillResult:
    """Mask one span of every chunk [N, L]; score the truth and sample a fill with `pipe`."""
    mask = span_masks(len(chunks), chunks.shape[1], span, seed)
    nll = pipe.likelihood(chunks, t_samples=t_samples, seed=seed, batch_size=batch_size, loss_mask=mask)
    gapped = torch.where(mask, torch.full_like(chunks, pipe.tokenizer.mask_id), chunks)
    correct, nfe, seconds = 0, 0, 0.0
    for start in range(0, len(chunks), batch_size):
        out = pipe.denoise(gapped[start : start + batch_size], sampler=sampler, seed=seed + start, **sampler_options)
        m = mask[start : start + batch_size]
        correct += int((out.ids[m] == chunks[start : start + batch_size][m]).sum())
        nfe, seconds = nfe + out.nfe, seconds + out.seconds
    name = sampler or pipe.process.default_sampler
    return InfillResult(span, nll, correct / int(mask.sum()), len(chunks), name, nfe, seconds)
