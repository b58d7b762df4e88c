"""Block diffusion (BD3-LM): the vectorised training pass, its limits B = L (MDLM) and B = 1 (AR),
and the block sampler's exact KV cache, sliding window and [EOS] stop.

The references are computed independently of the code under test: per-block forward passes on the
literal context each block conditions on, a causal mask built with torch.tril, MDLM's own loss,
and the exact posterior of a known tiny distribution (`analytic.ExactDenoiser`).
"""

from __future__ import annotations

import pytest
import torch

from textdiffusion.core.errors import UserError
from textdiffusion.models import ModelConfig, Transformer
from textdiffusion.processes.block import BlockDiffusion, block_causal_mask, training_mask
from textdiffusion.processes.masked import MaskedDiffusion
from textdiffusion.samplers.block import BlockConfig, block_sample, first_eos_fill

V, MASK_ID, L = 11, 10, 12


@pytest.fixture(scope="module")
def model() -> Transformer:
    torch.manual_seed(0)
    m = Transformer(ModelConfig(vocab_size=V, seq_len=L, d_model=32, n_layers=2, n_heads=2)).eval()
    with torch.no_grad():
        for p in m.parameters():  # larger weights than the init, so that attention patterns matter
            p.add_(0.3 * torch.randn_like(p))
    return m


def clean_batch(n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, MASK_ID, (n, L), generator=torch.Generator().manual_seed(seed))


def test_training_mask_by_hand():
    # L = 4, B = 2: rows/cols are x_t[0..3] then x0[0..3]
    expected = torch.tensor([
        [1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0],
        [0, 0, 1, 1, 1, 1, 0, 0],
        [0, 0, 1, 1, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 1, 1, 1],
        [0, 0, 0, 0, 1, 1, 1, 1],
    ], dtype=torch.bool)
    assert torch.equal(training_mask(4, 2), expected)
    assert torch.equal(block_causal_mask(4, 2), expected[4:, 4:])


@pytest.mark.parametrize("block_size", [1, 3, 5, L])
def test_one_pass_equals_a_pass_per_block(model, block_size):
    """The [x_t; x0] pass gives each noisy block the logits of a separate pass over its literal
    context: the clean blocks before it (block-causal among themselves) and the block itself."""
    proc = BlockDiffusion(V, MASK_ID, block_size=block_size)
    x0 = clean_batch()
    noise = proc.sample_noise(x0, torch.Generator().manual_seed(1))
    masked = noise["u"] >= proc.schedule.alpha(proc.token_t(noise["t"], L))
    xt = torch.where(masked, MASK_ID, x0)
    with torch.no_grad():
        fast = proc.denoiser_logits(model, xt, x0)
        for lo in range(0, L, block_size):
            hi = min(lo + block_size, L)
            context = torch.cat([x0[:, :lo], xt[:, lo:hi]], dim=1)
            slow = model(context, attn_mask=block_causal_mask(hi, block_size))[:, lo:hi]
            torch.testing.assert_close(fast[:, lo:hi], slow, atol=2e-5, rtol=1e-4)


def test_block_size_L_is_mdlm(model):
    x0 = clean_batch()
    proc = BlockDiffusion(V, MASK_ID, block_size=L)
    noise = proc.sample_noise(x0, torch.Generator().manual_seed(2))
    assert noise["t"].shape == (3, 1)
    mdlm = MaskedDiffusion(V, MASK_ID)
    with torch.no_grad():
        ours = proc.nelbo_per_sequence(model, x0, noise)
        ref = mdlm.nelbo_per_sequence(model, x0, {"t": noise["t"][:, 0], "u": noise["u"]})
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-5)


def ar_nll(model: Transformer, x0: torch.Tensor) -> torch.Tensor:
    """sum_l -log p(x_l | x_<l) with the input [x_<l, MASK] under a plain causal mask, one pass per l."""
    total = torch.zeros(len(x0))
    for pos in range(x0.shape[1]):
        inp = torch.cat([x0[:, :pos], torch.full((len(x0), 1), MASK_ID)], dim=1)
        causal = torch.ones(pos + 1, pos + 1, dtype=torch.bool).tril()
        logits = model(inp, attn_mask=causal)[:, -1].float()
        logits[:, MASK_ID] = float("-inf")
        total -= torch.log_softmax(logits, -1).gather(1, x0[:, pos : pos + 1]).squeeze(1)
    return total


def test_block_size_1_at_full_noise_is_the_ar_nll(model):
    """B = 1 with the mask rate clipped to 1: every token masked, weight 1/t = 1 -- the chain rule."""
    x0 = clean_batch()
    proc = BlockDiffusion(V, MASK_ID, block_size=1, mask_rate_min=1.0, mask_rate_max=1.0)
    noise = proc.train_noise(x0, torch.Generator().manual_seed(3))
    assert bool((noise["t"] == 1.0).all())
    with torch.no_grad():
        torch.testing.assert_close(proc.nelbo_per_sequence(model, x0, noise), ar_nll(model, x0), atol=1e-4, rtol=1e-5)


def test_block_size_1_bound_is_unbiased_for_the_ar_nll(model, tiny_exact):
    """For any t, a single token is masked with probability t and weighted 1/t: E[NELBO] = AR NLL."""
    x0 = clean_batch(2)
    proc = BlockDiffusion(V, MASK_ID, block_size=1)
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        draws = torch.stack([proc.nelbo_per_sequence(model, x0, proc.sample_noise(x0, gen)) for _ in range(3000)])
        ref = ar_nll(model, x0)
    mean, se = draws.double().mean(0), draws.double().std(0) / len(draws) ** 0.5
    assert bool(((mean - ref).abs() < tiny_exact.Z * se).all()), (mean, ref, se)


def test_noise_levels_per_block_and_the_clipped_schedule():
    x0 = clean_batch(64)
    proc = BlockDiffusion(V, MASK_ID, block_size=5, mask_rate_min=0.3, mask_rate_max=0.8)
    gen = torch.Generator().manual_seed(5)
    train, evaluation = proc.train_noise(x0, gen)["t"], proc.sample_noise(x0, gen)["t"]
    assert train.shape == evaluation.shape == (64, 3)  # ceil(12 / 5) blocks
    assert float(train.min()) >= 0.3 and float(train.max()) <= 0.8
    assert float(evaluation.min()) < 0.1 and float(evaluation.max()) > 0.9  # evaluation uses the full range
    assert proc.config()["block_size"] == 5 and proc.config()["mask_rate_min"] == 0.3


@pytest.mark.parametrize("kwargs, message", [
    ({"block_size": 0}, "block_size"),
    ({"mask_rate_min": 0.9, "mask_rate_max": 0.2}, "mask_rate_min"),
    ({"mask_rate_min": 0.2, "schedule": "cosine"}, "loglinear"),
])
def test_bad_options_are_clear_errors(kwargs, message):
    with pytest.raises(UserError, match=message):
        BlockDiffusion(V, MASK_ID, **kwargs)


def test_time_conditioned_model_is_rejected():
    m = Transformer(ModelConfig(vocab_size=V, seq_len=L, d_model=32, n_layers=1, n_heads=2, time_conditioning=True))
    proc = BlockDiffusion(V, MASK_ID, block_size=4)
    x0 = clean_batch()
    with pytest.raises(UserError, match="time conditioning"):
        proc.sampled_loss(m, x0)


# ---- the block sampler ----------------------------------------------------------------------


@pytest.mark.parametrize("block_size", [1, 3, 5, L])
@pytest.mark.parametrize("rule", ["ancestral", "low_confidence", "threshold", "dilated"])
def test_kv_cache_is_exact(model, block_size, rule):
    """Cached and recomputed sampling draw identical tokens (same seed), fixed tokens kept."""
    proc = BlockDiffusion(V, MASK_ID, block_size=block_size)
    x = torch.full((4, L), MASK_ID)
    x[:, 1], x[2, 7] = 3, 4
    runs = [block_sample(model, proc, x, BlockConfig(steps=3, rule=rule, threshold=0.3, cache=cache),
                         torch.Generator().manual_seed(6)) for cache in (True, False)]
    assert torch.equal(runs[0].ids, runs[1].ids)
    assert not bool((runs[0].ids == MASK_ID).any())
    assert bool((runs[0].ids[:, 1] == 3).all()) and int(runs[0].ids[2, 7]) == 4


def test_cached_logits_equal_recomputed_logits(model):
    from textdiffusion.samplers.block import BlockCacheView, BlockRecomputeView

    x = clean_batch(2)
    cached, recomputed = BlockCacheView(model, 3), BlockRecomputeView(model, 3)
    with torch.no_grad():
        for lo in range(0, L, 3):
            noisy = x.clone()
            noisy[:, lo + 1 :] = MASK_ID
            cached.start(noisy, lo, lo + 3)
            torch.testing.assert_close(cached.logits(noisy, lo, lo + 3, None),
                                       recomputed.logits(noisy, lo, lo + 3, None), atol=2e-5, rtol=1e-4)
            cached.finish(x, lo, lo + 3)


def test_block_sampler_with_the_exact_posterior_samples_p_data(analytic, tiny_exact):
    """One token per step, in random order inside each block, with exact conditionals: the chain
    rule makes the output law p_data exactly. Conditioning on the previous blocks is what makes it
    so: the same sampler with a context-free denoiser must fail."""
    data = tiny_exact.tiny_data(4)
    proc = BlockDiffusion(tiny_exact.N_VALUES + 1, tiny_exact.N_VALUES, block_size=2)
    cfg = BlockConfig(steps=2, rule="random", cache=False, stop_at_eos=False)
    gen = torch.Generator().manual_seed(7)
    exact = analytic.PaddedExact(analytic.ExactDenoiser(data.p_data, tiny_exact.N_VALUES, 4))
    ids = block_sample(exact, proc, tiny_exact.masked_start(20000, 4), cfg, gen).ids
    tiny_exact.assert_valid(ids, 4)
    tiny_exact.assert_matches(ids, data.p_data, "block sampler, exact posterior")
    blind = analytic.PaddedExact(analytic.ExactDenoiser(data.p_data, tiny_exact.N_VALUES, 4, context=False))
    ids = block_sample(blind, proc, tiny_exact.masked_start(20000, 4), cfg, gen).ids
    with pytest.raises(AssertionError):
        tiny_exact.assert_matches(ids, data.p_data, "block sampler, context-free denoiser")


def test_block_sampler_infills_from_both_sides_within_a_block(analytic, tiny_exact):
    data = tiny_exact.tiny_data(4)
    proc = BlockDiffusion(tiny_exact.N_VALUES + 1, tiny_exact.N_VALUES, block_size=4)
    exact = analytic.PaddedExact(analytic.ExactDenoiser(data.p_data, tiny_exact.N_VALUES, 4))
    fixed = {0: 2, 3: 1}
    ids = block_sample(exact, proc, tiny_exact.masked_start(20000, 4, fixed),
                       BlockConfig(steps=4, rule="random", cache=False), torch.Generator().manual_seed(8)).ids
    assert bool((ids[:, 0] == 2).all() and (ids[:, 3] == 1).all())
    context = (data.seqs[:, 0] == 2) & (data.seqs[:, 3] == 1)
    law = analytic.conditional_law(data.p_data, data.seqs, (0, 3)) * context  # p_data(gap | fixed), over sequences
    tiny_exact.assert_matches(ids, law, "block infilling, exact posterior")


def test_long_generation_slides_a_window_of_whole_blocks(model):
    """Past the trained length the model never sees more than seq_len tokens: the cache keeps the
    last seq_len - B tokens (whole blocks) and the block being written."""
    proc = BlockDiffusion(V, MASK_ID, block_size=5)
    seen: list[int] = []
    original = model.forward

    def spy(ids, *args, cache=None, **kwargs):
        seen.append(ids.shape[1] + (0 if cache is None else cache.length))
        return original(ids, *args, cache=cache, **kwargs)

    model.forward = spy
    try:
        out = block_sample(model, proc, torch.full((2, 3 * L + 1), MASK_ID), BlockConfig(steps=2),
                           torch.Generator().manual_seed(9))
    finally:
        del model.forward
    assert out.ids.shape == (2, 3 * L + 1) and not bool((out.ids == MASK_ID).any())
    # blocks of 5 in a window of 12: two blocks, or two and the short last block [35, 37)
    assert max(seen) == L and seen.count(L) <= 3 and set(seen) <= {5, 10, L}


class EosAfter(torch.nn.Module):
    """Writes 1, 2, 3, ... and [EOS] (token 9) from position `stop` on."""

    def __init__(self, stop: int):
        super().__init__()
        self.stop, self.cfg = stop, type("Cfg", (), {"seq_len": L, "time_conditioning": False})()

    def forward(self, ids, t=None, attn_mask=None, positions=None, cache=None, commit=True):
        pos = torch.arange(ids.shape[1]) if positions is None else positions
        target = torch.where(pos >= self.stop, 9, pos % 8 + 1)
        return torch.nn.functional.one_hot(target, V).float().expand(len(ids), -1, -1) * 50


def test_generation_stops_at_eos_and_blanks_what_follows():
    proc = BlockDiffusion(V, MASK_ID, block_size=4)
    cfg = BlockConfig(steps=1, cache=False, eos_id=9)
    short = block_sample(EosAfter(stop=6), proc, torch.full((1, 40), MASK_ID), cfg, torch.Generator().manual_seed(0))
    assert short.ids[0, :6].tolist() == [1, 2, 3, 4, 5, 6] and bool((short.ids[0, 6:] == 9).all())
    assert short.nfe == 2  # blocks [0, 4) and [4, 8); the 8 blocks after the [EOS] are skipped
    cfg = BlockConfig(steps=1, cache=False, eos_id=9, stop_at_eos=False)
    full = block_sample(EosAfter(stop=6), proc, torch.full((1, 40), MASK_ID), cfg, torch.Generator().manual_seed(0))
    assert full.nfe == 10


def test_first_eos_fill_leaves_fixed_tokens():
    x = torch.tensor([[1, 9, 2, 3, 9, 4], [1, 2, 3, 4, 5, 6]])
    generated = torch.tensor([[1, 1, 1, 0, 1, 1], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    first_eos_fill(x, generated, eos_id=9)
    assert x.tolist() == [[1, 9, 9, 3, 9, 9], [1, 2, 3, 4, 5, 6]]


def test_block_sampler_refuses_other_processes(model):
    with pytest.raises(UserError, match="block diffusion"):
        block_sample(model, MaskedDiffusion(V, MASK_ID), torch.full((1, L), MASK_ID), BlockConfig())
    with pytest.raises(UserError, match="rule"):
        block_sample(model, BlockDiffusion(V, MASK_ID), torch.full((1, L), MASK_ID), BlockConfig(rule="greedy"))


# ---- through the pipeline ---------------------------------------------------------------------


def test_a_trained_block_run_generates_past_its_length(tmp_path):
    import json

    from textdiffusion.api.pipeline import Pipeline
    from textdiffusion.train.config import load_config
    from textdiffusion.train.trainer import train

    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"to be or not to be, that is question {i}."}) + "\n"
                              for i in range(200)))
    cfg = load_config("tiny", [f"data.source={corpus}", "process.name=block", "process.block_size=4",
                               "process.mask_rate_min=0.2", "train.steps=3", f"run.out_dir={tmp_path / 'run'}",
                               "run.progress=false", "run.sample_steps=2"])
    pipe = Pipeline.from_pretrained(train(cfg), device="cpu")
    assert pipe.process.name == "block" and pipe.process.block_size == 4 and pipe.process.mask_rate_min == 0.2
    assert pipe.max_length() is None and pipe.process.default_sampler == "block"
    out = pipe.generate(num_samples=2, length=3 * pipe.seq_len, prompt="to be", seed=0, steps=2, stop_at_eos=False)
    assert out.ids.shape == (2, 3 * pipe.seq_len) and all(t.startswith("to be") for t in out.texts)
    assert not bool((out.ids == pipe.tokenizer.mask_id).any())
    with pytest.raises(UserError, match="block diffusion models use sampler 'block'"):
        pipe.generate(sampler="ancestral")
    [res] = pipe.score("to be or not to be")
    assert res.nats_per_token > 0 and not res.exact


def test_pipeline_length_limits_follow_the_sampler(tiny_pipeline):
    long = 2 * tiny_pipeline.seq_len + 3
    out = tiny_pipeline.generate(num_samples=1, length=long, sampler="semi_ar", seed=0, steps=4)
    assert out.ids.shape == (1, long) and not bool((out.ids == tiny_pipeline.tokenizer.mask_id).any())
    with pytest.raises(UserError, match="semi_ar"):
        tiny_pipeline.generate(length=long)
    with pytest.raises(UserError, match="sampler 'block' needs one"):
        tiny_pipeline.generate(sampler="block")


def test_whole_length_blocks_past_the_length_need_no_context(model):
    """With B = L every window holds just the block being written, so even past the trained length the
    cached run equals the recomputed one (and no finished block is ever stored)."""
    proc = BlockDiffusion(V, MASK_ID, block_size=L)
    x = torch.full((2, 3 * L), MASK_ID)
    runs = [block_sample(model, proc, x, BlockConfig(steps=4, cache=cache), torch.Generator().manual_seed(10))
            for cache in (True, False)]
    assert torch.equal(runs[0].ids, runs[1].ids) and runs[0].nfe == runs[1].nfe


def test_one_layer_cache_equals_recompute_past_the_length():
    """With one layer a cached key depends only on its token and position, so even past the trained
    length (sliding window, positions beyond the rotary tables) the cache changes nothing."""
    torch.manual_seed(1)
    one = Transformer(ModelConfig(vocab_size=V, seq_len=L, d_model=32, n_layers=1, n_heads=2)).eval()
    x = torch.full((3, 3 * L + 1), MASK_ID)
    x[:, 0], x[1, 17] = 2, 5
    for block_size in (3, 5):
        proc = BlockDiffusion(V, MASK_ID, block_size=block_size)
        runs = [block_sample(one, proc, x, BlockConfig(steps=2, cache=cache), torch.Generator().manual_seed(11))
                for cache in (True, False)]
        assert torch.equal(runs[0].ids, runs[1].ids), block_size


def test_eos_stops_only_past_the_length_unless_asked():
    proc = BlockDiffusion(V, MASK_ID, block_size=4)
    default, asked = (BlockConfig(steps=1, eos_id=9, cache=False, stop_at_eos=stop) for stop in (None, True))
    x = torch.full((1, L), MASK_ID)
    within = block_sample(EosAfter(stop=6), proc, x, default, torch.Generator().manual_seed(0))
    assert within.ids[0].tolist() == [1, 2, 3, 4, 5, 6, 9, 9, 9, 9, 9, 9]  # what the model wrote, all of it
    assert within.nfe == 3
    asked = block_sample(EosAfter(stop=6), proc, x, asked, torch.Generator().manual_seed(0))
    assert asked.nfe == 2


def test_block_size_longer_than_the_model_is_a_clear_error(model):
    with pytest.raises(UserError, match="longer than the model"):
        block_sample(model, BlockDiffusion(V, MASK_ID, block_size=L + 4), torch.full((1, 20), MASK_ID), BlockConfig())
    with pytest.raises(UserError, match="longer than the 12-token"):
        BlockDiffusion(V, MASK_ID, block_size=L + 4).sampled_loss(model, clean_batch())


def test_rows_without_masks_in_a_block_are_not_read(model):
    """Infilling leaves some rows with nothing to write in a block: their logits are never computed,
    and must not be mistaken for a broken model (no garbage from uninitialised memory)."""
    proc = BlockDiffusion(V, MASK_ID, block_size=4)
    x = clean_batch(4)
    x[0, 5], x[2, 9:11] = MASK_ID, MASK_ID  # rows 1 and 3 have nothing to generate anywhere
    for _ in range(20):
        out = block_sample(model, proc, x, BlockConfig(steps=3), torch.Generator().manual_seed(12))
        assert not bool((out.ids == MASK_ID).any()) and torch.equal(out.ids[1], x[1])
