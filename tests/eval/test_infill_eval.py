"""Infill metrics against exact answers: the conditional NELBO of the exact denoiser is -log p(span | context),
and a fill that the context determines is recovered with accuracy 1 (and not by a context-free model)."""

from __future__ import annotations

import math

import pytest
import torch

from textdiffusion.api.pipeline import Pipeline
from textdiffusion.core.errors import UserError
from textdiffusion.eval.infill import evaluate_infill, span_masks
from textdiffusion.processes.masked import MaskedDiffusion

N_VALUES, LENGTH = 3, 4
MASK = N_VALUES


class DigitTokenizer:
    """Just what Pipeline.denoise needs from a tokenizer."""

    kind = "digits"
    mask_id = MASK
    vocab_size = N_VALUES + 1

    def decode(self, ids, mask_char=None, stop_at_eos=False):
        return "".join("_" if i == MASK else str(i) for i in ids)


@pytest.fixture(scope="module")
def seqs(analytic) -> torch.Tensor:
    return analytic.all_sequences(N_VALUES, LENGTH)


@pytest.fixture(scope="module")
def pipeline(analytic):
    """pipeline(probs, **options): the exact denoiser of the table `probs` as a Pipeline."""

    def build(probs: torch.Tensor, **options) -> Pipeline:
        model = analytic.ExactDenoiser(probs, N_VALUES, LENGTH, **options)
        model.cfg.seq_len = LENGTH
        process = MaskedDiffusion(vocab_size=N_VALUES + 1, mask_id=MASK, t_min=1e-6)
        return Pipeline(model, process, DigitTokenizer(), {})

    return build


def test_span_masks_leave_context_on_both_sides():
    masks = span_masks(200, 32, 8, seed=1)
    assert (masks.sum(1) == 8).all()
    starts = masks.float().argmax(1)
    assert (starts >= 1).all() and (starts + 8 <= 31).all()
    assert torch.equal(masks, span_masks(200, 32, 8, seed=1))  # fixed by the seed
    # contiguous: exactly one rising edge per row
    assert ((masks[:, 1:] & ~masks[:, :-1]).sum(1) + masks[:, 0].long() == 1).all()
    with pytest.raises(UserError, match="infill span"):
        span_masks(4, 8, 8)


def test_conditional_nelbo_of_the_exact_denoiser_is_the_conditional_nll(analytic, pipeline, seqs):
    """E[NELBO(span | context)] = -log p(x_span | x_context) when the denoiser is the true posterior."""
    probs = analytic.random_distribution(N_VALUES, LENGTH, seed=5)
    pipe = pipeline(probs)
    mask = torch.tensor([False, True, True, False])

    def conditional_nll(x0):
        agree = (seqs[:, ~mask] == x0[~mask]).all(1)
        return float(-(probs[(seqs == x0).all(1)].sum() / probs[agree].sum()).log())

    def span_nll(x0):
        return float(-probs[(seqs[:, mask] == x0[mask]).all(1)].sum().log())

    # among the 40 likeliest sequences, the one whose context matters most
    x0 = max((seqs[int(k)] for k in probs.argsort()[-40:]), key=lambda x: abs(conditional_nll(x) - span_nll(x)))
    true_nll = conditional_nll(x0)
    chunks = x0.repeat(4096, 1)
    res = pipe.likelihood(chunks, t_samples=4, batch_size=4096, seed=0, loss_mask=mask.repeat(4096, 1))
    assert res.n_tokens == 2 * 4096
    measured, se = res.nats_per_token * 2, res.stderr * 2
    assert abs(measured - true_nll) < 4.5 * se + 1e-3, f"{measured:.4f} +- {se:.4f} vs {true_nll:.4f}"
    # the bound must condition on the context: the unconditional NLL of the span is different
    assert abs(span_nll(x0) - true_nll) > 4.5 * se


def test_a_fill_the_context_determines_is_recovered_exactly(pipeline, seqs):
    """p_data puts all mass on sequences with x2 = x0 and x3 = x1: the exact model fills x1..x2 of
    x0 _ _ x3 without error; a model blind to context cannot."""
    probs = torch.zeros(len(seqs), dtype=torch.float64)
    copies = (seqs[:, 2] == seqs[:, 0]) & (seqs[:, 3] == seqs[:, 1])
    probs[copies] = 1.0 / int(copies.sum())
    chunks = seqs[copies].repeat(8, 1)  # 72 windows
    exact = evaluate_infill(pipeline(probs), chunks, span=2, seed=0, t_samples=2, batch_size=16, steps=16)
    assert exact.accuracy == 1.0 and exact.n_examples == 72 and exact.sampler == "ancestral"
    assert math.isfinite(exact.nll.nats_per_token)
    blind = evaluate_infill(pipeline(probs, context=False), chunks, span=2, seed=0, t_samples=2, steps=16)
    assert blind.accuracy < 0.6  # a context-free draw from the marginals matches about 1/3 of the time
    assert blind.nll.nats_per_token > exact.nll.nats_per_token + 0.5
