"""The logit shift for AR -> block diffusion (processes/block_shift.py, `adapt --block-size B
process.logit_shift=true`): output l reads token l - 1 and predicts token l, as the AR model did.

* at step 0 (AR weights, causal attention inside the noisy block: annealing at 0), the prediction for the first
  masked token of every block is exactly the AR model's next-token distribution; without the shift it is not;
* block size 1 with the shift is the AR model itself: greedy block sampling writes the AR model's greedy text;
* the shifted sampler's KV cache is exact (same tokens as recomputing), and `adapt` trains, saves and samples.
"""

from __future__ import annotations

import pytest
import torch

from textdiffusion.api.pipeline import Pipeline
from textdiffusion.cli import main
from textdiffusion.models import ModelConfig, Transformer
from textdiffusion.processes import Autoregressive, BlockDiffusion
from textdiffusion.processes.autoregressive import shift_right
from textdiffusion.samplers.autoregressive import ARConfig, ar_sample
from textdiffusion.samplers.block import BlockConfig, block_sample
from textdiffusion.train import checkpoint as ckpt
from textdiffusion.train.adapt import annealed_mask

V, MASK, L = 12, 11, 12


@pytest.fixture(scope="module")
def pair() -> tuple[Transformer, Transformer]:
    """An AR network and the bidirectional one that adaptation starts from its weights."""
    torch.manual_seed(0)
    shape = dict(vocab_size=V, seq_len=L, d_model=32, n_layers=2, n_heads=2)
    ar = Transformer(ModelConfig(causal=True, **shape)).eval()
    with torch.no_grad():
        for p in ar.parameters():  # larger weights than the init, so that what each position sees matters
            p.add_(0.3 * torch.randn_like(p))
    block = Transformer(ModelConfig(causal=False, **shape)).eval()
    block.load_state_dict(ar.state_dict())
    return ar, block


def _first_masked(xt: torch.Tensor, block_size: int) -> list[tuple[int, int]]:
    """(row, position) of the first [MASK] of every block that has one."""
    out = []
    for row in range(xt.shape[0]):
        for lo in range(0, L, block_size):
            masked = (xt[row, lo : lo + block_size] == MASK).nonzero()
            if len(masked):
                out.append((row, lo + int(masked[0])))
    return out


@pytest.mark.parametrize("block_size", [1, 3, 4])
def test_first_masked_token_of_each_block_is_the_ar_next_token_distribution(pair, block_size):
    ar, block = pair
    gen = torch.Generator().manual_seed(block_size)
    x0 = torch.randint(0, MASK, (6, L), generator=gen)
    xt = torch.where(torch.rand(6, L, generator=gen) < 0.5, torch.full_like(x0, MASK), x0)
    with torch.no_grad():
        want = torch.log_softmax(ar(shift_right(x0, MASK)), -1)  # the AR model's next-token laws
        shifted = BlockDiffusion(V, MASK, block_size=block_size, logit_shift=True)
        shifted.train_attention = annealed_mask(L + 1, 0.0)  # step 0 of the annealing: causal in the block
        got = torch.log_softmax(shifted.denoiser_logits(block, xt, x0), -1)
        plain = BlockDiffusion(V, MASK, block_size=block_size)
        plain.train_attention = shifted.train_attention
        unshifted = torch.log_softmax(plain.denoiser_logits(block, xt, x0), -1)
    firsts = _first_masked(xt, block_size)
    assert len(firsts) >= 6
    for row, pos in firsts:
        torch.testing.assert_close(got[row, pos], want[row, pos], atol=1e-5, rtol=0)
    assert max(float((unshifted[r, p] - want[r, p]).abs().max()) for r, p in firsts) > 0.1  # the test has power
    if block_size > 1:  # fully open attention (annealing done) sees the block's later tokens: no longer AR
        shifted.train_attention = None
        with torch.no_grad():
            opened = torch.log_softmax(shifted.denoiser_logits(block, xt, x0), -1)
        assert max(float((opened[r, p] - want[r, p]).abs().max()) for r, p in firsts) > 1e-3


def test_block_size_1_with_the_shift_samples_the_ar_models_text(pair):
    ar, block = pair
    x = torch.full((3, L), MASK)
    x[:, 0] = torch.tensor([1, 5, 9])  # a one-token prompt
    greedy_ar = ar_sample(ar, Autoregressive(V, MASK), x, ARConfig(temperature=0.0)).ids
    proc = BlockDiffusion(V, MASK, block_size=1, logit_shift=True)
    for cache in (True, False):
        ids = block_sample(proc.denoiser(block), proc, x, BlockConfig(steps=1, temperature=0.0, cache=cache)).ids
        assert torch.equal(ids, greedy_ar), cache


@pytest.mark.parametrize("block_size", [2, 3, 5, L])
def test_the_shifted_samplers_kv_cache_is_exact(pair, block_size):
    _, block = pair
    proc = BlockDiffusion(V, MASK, block_size=block_size, logit_shift=True)
    x = torch.full((4, L), MASK)
    x[:, 1], x[2, 7] = 3, 4
    runs = [block_sample(proc.denoiser(block), proc, x, BlockConfig(steps=3, cache=cache),
                         torch.Generator().manual_seed(6)).ids for cache in (True, False)]
    assert torch.equal(runs[0], runs[1]) and not bool((runs[0] == MASK).any())
    assert bool((runs[0][:, 1] == 3).all()) and int(runs[0][2, 7]) == 4


def test_adapt_with_the_shift_and_annealing(tmp_path, capsys, tiny_overrides, write_corpus):
    corpus = write_corpus(tmp_path / "c.jsonl", n_docs=60)
    ar_dir, out = tmp_path / "ar", tmp_path / "bd3"
    assert main(["train", "--config", "tiny", "--out", str(ar_dir), "process.name=autoregressive",
                 *tiny_overrides(corpus, steps=2, every=2)]) == 0
    assert main(["adapt", "--from", str(ar_dir), "--out", str(out), "--block-size", "4", "--anneal-steps", "2",
                 "process.logit_shift=true", "train.steps=2"]) == 0
    saved = ckpt.read_config(out / "checkpoint")
    assert saved["process"]["name"] == "block" and saved["process"]["logit_shift"] is True
    pipe = Pipeline.from_pretrained(out, device="cpu")
    assert pipe.process.logit_shift
    for length in (20, 40):  # within and past the model's 32 tokens (a sliding window)
        for cache in (True, False):
            ids = pipe.generate(length=length, steps=2, seed=0, cache=cache).ids
            assert ids.shape[1] == length and not (ids == pipe.tokenizer.mask_id).any()
    capsys.readouterr()
