"""Likelihood bounds on held-out chunks: Monte Carlo over t, fixed seeds, mean +- standard error."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from .base import DiffusionProcess


@dataclass
class LikelihoodResult:
    nats_per_token: float  # NELBO (an upper bound on the NLL) per token
    stderr: float  # standard error of that mean over the Monte Carlo samples
    n_tokens: int
    t_samples: int  # independent (t, mask) draws per sequence
    exact: bool = False  # the exact NLL (autoregressive), not a bound: t_samples is then 1

    @property
    def perplexity(self) -> float:
        return math.exp(self.nats_per_token)

    @property
    def bits_per_token(self) -> float:
        return self.nats_per_token / math.log(2)


def _draws(model: nn.Module, process: DiffusionProcess, chunks: torch.Tensor, t_samples: int, batch_size: int,
           seed: int, loss_mask: torch.Tensor | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(NELBO of each sequence of a batch in nats, its scored tokens) per batch and Monte Carlo draw:
    every draw of batch 0, then of batch 1, ..."""
    device = next(model.parameters()).device
    gen = torch.Generator(device="cpu").manual_seed(seed)
    for start in range(0, len(chunks), batch_size):
        x0 = chunks[start : start + batch_size]
        m = None if loss_mask is None else loss_mask[start : start + batch_size]
        counted = torch.full((len(x0),), x0.shape[1]) if m is None else m.sum(1)
        for _ in range(t_samples):
            noise = {k: v.to(device) for k, v in process.sample_noise(x0, gen).items()}
            out = process.nelbo_per_sequence(model, x0.to(device), noise,
                                             None if m is None else m.to(device))
            yield out.double().cpu(), counted.double()


@torch.no_grad()
def nelbo_samples(model: nn.Module, process: DiffusionProcess, chunks: torch.Tensor, t_samples: int = 4,
                  batch_size: int = 16, seed: int = 0, loss_mask: torch.Tensor | None = None,
                  on_draw: Callable[[], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The draws `nelbo` averages, one column per chunk: (values [t_samples, N] in nats per sequence,
    scored tokens [N]). For an estimate per chunk, e.g. the windows of a long text scored in batches.
    A process with an exact likelihood is evaluated once (t_samples becomes 1). `on_draw()` runs after each
    draw of each batch (progress for a caller whose batches take minutes)."""
    if process.exact_likelihood:
        t_samples = 1
    was_training = model.training
    model.eval()
    draws = []
    for draw in _draws(model, process, chunks, t_samples, batch_size, seed, loss_mask):
        draws.append(draw)
        if on_draw is not None:
            on_draw()
    model.train(was_training)
    batches = [draws[i : i + t_samples] for i in range(0, len(draws), t_samples)]
    values = torch.cat([torch.stack([v for v, _ in batch]) for batch in batches], dim=1)
    return values, torch.cat([batch[0][1] for batch in batches])


@torch.no_grad()
def nelbo(model: nn.Module, process: DiffusionProcess, chunks: torch.Tensor, t_samples: int = 4,
          batch_size: int = 16, seed: int = 0, loss_mask: torch.Tensor | None = None) -> LikelihoodResult:
    """Average the process's per-token bound over `chunks` [N, L], with `t_samples` draws each.

    Each batch is evaluated `t_samples` times with fresh stratified t; the standard error is taken
    across those per-sequence estimates. A process with an exact likelihood is evaluated once.
    """
    if process.exact_likelihood:
        t_samples = 1
    was_training = model.training
    model.eval()
    per_seq: list[torch.Tensor] = []
    lengths: list[torch.Tensor] = []
    for out, counted in _draws(model, process, chunks, t_samples, batch_size, seed, loss_mask):
        per_seq.append(out)
        lengths.append(counted)
    model.train(was_training)
    values, counts = torch.cat(per_seq), torch.cat(lengths)
    total_tokens = counts.sum() / t_samples
    mean = values.sum() / (t_samples * total_tokens)
    # ratio estimator: per-sequence contributions scaled to per-token units
    contrib = values / counts.mean()
    stderr = contrib.std(unbiased=True) / math.sqrt(len(contrib)) if len(contrib) > 1 else float("nan")
    return LikelihoodResult(float(mean), float(stderr), int(total_tokens), t_samples, process.exact_likelihood)
