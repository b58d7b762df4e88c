"""The KV cache: keys and values of the tokens a model has already read, per layer, so that later calls attend
to them without recomputing them: token by token for the autoregressive sampler, block by block for block
diffusion, prefix (and suffix) around a block being denoised for Fast-dLLM's approximate caches.

Slots are filled in call order. Each slot also remembers the token id and the position it held (where the model
records them: `record`), so that a call can read again a token it does not pass: Dream's shifted logits and the
logit-shifted view of an AR-adapted model take position p's logits from the output at p - 1, whose token sits in
the cache when a block starts at p.
"""

from __future__ import annotations

import torch


class KVCache:
    """Buffers are allocated at the first call, for `capacity` tokens (the model's length)."""

    def __init__(self, n_layers: int):
        self.keys: list[torch.Tensor | None] = [None] * n_layers
        self.values: list[torch.Tensor | None] = [None] * n_layers
        self.length = 0  # tokens stored
        self.tokens: torch.Tensor | None = None  # [B, capacity]: the id in each slot, where recorded (else -1)
        self.positions: torch.Tensor | None = None  # [capacity]: the position each slot's token held (else -1)

    def extend(self, layer: int, k: torch.Tensor, v: torch.Tensor, capacity: int,
               commit: bool | int, skip: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys/values of the stored tokens followed by the new ones ([B, H, length + n, hd]).

        commit=True stores the new ones; False only attends to them (a block still being denoised);
        an int stores that many leading new tokens (a finished block read together with the next).
        `skip`: the call's first `skip` tokens are already stored (read again as queries only): their
        keys/values are the stored ones, not added a second time."""
        if skip:
            k, v = k[:, :, skip:], v[:, :, skip:]
        b, h, n, hd = k.shape
        if self.keys[layer] is None:
            self.keys[layer] = k.new_empty(b, h, capacity, hd)
            self.values[layer] = v.new_empty(b, h, capacity, hd)
        stored = n if commit is True else int(commit)
        end = self.length + stored
        if end > capacity:
            raise ValueError(f"KV cache holds {self.length} of {capacity} tokens and cannot store {stored} more: "
                             "drop_oldest() first (a sliding window)")
        self.keys[layer][:, :, self.length : end] = k[:, :, :stored]
        self.values[layer][:, :, self.length : end] = v[:, :, :stored]
        if stored == n:
            return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]
        return (torch.cat([self.keys[layer][:, :, :end], k[:, :, stored:]], dim=2),
                torch.cat([self.values[layer][:, :, :end], v[:, :, stored:]], dim=2))

    def record(self, ids: torch.Tensor, positions: torch.Tensor, capacity: int) -> None:
        """Remember the ids [B, n] and positions [n] of the tokens about to be stored in the next n slots
        (call before the layers extend the cache)."""
        if self.tokens is None or self.tokens.shape[0] != ids.shape[0]:
            self.tokens = torch.full((ids.shape[0], capacity), -1, dtype=torch.long, device=ids.device)
            self.positions = torch.full((capacity,), -1, dtype=torch.long, device=ids.device)
        n = min(ids.shape[1], self.tokens.shape[1] - self.length)
        self.tokens[:, self.length : self.length + n] = ids[:, :n]
        self.positions[self.length : self.length + n] = positions[:n].to(self.positions.device)

    def token_at(self, position: int) -> torch.Tensor | None:
        """The ids [B] of the stored token that held `position`, or None if no slot holds it."""
        if self.positions is None:
            return None
        slots = (self.positions[: self.length] == position).nonzero().flatten()
        if len(slots) == 0 or bool((self.tokens[:, slots[-1]] < 0).any()):
            return None
        return self.tokens[:, slots[-1]]

    def keep(self, index: torch.Tensor) -> None:
        """Keep only the stored tokens at `index` (positions in the cache, in order), dropping the rest.

        Attention without a mask does not depend on the order of keys (positions are already
        rotated in), so a bidirectional model may keep any subset: a prefix, or a prefix and a
        suffix around a block that is recomputed (Fast-dLLM's dual cache)."""
        index = index.to(self.keys[0].device if self.keys[0] is not None else index.device)
        n = len(index)
        for store in (self.keys, self.values):
            for buf in store:
                if buf is not None:
                    buf[:, :, :n] = buf[:, :, index].clone()
        if self.tokens is not None:
            index = index.to(self.tokens.device)
            self.tokens[:, :n] = self.tokens[:, index].clone()
            self.positions[:n] = self.positions[index].clone()
        self.length = n

    def drop_oldest(self, n: int) -> None:
        """Forget the first `n` stored tokens (a sliding context window)."""
        if n > 0:
            self.keep(torch.arange(n, self.length))

    def rows(self, index: torch.Tensor) -> KVCache:
        """A copy of the stored tokens of the batch rows at `index`, for peeking at a subset of sequences
        (commit=False only: it has no room for more tokens)."""
        out = KVCache(len(self.keys))
        out.keys = [None if b is None else b[index, :, : self.length] for b in self.keys]
        out.values = [None if b is None else b[index, :, : self.length] for b in self.values]
        out.length = self.length
        if self.tokens is not None:
            out.tokens = self.tokens[index.to(self.tokens.device), : self.length]
            out.positions = self.positions[: self.length]
        return out


class RowsKVCache:
    """The KV caches of several calls run as one forward pass (serve/merge.py merges concurrent requests).

    The pass's batch is the calls' rows stacked in order, each call's new tokens right-padded to the longest.
    `members` lists, per call, (its own KVCache or None for a call without one, its rows, its new tokens, its
    commit). Each layer's `extend` hands every call's unpadded new keys/values to that call's own cache, exactly
    as the call alone would, and returns all rows' [stored, new] keys/values left-aligned and zero-padded to
    the widest (`width`): the caller masks every key past a row's own past + new. `finish` then advances each
    call's cache by what it stored (the model's own `length += ...` lands on this object, unused)."""

    def __init__(self, members: list[tuple[KVCache | None, int, int, bool | int]]):
        self.members = members
        self.past = [0 if cache is None else cache.length for cache, *_ in members]
        self.width = max(past + new for past, (_, _, new, _) in zip(self.past, members))
        self.length = 0

    def extend(self, layer: int, k: torch.Tensor, v: torch.Tensor, capacity: int,
               commit: bool | int = True, skip: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        if skip:
            raise ValueError("a merged pass reads no query-only tokens")
        b, h, _, hd = k.shape
        keys, values = k.new_zeros(b, h, self.width, hd), v.new_zeros(b, h, self.width, hd)
        row = 0
        for cache, rows, new, own_commit in self.members:
            ki, vi = k[row : row + rows, :, :new], v[row : row + rows, :, :new]
            if cache is not None:
                ki, vi = cache.extend(layer, ki, vi, capacity, own_commit)
            keys[row : row + rows, :, : ki.shape[2]] = ki
            values[row : row + rows, :, : vi.shape[2]] = vi
            row += rows
        return keys, values

    def record(self, ids: torch.Tensor, positions: torch.Tensor, capacity: int) -> None:
        """Each call's cache records its own rows' ids and positions ([B, n]) of the tokens it stores."""
        row = 0
        for cache, rows, new, own_commit in self.members:
            stored = new if own_commit is True else int(own_commit)
            if cache is not None and stored > 0:
                cache.record(ids[row : row + rows, :stored], positions[row, :stored], capacity)
            row += rows

    def finish(self) -> None:
        """After the pass: each call's cache now holds the tokens it committed."""
        for cache, _, new, own_commit in self.members:
            if cache is not None:
                cache.length += new if own_commit is True else int(own_commit)
