"""A bidirectional LLaMA / Qwen2-style transformer: the network of LLaDA and Dream, written here so that
their folders load without running their remote code.

Pre-norm blocks (RMSNorm), rotary positions (rotate-half form, base `rope_theta`), grouped-query attention
without any mask (every position sees every other), SwiGLU MLP, optional q/k/v biases (Qwen2), output head
optionally tied to the embedding. Parameter names follow transformers' LlamaForCausalLM without the
"model." prefix, so the adapters only rename. The tests check it against transformers' Llama and Qwen2
classes run with a full bidirectional attention mask.

The call is our denoiser's: model(ids [B, L], t) -> logits [B, L, V] over the tokenizer's V ids (the
embedding may have more rows; those logits are cut, so such ids are never sampled). `shift_logits`
(Dream): the logits for position i are the network's output at i - 1 (position 0 keeps its own).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import UserError
from ..models.kv_cache import KVCache


@dataclass
class LlamaLikeConfig:
    embed_rows: int  # rows of the embedding and the output head (often more than the tokenizer has)
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    rms_norm_eps: float
    rope_theta: float
    seq_len: int  # the longest input the samplers are told to use
    vocab_size: int  # the tokenizer's ids: the logits returned
    qkv_bias: bool = False
    tie_embeddings: bool = False
    shift_logits: bool = False
    head_dim: int | None = None
    causal: bool = False
    time_conditioning: bool = False

    def __post_init__(self) -> None:
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_heads
        if self.num_heads % self.num_kv_heads:
            raise UserError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}: "
                            "the config.json is inconsistent")

    def to_dict(self) -> dict:
        return asdict(self)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: LlamaLikeConfig):
        super().__init__()
        d, h, kv = cfg.head_dim, cfg.num_heads, cfg.num_kv_heads
        self.heads, self.kv_heads, self.head_dim = h, kv, d
        self.q_proj = nn.Linear(cfg.hidden_size, h * d, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.hidden_size, kv * d, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.hidden_size, kv * d, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(h * d, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                attn_mask: torch.Tensor | None = None, kv: tuple | None = None, causal: bool = False) -> torch.Tensor:
        """`kv` = (cache, layer, capacity, commit, skip) to read and extend a KVCache (models/kv_cache.py)."""
        b, n, _ = x.shape
        q = self.q_proj(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
        q = (q * cos + _rotate_half(q) * sin).to(v.dtype)
        k = (k * cos + _rotate_half(k) * sin).to(v.dtype)
        if kv is not None:  # the cache stores the kv heads, before they are repeated for the query groups
            cache, layer, capacity, commit, skip = kv
            k, v = cache.extend(layer, k, v, capacity, commit, skip)
        groups = self.heads // self.kv_heads
        if groups > 1:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        # None: bidirectional; a causal network without a cache uses the kernel's own causal mask
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=causal and attn_mask is None)
        return self.o_proj(out.transpose(1, 2).reshape(b, n, -1))


class MLP(nn.Module):
    def __init__(self, cfg: LlamaLikeConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: LlamaLikeConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, attn_mask=None, kv=None, causal=False):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, attn_mask, kv, causal)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaLike(nn.Module):
    reads_cached_queries = True  # forward(query_only=...): the logit-shifted view's cache (models/shifted.py)
    row_batching = True  # positions [B, n], attn_mask [B, 1, n, k] and a RowsKVCache (serve/merge.py)

    def __init__(self, cfg: LlamaLikeConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.embed_rows, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        if not cfg.tie_embeddings:
            self.lm_head = nn.Linear(cfg.hidden_size, cfg.embed_rows, bias=False)
        inv_freq = 1.0 / cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float32) / cfg.head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def new_cache(self) -> KVCache:
        return KVCache(self.cfg.num_layers)

    def forward(self, ids: torch.Tensor, t: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None,
                positions: torch.Tensor | None = None, cache: KVCache | None = None, commit: bool | int = True,
                outputs: slice | None = None, query_only: int = 0) -> torch.Tensor:
        """ids [B, n] -> logits [B, n, V]; the arguments are our Transformer's (models/transformer.py).

        `attn_mask` [n, past + n] bool (True: may attend) and `positions` [n] serve AR -> diffusion adaptation
        (models/shifted.py reads [START] x_t under an annealed causal mask) and block diffusion ([x_t; x0]);
        [B, 1, n, past + n] and [B, n] give each row its own (calls merged by serve/merge.py).
        With `cache`, `ids` continue the cached tokens (default positions: cache.length onward) and attend to
        them; `commit` stores their keys/values (an int: that many leading tokens). `query_only`: the first
        tokens of `ids` are already in the cache and are read again as queries only (models/shifted.py).
        Dream's shift under a cache: a call whose first position p > 0 also reads the cached token at p - 1
        as a query, so position p's logits are the output at p - 1, as without the cache."""
        past = 0 if cache is None else cache.length
        if positions is None:
            positions = torch.arange(past - query_only, past - query_only + ids.shape[1], device=ids.device)
        positions = positions.to(ids.device)
        shift_reads_cache = (self.cfg.shift_logits and cache is not None and query_only == 0
                             and int(positions[0]) > 0)
        if shift_reads_cache:
            before = cache.token_at(int(positions[0]) - 1)
            if before is None or attn_mask is not None:
                raise UserError("Dream's shifted logits need the token before a cached call's first position in "
                                "the KV cache: use cache=prefix, cache=dual or cache=none")
            ids = torch.cat([before[:, None].to(ids.device), ids], dim=1)
            positions = torch.cat([positions[:1] - 1, positions])
            query_only = 1
        x = self.embed_tokens(ids)
        freqs = positions.to(torch.float32)[..., None] * self.inv_freq.to(ids.device)  # [n, hd/2] or [B, n, hd/2]
        angles = torch.cat((freqs, freqs), dim=-1)
        heads = (None, None) if positions.dim() == 1 else (slice(None), None)  # [1, 1, n, hd] or [B, 1, n, hd]
        cos, sin = angles.cos()[heads], angles.sin()[heads]
        kv = None
        if cache is not None:
            capacity = self.cfg.seq_len + 1  # + 1: the logit-shifted view reads [START] x (models/shifted.py)
            new = ids.shape[1] - query_only
            stored = new if commit is True else int(commit)
            if self.cfg.causal and attn_mask is None and ids.shape[1] > 1:
                attn_mask = positions[:, None] >= cache_positions(cache, positions[query_only:])[None, :]
            if stored > 0:
                cache.record(ids[:, query_only : query_only + stored], positions[query_only:], capacity)
            kv = (cache, capacity, commit, query_only)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, attn_mask, None if kv is None else (kv[0], i, *kv[1:]),
                      causal=self.cfg.causal and cache is None)
        if cache is not None:
            cache.length += stored
        if outputs is not None:
            x = x[:, outputs]
        x = self.norm(x)
        head = self.embed_tokens.weight if self.cfg.tie_embeddings else self.lm_head.weight
        logits = F.linear(x, head[: self.cfg.vocab_size])
        if shift_reads_cache:
            return logits[:, :-1]  # position p's logits: the output at p - 1
        if self.cfg.shift_logits and int(positions[0]) == 0:
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        return logits


def cache_positions(cache: KVCache, new_positions: torch.Tensor) -> torch.Tensor:
    """The positions of every key a cached call attends to: the stored tokens', then its new tokens'."""
    stored = cache.positions[: cache.length] if cache.positions is not None else torch.arange(cache.length)
    return torch.cat([stored.to(new_positions.device), new_positions])


def load_llama_like(folder, device: torch.device, dtype: torch.dtype | None, cfg: LlamaLikeConfig,
                    rename, tokenizer, name: str, extra: dict | None = None):
    """Stream a folder's weights into an empty LlamaLike and wrap it with the masked process."""
    from ..processes import MaskedDiffusion
    from .base import Loaded
    from .weights import load_weights

    model, stats = load_weights(lambda: LlamaLike(cfg), folder, device, dtype, rename)
    process = MaskedDiffusion(vocab_size=tokenizer.vocab_size, mask_id=tokenizer.mask_id, schedule="loglinear")
    config = {"format": name, "source": str(folder), "model": cfg.to_dict(),
              "process": {"name": process.name, **process.config()}, "load": {"format": name, **stats},
              **(extra or {})}
    return Loaded(model, process, tokenizer, config)
