"""The pass ceiling of threshold decoding: by hand, and against the block sampler itself."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from textdiffusion.eval.pass_ceiling import next_token_confidence, threshold_passes
from textdiffusion.processes.block import BlockDiffusion
from textdiffusion.samplers.block import BlockConfig, block_sample


def test_threshold_passes_by_hand():
    c = torch.tensor([0.95, 0.2, 0.99, 0.3, 0.91, 0.92, 0.93, 0.94])
    assert threshold_passes(c, 4, 0.9) == (1 + 2) + 1  # block 1: the two above, then the two under one by one
    assert threshold_passes(c, 8, 0.9) == 1 + 2
    assert threshold_passes(c, 1, 0.9) == 8  # one token per pass, whatever the confidence
    assert threshold_passes(c, 4, 0.1) == 2  # nothing under: one pass per block
    assert threshold_passes(c, 4, 0.95) == (1 + 3) + 4  # 0.95 is not above 0.95, as in the sampler; block 2 all under
    assert threshold_passes(c[:6], 4, 0.9) == 3 + 1  # a last, shorter block


def test_threshold_passes_refuses_bad_shapes():
    with pytest.raises(ValueError, match="one sequence"):
        threshold_passes(torch.ones(2, 3), 4, 0.9)
    with pytest.raises(ValueError, match="block_size"):
        threshold_passes(torch.ones(3), 0, 0.9)


def test_next_token_confidence_is_the_top_probability_without_mask():
    logits = torch.tensor([[math.log(0.5), math.log(0.3), math.log(0.2)]])
    assert next_token_confidence(logits).item() == pytest.approx(0.5)
    assert next_token_confidence(logits, mask_id=0).item() == pytest.approx(0.6)  # 0.3 / 0.5


class FixedConfidence(nn.Module):
    """Logits that give position p the top probability conf[p] (on value 0) whatever the context."""

    def __init__(self, conf: torch.Tensor, vocab: int = 4):
        super().__init__()
        self.conf, self.vocab = conf, vocab
        self.cfg = SimpleNamespace(seq_len=len(conf), time_conditioning=False)

    def forward(self, ids, t=None, attn_mask=None, positions=None, **_):
        c = self.conf[positions].double()
        rest = (1 - c) / (self.vocab - 2)  # the last value is [MASK]: probability 0
        probs = torch.stack([c] + [rest] * (self.vocab - 2) + [torch.zeros_like(c)], dim=-1)
        return probs.log().float().expand(ids.shape[0], -1, -1)


@pytest.mark.parametrize("block_size, threshold", [(4, 0.9), (8, 0.5), (16, 0.7), (3, 0.9)])
def test_the_ceiling_is_what_the_block_sampler_takes_when_confidence_ignores_context(block_size, threshold):
    gen = torch.Generator().manual_seed(block_size)
    conf = torch.rand(48, generator=gen) * 0.6 + 0.4  # 0.4 .. 1.0, many on both sides of each threshold
    model = FixedConfidence(conf)
    process = BlockDiffusion(vocab_size=4, mask_id=3, block_size=block_size)
    x = torch.full((1, 48), 3)
    cfg = BlockConfig(rule="threshold", threshold=threshold, temperature=0.0, cache=False)
    res = block_sample(model, process, x, cfg, generator=gen)
    assert bool((res.ids == 0).all())
    assert res.nfe == threshold_passes(conf, block_size, threshold)
