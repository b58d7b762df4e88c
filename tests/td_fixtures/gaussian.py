"""Test fixtures: Gaussian (Diffusion-LM) toys and pipelines."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from textdiffusion.api.pipeline import Pipeline
from textdiffusion.data.tokenizers import ByteTokenizer
from textdiffusion.models import ModelConfig, Transformer
from textdiffusion.processes.gaussian import GaussianDiffusion

from .exact_analytic import N_VALUES, VOCAB, all_sequences

# =====================================================================================================================
# fixtures `gaussian_toy`, `gaussian_pipeline`
#
# An exact x0-predictor for continuous embedding diffusion on the tiny vocabulary of `tiny_exact`.
#
# Tokens 0..2 have fixed embeddings e_w (3 * one-hot, far apart next to the rounding noise); [MASK] = 3 has
# the zero vector. For a known law p_data over all 3**L sequences, `ExactEmbeddingDenoiser` returns
# E[z_l | x_t] under the forward process: the posterior over sequences
#     p(s | x_t) ∝ p_data(s) prod_l N(x_t,l; sqrt(abar_t) e_{s_l}, (1 - abar_t) I),
# restricted to the sequences that agree with `fixed` context tokens (whose inputs are their clean embeddings),
# then zhat_l = sum_s p(s | x_t) e_{s_l}. It is the best possible network, so what the sampler and the bound
# do with it can be checked against p_data itself.
# =====================================================================================================================


EMBED_DIM = 3
SCALE = 3.0


def toy_table() -> torch.Tensor:
    table = torch.zeros(VOCAB, EMBED_DIM)
    table[:N_VALUES] = SCALE * torch.eye(N_VALUES, EMBED_DIM)
    return table


def toy_process(num_steps: int, schedule: str = "sqrt") -> GaussianDiffusion:
    return GaussianDiffusion(vocab_size=VOCAB, mask_id=N_VALUES, noise_schedule=schedule, num_steps=num_steps,
                             embed_dim=EMBED_DIM)


@dataclass
class _GaussianCfg:
    embed_dim: int = EMBED_DIM
    time_conditioning: bool = True


class ExactEmbeddingDenoiser(nn.Module):
    def __init__(self, process: GaussianDiffusion, p_data: torch.Tensor, length: int,
                 fixed: dict[int, int] | None = None):
        super().__init__()
        self.process, self.cfg = process, _GaussianCfg()
        self.embed = nn.Embedding(VOCAB, EMBED_DIM)
        with torch.no_grad():
            self.embed.weight.copy_(toy_table())
        seqs = all_sequences(N_VALUES, length)
        ok = torch.ones(len(seqs), dtype=torch.bool)
        for pos, tok in (fixed or {}).items():
            ok &= seqs[:, pos] == tok
        self.log_prior = torch.where(ok, p_data.log(), torch.full_like(p_data, float("-inf")))
        self.seq_embeddings = toy_table().double()[seqs]  # [S, L, d]
        self.calls = 0

    def forward(self, xt: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        level = (u.double() * self.process.num_steps).round().long()
        abar = self.process.abar[level][:, None, None, None]  # [B, 1, 1, 1]
        means = abar.sqrt() * self.seq_embeddings[None]  # [B, S, L, d]
        sq = (xt.double()[:, None] - means).pow(2).sum(-1).sum(-1)  # [B, S]
        log_post = self.log_prior[None] - sq / (2 * (1 - abar[:, :, 0, 0]))
        post = torch.softmax(log_post, dim=-1)
        return torch.einsum("bs,sld->bld", post, self.seq_embeddings).float()


def _gaussian_pipeline(num_steps: int = 100) -> Pipeline:
    """An untrained byte-level continuous embedding model (8-wide embeddings): for plumbing and errors."""
    tok = ByteTokenizer()
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, seq_len=32, d_model=32, n_layers=1, n_heads=2,
                                    time_conditioning=True, embed_dim=8))
    process = GaussianDiffusion(vocab_size=tok.vocab_size, mask_id=tok.mask_id, num_steps=num_steps, embed_dim=8)
    return Pipeline(model, process, tok, {})


class ExactContextLogits(nn.Module):
    """Logits F_l(w) = log p(w_l = w | x_t,-l), the law of one token given the other positions' latents: with
    prediction="tokens" the process adds log N(x_t,l; sqrt(abar_t) e_w, (1 - abar_t) I) and must get E[z | x_t]."""

    def __init__(self, process: GaussianDiffusion, p_data: torch.Tensor, length: int):
        super().__init__()
        self.process, self.cfg = process, _GaussianCfg()
        self.embed = nn.Embedding(VOCAB, EMBED_DIM)
        with torch.no_grad():
            self.embed.weight.copy_(toy_table())
        self.seqs = all_sequences(N_VALUES, length)
        self.log_prior = p_data.log()
        self.seq_embeddings = toy_table().double()[self.seqs]

    def forward(self, xt: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        level = (u.double() * self.process.num_steps).round().long()
        abar = self.process.abar[level][:, None, None]  # [B, 1, 1]
        means = abar[..., None].sqrt() * self.seq_embeddings[None]  # [B, S, L, d]
        per_pos = -(xt.double()[:, None] - means).pow(2).sum(-1) / (2 * (1 - abar))  # [B, S, L]
        logits = torch.zeros(xt.shape[0], xt.shape[1], VOCAB, dtype=torch.float64)
        for pos in range(xt.shape[1]):
            others = self.log_prior[None] + per_pos.sum(-1) - per_pos[:, :, pos]  # [B, S]: leave position out
            for w in range(N_VALUES):
                logits[:, pos, w] = torch.logsumexp(others[:, self.seqs[:, pos] == w], dim=-1)
        return logits.float()


@pytest.fixture(scope="session")
def gaussian_toy() -> SimpleNamespace:
    """The toy of this section: EMBED_DIM, SCALE, toy_table(), toy_process(num_steps, schedule),
    ExactEmbeddingDenoiser(process, p_data, length, fixed) and ExactContextLogits(process, p_data, length)."""
    return SimpleNamespace(EMBED_DIM=EMBED_DIM, SCALE=SCALE, toy_table=toy_table, toy_process=toy_process,
                           ExactEmbeddingDenoiser=ExactEmbeddingDenoiser, ExactContextLogits=ExactContextLogits)


@pytest.fixture(scope="session")
def gaussian_pipeline() -> Callable[..., Pipeline]:
    """gaussian_pipeline(num_steps=100): an untrained byte-level continuous embedding model."""
    return _gaussian_pipeline


