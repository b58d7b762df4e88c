"""The shared backbone: a pre-norm transformer with rotary positions and SDPA attention.

One class serves every family: `causal=False` for diffusion denoisers, `causal=True` for the
autoregressive baseline, and `time_conditioning=True` adds adaLN modulation by the noise level
(DiT style; zero-initialised, so a conditioned model starts as an unconditioned one).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ModelConfig:
    vocab_size: int = 260
    seq_len: int = 128
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    causal: bool = False
    time_conditioning: bool = False
    rope_base: float = 10000.0

    def to_dict(self) -> dict:
        return asdict(self)


def rotary_tables(seq_len: int, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)  # [L, hd/2]
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x1, x2) of the head dimension; x: [B, H, L, hd], cos/sin: [L, hd/2]."""
    x1, x2 = x.float().chunk(2, dim=-1)
    out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.type_as(x)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.causal, self.dropout = cfg.n_heads, cfg.causal, cfg.dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x, cos, sin, attn_mask=None):
        b, length, d = x.shape
        q, k, v = self.qkv(x).view(b, length, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, is_causal=self.causal and attn_mask is None,
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.out(y.transpose(1, 2).reshape(b, length, d))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.d_model
        self.norm1 = nn.LayerNorm(d, elementwise_affine=not cfg.time_conditioning)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=not cfg.time_conditioning)
        hidden = int(cfg.mlp_ratio * d)
        self.mlp = nn.Sequential(nn.Linear(d, hidden, bias=False), nn.GELU(approximate="tanh"),
                                 nn.Linear(hidden, d, bias=False))
        self.drop = nn.Dropout(cfg.dropout)
        # adaLN: shift, scale, gate for attention and MLP, from the time embedding.
        self.modulation = nn.Linear(d, 6 * d) if cfg.time_conditioning else None

    def forward(self, x, cos, sin, cond=None, attn_mask=None):
        if self.modulation is None:
            x = x + self.drop(self.attn(self.norm1(x), cos, sin, attn_mask))
            return x + self.drop(self.mlp(self.norm2(x)))
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(cond)[:, None].chunk(6, dim=-1)
        h = self.norm1(x) * (1 + scale1) + shift1
        x = x + gate1 * self.drop(self.attn(h, cos, sin, attn_mask))
        h = self.norm2(x) * (1 + scale2) + shift2
        return x + gate2 * self.drop(self.mlp(h))


class TimeEmbedding(nn.Module):
    """Sinusoidal features of the noise level, then an MLP."""

    def __init__(self, d: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, d), nn.SiLU(), nn.Linear(d, d))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
        args = t.float()[:, None] * 1000.0 * freqs[None]
        return self.mlp(torch.cat([args.cos(), args.sin()], dim=-1))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.d_model % cfg.n_heads or (cfg.d_model // cfg.n_heads) % 2:
            raise ValueError("d_model must split into n_heads heads of even width")
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.time_embed = TimeEmbedding(cfg.d_model) if cfg.time_conditioning else None
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model, elementwise_affine=not cfg.time_conditioning)
        self.final_modulation = nn.Linear(cfg.d_model, 2 * cfg.d_model) if cfg.time_conditioning else None
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        cos, sin = rotary_tables(cfg.seq_len, cfg.d_model // cfg.n_heads, cfg.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * self.cfg.n_layers) if name.endswith(("out.weight", "mlp.2.weight")) else 0.02
                nn.init.normal_(p, std=std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
        for m in [*(b.modulation for b in self.blocks), self.final_modulation]:
            if m is not None:  # adaLN-zero
                nn.init.zeros_(m.weight)
                nn.init.zeros_(m.bias)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, ids: torch.Tensor, t: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """ids [B, L] -> logits [B, L, V]. `t` [B] is the noise level, used if time-conditioned."""
        length = ids.shape[1]
        if length > self.cfg.seq_len:
            raise ValueError(f"sequence of {length} tokens is longer than the model's {self.cfg.seq_len}")
        cos, sin = self.rope_cos[:length], self.rope_sin[:length]
        x = self.embed(ids)
        cond = None
        if self.time_embed is not None:
            if t is None:
                raise ValueError("this model is time-conditioned: pass t")
            cond = F.silu(self.time_embed(t))
        for block in self.blocks:
            x = block(x, cos, sin, cond, attn_mask)
        x = self.norm(x)
        if self.final_modulation is not None:
            shift, scale = self.final_modulation(cond)[:, None].chunk(2, dim=-1)
            x = x * (1 + scale) + shift
        return self.head(x)
