"""The "dilated" unmasking rule: a fixed dyadic order that never reveals two neighbours in one pass.

Exact check: on a first-order Markov chain, tokens that a revealed token separates are conditionally
independent, so drawing every position of a pass at once from the exact conditionals samples the chain's
law exactly -- with about log2(n) passes instead of n. The controls: the same number of passes in a
random order (neighbours drawn together), and the dilated order on a law with long-range dependence.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from textdiffusion.processes.block import BlockDiffusion
from textdiffusion.processes.masked import MaskedDiffusion
from textdiffusion.samplers.block import BlockConfig, block_sample
from textdiffusion.samplers.confidence import ConfidenceConfig, confidence_sample
from textdiffusion.samplers.unmasking import dilation_levels

LENGTH, VALUES = 8, 2  # binary tokens: every position of the [MASK] pattern table is 3**8 rows
SEQS = torch.tensor(list(itertools.product(range(VALUES), repeat=LENGTH)))  # as analytic.all_sequences(VALUES, LENGTH)


def markov_law() -> torch.Tensor:
    """p(x) = pi(x_0) prod_i T(x_{i-1}, x_i): sticky and asymmetric, so neighbours are strongly dependent."""
    start = torch.tensor([0.3, 0.7], dtype=torch.float64)
    move = torch.tensor([[0.9, 0.1], [0.25, 0.75]], dtype=torch.float64)
    law = start[SEQS[:, 0]]
    for i in range(1, LENGTH):
        law = law * move[SEQS[:, i - 1], SEQS[:, i]]
    return law


def test_dilation_levels_of_a_block_of_sixteen():
    assert dilation_levels(16).tolist() == [0, 4, 3, 4, 2, 4, 3, 4, 1, 4, 3, 4, 2, 4, 3, 4]
    assert dilation_levels(1).tolist() == [0]


@pytest.mark.parametrize("n", range(1, 41))
def test_positions_of_one_pass_are_separated_by_an_earlier_pass(n):
    levels = dilation_levels(n)
    assert int(levels.max()) + 1 == max(n - 1, 0).bit_length() + 1  # ceil(log2 n) + 1 passes
    for level in range(int(levels.max()) + 1):
        same = (levels == level).nonzero().flatten().tolist()
        assert same, f"pass {level} of a block of {n} reveals nothing"
        for a, b in zip(same, same[1:]):
            assert b - a >= 2 and bool((levels[a + 1 : b] < level).any())


def test_the_dilated_order_samples_a_markov_chain_exactly(analytic, tiny_exact):
    law = markov_law()
    exact = analytic.ExactDenoiser(law, VALUES, LENGTH)
    proc = MaskedDiffusion(VALUES + 1, VALUES)
    gen = torch.Generator().manual_seed(3)
    for block_length, passes in ((0, 4), (4, 6)):
        out = confidence_sample(exact, proc, torch.full((20000, LENGTH), VALUES),
                                ConfidenceConfig(block_length=block_length, remasking="dilated"), gen)
        assert out.nfe == passes
        assert bool((out.ids < VALUES).all()), "a [MASK] survived"
        tiny_exact.assert_matches(out.ids, law, f"dilated order, block_length={block_length}", VALUES)
    random_order = confidence_sample(exact, proc, torch.full((20000, LENGTH), VALUES),
                                     ConfidenceConfig(steps=4, remasking="random"), gen)
    with pytest.raises(AssertionError):
        tiny_exact.assert_matches(random_order.ids, law, "random order, two tokens per pass", VALUES)


def test_the_dilated_order_infills_around_a_fixed_token_and_skips_its_pass(analytic, tiny_exact):
    law = markov_law()
    exact = analytic.ExactDenoiser(law, VALUES, LENGTH)
    x = torch.full((20000, LENGTH), VALUES)
    x[:, 4] = 1  # pass 1 of a block of 8 would reveal position 4: it is given, so the pass is skipped
    out = confidence_sample(exact, MaskedDiffusion(VALUES + 1, VALUES), x, ConfidenceConfig(remasking="dilated"),
                            torch.Generator().manual_seed(4))
    assert out.nfe == 3 and bool((out.ids[:, 4] == 1).all())
    cond = analytic.conditional_law(law, SEQS, (4,)) * (SEQS[:, 4] == 1)
    tiny_exact.assert_matches(out.ids, cond, "dilated infilling", VALUES)


def test_block_diffusion_with_the_dilated_rule_samples_a_markov_chain_exactly(analytic, tiny_exact):
    law = markov_law()
    exact = analytic.PaddedExact(analytic.ExactDenoiser(law, VALUES, LENGTH))
    proc = BlockDiffusion(VALUES + 1, VALUES, block_size=4)
    out = block_sample(exact, proc, torch.full((20000, LENGTH), VALUES),
                       BlockConfig(rule="dilated", cache=False, stop_at_eos=False), torch.Generator().manual_seed(5))
    assert out.nfe == 6  # {0}, {2}, {1, 3} in each of two blocks
    tiny_exact.assert_matches(out.ids, law, "block diffusion, dilated order", VALUES)


def test_long_range_dependence_breaks_the_dilated_order(analytic, tiny_exact):
    """The exactness above is the Markov property's: a law where positions 1 and 3 depend on each other
    beyond position 2 is not sampled exactly when they are drawn in one pass."""
    data = tiny_exact.tiny_data(4)
    exact = analytic.ExactDenoiser(data.p_data, tiny_exact.N_VALUES, 4)
    ids = confidence_sample(exact, MaskedDiffusion(tiny_exact.N_VALUES + 1, tiny_exact.N_VALUES),
                            tiny_exact.masked_start(20000, 4), ConfidenceConfig(remasking="dilated"),
                            torch.Generator().manual_seed(6)).ids
    with pytest.raises(AssertionError):
        tiny_exact.assert_matches(ids, data.p_data, "dilated order on a Dirichlet law")
