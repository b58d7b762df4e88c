"""Calls of several requests in one forward pass, each row getting the logits it gets alone.

For a model that declares `row_batching` (Transformer, the Kuleshov DiT, LlamaLike: bidirectional ones only), a
sampler's call `model(ids, t, attn_mask=, cache=, commit=, positions=, outputs=)` may share a pass with other
calls whatever its length, mask, positions or KV cache:

* rows are stacked call after call, each call's tokens right-padded to the longest call's;
* every row keeps its own rotary positions (`positions` [B, L]: the call's own, or past + 0..n-1 by default);
* each call's KV cache becomes part of one `RowsKVCache`: every layer stores the call's new keys/values in the
  call's own cache and attends over all rows' [stored, new] keys, zero-padded to the widest row;
* one boolean mask [B, 1, L, K] lets each row's queries see exactly the keys it sees alone (its own mask, if
  it brought one, over its own past + new keys), never a padded key. A padded query sees the row's real keys
  (no empty softmax) and its output is dropped.

Attention over a masked key adds exp(-inf) = 0 and no op mixes rows, so each row's logits are its logits
alone up to the rounding of matmuls of other shapes. Not merged here: causal models' calls (their implied mask
is the model's own rule; plain ones of one length still share a pass, batcher.py), Dream's shifted logits under
a cache, with positions or `outputs`, edit models' `marks` / `tags`, the logit-shifted view's `query_only`,
float (additive) masks, continuous (embedding) inputs, and a call whose default positions would run past the
model's length (it raises alone, as it should). `plan` decides which mergeable calls share a pass: padding
costs compute.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..models.kv_cache import KVCache, RowsKVCache

# keyword arguments a merged call may bring; any other must have its neutral value
MERGED_KEYS = frozenset({"t", "attn_mask", "cache", "commit", "positions", "outputs"})
NEUTRAL = {"marks": None, "tags": False, "query_only": 0}


@dataclass
class RowCall:
    """One sampler call's parts, checked mergeable."""

    ids: torch.Tensor  # [b, n] token ids
    t: torch.Tensor | None  # [b] or one value
    mask: torch.Tensor | None  # [b or 1, n, past + n] bool
    positions: torch.Tensor | None  # [n] or [b, n]
    cache: KVCache | None
    commit: bool | int
    outputs: slice | None

    @property
    def rows(self) -> int:
        return self.ids.shape[0]

    @property
    def new(self) -> int:
        return self.ids.shape[1]

    @property
    def past(self) -> int:
        return 0 if self.cache is None else self.cache.length


def row_call(model: nn.Module, ids: torch.Tensor, args: tuple, kwargs: dict) -> RowCall | None:
    """The call's parts if it may share a padded pass with others (see the module docstring), else None."""
    cfg = getattr(model, "cfg", None)
    if not getattr(model, "row_batching", False) or cfg is None or getattr(cfg, "causal", True):
        return None
    if ids.dim() != 2 or ids.is_floating_point() or len(args) > 1 or ("t" in kwargs and args):
        return None
    if any(k not in MERGED_KEYS and (k not in NEUTRAL or v is not NEUTRAL[k]) for k, v in kwargs.items()):
        return None
    b, n = ids.shape
    t = args[0] if args else kwargs.get("t")
    mask, positions = kwargs.get("attn_mask"), kwargs.get("positions")
    cache, commit, outputs = kwargs.get("cache"), kwargs.get("commit", True), kwargs.get("outputs")
    if t is not None and (not isinstance(t, torch.Tensor) or t.numel() not in (1, b)):
        return None
    if cache is not None and (type(cache) is not KVCache or getattr(cfg, "shift_logits", False)):
        return None
    if positions is not None and (getattr(cfg, "shift_logits", False) or positions.shape not in ((n,), (b, n))):
        return None
    past = 0 if cache is None else cache.length
    if positions is None and past + n > cfg.seq_len:
        return None  # alone it raises the model's own error
    if not isinstance(commit, bool) and not (isinstance(commit, int) and 0 <= commit <= n):
        return None
    if outputs is not None and (not isinstance(outputs, slice) or getattr(cfg, "shift_logits", False)):
        return None  # Dream shifts the kept outputs alone, not the whole row
    if mask is not None:
        if mask.dtype != torch.bool or mask.dim() not in (2, 3, 4):
            return None
        if mask.dim() == 4:
            if mask.shape[1] != 1:
                return None
            mask = mask[:, 0]
        if mask.shape[-2:] != (n, past + n) or (mask.dim() == 3 and mask.shape[0] not in (1, b)):
            return None
    if not getattr(cfg, "time_conditioning", False):
        t = None  # the model does not read it: calls with and without t share a pass
    return RowCall(ids, t, mask, positions, cache, commit, outputs)


def plan(calls: list[RowCall], max_rows: int, max_padding: float, token_keys: float = 0.0) -> list[list[int]]:
    """Split calls (their indices) into passes: longest first, a pass takes the next call while its rows stay
    within `max_rows` and its padded cost within (1 + max_padding) x its real cost (padding costs compute).

    A row of n queries over k keys costs n (token_keys + k): attention reads every key (about 4d flops each),
    the projections and MLP cost a token about 24 d^2 whatever its keys, so `token_keys` ~ 6 d weighs them."""
    new, keys = [c.new for c in calls], [c.past + c.new for c in calls]
    order = sorted(range(len(calls)), key=lambda i: -new[i])
    passes: list[list[int]] = []
    rows = real = width_k = 0
    for i in order:
        b, cost = calls[i].rows, calls[i].rows * new[i] * (token_keys + keys[i])
        if passes and rows + b <= max_rows:
            width_q, wider = new[passes[-1][0]], max(width_k, keys[i])  # the pass's longest call came first
            if (rows + b) * width_q * (token_keys + wider) <= (1 + max_padding) * (real + cost):
                passes[-1].append(i)
                rows, real, width_k = rows + b, real + cost, wider
                continue
        passes.append([i])
        rows, real, width_k = b, cost, keys[i]
    return passes


def run_rows(model: nn.Module, calls: list[RowCall]) -> list[torch.Tensor]:
    """One forward pass for `calls`; returns each call's logits, as it would get them alone."""
    rows, width = sum(c.rows for c in calls), max(c.new for c in calls)
    device = calls[0].ids.device
    ids = torch.zeros(rows, width, dtype=calls[0].ids.dtype, device=device)
    cached = any(c.cache is not None for c in calls)
    use_positions = cached or any(c.positions is not None for c in calls)
    positions = torch.zeros(rows, width, dtype=torch.long, device=device) if use_positions else None
    keys = [c.past + c.new for c in calls]
    use_mask = len(set(keys)) > 1 or len({c.new for c in calls}) > 1 or any(c.mask is not None for c in calls)
    mask = torch.zeros(rows, 1, width, max(keys), dtype=torch.bool, device=device) if use_mask else None
    t = None
    if calls[0].t is not None:
        t = torch.cat([c.t.reshape(-1).to(device).expand(c.rows) for c in calls])
    row = 0
    for call, k in zip(calls, keys):
        part = slice(row, row + call.rows)
        ids[part, : call.new] = call.ids
        if positions is not None:
            own = call.positions if call.positions is not None else torch.arange(call.past, k, device=device)
            positions[part, : call.new] = own.to(device)
        if mask is not None:
            mask[part, 0, :, :k] = True  # padded queries see the row's keys (their output is dropped)
            if call.mask is not None:
                mask[part, 0, : call.new, :k] = call.mask.to(device)
        row += call.rows
    cache = RowsKVCache([(c.cache, c.rows, c.new, c.commit) for c in calls]) if cached else None
    kwargs = {"attn_mask": mask, "positions": positions}
    if cache is not None:
        kwargs.update(cache=cache, commit=True)  # each call's own commit is the RowsKVCache's
    out = model(ids, t, **{k: v for k, v in kwargs.items() if v is not None})
    if cache is not None:
        cache.finish()
    results, row = [], 0
    for call in calls:
        own = out[row : row + call.rows, : call.new]
        results.append(own if call.outputs is None else own[:, call.outputs])
        row += call.rows
    return results
