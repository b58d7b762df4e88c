"""Sampling a sentence-concept model (processes/concept.py): the next sentence's embedding by Gaussian reverse steps,
then the decoder (models/concept.py) writes it; repeated, a prompt is continued sentence by sentence.

`next_embedding`: h = the context tower's summary of the sentences so far; x_T ~ N(0, I); for T = t_0 > ... > t_n = 0
(`steps` evenly strided levels, or all T) one guided prediction x0_hat(x_t, t) and x_s = the process's reverse step
(eta = 1 ancestral, eta = 0 DDIM); the result is x_0 / sqrt(abar_0), the mean of x0 given level 0.
`continue_sentences`: as LCM, the generated embedding (not the re-encoded text) joins the context for the next one.
These do not fit the token samplers' signature (ids in, ids out), so they are not in the SAMPLERS registry.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..core.errors import UserError
from ..data.tokenizers import Tokenizer
from ..models.concept import ConceptDenoiser, SentenceDecoder
from ..processes import gaussian_math
from ..processes.concept import ConceptDiffusion, EmbeddingScaler


@dataclass
class ConceptSampleConfig:
    steps: int | None = 40  # reverse steps, evenly strided over the T levels (None: all T)
    eta: float = 1.0  # 1: ancestral (DDPM); 0: deterministic DDIM
    guidance: float = 1.0  # classifier-free guidance: 0 unconditional, 1 conditional, > 1 stronger
    temperature: float = 0.0  # the decoder's: 0 greedy


def check_config(cfg: ConceptSampleConfig) -> None:
    if cfg.steps is not None and (not isinstance(cfg.steps, int) or cfg.steps < 1):
        raise UserError(f"steps must be a positive integer (or None for every level), got {cfg.steps!r}")
    if not 0 <= cfg.eta <= 1:
        raise UserError(f"eta must be in [0, 1] (1: ancestral, 0: deterministic DDIM), got {cfg.eta!r}")
    if cfg.guidance < 0:
        raise UserError(f"guidance must be >= 0 (0: unconditional, 1: conditional), got {cfg.guidance!r}")
    if cfg.temperature < 0:
        raise UserError(f"temperature must be >= 0 (0: greedy), got {cfg.temperature!r}")


@torch.no_grad()
def next_embedding(denoiser: ConceptDenoiser, process: ConceptDiffusion, context: torch.Tensor,
                   cfg: ConceptSampleConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """The next sentence's standardised embedding [B, E] after `context` [B, n, E] (n >= 0, standardised)."""
    check_config(cfg)
    keep = denoiser.cfg.context - 1  # the most sentences the context tower reads: the latest ones
    h = denoiser.context_states(context[:, max(context.shape[1] - keep, 0):])[:, -1]
    shape = (context.shape[0], context.shape[2])
    x = torch.randn(shape, generator=generator, device=context.device)
    times = gaussian_math.sampling_times(process.num_steps, cfg.steps)
    for t, s in zip(times[:-1], times[1:]):
        x0_hat = process.predict(denoiser, h, x, t, cfg.guidance)
        x = process.reverse_step(x0_hat, x, t, s, cfg.eta, torch.randn(shape, generator=generator,
                                                                       device=context.device))
    return x / math.sqrt(float(process.abar[0]))


def decode_sentences(decoder: SentenceDecoder, tokenizer: Tokenizer, x: torch.Tensor, temperature: float = 0.0,
                     generator: torch.Generator | None = None) -> list[str]:
    """The decoder's sentence for each standardised embedding [B, E]."""
    rows = decoder.generate(x, tokenizer.eos_id, temperature, generator)
    return [tokenizer.decode(row, mask_char=None) for row in rows]


@torch.no_grad()
def continue_sentences(prompts: Sequence[Sequence[str]], n: int, encode: Callable[[list[str]], torch.Tensor],
                       scaler: EmbeddingScaler, denoiser: ConceptDenoiser, decoder: SentenceDecoder,
                       tokenizer: Tokenizer, process: ConceptDiffusion, cfg: ConceptSampleConfig,
                       generator: torch.Generator | None = None) -> tuple[list[list[str]], torch.Tensor]:
    """`n` new sentences after each prompt (lists of sentences, all of one length), and their generated embeddings
    [B, n, E] in the encoder's space. `encode` maps sentences to the frozen encoder's vectors [len, E]."""
    if n < 1:
        raise UserError(f"the number of sentences to write must be >= 1, got {n!r}")
    lengths = {len(p) for p in prompts}
    if not prompts or len(lengths) != 1:
        raise UserError("continue prompts in batches of one length (the same number of sentences each)")
    per = lengths.pop()
    device = next(denoiser.parameters()).device
    if per:
        flat = encode([s for p in prompts for s in p]).to(device)
        context = scaler(flat).view(len(prompts), per, -1)
    else:
        context = torch.zeros(len(prompts), 0, denoiser.cfg.embed_dim, device=device)
    written: list[list[str]] = [[] for _ in prompts]
    generated = []
    for _ in range(n):
        x = next_embedding(denoiser, process, context, cfg, generator)
        for row, text in zip(written, decode_sentences(decoder, tokenizer, x, cfg.temperature, generator)):
            row.append(text)
        generated.append(scaler.inverse(x))
        context = torch.cat([context, x[:, None]], dim=1)
    return written, torch.stack(generated, dim=1)
