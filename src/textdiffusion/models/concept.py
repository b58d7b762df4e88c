"""The two networks of a sentence-concept model (Large Concept Model style, processes/concept.py), built from the
backbone's blocks (models/transformer.py).

`ConceptDenoiser` predicts the next sentence's clean embedding. A causal transformer (the context tower) reads a
learned start vector and the clean embeddings of sentences 1..N-1 and writes h_0..h_{N-1}, h_j summarising the
sentences before j + 1 (LCM's Two-Tower contextualizer). The denoiser then reads the pair (h_j, x_t of sentence
j + 1) with adaLN modulation by the noise level and returns x0_hat (x0-prediction, as LCM). LCM's denoiser
cross-attends to every context position; here h_j, a causal summary of them, stands for the whole context. A learned
null vector replaces h_j where the context is dropped, the unconditional model of classifier-free guidance.

`SentenceDecoder` writes a sentence from its embedding: a causal transformer over P prefix vectors (the embedding
projected) followed by the sentence's tokens, trained teacher-forced (`decoder_loss`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import UserError
from .transformer import Block, ModelConfig, TimeEmbedding, rotary_tables


@dataclass
class ConceptNetConfig:
    embed_dim: int = 384  # the sentence encoder's width (all-MiniLM-L6-v2: 384)
    d_model: int = 128
    n_layers: int = 2  # context tower
    denoiser_layers: int = 2
    n_heads: int = 4
    mlp_ratio: float = 4.0
    context: int = 16  # the most sentences the context tower reads (its rotary table)

    def block_config(self, causal: bool, time: bool, length: int) -> ModelConfig:
        return ModelConfig(vocab_size=1, seq_len=length, d_model=self.d_model, n_layers=1, n_heads=self.n_heads,
                           mlp_ratio=self.mlp_ratio, causal=causal, time_conditioning=time)

    def to_dict(self) -> dict:
        return asdict(self)


class ConceptDenoiser(nn.Module):
    def __init__(self, cfg: ConceptNetConfig):
        super().__init__()
        self.cfg = cfg
        d, ctx_cfg = cfg.d_model, cfg.block_config(causal=True, time=False, length=cfg.context)
        den_cfg = cfg.block_config(causal=False, time=True, length=2)
        self.ctx_in = nn.Linear(cfg.embed_dim, d)
        self.start = nn.Parameter(torch.randn(d) * 0.02)
        self.null = nn.Parameter(torch.randn(d) * 0.02)
        self.ctx_blocks = nn.ModuleList(Block(ctx_cfg) for _ in range(cfg.n_layers))
        self.ctx_norm = nn.LayerNorm(d)
        self.x_in = nn.Linear(cfg.embed_dim, d)
        self.time_embed = TimeEmbedding(d)
        self.blocks = nn.ModuleList(Block(den_cfg) for _ in range(cfg.denoiser_layers))
        self.norm = nn.LayerNorm(d)
        self.out = nn.Linear(d, cfg.embed_dim)
        for block in self.blocks:  # adaLN-zero, as the backbone: a block starts as the identity
            nn.init.zeros_(block.modulation.weight)
            nn.init.zeros_(block.modulation.bias)
        for name, table in zip(("ctx", "pair"), (rotary_tables(cfg.context, d // cfg.n_heads, 10000.0),
                                                 rotary_tables(2, d // cfg.n_heads, 10000.0))):
            self.register_buffer(f"{name}_cos", table[0], persistent=False)
            self.register_buffer(f"{name}_sin", table[1], persistent=False)

    def context_states(self, context: torch.Tensor) -> torch.Tensor:
        """h_0..h_n for clean embeddings [B, n, E] (n + 1 <= cfg.context): [B, n + 1, d], h_j sees sentences <= j."""
        b, n, _ = context.shape
        if n + 1 > self.cfg.context:
            raise UserError(f"a context of {n} sentences is more than this model's {self.cfg.context - 1}")
        x = torch.cat([self.start.expand(b, 1, -1), self.ctx_in(context)], dim=1)
        for block in self.ctx_blocks:
            x = block(x, self.ctx_cos[: n + 1], self.ctx_sin[: n + 1])
        return self.ctx_norm(x)

    def denoise(self, h: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x0_hat from context states h [..., d], noisy embeddings xt [..., E] and model times t [...] in [0, 1]."""
        shape = xt.shape
        pair = torch.stack([h.reshape(-1, h.shape[-1]), self.x_in(xt).reshape(-1, self.cfg.d_model)], dim=1)
        cond = F.silu(self.time_embed(t.reshape(-1)))
        for block in self.blocks:
            pair = block(pair, self.pair_cos, self.pair_sin, cond)
        return self.out(self.norm(pair[:, 1])).view(shape)

    def forward(self, context: torch.Tensor, xt: torch.Tensor, t: torch.Tensor,
                drop: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced over a window: sentences [B, N, E] clean, xt [B, N, E] their noisy versions, t [B, N];
        x0_hat [B, N, E] of sentence j from xt_j and sentences < j (the null context where `drop` [B, N])."""
        h = self.context_states(context[:, :-1])
        if drop is not None:
            h = torch.where(drop[..., None], self.null.to(h.dtype), h)
        return self.denoise(h, xt, t)


@dataclass
class DecoderConfig:
    vocab_size: int = 260
    embed_dim: int = 384
    max_tokens: int = 64  # the longest sentence in tokens, [EOS] included
    prefix: int = 4  # vectors the embedding is projected to
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    mlp_ratio: float = 4.0

    def to_dict(self) -> dict:
        return asdict(self)


class SentenceDecoder(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.cfg = cfg
        d, length = cfg.d_model, cfg.prefix + cfg.max_tokens
        block_cfg = ModelConfig(vocab_size=cfg.vocab_size, seq_len=length, d_model=d, n_layers=cfg.n_layers,
                                n_heads=cfg.n_heads, mlp_ratio=cfg.mlp_ratio, causal=True)
        self.prefix = nn.Sequential(nn.Linear(cfg.embed_dim, d), nn.GELU(), nn.Linear(d, cfg.prefix * d))
        self.embed = nn.Embedding(cfg.vocab_size, d)
        self.blocks = nn.ModuleList(Block(block_cfg) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, cfg.vocab_size, bias=False)
        nn.init.normal_(self.embed.weight, std=0.02)
        cos, sin = rotary_tables(length, d // cfg.n_heads, 10000.0)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, emb: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Logits [B, L + 1, V]: position i predicts token i of the sentence from the embedding [B, E] and tokens < i
        (`ids` [B, L], L < max_tokens)."""
        b, length = ids.shape
        x = torch.cat([self.prefix(emb).view(b, self.cfg.prefix, -1), self.embed(ids)], dim=1)
        n = x.shape[1]
        for block in self.blocks:
            x = block(x, self.rope_cos[:n], self.rope_sin[:n])
        return self.head(self.norm(x[:, self.cfg.prefix - 1:]))

    @torch.no_grad()
    def generate(self, emb: torch.Tensor, eos_id: int, temperature: float = 0.0,
                 generator: torch.Generator | None = None) -> list[list[int]]:
        """Each embedding's sentence, token by token until [EOS] or max_tokens (greedy at temperature 0)."""
        b = emb.shape[0]
        ids = torch.zeros(b, 0, dtype=torch.long, device=emb.device)
        done = torch.zeros(b, dtype=torch.bool, device=emb.device)
        for _ in range(self.cfg.max_tokens):
            logits = self(emb, ids)[:, -1].float()
            if temperature > 0:
                probs = torch.softmax(logits.double() / temperature, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator)[:, 0]
            else:
                nxt = logits.argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            done |= nxt == eos_id
            if bool(done.all()):
                break
        return [[i for i in row if i != eos_id] for row in ids.tolist()]


def decoder_loss(decoder: SentenceDecoder, emb: torch.Tensor, ids: torch.Tensor, pad_id: int) -> tuple:
    """Teacher-forced cross-entropy of sentences `ids` [B, L] (each ends with [EOS], then [PAD]s) given their
    embeddings: (sum over the non-[PAD] tokens in nats, their count)."""
    logits = decoder(emb, ids[:, :-1])
    nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), ids.reshape(-1), ignore_index=pad_id,
                          reduction="sum")
    return nll, int((ids != pad_id).sum())
