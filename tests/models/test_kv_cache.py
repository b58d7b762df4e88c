"""The KV cache's bookkeeping: which token and position each slot holds follows every keep / drop / rows."""

from __future__ import annotations

import torch

from textdiffusion.models.kv_cache import KVCache, RowsKVCache


def stored_cache(length: int = 10) -> tuple[KVCache, torch.Tensor]:
    """A one-layer cache of `length` tokens whose keys encode their positions (key[..., 0] = position)."""
    ids = torch.arange(100, 100 + 2 * length).view(2, length)  # row r, position p: id 100 + r * length + p
    cache = KVCache(1)
    cache.record(ids, torch.arange(length), capacity=length)
    keys = torch.arange(length, dtype=torch.float32).view(1, 1, length, 1).expand(2, 1, length, 1)
    cache.extend(0, keys, keys.clone(), capacity=length, commit=True)
    cache.length = length
    return cache, ids


def test_keep_moves_tokens_positions_and_keys_together():
    cache, ids = stored_cache()
    cache.keep(torch.tensor([0, 1, 2, 7, 8, 9]))  # a dual cache around the block [3, 7)
    assert cache.length == 6
    assert cache.keys[0][0, 0, :6, 0].tolist() == [0, 1, 2, 7, 8, 9]
    for p in (0, 2, 7, 9):
        assert torch.equal(cache.token_at(p), ids[:, p])
    assert cache.token_at(4) is None  # dropped with the block


def test_drop_oldest_and_rows_keep_the_bookkeeping():
    cache, ids = stored_cache()
    cache.drop_oldest(4)
    assert torch.equal(cache.token_at(5), ids[:, 5]) and cache.token_at(3) is None
    peek = cache.rows(torch.tensor([1]))
    assert torch.equal(peek.token_at(9), ids[1:, 9]) and peek.length == 6


def test_skipped_tokens_are_read_not_stored_again():
    cache, _ = stored_cache(6)
    cache.keep(torch.arange(4))
    new = torch.full((2, 1, 3, 1), -1.0)  # the first of three new tokens is already stored (query only)
    k, _ = cache.extend(0, new, new.clone(), capacity=6, commit=False, skip=1)
    assert k.shape[2] == 4 + 2 and k[0, 0, :, 0].tolist() == [0, 1, 2, 3, -1, -1]


def test_rows_cache_hands_each_call_its_own_keys_and_pads_the_rest():
    """Three calls in one pass: 2 new tokens onto 3 stored (all kept), 4 onto 1 (2 kept), 3 with no cache."""
    first, second = KVCache(1), KVCache(1)
    for cache, stored in ((first, 3), (second, 1)):
        keys = torch.arange(1, stored + 1, dtype=torch.float32).view(1, 1, stored, 1)  # stored keys 1, 2, ...
        cache.extend(0, keys, -keys, capacity=8, commit=True)  # values: minus the keys
        cache.length = stored
    rows = RowsKVCache([(first, 1, 2, True), (second, 1, 4, 2), (None, 1, 3, True)])
    new = torch.full((3, 1, 4, 1), 0.0)
    new[:, 0, :, 0] = torch.tensor([10.0, 20.0, 30.0, 40.0])  # the pass's new keys, right-padded to 4
    k, v = rows.extend(0, new, -new, capacity=8)
    assert rows.width == 5 and k.shape == (3, 1, 5, 1)
    assert k[0, 0, :, 0].tolist() == [1, 2, 3, 10, 20]  # its stored keys, then its 2 real new ones
    assert k[1, 0, :, 0].tolist() == [1, 10, 20, 30, 40]
    assert k[2, 0, :, 0].tolist() == [10, 20, 30, 0, 0]  # its padded key slot is zero (the mask hides it)
    assert torch.equal(v, -k)
    rows.finish()
    assert (first.length, second.length) == (5, 3)  # each stored what it committed, nothing of the padding
    assert first.keys[0][0, 0, :5, 0].tolist() == [1, 2, 3, 10, 20]
    assert second.keys[0][0, 0, :3, 0].tolist() == [1, 10, 20]
