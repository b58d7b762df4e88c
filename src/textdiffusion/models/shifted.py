"""The logit-shifted view of a causal-trained backbone (AR -> diffusion adaptation, train/adapt.py; DiffuLLaMA,
Dream): position l's logits read [START] x_t[:l] and everything the attention allows, and predict x0_l. So an AR
model's next-token head becomes a denoiser with no weight changing its job."""

from __future__ import annotations

import torch
from torch import nn

from ..core.errors import UserError


class ShiftedDenoiser(nn.Module):
    """A denoiser from a causal-trained backbone: logits for x_t [B, L] from the backbone on [START] x_t (module
    notes); `attn_mask` [L + 1, L + 1] (True: may attend) restricts its attention while annealing."""

    def __init__(self, model: nn.Module, start_id: int, attn_mask: torch.Tensor | None = None):
        super().__init__()
        self.model, self.start_id, self.attn_mask = model, start_id, attn_mask
        self.cfg = getattr(model, "cfg", None)

    def new_cache(self) -> ShiftedFrameCache:
        if not getattr(self.model, "reads_cached_queries", False):
            raise UserError("this logit-shifted (AR-adapted) model's network has no KV cache for the shifted frame: "
                            "use cache=none, or samplers ancestral, remdm, first_hitting, semi_ar")
        return ShiftedFrameCache(self.model.new_cache())

    def forward(self, ids: torch.Tensor, t: torch.Tensor | None = None, cache: ShiftedFrameCache | None = None,
                commit: bool | int = True, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, n] for x_t's tokens `ids`; with `cache`, the tokens at `positions` (default: after the
        cached ones) of a sequence whose other tokens the cache holds (the samplers' prefix / dual views)."""
        length = ids.shape[1]
        if cache is None:
            start = torch.full_like(ids[:, :1], self.start_id)
            positions = torch.arange(length + 1, device=ids.device)  # past seq_len: rotary angles are computed
            out = self.model(torch.cat([start, ids], dim=1), t, attn_mask=self.attn_mask, positions=positions)
            return out[:, :length]
        if positions is None:
            positions = torch.arange(cache.length, cache.length + length, device=ids.device)
        first = int(positions[0])
        # the network's position `first` holds x_{first - 1} ([START] for first = 0): read again as a query only
        # when the cache holds it, else it is new (the call from position 0 that fills the cache)
        cached = cache.inner.token_at(first)
        if cached is not None:
            before, stored, query_only = cached[:, None], commit, 1
        elif first == 0:
            before, query_only = torch.full_like(ids[:, :1], self.start_id), 0
            stored = commit if commit is True else int(commit) + 1
        else:
            raise UserError("the logit-shifted view needs the token before a cached call's first position in "
                            "the KV cache: use cache=prefix, cache=dual or cache=none")
        net_positions = torch.cat([positions[:1], positions + 1])  # x position p is the network's p + 1
        out = self.model(torch.cat([before.to(ids.device), ids], dim=1), t, cache=cache.inner, commit=stored,
                         positions=net_positions, query_only=query_only)
        return out[:, :length]  # the network's output at p predicts x_p


class ShiftedFrameCache:
    """The backbone's KV cache seen in x's positions: its slot 0 holds [START] and x position p its slot p + 1
    (after the call from position 0 that fills it, as the prefix and dual views make)."""

    def __init__(self, inner):
        self.inner = inner

    @property
    def length(self) -> int:
        return max(self.inner.length - 1, 0)

    def keep(self, index: torch.Tensor) -> None:
        self.inner.keep(torch.cat([index.new_zeros(1), index + 1]))  # [START] stays: every query reads it

    def rows(self, index: torch.Tensor) -> ShiftedFrameCache:
        return ShiftedFrameCache(self.inner.rows(index))
