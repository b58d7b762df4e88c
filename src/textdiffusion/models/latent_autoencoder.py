"""The networks of latent diffusion (LD4LG, Lovelace et al. 2023; PLANNER, Zhang et al. 2023): an autoencoder that
compresses a passage of L tokens to k vectors of width d and writes it back, and a denoiser over those k vectors.

- encoder: our bidirectional transformer blocks over the tokens, padding masked out of every attention;
- resampler: a Perceiver-style stack (Jaegle et al. 2021; LD4LG section 3.1) of k learned queries that
  cross-attend to the encoder's states, projected to width d and normalised (a LayerNorm without gain: every
  latent vector has mean 0 and variance 1 over its d features, so the diffusion sees latents of unit scale);
- decoder: a causal transformer over the tokens whose blocks also cross-attend to the latents (LD4LG's
  autoregressive decoder), reading a learned start vector then x_0 .. x_{L-2} to predict x_0 .. x_{L-1};
- denoiser: bidirectional time-conditioned (adaLN) blocks over [x_t's k vectors; the condition's k vectors],
  where the condition is the latents of a prefix passage or, for the unconditional model, k learned null vectors
  (PLANNER's prefix conditioning, with the null for classifier-free guidance); with self-conditioning its input
  also holds the previous estimate of the clean latents (Chen et al. 2022, analog bits).

Process logic (noise, losses, stages) lives in processes/latent.py; this module is only the networks.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..core.budget import check_memory
from .kv_cache import KVCache
from .transformer import Block, ModelConfig, TimeEmbedding, rotary_tables


class CrossAttention(nn.Module):
    """Queries from x attend to `memory` (no positions: the latents are a set to the decoder and resampler)."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.kv = nn.Linear(d_model, 2 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, lq, d = x.shape
        h = self.n_heads
        q = self.q(x).view(b, lq, h, d // h).transpose(1, 2)
        k, v = self.kv(memory).view(b, memory.shape[1], 2, h, d // h).permute(2, 0, 3, 1, 4)
        mask = None if key_mask is None else key_mask[:, None, None, :]  # [B, 1, 1, Lk]: True = attend
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(y.transpose(1, 2).reshape(b, lq, d))


def _mlp(d: int, ratio: float) -> nn.Sequential:
    hidden = int(ratio * d)
    return nn.Sequential(nn.Linear(d, hidden, bias=False), nn.GELU(approximate="tanh"),
                         nn.Linear(hidden, d, bias=False))


class ResamplerLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm_q, self.norm_m = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.cross = CrossAttention(cfg.d_model, cfg.n_heads)
        self.norm2 = nn.LayerNorm(cfg.d_model)
        self.mlp = _mlp(cfg.d_model, cfg.mlp_ratio)

    def forward(self, q: torch.Tensor, memory: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        q = q + self.cross(self.norm_q(q), self.norm_m(memory), key_mask)
        return q + self.mlp(self.norm2(q))


class DecoderLayer(nn.Module):
    """A causal self-attention block (the backbone's own) followed by cross-attention to the latents."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.block = Block(dataclasses.replace(cfg, causal=True, time_conditioning=False))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.cross = CrossAttention(cfg.d_model, cfg.n_heads)

    def forward(self, x, cos, sin, memory, attn_mask=None, kv=None):
        x = self.block(x, cos, sin, None, attn_mask, kv)
        return x + self.cross(self.norm(x), memory)


class LatentModel(nn.Module):
    """Autoencoder and latent denoiser in one module (one folder, one state dict); see the module notes.

    `cfg` is the backbone's config (d_model, n_heads, vocab_size, seq_len, dropout; n_layers is the denoiser's
    depth); the latent shape and the autoencoder's depths come from the latent process's options."""

    def __init__(self, cfg: ModelConfig, num_latents: int, latent_dim: int, encoder_layers: int,
                 decoder_layers: int, resampler_layers: int, self_condition: bool = False):
        super().__init__()
        self.cfg, self.num_latents, self.latent_dim = cfg, num_latents, latent_dim
        if nn.Linear(1, 1, bias=False).weight.device.type != "meta":  # not under an empty-weights build
            check_memory(f"a latent model of d_model {cfg.d_model}, {encoder_layers} + {decoder_layers} + "
                         f"{cfg.n_layers} layers and {num_latents} latents of width {latent_dim}",
                         latent_weight_bytes(cfg, num_latents, latent_dim, encoder_layers, decoder_layers,
                                             resampler_layers),
                         "lower model.d_model, model.n_layers or the process's layer and latent counts")
        d = cfg.d_model
        plain = dataclasses.replace(cfg, causal=False, time_conditioning=False)
        self.embed = nn.Embedding(cfg.vocab_size, d)
        self.encoder = nn.ModuleList(Block(plain) for _ in range(encoder_layers))
        self.encoder_norm = nn.LayerNorm(d)
        self.queries = nn.Parameter(torch.randn(num_latents, d) * 0.02)
        self.resampler = nn.ModuleList(ResamplerLayer(plain) for _ in range(resampler_layers))
        self.to_latent = nn.Linear(d, latent_dim)
        self.from_latent = nn.Linear(latent_dim, d)
        self.start = nn.Parameter(torch.randn(d) * 0.02)
        self.decoder = nn.ModuleList(DecoderLayer(plain) for _ in range(decoder_layers))
        self.decoder_norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, cfg.vocab_size, bias=False)
        # the denoiser
        self.self_condition = self_condition
        timed = dataclasses.replace(cfg, causal=False, time_conditioning=True)
        self.noisy_in = nn.Linear(latent_dim * (2 if self_condition else 1), d)
        self.cond_in = nn.Linear(latent_dim, d)
        self.null_cond = nn.Parameter(torch.randn(num_latents, latent_dim))  # the unconditional model's condition
        self.role = nn.Parameter(torch.zeros(2, d))  # which half of the denoiser's input a position is in
        self.time_embed = TimeEmbedding(d)
        self.denoiser = nn.ModuleList(Block(timed) for _ in range(cfg.n_layers))
        self.denoiser_norm = nn.LayerNorm(d, elementwise_affine=False)
        self.final_modulation = nn.Linear(d, 2 * d)
        self.denoiser_out = nn.Linear(d, latent_dim)
        cos, sin = rotary_tables(max(cfg.seq_len, 2 * num_latents), d // cfg.n_heads, cfg.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        for block in self.denoiser:  # adaLN-zero: a fresh denoiser starts as an unconditioned one
            nn.init.zeros_(block.modulation.weight)
            nn.init.zeros_(block.modulation.bias)
        nn.init.zeros_(self.final_modulation.weight)
        nn.init.zeros_(self.final_modulation.bias)

    @property
    def blocks(self) -> list[Block]:
        """Every transformer block (encoder, decoder, denoiser): what activation checkpointing wraps."""
        return [*self.encoder, *(layer.block for layer in self.decoder), *self.denoiser]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None, *, part: str, **kwargs) -> torch.Tensor:
        """One entry for wrappers that only see forward calls (torch.compile, the server's batcher): part="encode"
        (x: ids; mask), "decode" (x: ids; latents) or "denoise" (x: x_t; t; cond, has_cond, previous)."""
        if part == "encode":
            return self.encode(x, kwargs.get("mask"))
        if part == "decode":
            return self.decode_logits(x, kwargs["latents"], kwargs.get("cache"))
        if part == "denoise":
            return self.denoise(x, t, kwargs.get("cond"), kwargs.get("has_cond"), kwargs.get("previous"))
        raise ValueError(f"unknown part {part!r}: encode, decode or denoise")

    # ---- the autoencoder ---------------------------------------------------------------------
    def encode(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids [B, L] (`mask` [B, L] bool: the real tokens, None: all; every row needs one) -> normalised
        latents [B, k, d]. Masked positions reach no attention, so padding does not change the latents."""
        length = ids.shape[1]
        if length > self.rope_cos.shape[0]:
            raise ValueError(f"a passage of {length} tokens is longer than the model's {self.cfg.seq_len}")
        x = self.embed(ids)
        cos, sin = self.rope_cos[:length], self.rope_sin[:length]
        attn = None if mask is None else mask[:, None, None, :]
        for block in self.encoder:
            x = block(x, cos, sin, None, attn)
        x = self.encoder_norm(x)
        q = self.queries[None].expand(ids.shape[0], -1, -1)
        for layer in self.resampler:
            q = layer(q, x, mask)
        return F.layer_norm(self.to_latent(q), (self.latent_dim,))  # LD4LG / PLANNER: latents of unit scale

    def new_cache(self) -> KVCache:
        """An empty KV cache of the decoder's self-attention (`decode_logits(..., cache=)`)."""
        return KVCache(len(self.decoder))

    def decode_logits(self, ids: torch.Tensor, latents: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Teacher-forced logits [B, L, V] of each token of `ids` [B, L] given the earlier ones and the latents.

        With `cache` (holding positions 0 .. p - 1 of these very ids and latents), only positions p .. L - 1 are
        computed and stored: logits [B, L - p, V], the same numbers as the last L - p of the full call."""
        b, length = ids.shape
        past = 0 if cache is None else cache.length
        if past >= length:
            raise ValueError(f"the cache holds {past} positions: pass more than {past} ids")
        x = self.embed(ids[:, max(past - 1, 0) : length - 1])  # position i reads token i - 1
        if past == 0:
            x = torch.cat([self.start.expand(b, 1, -1).to(x.dtype), x], dim=1)
        cos, sin = self.rope_cos[past:length], self.rope_sin[past:length]
        mask = None  # no cache: the blocks' own causal attention
        if cache is not None and length - past > 1:
            mask = torch.arange(past, length, device=ids.device)[:, None] >= torch.arange(length, device=ids.device)
        memory = self.from_latent(latents.to(x.dtype))
        for i, layer in enumerate(self.decoder):
            x = layer(x, cos, sin, memory, mask, None if cache is None else (cache, i, self.cfg.seq_len, True))
        if cache is not None:
            cache.length = length
        return self.head(self.decoder_norm(x))

    # ---- the denoiser ------------------------------------------------------------------------
    def denoise(self, xt: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None,
                has_cond: torch.Tensor | None = None, previous: torch.Tensor | None = None) -> torch.Tensor:
        """The denoiser's raw output [B, k, d] for noisy latents xt [B, k, d] at times t [B] (in [0, 1]).

        `cond` [B, k, d]: the prefix's latents, used in the rows where `has_cond` [B] (None: every row) is true;
        elsewhere (and with cond None) the learned null condition. `previous`: the self-conditioning estimate of
        the clean latents (zeros when None; only read by a self-conditioned model)."""
        b, k = xt.shape[:2]
        null = self.null_cond[None].expand(b, -1, -1).to(xt.dtype)
        if cond is None:
            cond = null
        elif has_cond is not None:
            cond = torch.where(has_cond[:, None, None], cond.to(xt.dtype), null)
        inputs = xt
        if self.self_condition:
            inputs = torch.cat([xt, torch.zeros_like(xt) if previous is None else previous.to(xt.dtype)], dim=-1)
        x = torch.cat([self.noisy_in(inputs) + self.role[0], self.cond_in(cond) + self.role[1]], dim=1)
        emb = F.silu(self.time_embed(t))
        cos, sin = self.rope_cos[: 2 * k], self.rope_sin[: 2 * k]
        for block in self.denoiser:
            x = block(x, cos, sin, emb)
        shift, scale = self.final_modulation(emb)[:, None].chunk(2, dim=-1)
        x = self.denoiser_norm(x[:, :k]) * (1 + scale) + shift
        return self.denoiser_out(x)


def latent_weight_bytes(cfg: ModelConfig, num_latents: int, latent_dim: int, encoder_layers: int,
                        decoder_layers: int, resampler_layers: int) -> int:
    """fp32 bytes of a LatentModel's weights, from its shape alone (before building it): an estimate within a
    few percent (norms and biases left out)."""
    d, hidden = cfg.d_model, int(cfg.mlp_ratio * cfg.d_model)
    block = 4 * d * d + 2 * d * hidden
    cross = 3 * d * d
    total = (encoder_layers * block + resampler_layers * (cross + 2 * d * hidden) + decoder_layers * (block + cross)
             + cfg.n_layers * (block + 6 * d * d) + 2 * cfg.vocab_size * d + 4 * latent_dim * d
             + num_latents * (d + latent_dim) + 256 * d + d * d)
    return 4 * total + 8 * math.prod((max(cfg.seq_len, 2 * num_latents), d // cfg.n_heads // 2))
