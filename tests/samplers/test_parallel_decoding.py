"""Confidence / threshold decoding (LLaDA, Fast-dLLM) and semi-autoregressive generation for masked models."""

from __future__ import annotations

import math

import pytest
import torch

from textdiffusion.core.errors import UserError
from textdiffusion.models import ModelConfig, Transformer
from textdiffusion.processes.block import BlockDiffusion
from textdiffusion.processes.masked import MaskedDiffusion
from textdiffusion.samplers.confidence import ConfidenceConfig, ThresholdConfig, confidence_sample, threshold_sample
from textdiffusion.samplers.mdlm import AncestralConfig, ancestral_sample
from textdiffusion.samplers.semi_ar import SemiARConfig, semi_ar_sample, windows
from textdiffusion.samplers.unmasking import confidence_score, reveal_counts, top_k_mask

V, MASK_ID, L = 11, 10, 12
PROC = MaskedDiffusion(V, MASK_ID)


def transformer(n_layers: int) -> Transformer:
    torch.manual_seed(0)
    m = Transformer(ModelConfig(vocab_size=V, seq_len=L, d_model=32, n_layers=n_layers, n_heads=2)).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return m


def start(n: int = 4) -> torch.Tensor:
    x = torch.full((n, L), MASK_ID)
    x[:, 2], x[1, 9] = 4, 7
    return x


def test_reveal_counts_is_llada_schedule():
    counts = reveal_counts(torch.tensor([10, 3, 0]), 4)
    assert counts.tolist() == [[3, 3, 2, 2], [1, 1, 1, 0], [0, 0, 0, 0]]


def test_top_k_mask_takes_the_best_finite_scores():
    score = torch.tensor([[0.1, 0.9, float("-inf"), 0.5], [0.3, float("-inf"), float("-inf"), 0.2]])
    assert top_k_mask(score, torch.tensor([2, 3])).tolist() == [[False, True, False, True], [True, False, False, True]]


def test_threshold_one_reveals_one_token_per_step():
    model = transformer(2)
    out = threshold_sample(model, PROC, start(), ThresholdConfig(threshold=1.0), torch.Generator().manual_seed(0),
                           record_frames=True)
    revealed = [int((f.ids != MASK_ID).sum(1)[0]) for f in out.frames]
    assert revealed == list(range(1, L + 1))  # row 0: the fixed token, then one more per step
    assert out.nfe == L - 1  # rows with fewer masks finish earlier inside the same passes


def test_threshold_zero_reveals_a_block_per_pass():
    model = transformer(2)
    out = threshold_sample(model, PROC, start(), ThresholdConfig(threshold=0.0, block_length=4),
                           torch.Generator().manual_seed(0))
    assert out.nfe == 3 and not bool((out.ids == MASK_ID).any())


@pytest.mark.parametrize("remasking", ["low_confidence", "random"])
def test_confidence_reveals_the_scheduled_number_and_keeps_fixed_tokens(remasking):
    model = transformer(2)
    out = confidence_sample(model, PROC, start(), ConfidenceConfig(steps=6, block_length=4, remasking=remasking),
                            torch.Generator().manual_seed(1), record_frames=True)
    masks = [int((f.ids[0] == MASK_ID).sum()) for f in out.frames]
    # row 0: blocks of 4 holding 3 (position 2 is fixed), 4 and 4 masks, 2 steps each: 2+1, 2+2, 2+2
    assert masks == [11, 9, 8, 6, 4, 2, 0]
    assert out.nfe == 6 and bool((out.ids[:, 2] == 4).all()) and int(out.ids[1, 9]) == 7


def test_low_confidence_prefers_confident_tokens():
    """The most confident position goes first: with a model whose confidence grows with position,
    a single block is revealed right to left."""

    class Sharper(torch.nn.Module):
        cfg = type("Cfg", (), {"time_conditioning": False, "seq_len": 6})()

        def forward(self, ids, t=None):
            scale = torch.arange(ids.shape[1], dtype=torch.float32)[None, :, None]
            logits = torch.zeros(*ids.shape, V)
            logits[..., 0] = scale[..., 0]  # token 0 ever more certain
            return logits

    out = confidence_sample(Sharper(), PROC, torch.full((1, 6), MASK_ID), ConfidenceConfig(steps=6, temperature=0),
                            record_frames=True)
    order = [int((f.ids[0] != MASK_ID).nonzero().min()) for f in out.frames[1:]]
    assert order == [5, 4, 3, 2, 1, 0]


def test_random_order_with_the_exact_posterior_samples_p_data(analytic, tiny_exact):
    """One token per step with exact conditionals: p_data, in any order and with any blocks. LLaDA's
    low-confidence choice depends on the drawn value, which biases it (the control)."""
    data = tiny_exact.tiny_data(4)
    exact = analytic.ExactDenoiser(data.p_data, tiny_exact.N_VALUES, 4)
    proc = MaskedDiffusion(tiny_exact.N_VALUES + 1, tiny_exact.N_VALUES)
    gen = torch.Generator().manual_seed(2)
    for block_length in (0, 2):
        cfg = ConfidenceConfig(steps=4, block_length=block_length, remasking="random")
        ids = confidence_sample(exact, proc, tiny_exact.masked_start(20000, 4), cfg, gen).ids
        tiny_exact.assert_valid(ids, 4)
        tiny_exact.assert_matches(ids, data.p_data, f"random order, block_length={block_length}")
    ids = confidence_sample(exact, proc, tiny_exact.masked_start(20000, 4), ConfidenceConfig(steps=4), gen).ids
    with pytest.raises(AssertionError):
        tiny_exact.assert_matches(ids, data.p_data, "low-confidence order")


@pytest.mark.parametrize("score", ["top", "margin", "entropy"])
def test_scores_that_ignore_the_drawn_value_sample_p_data_in_their_own_order(score, analytic, tiny_exact):
    """Ranking by the logits alone (MaskGIT's top probability, Dream's margin and entropy) picks an
    adaptive order but never looks at the drawn value: with exact conditionals and one token per step
    the chain rule holds along any such order, so LLaDA's schedule and Fast-dLLM at threshold 1 sample
    p_data exactly (the drawn-value score fails the same check: the test above)."""
    data = tiny_exact.tiny_data(4)
    exact = analytic.ExactDenoiser(data.p_data, tiny_exact.N_VALUES, 4)
    proc = MaskedDiffusion(tiny_exact.N_VALUES + 1, tiny_exact.N_VALUES)
    gen = torch.Generator().manual_seed(7)
    ids = confidence_sample(exact, proc, tiny_exact.masked_start(20000, 4), ConfidenceConfig(steps=4, score=score),
                            gen).ids
    tiny_exact.assert_matches(ids, data.p_data, f"low-confidence order by {score}")
    ids = threshold_sample(exact, proc, tiny_exact.masked_start(20000, 4), ThresholdConfig(1.0, score=score), gen).ids
    tiny_exact.assert_matches(ids, data.p_data, f"threshold 1 by {score}")


def test_the_drawn_value_score_biases_threshold_decoding_to_the_mode():
    """Two positions, context-free: A is 95/5, B 50/50, threshold 0.9. By the drawn value's probability,
    A is kept at the first pass only when it drew the likely value, else redrawn at the second: its rare
    value survives with probability 0.05**2. By the top probability A is kept whatever it drew: 0.05."""

    class Fixed(torch.nn.Module):
        cfg = type("Cfg", (), {"time_conditioning": False, "seq_len": 2})()

        def forward(self, ids, t=None):
            probs = torch.full((*ids.shape, V), 1e-30)
            probs[:, 0, :2] = torch.tensor([0.95, 0.05])
            probs[:, 1, :2] = torch.tensor([0.5, 0.5])
            return probs.log()

    n = 40000
    for score, rare in (("sampled", 0.05**2), ("top", 0.05)):
        ids = threshold_sample(Fixed(), PROC, torch.full((n, 2), MASK_ID), ThresholdConfig(0.9, score=score),
                               torch.Generator().manual_seed(8)).ids
        freq = float((ids[:, 0] == 1).double().mean())
        assert abs(freq - rare) < 5 * (rare * (1 - rare) / n) ** 0.5, (score, freq, rare)


def test_confidence_scores_of_a_known_distribution():
    probs = torch.tensor([[0.5, 0.3, 0.2, 0.0]], dtype=torch.float64)
    logits, drawn = probs.log(), torch.tensor([1])
    entropy = -sum(p * math.log(p) for p in (0.5, 0.3, 0.2))
    expected = {"sampled": 0.3, "top": 0.5, "margin": 0.2, "entropy": math.exp(-entropy)}
    for score, value in expected.items():
        assert float(confidence_score(logits, drawn, score)) == pytest.approx(value, rel=1e-12), score


def test_caches_are_exact_for_a_one_layer_model_and_approximate_beyond():
    """One layer: a key depends only on its own token, so Fast-dLLM's prefix and dual caches change
    nothing. Two layers: the cached keys are stale after the block changes, so samples differ."""
    for n_layers, exact in ((1, True), (2, False)):
        model = transformer(n_layers)
        outs = {cache: threshold_sample(model, PROC, start(8), ThresholdConfig(0.2, block_length=4, cache=cache),
                                        torch.Generator().manual_seed(3)).ids for cache in ("none", "prefix", "dual")}
        for cache in ("prefix", "dual"):
            assert torch.equal(outs[cache], outs["none"]) == exact, (n_layers, cache)
            assert not bool((outs[cache] == MASK_ID).any())


def test_cached_passes_read_fewer_tokens():
    model = transformer(2)
    lengths: list[int] = []
    original = model.forward

    def spy(ids, *args, **kwargs):
        lengths.append(ids.shape[1])
        return original(ids, *args, **kwargs)

    model.forward = spy
    try:
        confidence_sample(model, PROC, torch.full((2, L), MASK_ID), ConfidenceConfig(steps=6, block_length=4,
                          cache="dual"), torch.Generator().manual_seed(4))
    finally:
        del model.forward
    assert lengths == [12, 4] * 3  # per block: one refreshing full pass, then the block alone


@pytest.mark.parametrize("call, message", [
    (lambda m: confidence_sample(m, PROC, start(), ConfidenceConfig(steps=2, block_length=4)), "at least the number"),
    (lambda m: confidence_sample(m, PROC, start(), ConfidenceConfig(cache="both")), "cache must be"),
    (lambda m: confidence_sample(m, PROC, start(), ConfidenceConfig(remasking="greedy")), "remasking"),
    (lambda m: threshold_sample(m, PROC, start(), ThresholdConfig(threshold=1.5)), "threshold"),
    (lambda m: threshold_sample(m, PROC, start(), ThresholdConfig(score="maskgit")), "confidence score"),
    (lambda m: threshold_sample(m, PROC, start(), ThresholdConfig(block_length=-1)), "block_length"),
    (lambda m: threshold_sample(m, BlockDiffusion(V, MASK_ID), start(), ThresholdConfig()), "block"),
])
def test_bad_options_are_clear_errors(call, message):
    with pytest.raises(UserError, match=message):
        call(transformer(1))


# ---- semi-autoregressive ----------------------------------------------------------------------


def test_windows_cover_the_sequence_with_the_given_overlap():
    assert windows(10, 12, 6) == [(0, 10)]
    assert windows(30, 12, 6) == [(0, 12), (6, 18), (12, 24), (18, 30)]
    assert windows(31, 12, 8) == [(0, 12), (8, 20), (16, 28), (19, 31)]


def test_semi_ar_within_the_model_length_is_ancestral():
    model = transformer(2)
    a = semi_ar_sample(model, PROC, start(), SemiARConfig(steps=8), torch.Generator().manual_seed(5)).ids
    b = ancestral_sample(model, PROC, start(), AncestralConfig(steps=8), torch.Generator().manual_seed(5)).ids
    assert torch.equal(a, b)


def test_semi_ar_conditions_each_window_on_the_text_before_it():
    model = transformer(2)
    inputs: list[torch.Tensor] = []
    original = model.forward

    def spy(ids, *args, **kwargs):
        inputs.append(ids.clone())
        return original(ids, *args, **kwargs)

    model.forward = spy
    x = torch.full((2, 30), MASK_ID)
    x[:, 0] = 5
    try:
        out = semi_ar_sample(model, PROC, x, SemiARConfig(steps=4, stride=6), torch.Generator().manual_seed(6))
    finally:
        del model.forward
    assert out.ids.shape == (2, 30) and not bool((out.ids == MASK_ID).any()) and bool((out.ids[:, 0] == 5).all())
    assert max(i.shape[1] for i in inputs) == L
    # the first pass of each later window sees its first 6 tokens already written, and exactly those
    firsts = [i for i in inputs if int((i == MASK_ID).sum(1).max()) == 6 and not bool((i[:, :6] == MASK_ID).any())]
    starts = [s for s, _ in windows(30, L, 6)][1:]
    assert len(firsts) >= len(starts)
    for s, seen in zip(starts, firsts):
        assert torch.equal(seen[:, :6], out.ids[:, s : s + 6])


def test_blocks_start_after_the_prompt():
    """LLaDA cuts semi-AR blocks from the end of the prompt: a 3-token prompt, blocks of 4 -> [3, 7), ..."""
    from textdiffusion.samplers.confidence import blocks_with_masks

    x = torch.full((2, L), MASK_ID)
    x[:, :3] = 1
    assert blocks_with_masks(x, MASK_ID, 4) == [(3, 7), (7, 11), (11, 12)]
    assert blocks_with_masks(x, MASK_ID, 0) == [(3, 12)]
    assert blocks_with_masks(torch.ones(2, L, dtype=torch.long), MASK_ID, 4) == []


def test_non_finite_logits_are_a_clear_error():
    class Broken(torch.nn.Module):
        cfg = type("Cfg", (), {"time_conditioning": False, "seq_len": L})()

        def forward(self, ids, t=None):
            logits = torch.zeros(*ids.shape, V)
            logits[:, 3, 2] = float("nan")
            return logits

    with pytest.raises(UserError, match="NaN"):
        threshold_sample(Broken(), PROC, start(), ThresholdConfig())


def test_semi_ar_windows_must_overlap():
    with pytest.raises(UserError, match="overlap"):
        semi_ar_sample(transformer(1), PROC, torch.full((1, 30), MASK_ID), SemiARConfig(stride=L))


def test_store_rows_leaves_uncomputed_rows_finite():
    from textdiffusion.samplers.base import store_rows

    store = store_rows(None, torch.tensor([True, False, True]), torch.ones(2, 4, 5), batch=3)
    assert torch.equal(store[1], torch.zeros(4, 5)) and bool((store[[0, 2]] == 1).all())
    store = store_rows(store, None, torch.full((3, 4, 5), 2.0), batch=3)
    assert bool((store == 2).all())
