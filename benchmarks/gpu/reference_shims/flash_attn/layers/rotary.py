"""apply_rotary_emb_qkv_: rotate the query and key of a packed [B, L, 3, H, D] tensor in place (GPT-NeoX layout:
the first and second halves of the rotary dimensions are the pairs), as flash-attn's non-interleaved kernel does."""
from __future__ import annotations

import torch


def apply_rotary_emb_qkv_(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *_: object,
                          interleaved: bool = False, **__: object) -> torch.Tensor:
    if interleaved:
        raise ValueError("this stand-in implements the non-interleaved layout only")
    half = cos.shape[-1]  # cos, sin: [L, rotary_dim / 2]
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    for i in (0, 1):  # query, key; the value is not rotated
        x = qkv[:, :, i]
        x1, x2 = x[..., :half].clone(), x[..., half:2 * half].clone()
        x[..., :half] = x1 * cos - x2 * sin
        x[..., half:2 * half] = x2 * cos + x1 * sin
    return qkv
