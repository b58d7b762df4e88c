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

    def new_cache(self):
        raise UserError("a logit-shifted (AR-adapted) model runs without a KV cache: use cache=none, or samplers "
                        "ancestral, remdm, first_hitting, semi_ar")

    def forward(self, ids: torch.Tensor, t: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        if kwargs.get("cache") is not None:
            self.new_cache()
        start = torch.full_like(ids[:, :1], self.start_id)
        length = ids.shape[1]
        positions = torch.arange(length + 1, device=ids.device)  # past seq_len: rotary angles are computed
        out = self.model(torch.cat([start, ids], dim=1), t, attn_mask=self.attn_mask, positions=positions)
        return out[:, :length]
