"""flash_attn_varlen_qkvpacked_func for equal-length sequences, through scaled_dot_product_attention."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def flash_attn_varlen_qkvpacked_func(qkv: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
                                     dropout_p: float = 0.0, causal: bool = False, **_: object) -> torch.Tensor:
    """qkv: [total, 3, heads, dim] packed rows of sequences that all have length max_seqlen -> [total, heads, dim]."""
    total, _, heads, dim = qkv.shape
    if total % max_seqlen:
        raise ValueError("this stand-in handles equal-length sequences only (the reference trains on fixed chunks)")
    batch = total // max_seqlen
    q, k, v = qkv.view(batch, max_seqlen, 3, heads, dim).permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, L, D]
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=causal)
    return out.transpose(1, 2).reshape(total, heads, dim)
