"""Classifier-free guidance for masked diffusion samplers: LLaDA's unsupervised CFG (Nie et al., 2025, App. B.3).

LLaDA samples from  p~(r0 | p0, r_t) ∝ p(r0 | p0, r_t)^(1 + w) / p(r0 | m, r_t)^w,  with m the prompt
replaced by [MASK]s: the model trained with random masking already is its own "unconditional" model. Per
position the guided log-probabilities are

    (1 + w) log p(x | prompt, x_t) - w log p(x | [MASK]s, x_t)      (then renormalised by the sampler's softmax)

which is LLaDA's `un_logits + (w + 1) * (logits - un_logits)` up to a per-position constant. w = 0 is no
guidance. The prompt is every position that is not [MASK] when sampling starts (LLaDA's `prompt_index`), the
same columns in every row; the two passes run as one batch of 2B rows, so a guided forward pass costs two.

`guided(model, x, mask_id, w)` wraps a denoiser once per sampler run; the wrapper has the model's `cfg` and
keeps Fast-dLLM's KV caches (prefix / dual) working by caching both halves of the doubled batch.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..core.errors import UserError


def check_scale(scale: float) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale < 0:
        raise UserError(f"cfg_scale must be a finite number >= 0 (0: no guidance), got {scale!r}")
    return float(scale)


def prompt_columns(x: torch.Tensor, mask_id: int) -> torch.Tensor:
    """[L] bool: the positions fixed (not [MASK]) at the start of sampling, which must agree across rows."""
    fixed = x != mask_id
    if not bool((fixed == fixed[:1]).all()):
        raise UserError("cfg_scale needs the same prompt positions in every row (the unconditional pass masks "
                        "them): sample rows with different prompt lengths separately")
    return fixed[0]


def guide(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """(1 + w) log p_cond - w log p_uncond, float32; a value the conditional pass rules out stays ruled out, one
    only the unconditional pass rules out keeps its conditional log-probability."""
    lc, lu = torch.log_softmax(cond.float(), -1), torch.log_softmax(uncond.float(), -1)
    both = torch.isfinite(lc) & torch.isfinite(lu)
    mixed = (1 + scale) * torch.where(both, lc, 0.0) - scale * torch.where(both, lu, 0.0)
    return torch.where(both, mixed, lc)


class PairedCache:
    """A KV cache of the doubled batch [conditional rows; unconditional rows], addressed by the B real rows."""

    def __init__(self, inner):
        self.inner = inner

    @property
    def length(self) -> int:
        return self.inner.length

    def keep(self, index: torch.Tensor) -> None:
        self.inner.keep(index)

    def rows(self, index: torch.Tensor) -> PairedCache:
        keys = next(k for k in self.inner.keys if k is not None)
        half = keys.shape[0] // 2
        index = torch.as_tensor(index, device=keys.device)
        return PairedCache(self.inner.rows(torch.cat([index, index + half])))


class GuidedDenoiser(nn.Module):
    """A denoiser whose logits are the guided log-probabilities (module notes); called like the model."""

    def __init__(self, model: nn.Module, prompt: torch.Tensor, mask_id: int, scale: float):
        super().__init__()
        self.model, self.mask_id, self.scale = model, mask_id, scale
        self.register_buffer("prompt", prompt, persistent=False)
        self.cfg = getattr(model, "cfg", None)

    def new_cache(self) -> PairedCache:
        return PairedCache(self.model.new_cache())

    def forward(self, ids: torch.Tensor, t: torch.Tensor | None = None, cache: PairedCache | None = None,
                positions: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        if positions is not None:
            columns = self.prompt[positions]
        else:  # with a cache, ids continue the cached tokens
            start = 0 if cache is None else cache.length
            columns = self.prompt[start : start + ids.shape[1]]
        uncond = torch.where(columns[None, :], torch.full_like(ids, self.mask_id), ids)
        both_t = None if t is None else torch.cat([t, t])
        extra = dict(kwargs)
        if cache is not None:
            extra["cache"] = cache.inner
        if positions is not None:
            extra["positions"] = positions
        logits = self.model(torch.cat([ids, uncond]), both_t, **extra)
        cond_logits, uncond_logits = logits.chunk(2, dim=0)
        return guide(cond_logits, uncond_logits, self.scale)


def guided(model: nn.Module, x: torch.Tensor, mask_id: int, scale: float) -> nn.Module:
    """`model` itself for scale 0 (no guidance, the same calls), else its guided wrapper for the prompt of x."""
    if check_scale(scale) == 0:
        return model
    return GuidedDenoiser(model, prompt_columns(x, mask_id), mask_id, scale)
