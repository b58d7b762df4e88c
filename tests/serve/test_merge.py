"""Merged passes (serve/merge.py): calls of other lengths, masks, positions and KV caches share one forward pass,
and each gets the logits (and leaves its cache in the state) it gets alone, for our Transformer, the Kuleshov DiT
and LlamaLike."""

from __future__ import annotations

import copy

import pytest
import torch

from textdiffusion.interop.llama_like import LlamaLike, LlamaLikeConfig
from textdiffusion.models import ModelConfig, Transformer
from textdiffusion.models.dit import KuleshovDiT, KuleshovDiTConfig
from textdiffusion.serve.merge import plan, row_call, run_rows

V, L = 29, 16


def scrambled(model: torch.nn.Module) -> torch.nn.Module:
    """Weights large enough that a wrongly seen key or position moves the logits well past float rounding
    (the default init, and adaLN-zero, leave attention nearly uniform)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model.eval()


MODELS = {
    "transformer": lambda: Transformer(ModelConfig(vocab_size=V, seq_len=L, d_model=16, n_layers=2, n_heads=2)),
    "transformer_t": lambda: Transformer(ModelConfig(vocab_size=V, seq_len=L, d_model=16, n_layers=2, n_heads=2,
                                                     time_conditioning=True)),
    "dit": lambda: KuleshovDiT(KuleshovDiTConfig(vocab_size=V, seq_len=L, d_model=16, n_layers=2, n_heads=2,
                                                 cond_dim=8, time_conditioning=True)),
    "llama": lambda: LlamaLike(LlamaLikeConfig(embed_rows=V + 3, hidden_size=16, intermediate_size=32, num_layers=2,
                                               num_heads=4, num_kv_heads=2, rms_norm_eps=1e-6, rope_theta=10000.0,
                                               seq_len=L, vocab_size=V, qkv_bias=True)),
}


def calls_for(model: torch.nn.Module) -> list[tuple[torch.Tensor, dict]]:
    """(ids, keyword arguments) of calls such as the samplers make, each with its own t, KV caches prefilled."""
    g = torch.Generator().manual_seed(1)
    timed = getattr(model.cfg, "time_conditioning", False)

    def ids(b: int, n: int) -> torch.Tensor:
        return torch.randint(0, V, (b, n), generator=g)

    def t(b: int) -> dict:
        return {"t": torch.rand(b, generator=g)} if timed else {}

    def mask(n: int, keys: int) -> torch.Tensor:
        m = torch.rand(n, keys, generator=g) < 0.6
        m[:, keys - n :] |= torch.eye(n, dtype=torch.bool)  # every query sees itself
        return m

    def prefilled(b: int, n: int) -> object:
        cache = model.new_cache()
        with torch.no_grad():
            model(ids(b, n), **t(b), cache=cache)
        return cache

    return [
        (ids(2, 12), t(2)),  # plain, the longest
        (ids(1, 7), {**t(1), "attn_mask": mask(7, 7), "positions": torch.tensor([3, 4, 5, 6, 3, 4, 5])}),
        (ids(2, 5), {**t(2), "positions": torch.tensor([[0, 1, 2, 3, 4], [6, 7, 8, 9, 10]])}),  # a position per row
        (ids(2, 4), {**t(2), "cache": prefilled(2, 5), "commit": False, "positions": torch.arange(5, 9)}),
        (ids(1, 6), {**t(1), "cache": prefilled(1, 3), "commit": 2, "attn_mask": mask(6, 9)}),  # default positions
        (ids(1, 10), {**t(1), "cache": model.new_cache()}),  # a fresh cache, every token stored
        (ids(1, 9), {**t(1), "outputs": slice(2, 6)}),
    ]


def alone_and_merged(model: torch.nn.Module):
    calls = calls_for(model)
    alone_calls = copy.deepcopy(calls)
    with torch.no_grad():
        alone = [model(ids, **kwargs) for ids, kwargs in alone_calls]
        rows = [row_call(model, ids, (), kwargs) for ids, kwargs in calls]
        assert all(row is not None for row in rows)  # every call above may share a pass
        merged = run_rows(model, rows)
    return alone, merged, [k.get("cache") for _, k in alone_calls], [k.get("cache") for _, k in calls]


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_a_merged_pass_gives_each_call_its_logits_alone(kind):
    model = scrambled(MODELS[kind]())
    alone, merged, alone_caches, merged_caches = alone_and_merged(model)
    for i, (a, m) in enumerate(zip(alone, merged)):
        assert a.shape == m.shape, i
        torch.testing.assert_close(m, a, atol=2e-5, rtol=1e-4, msg=f"call {i}")
    assert max((a - m).abs().max() for a, m in zip(alone, merged)) < 1e-4
    assert min(a.std() for a in alone) > 0.2  # logits that would show a wrong key or position
    for a, m in zip(alone_caches, merged_caches):  # each cache stored what it stores alone
        if a is None:
            continue
        assert m.length == a.length
        for layer in range(len(a.keys)):
            torch.testing.assert_close(m.keys[layer][:, :, : a.length], a.keys[layer][:, :, : a.length])
            torch.testing.assert_close(m.values[layer][:, :, : a.length], a.values[layer][:, :, : a.length])
        if a.tokens is not None:  # LlamaLike records ids and positions (Dream's shift reads them)
            assert torch.equal(m.tokens[:, : a.length], a.tokens[:, : a.length])
            assert torch.equal(m.positions[: a.length], a.positions[: a.length])


def test_calls_that_must_run_alone_are_refused():
    model = scrambled(MODELS["transformer"]())
    causal = Transformer(ModelConfig(vocab_size=V, seq_len=L, d_model=16, n_layers=1, n_heads=2, causal=True))
    ids = torch.zeros(1, 4, dtype=torch.long)
    assert row_call(model, ids, (), {}) is not None
    assert row_call(causal, ids, (), {}) is None  # its implied causal mask is the model's own rule
    assert row_call(model, ids, (), {"attn_mask": torch.zeros(4, 4)}) is None  # an additive (float) mask
    assert row_call(model, ids, (), {"marks": torch.zeros_like(ids)}) is None  # an edit model's marks
    assert row_call(model, torch.zeros(1, 14, dtype=torch.long), (), {"cache": _filled(model, 3)}) is None  # too long
    llama_dream = LlamaLike(LlamaLikeConfig(**{**MODELS["llama"]().cfg.to_dict(), "shift_logits": True}))
    assert row_call(llama_dream, ids, (), {"cache": llama_dream.new_cache()}) is None  # Dream's shift reads the cache
    assert row_call(llama_dream, ids, (), {"query_only": 1}) is None
    assert row_call(llama_dream, ids, (), {}) is not None


def _filled(model: torch.nn.Module, n: int):
    cache = model.new_cache()
    with torch.no_grad():
        model(torch.zeros(1, n, dtype=torch.long), cache=cache)
    return cache


@pytest.mark.parametrize("token_keys", [0.0, 96.0])
def test_plan_keeps_rows_and_padding_within_bounds(token_keys):
    model = Transformer(ModelConfig(vocab_size=V, seq_len=64, d_model=16, n_layers=1, n_heads=2)).eval()
    g = torch.Generator().manual_seed(3)
    rows = []
    for _ in range(40):  # pasts from none to 7x the longest call: key padding matters as much as query padding
        b, n, past = (int(torch.randint(lo, hi, (), generator=g)) for lo, hi in ((1, 4), (1, 9), (0, 57)))
        cache = _filled(model, past) if past else None
        rows.append(row_call(model, torch.zeros(b, n, dtype=torch.long), (), {"cache": cache} if cache else {}))
    passes = plan(rows, max_rows=9, max_padding=0.5, token_keys=token_keys)
    assert sorted(i for p in passes for i in p) == list(range(len(rows)))  # every call once
    for p in passes:
        width_q, width_k = max(rows[i].new for i in p), max(rows[i].past + rows[i].new for i in p)
        real = sum(rows[i].rows * rows[i].new * (token_keys + rows[i].past + rows[i].new) for i in p)
        assert sum(rows[i].rows for i in p) <= 9 or len(p) == 1
        assert sum(rows[i].rows for i in p) * width_q * (token_keys + width_k) <= 1.5 * real  # padded work
    assert len(passes) < len(rows) / 2  # and it did merge


def test_dreams_shifted_logits_merge_across_lengths_and_masks():
    """Dream reads position p's logits from the output at p - 1: right-padding leaves every real row's own."""
    model = scrambled(LlamaLike(LlamaLikeConfig(**{**MODELS["llama"]().cfg.to_dict(), "shift_logits": True})))
    g = torch.Generator().manual_seed(5)
    mask = torch.rand(6, 6, generator=g) < 0.5
    mask |= torch.eye(6, dtype=torch.bool)
    calls = [(torch.randint(0, V, (2, 11), generator=g), {}), (torch.randint(0, V, (1, 6), generator=g),
                                                               {"attn_mask": mask})]
    assert row_call(model, calls[0][0], (), {"outputs": slice(1, 3)}) is None  # alone, it shifts the kept ones
    with torch.no_grad():
        alone = [model(ids, **kwargs) for ids, kwargs in calls]
        merged = run_rows(model, [row_call(model, ids, (), kwargs) for ids, kwargs in calls])
    for a, m in zip(alone, merged):
        torch.testing.assert_close(m, a, atol=2e-5, rtol=1e-4)
