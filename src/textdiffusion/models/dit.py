"""The Kuleshov-group DiT (MDLM, BD3-LM, DUO checkpoints), reimplemented to be called like `Transformer`.

Architecture of their Hugging Face checkpoints (`backbone.*` keys), which this module mirrors name for
name so their safetensors load without renaming beyond the prefix:

* `vocab_embed.embedding` [V, D]: a plain lookup table;
* `sigma_map`: the DiT timestep embedder: 256 sinusoidal features of the noise sigma (frequencies
  10000^(-i/128), cos then sin, no scaling of sigma), then Linear(256, C) - SiLU - Linear(C, C); the
  blocks see c = SiLU(that). A model trained without time conditioning still has it and is fed sigma = 0;
* blocks: LayerNorm without bias (computed in float32) -> adaLN modulate x (1 + scale) + shift ->
  fused qkv (no bias, layout [3, heads, head_dim]) -> rotary on q and k (GPT-NeoX halves, base 10000) ->
  softmax attention -> out projection (no bias), gated residual; then the same around a GELU(tanh) MLP
  with biases. With `adaln=False` (BD3-LM option) the modulation and gates are absent;
* `output_layer`: LayerNorm, adaLN shift/scale, Linear(D, V) with bias.

`forward(ids, t, attn_mask, cache, commit, positions, outputs)` has `Transformer`'s signature, so our
MDLM and BD3-LM processes and samplers (block KV cache included) run on it unchanged. `t` is our time;
`sigma_of_t` turns it into the sigma the checkpoint was trained to see (see `KuleshovDiTConfig.time_input`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import UserError
from .kv_cache import KVCache
from .transformer import apply_rotary, rotary_and_mask, rotary_tables, run_blocks

FREQ_DIM = 256  # sinusoidal features of sigma in their TimestepEmbedder


@dataclass
class KuleshovDiTConfig:
    vocab_size: int
    seq_len: int  # their model_length
    d_model: int  # hidden_dim
    n_layers: int  # n_blocks
    n_heads: int
    cond_dim: int = 128
    adaln: bool = True
    causal: bool = False
    time_conditioning: bool = False
    # How our t becomes their sigma. "mask_rate" (MDLM, BD3-LM): t is the masked fraction and their model
    # was fed sigma = -log(1 - mask rate), capped at -log(eps); "duo": their alpha_t = 1 - (1 - eps) t and
    # sigma = -log(alpha_t).
    time_input: str = "mask_rate"
    eps: float = 1e-3
    mlp_ratio: int = 4
    rope_base: float = 10000.0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "seq_len", "d_model", "n_layers", "n_heads", "cond_dim", "mlp_ratio"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserError(f"{name} must be a positive integer, got {value!r}")
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise UserError(f"hidden_dim {self.d_model} must split into n_heads {self.n_heads} heads of even width")
        if self.time_input not in ("mask_rate", "duo"):
            raise UserError(f"time_input must be 'mask_rate' or 'duo', got {self.time_input!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def sigma_of_t(t: torch.Tensor, time_input: str, eps: float) -> torch.Tensor:
    """The noise level their network was conditioned on, for our time t in [0, 1]."""
    t = t.double()
    if time_input == "duo":
        return (-torch.log1p(-(1 - eps) * t)).float()
    return (-torch.log1p(-t.clamp(max=1 - eps))).float()


def timestep_features(sigma: torch.Tensor, dim: int = FREQ_DIM) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=sigma.device) / half)
    args = sigma.float()[:, None] * freqs[None]
    return torch.cat([args.cos(), args.sin()], dim=-1)


class TimestepEmbedder(nn.Module):
    def __init__(self, cond_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(FREQ_DIM, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))

    def forward(self, sigma: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_features(sigma).to(self.mlp[0].weight.dtype))


class EmbeddingLayer(nn.Module):
    def __init__(self, vocab_size: int, d: int):
        super().__init__()
        self.embedding = nn.Parameter(torch.empty(vocab_size, d))
        nn.init.normal_(self.embedding, std=0.02)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embedding[ids]


class WeightOnlyLayerNorm(nn.Module):
    """LayerNorm with a scale and no shift, normalised in float32 (as theirs, whatever the autocast)."""

    def __init__(self, d: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), [x.shape[-1]]) * self.weight


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class DiTBlock(nn.Module):
    def __init__(self, cfg: KuleshovDiTConfig):
        super().__init__()
        d = cfg.d_model
        self.n_heads, self.causal = cfg.n_heads, cfg.causal
        self.norm1 = WeightOnlyLayerNorm(d)
        self.attn_qkv = nn.Linear(d, 3 * d, bias=False)
        self.attn_out = nn.Linear(d, d, bias=False)
        self.norm2 = WeightOnlyLayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, cfg.mlp_ratio * d), nn.GELU(approximate="tanh"),
                                 nn.Linear(cfg.mlp_ratio * d, d))
        self.adaLN_modulation = nn.Linear(cfg.cond_dim, 6 * d) if cfg.adaln else None

    def attention(self, x, cos, sin, attn_mask, kv):
        b, length, d = x.shape
        hd = d // self.n_heads
        q, k, v = self.attn_qkv(x).view(b, length, 3, self.n_heads, hd).permute(2, 0, 3, 1, 4)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if kv is not None:
            cache, layer, capacity, commit = kv
            k, v = cache.extend(layer, k, v, capacity, commit)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           is_causal=self.causal and attn_mask is None and kv is None)
        return self.attn_out(y.transpose(1, 2).reshape(b, length, d))

    def forward(self, x, cos, sin, c, attn_mask=None, kv=None):
        if self.adaLN_modulation is None:
            x = x + self.attention(self.norm1(x).type_as(x), cos, sin, attn_mask, kv)
            return x + self.mlp(self.norm2(x).type_as(x))
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c)[:, None].chunk(6, dim=-1)
        x = x + gate1 * self.attention(modulate(self.norm1(x), shift1, scale1).type_as(x), cos, sin, attn_mask, kv)
        return x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2).type_as(x))


class FinalLayer(nn.Module):
    def __init__(self, cfg: KuleshovDiTConfig):
        super().__init__()
        self.norm_final = WeightOnlyLayerNorm(cfg.d_model)
        self.linear = nn.Linear(cfg.d_model, cfg.vocab_size)
        self.adaLN_modulation = nn.Linear(cfg.cond_dim, 2 * cfg.d_model) if cfg.adaln else None

    def forward(self, x, c):
        h = self.norm_final(x)
        if self.adaLN_modulation is not None:
            shift, scale = self.adaLN_modulation(c)[:, None].chunk(2, dim=-1)
            h = modulate(h, shift, scale)
        return self.linear(h.type_as(x))


class KuleshovDiT(nn.Module):
    """Their DiT backbone; parameter names are theirs without the `backbone.` prefix."""

    row_batching = True  # as Transformer's: per-row positions and masks, a RowsKVCache (serve/merge.py)

    def __init__(self, cfg: KuleshovDiTConfig):
        super().__init__()
        self.cfg = cfg
        self.vocab_embed = EmbeddingLayer(cfg.vocab_size, cfg.d_model)
        self.sigma_map = TimestepEmbedder(cfg.cond_dim) if cfg.adaln else None
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.n_layers))
        self.output_layer = FinalLayer(cfg)
        cos, sin = rotary_tables(cfg.seq_len, cfg.d_model // cfg.n_heads, cfg.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def new_cache(self) -> KVCache:
        return KVCache(self.cfg.n_layers)

    def condition(self, t: torch.Tensor | None, batch: int, device) -> torch.Tensor | None:
        """c = SiLU(sigma_map(sigma)); sigma = 0 for a model trained without time conditioning (as theirs)."""
        if self.sigma_map is None:
            return None
        if self.cfg.time_conditioning:
            if t is None:
                raise ValueError("this model is time-conditioned: pass t")
            t = torch.as_tensor(t, device=device).reshape(-1).expand(batch)
            sigma = sigma_of_t(t, self.cfg.time_input, self.cfg.eps)
        else:
            sigma = torch.zeros(batch, device=device)
        return F.silu(self.sigma_map(sigma))

    def forward(self, ids: torch.Tensor, t: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None,
                cache: KVCache | None = None, commit: bool | int = True,
                positions: torch.Tensor | None = None, outputs: slice | None = None) -> torch.Tensor:
        """ids [B, L] -> logits [B, L, V]; the arguments mean what they mean for `Transformer.forward`."""
        cos, sin, attn_mask = rotary_and_mask(self, ids.shape[1], cache, positions, attn_mask, ids.device)
        x = self.vocab_embed(ids)
        c = self.condition(t, ids.shape[0], ids.device)
        x = run_blocks(self, x, cos, sin, c, attn_mask, cache, commit)
        if outputs is not None:
            x = x[:, outputs]
        return self.output_layer(x, c)


class UniformMeanToScore(nn.Module):
    """DUO / UDLM's uniform-state DiT as a SEDD uniform-graph score model (our `processes.sedd`, graph "uniform").

    DUO's network predicts x0 ("mean" parameterisation: p = softmax(logits), no SUBS). Its reverse step is the
    forward posterior with x0 replaced by p, whose continuous-time rates are the uniform CTMC's with the concrete
    score s_y = xbar(y) / xbar(x_t), xbar = V alpha_t p + (1 - alpha_t), alpha_t = 1 - (1 - eps) t (the
    marginal of x_t under x0 ~ p, up to 1/V). Its ELBO is therefore SEDD's diffusion-weighted denoising score
    entropy of that score (checked term by term against DUO's own formula in the tests), with SEDD's log-linear
    noise e^-sigmabar(t) = alpha_t. Our uniform graph runs over the tokens other than [MASK], so the output has
    one more column: a [MASK] id the data never holds (V + 1 ids in all, the graph's N = V).
    """

    def __init__(self, dit: KuleshovDiT, out_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.out_dtype = out_dtype  # float64 for exact checks; float32 halves the [B, L, V] memory
        if not dit.cfg.time_conditioning or dit.cfg.time_input != "duo":
            raise UserError("a uniform-state (DUO) DiT must be time-conditioned with time_input 'duo'")
        self.dit = dit
        self.cfg = KuleshovDiTConfig(**{**dit.cfg.to_dict(), "vocab_size": dit.cfg.vocab_size + 1})

    def num_parameters(self) -> int:
        return self.dit.num_parameters()

    def forward(self, ids: torch.Tensor, t: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """ids [B, L] -> log scores [B, L, V + 1] (the extra [MASK] column is -inf: never a state)."""
        if t is None:
            raise ValueError("this model is time-conditioned: pass t")
        v = self.dit.cfg.vocab_size
        logp = torch.log_softmax(self.dit(ids, t, **kwargs).double(), dim=-1)
        alpha = (1 - (1 - self.dit.cfg.eps) * torch.as_tensor(t, device=ids.device).double().reshape(-1))
        alpha = alpha.expand(ids.shape[0])[:, None, None]
        log_xbar = torch.logaddexp(torch.log(v * alpha) + logp, torch.log1p(-alpha).expand_as(logp))
        current = log_xbar.gather(-1, ids.clamp_max(v - 1)[..., None])
        scores = (log_xbar - current).to(self.out_dtype)
        return torch.cat([scores, torch.full_like(scores[..., :1], float("-inf"))], dim=-1)
