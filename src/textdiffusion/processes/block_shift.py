"""The logit shift for block diffusion adapted from an AR model (Dream, Ye et al., 2025; Fast-dLLM v2, Wu et al.,
2025): position l's output predicts token l, as the AR model's did, by reading the token before it.

The AR network reads [START] x_0 ... x_{L-2} and its output at position l predicts x_l. In the shifted BD3-LM
frame both halves of the training input [noisy ; clean] move right by one in the same way:

* clean half  c_l = x0_{l-1} ([START] at l = 0): the AR model's input, read block-causally;
* noisy half  n_l = x_t_{l-1} inside a block, and at a block's first position l = lo the clean x0_{lo-1} (the
  last token of the previous block, [START] for the first block): the block's first token is predicted from the
  clean text before it, exactly as the AR model predicts it.

Output l of the noisy half predicts x0_l, so no weight has to learn a new input/output alignment. With causal
attention inside the noisy block (the annealing mask of train/adapt.py at step 0), the prediction of the first
masked token of every block reads [START] x0_0 ... x0_{l-1}: it is the AR model's next-token distribution.

Sampling (`ShiftedBlockDenoiser`, what BlockDiffusion.denoiser returns): the block sampler's calls are shifted
the same way. Without a cache a window x[start:hi] becomes [START] x[start:hi-1] (from the model's first
position; a window that starts later, past the trained length, drops its first token, which no output of the
block needs). With the KV cache (`ShiftedCache`), every call continues the committed tokens, so the token before
a call is the last committed one: the cache remembers it (and its position), and a call that does not follow it
(a finished block that slid out of the window unstored: no context) starts from [START].
"""

from __future__ import annotations

import torch
from torch import nn


def shifted_block_inputs(xt: torch.Tensor, x0: torch.Tensor, block_size: int,
                         start_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(noisy half n, clean half c), each [B, L], in the shifted frame (module notes)."""
    start = torch.full_like(x0[:, :1], start_id)
    clean = torch.cat([start, x0[:, :-1]], dim=1)
    noisy = torch.cat([start, xt[:, :-1]], dim=1)
    first = (torch.arange(x0.shape[1], device=x0.device) % block_size == 0)[None, :]
    return torch.where(first, clean, noisy), clean


class ShiftedCache:
    """A KV cache plus the last token it committed, per row, and that token's position."""

    def __init__(self, inner, start_id: int, last: torch.Tensor | None = None, last_pos: int | None = None):
        self.inner, self.start_id, self.last, self.last_pos = inner, start_id, last, last_pos

    def __getattr__(self, attr: str):  # length, keep, drop_oldest, ...: the wrapped cache's
        if attr.startswith("__"):
            raise AttributeError(attr)
        return getattr(self.inner, attr)

    def rows(self, index: torch.Tensor) -> ShiftedCache:
        last = None if self.last is None else self.last[index]
        return ShiftedCache(self.inner.rows(index), self.start_id, last, self.last_pos)

    def before(self, ids: torch.Tensor, first_pos: int | None) -> torch.Tensor:
        """The token before a call's first token [B, 1]: the last committed one if the call follows it."""
        follows = self.last is not None and (first_pos is None or first_pos == self.last_pos + 1)
        return self.last if follows else torch.full_like(ids[:, :1], self.start_id)


class ShiftedBlockDenoiser(nn.Module):
    """The block sampler's view of a logit-shifted block model (module notes): same calls, shifted inputs."""

    def __init__(self, model: nn.Module, start_id: int):
        super().__init__()
        self.model, self.start_id = model, start_id
        self.cfg = getattr(model, "cfg", None)

    def new_cache(self) -> ShiftedCache:
        return ShiftedCache(self.model.new_cache(), self.start_id)

    def forward(self, ids: torch.Tensor, t: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None,
                cache: ShiftedCache | None = None, commit: bool | int = True,
                positions: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        first_pos = None if positions is None else int(positions[0])
        if cache is None:
            if first_pos in (None, 0):
                shifted = torch.cat([torch.full_like(ids[:, :1], self.start_id), ids[:, :-1]], dim=1)
                return self.model(shifted, t, attn_mask=attn_mask, positions=positions, **kwargs)
            # a window past the trained length: the token before it is gone; drop the first position
            mask = None if attn_mask is None else attn_mask[1:, 1:]
            out = self.model(ids[:, :-1], t, attn_mask=mask, positions=positions[1:], **kwargs)
            return torch.cat([out[:, :1], out], dim=1)  # position `start`'s output is never used
        shifted = torch.cat([cache.before(ids, first_pos), ids[:, :-1]], dim=1)
        out = self.model(shifted, t, attn_mask=attn_mask, cache=cache.inner, commit=commit, positions=positions,
                         **kwargs)
        stored = ids.shape[1] if commit is True else int(commit)
        if stored > 0:
            cache.last = ids[:, stored - 1 : stored]
            cache.last_pos = (cache.inner.length - 1) if first_pos is None else first_pos + stored - 1
        return out
