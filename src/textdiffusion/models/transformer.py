"""The shared backbone: a pre-norm transformer with rotary positions and SDPA attention.

One class serves every family: `causal=False` for diffusion denoisers, `causal=True` for the
autoregressive baseline, and `time_conditioning=True` adds adaLN modulation by the noise level
(DiT style; zero-initialised, so a conditioned model starts as an unconditioned one).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from ..core.budget import check_memory
from ..core.errors import UserError
from .kv_cache import KVCache


def splits_into_heads(d_model: int, n_heads: int) -> bool:
    """Whether `d_model` splits into `n_heads` heads of even width (rotary pairs up each head's features)."""
    return d_model % n_heads == 0 and (d_model // n_heads) % 2 == 0


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
    # 0: token ids in, logits out. > 0: continuous embedding diffusion (Diffusion-LM): vectors of this width in,
    # x0-embedding predictions of this width out, and `embed` is the learned token table of this width.
    embed_dim: int = 0
    # with embed_dim > 0: output token logits [B, L, V] instead of embeddings (CDCD-style score interpolation)
    embed_logits: bool = False
    # > 0: an edit model (Diffuser, processes/edit.py): a second head of this many tag logits (forward(..., tags=True))
    # and position marks added to the input embeddings (forward(..., marks=...): 0 token, 1 start, 2 insert, 3 replace)
    edit_tags: int = 0

    def __post_init__(self) -> None:
        # A model folder's config.json is user input: a string or a zero here would otherwise surface
        # as a torch TypeError deep inside nn.Linear, or as a shape error far from its cause.
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "bool":
                ok = isinstance(value, bool)
                want = "true or false"
            elif f.type == "int":
                low = 0 if f.name in ("embed_dim", "edit_tags") else 1
                ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
                want = "an integer >= 0" if low == 0 else "a positive integer"
            else:
                ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                      and (0 <= value < 1 if f.name == "dropout" else value > 0))
                want = "a number in [0, 1)" if f.name == "dropout" else "a positive number"
            if not ok:
                raise UserError(f"model.{f.name} must be {want}, got {value!r}")
        if not splits_into_heads(self.d_model, self.n_heads):
            raise UserError(f"model.d_model ({self.d_model}) must split into model.n_heads ({self.n_heads}) heads "
                            "of even width: pick n_heads dividing d_model with an even quotient")

    def to_dict(self) -> dict:
        out = asdict(self)
        if not self.embed_dim:  # discrete models' config.json stays as it was before the field existed
            del out["embed_dim"]
        if not self.embed_logits:
            del out["embed_logits"]
        if not self.edit_tags:
            del out["edit_tags"]
        return out


def rotary_tables(seq_len: int, head_dim: int, base: float,
                  positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of the rotary angles, [L, hd/2], for positions 0..seq_len-1 or the given ones ([L] or [B, L]:
    then [B, L, hd/2])."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    if positions is None:
        positions = torch.arange(seq_len)
    angles = positions.double().cpu()[..., None] * inv_freq.double()  # [..., L, hd/2]; float64: far positions
    return angles.cos().float(), angles.sin().float()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x1, x2) of the head dimension; x: [B, H, L, hd], cos/sin: [L, hd/2]."""
    x1, x2 = x.float().chunk(2, dim=-1)
    out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.type_as(x)


def rotary_and_mask(model: nn.Module, length: int, cache: KVCache | None, positions: torch.Tensor | None,
                    attn_mask: torch.Tensor | None, device: torch.device) -> tuple:
    """The rotary (cos, sin) of `length` new tokens and the attention mask they use, for a model with
    `cfg` (seq_len, d_model, n_heads, rope_base, causal) and `rope_cos`/`rope_sin` tables (Transformer, DiT)."""
    cfg = model.cfg
    past = 0 if cache is None else cache.length
    if positions is None:
        if past + length > cfg.seq_len:
            raise ValueError(f"sequence of {past + length} tokens is longer than the model's {cfg.seq_len}")
        cos, sin = model.rope_cos[past : past + length], model.rope_sin[past : past + length]
    elif int(positions.max()) < cfg.seq_len:
        cos, sin = model.rope_cos[positions], model.rope_sin[positions]
    else:  # beyond the tables: rotary angles depend only on position, so compute them
        cos, sin = (a.to(device) for a in rotary_tables(0, cfg.d_model // cfg.n_heads, cfg.rope_base, positions))
    if positions is not None and positions.dim() == 2:  # a position per row: [B, 1, L, hd/2] against [B, H, L, hd]
        cos, sin = cos[:, None], sin[:, None]
    if cache is not None and cfg.causal and attn_mask is None and length > 1:
        query_pos = torch.arange(past, past + length, device=device)
        attn_mask = query_pos[:, None] >= torch.arange(past + length, device=device)[None, :]
    return cos, sin, attn_mask


def run_blocks(model: nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cond: torch.Tensor | None,
               attn_mask: torch.Tensor | None, cache: KVCache | None, commit: bool | int) -> torch.Tensor:
    """`model.blocks` over x, each reading and (per `commit`) extending its layer of the KV cache."""
    length = x.shape[1]
    for i, block in enumerate(model.blocks):
        kv = None if cache is None else (cache, i, model.cfg.seq_len, commit)
        x = block(x, cos, sin, cond, attn_mask, kv)
    if cache is not None:
        cache.length += length if commit is True else int(commit)
    return x


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.causal, self.dropout = cfg.n_heads, cfg.causal, cfg.dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x, cos, sin, attn_mask=None, kv: tuple | None = None):
        """`kv` = (cache, layer index, capacity, commit) to read and extend a KVCache."""
        b, length, d = x.shape
        q, k, v = self.qkv(x).view(b, length, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if kv is not None:
            cache, layer, capacity, commit = kv
            k, v = cache.extend(layer, k, v, capacity, commit)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, is_causal=self.causal and attn_mask is None and kv is None,
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

    def forward(self, x, cos, sin, cond=None, attn_mask=None, kv=None):
        if self.modulation is None:
            x = x + self.drop(self.attn(self.norm1(x), cos, sin, attn_mask, kv))
            return x + self.drop(self.mlp(self.norm2(x)))
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(cond)[:, None].chunk(6, dim=-1)
        h = self.norm1(x) * (1 + scale1) + shift1
        x = x + gate1 * self.drop(self.attn(h, cos, sin, attn_mask, kv))
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


def weight_bytes(cfg: ModelConfig) -> int:
    """fp32 bytes of a Transformer's weights and rotary tables, from its config alone (before building it)."""
    d, hidden, width = cfg.d_model, int(cfg.mlp_ratio * cfg.d_model), cfg.embed_dim or cfg.d_model
    per_layer = 4 * d * d + 2 * d * hidden + (6 * d * d if cfg.time_conditioning else 0)
    return 4 * (cfg.n_layers * per_layer + cfg.vocab_size * (width + d) + cfg.seq_len * (d // cfg.n_heads))


class Transformer(nn.Module):
    # forward takes positions [B, L], a boolean attn_mask [B, 1, L, K] and a RowsKVCache: the server merges
    # the calls of several requests into one pass (serve/merge.py)
    row_batching = True

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        if nn.Linear(1, 1, bias=False).weight.device.type != "meta":  # not under an empty-weights build
            check_memory(f"a model of d_model {cfg.d_model}, n_layers {cfg.n_layers}, vocab_size {cfg.vocab_size} "
                         f"and seq_len {cfg.seq_len}", weight_bytes(cfg),
                         "lower model.d_model, model.n_layers, model.vocab_size or model.seq_len")
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embed_dim or cfg.d_model)
        # continuous inputs: Diffusion-LM's up-projection (embedding width -> model width) and down-projection
        self.in_proj = _projection(cfg.embed_dim, cfg.d_model) if cfg.embed_dim else None
        self.time_embed = TimeEmbedding(cfg.d_model) if cfg.time_conditioning else None
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model, elementwise_affine=not cfg.time_conditioning)
        self.final_modulation = nn.Linear(cfg.d_model, 2 * cfg.d_model) if cfg.time_conditioning else None
        embedding_out = bool(cfg.embed_dim) and not cfg.embed_logits
        self.head = None if embedding_out else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.out_proj = _projection(cfg.d_model, cfg.embed_dim, hidden=cfg.d_model) if embedding_out else None
        self.tag_head = nn.Linear(cfg.d_model, cfg.edit_tags, bias=False) if cfg.edit_tags else None
        self.mark_embed = nn.Embedding(4, cfg.d_model) if cfg.edit_tags else None
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
        if self.cfg.embed_dim:  # token embeddings of unit scale per dimension, as Diffusion-LM initialises them
            nn.init.normal_(self.embed.weight, std=1.0)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def new_cache(self) -> KVCache:
        return KVCache(self.cfg.n_layers)

    def forward(self, ids: torch.Tensor, t: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None,
                cache: KVCache | None = None, commit: bool | int = True,
                positions: torch.Tensor | None = None, outputs: slice | None = None,
                marks: torch.Tensor | None = None, tags: bool = False) -> torch.Tensor:
        """ids [B, L] -> logits [B, L, V]. `t` [B] is the noise level, used if time-conditioned.
        A continuous-embedding model (`cfg.embed_dim` > 0) reads vectors [B, L, embed_dim] instead and returns
        its prediction of the clean embeddings, [B, L, embed_dim].

        With `cache`, `ids` continue the tokens the cache holds (positions cache.length onward) and
        attend to them; a causal model sees only earlier positions, a bidirectional one sees the
        whole cache and all of `ids` (a block). `commit` stores the new keys/values in the cache (an int:
        only that many leading tokens of `ids`).
        `positions` [L] overrides the rotary positions of `ids` (block diffusion's [x_t; x0] input
        repeats positions; a sliding window continues past the trained length); [B, L] gives each row its own.
        `outputs` keeps the logits of those positions only (the head is not run on the others).
        """
        length = ids.shape[1]
        cos, sin, attn_mask = rotary_and_mask(self, length, cache, positions, attn_mask, ids.device)
        if self.in_proj is None:
            x = self.embed(ids)
            if marks is not None:  # an edit model's position roles (start, insert slot, replace slot)
                if self.mark_embed is None:
                    raise ValueError("marks are read only by an edit model (model.edit_tags > 0)")
                x = x + self.mark_embed(marks)
        elif ids.is_floating_point() and ids.dim() == 3 and ids.shape[-1] == self.cfg.embed_dim:
            x = self.in_proj(ids)
        else:
            raise ValueError(f"this continuous-embedding model reads vectors [B, L, {self.cfg.embed_dim}], "
                             f"got {ids.dtype} {tuple(ids.shape)}")
        cond = None
        if self.time_embed is not None:
            if t is None:
                raise ValueError("this model is time-conditioned: pass t")
            cond = F.silu(self.time_embed(t))
        x = run_blocks(self, x, cos, sin, cond, attn_mask, cache, commit)
        if outputs is not None:
            x = x[:, outputs]
        x = self.norm(x)
        if self.final_modulation is not None:
            shift, scale = self.final_modulation(cond)[:, None].chunk(2, dim=-1)
            x = x * (1 + scale) + shift
        if tags:  # an edit model's tagger head, [B, L, edit_tags]
            if self.tag_head is None:
                raise ValueError("tags=True needs an edit model (model.edit_tags > 0)")
            return self.tag_head(x)
        return self.head(x) if self.head is not None else self.out_proj(x)


def _projection(d_in: int, d_out: int, hidden: int | None = None) -> nn.Sequential:
    """Linear -> tanh -> linear through `hidden` units (default d_out): Diffusion-LM's up-projection from the
    embedding width to the model width and its down-projection back."""
    hidden = hidden or d_out
    return nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, d_out))
