"""KV caches on the LLaMA-style network (LLaDA, Dream, adapted SmolLM2 / Llama / Qwen2 / Mistral folders).

Exact where the math says so: a cached call whose cache was filled from the same sequence (nothing changed since)
equals the plain forward, for the prefix and the dual cache, with Dream's logit shift (a block's first position
reads the cached token before it) and with the AR-adapted model's [START]-shifted view; a causal network fed token
by token equals its one-pass forward. How far the approximate caches drift once the block changes is measured by
benchmarks/llama_cache_cost.py, not asserted here."""

from __future__ import annotations

import pytest
import torch

from textdiffusion.api.pipeline import Pipeline
from textdiffusion.core.errors import UserError
from textdiffusion.data.tokenizers import ByteTokenizer
from textdiffusion.interop.llama_like import LlamaLike, LlamaLikeConfig
from textdiffusion.models.shifted import ShiftedDenoiser
from textdiffusion.processes import MaskedDiffusion

VOCAB, ROWS, LENGTH = 37, 40, 16


def network(**options) -> LlamaLike:
    """A random LlamaLike with grouped-query attention (4 query heads, 2 kv heads) and q/k/v biases."""
    cfg = LlamaLikeConfig(embed_rows=ROWS, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                          num_kv_heads=2, rms_norm_eps=1e-6, rope_theta=10000.0, seq_len=LENGTH, vocab_size=VOCAB,
                          qkv_bias=True, **options)
    torch.manual_seed(0)
    model = LlamaLike(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model


DENOISERS = {
    "llada": lambda: network(),
    "dream": lambda: network(shift_logits=True),
    "adapted": lambda: ShiftedDenoiser(network(), start_id=VOCAB - 1),  # [START] x_t, as adapt_llama trains it
}


@pytest.fixture
def ids() -> torch.Tensor:
    return torch.randint(0, VOCAB, (3, LENGTH), generator=torch.Generator().manual_seed(1))


def filled(denoiser, ids):
    cache = denoiser.new_cache()
    with torch.no_grad():
        out = denoiser(ids, cache=cache)
    return cache, out


@pytest.mark.parametrize("kind", DENOISERS)
def test_a_pass_that_fills_the_cache_equals_the_plain_forward(kind, ids):
    denoiser = DENOISERS[kind]()
    with torch.no_grad():
        plain = denoiser(ids)
    cache, out = filled(denoiser, ids)
    torch.testing.assert_close(out, plain, atol=1e-5, rtol=1e-5)
    assert cache.length == LENGTH


@pytest.mark.parametrize("lo", [1, 5, 12])
@pytest.mark.parametrize("kind", DENOISERS)
def test_prefix_cache_over_an_unchanged_prefix_equals_no_cache(kind, lo, ids):
    """Fast-dLLM's prefix cache at the block start [lo, L): the suffix is recomputed against the cached prefix."""
    denoiser = DENOISERS[kind]()
    with torch.no_grad():
        plain = denoiser(ids)
    cache, _ = filled(denoiser, ids)
    cache.keep(torch.arange(lo))
    with torch.no_grad():
        out = denoiser(ids[:, lo:], cache=cache, commit=False, positions=torch.arange(lo, LENGTH))
    torch.testing.assert_close(out, plain[:, lo:], atol=1e-5, rtol=1e-5)
    assert cache.length == lo  # commit=False stored nothing


@pytest.mark.parametrize("block", [(0, 4), (5, 9), (12, 16)])
@pytest.mark.parametrize("kind", DENOISERS)
def test_dual_cache_over_an_unchanged_sequence_equals_no_cache(kind, block, ids):
    """Fast-dLLM's dual cache: prefix and suffix cached, only the block recomputed; a subset of rows too."""
    lo, hi = block
    denoiser = DENOISERS[kind]()
    with torch.no_grad():
        plain = denoiser(ids)
    cache, _ = filled(denoiser, ids)
    cache.keep(torch.cat([torch.arange(lo), torch.arange(hi, LENGTH)]))
    with torch.no_grad():
        out = denoiser(ids[:, lo:hi], cache=cache, commit=False, positions=torch.arange(lo, hi))
        rows = torch.tensor([2, 0])
        peek = denoiser(ids[rows, lo:hi], cache=cache.rows(rows), commit=False, positions=torch.arange(lo, hi))
    torch.testing.assert_close(out, plain[:, lo:hi], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(peek, plain[rows, lo:hi], atol=1e-5, rtol=1e-5)


def test_dream_block_start_reads_the_cached_token_before_it(ids):
    """The shifted position at a block's start is the output at lo - 1: a changed token there changes it, and the
    block's own first output (what a cache that forgot the shift would use) is something else."""
    dream, plain_net = network(shift_logits=True), network()
    lo = 6
    cache, _ = filled(dream, ids)
    cache.keep(torch.arange(lo))
    with torch.no_grad():
        first = dream(ids[:, lo:], cache=cache, commit=False, positions=torch.arange(lo, LENGTH))[:, 0]
        unshifted = plain_net(ids)[:, lo]  # the same weights without the shift: the block's own first output
    assert not torch.allclose(first, unshifted, atol=1e-3)
    with torch.no_grad():
        torch.testing.assert_close(first, plain_net(ids)[:, lo - 1], atol=1e-5, rtol=1e-5)


def test_causal_network_token_by_token_equals_one_pass(ids):
    model = network(causal=True)
    with torch.no_grad():
        plain = model(ids)
        cache = model.new_cache()
        steps = [model(ids[:, :3], cache=cache)] + [model(ids[:, i : i + 1], cache=cache) for i in range(3, LENGTH)]
        # the causal network really is causal: a later token does not change an earlier output
        changed = ids.clone()
        changed[:, -1] = (changed[:, -1] + 1) % VOCAB
        torch.testing.assert_close(model(changed)[:, :-1], plain[:, :-1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat(steps, dim=1), plain, atol=1e-5, rtol=1e-5)


def test_block_causal_calls_with_a_committed_prefix_are_exact(ids):
    """What the block sampler does: clean blocks committed, the next block read under a mask over [cache; new]."""
    model = network()
    block = 4
    mask = torch.zeros(LENGTH, LENGTH, dtype=torch.bool)
    for b in range(0, LENGTH, block):  # block-causal: a token sees its own block and the blocks before
        mask[b : b + block, : b + block] = True
    with torch.no_grad():
        plain = model(ids, attn_mask=mask)
        cache = model.new_cache()
        outs = [model(ids[:, b : b + block], cache=cache, positions=torch.arange(b, b + block))
                for b in range(0, LENGTH, block)]
    torch.testing.assert_close(torch.cat(outs, dim=1), plain, atol=1e-5, rtol=1e-5)


def test_a_shifted_call_without_its_token_before_is_refused(ids):
    dream = network(shift_logits=True)
    cache = dream.new_cache()
    with pytest.raises(UserError, match="token before"):
        dream(ids[:, 4:8], cache=cache, commit=False, positions=torch.arange(4, 8))


def pipeline(denoiser_kind: str) -> Pipeline:
    tok = ByteTokenizer()
    cfg = dict(embed_rows=tok.vocab_size, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
               num_kv_heads=2, rms_norm_eps=1e-6, rope_theta=10000.0, seq_len=24, vocab_size=tok.vocab_size)
    torch.manual_seed(0)
    model = LlamaLike(LlamaLikeConfig(**cfg, shift_logits=denoiser_kind == "dream")).eval()
    process = MaskedDiffusion(vocab_size=tok.vocab_size, mask_id=tok.mask_id, logit_shift=denoiser_kind == "adapted")
    return Pipeline(model, process, tok, {})


@pytest.mark.parametrize("kind", ["llada", "dream", "adapted"])
def test_fast_samplers_run_with_every_cache(kind):
    """threshold / confidence with block_length and cache=prefix|dual run unchanged; a single block covering
    the whole sequence caches nothing, so its tokens equal cache=none's exactly."""
    pipe = pipeline(kind)
    outs = {}
    for cache in ("none", "prefix", "dual"):
        one_block = pipe.generate(num_samples=2, length=24, sampler="threshold", seed=3, threshold=0.5, cache=cache,
                                  block_length=24)
        outs[cache] = one_block.ids
        blocks = pipe.generate(num_samples=2, length=24, sampler="confidence", steps=12, seed=3, cache=cache,
                               block_length=8)
        assert not (blocks.ids == pipe.tokenizer.mask_id).any()
    assert torch.equal(outs["prefix"], outs["none"]) and torch.equal(outs["dual"], outs["none"])
