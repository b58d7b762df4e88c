"""The discrete baseline's Taylor-tilted guidance for masked models: for a score linear in the one-hot tokens the
tilt is the exact change of the score for every (position, token); for token controls it is the gradient in the
model's log-beliefs (for `Contains` of one token: the share of the expected matches at that position); the
ancestral sampler then draws exactly the tilted law, and the wrapper runs through a Pipeline."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from textdiffusion.api.pipeline import Pipeline
from textdiffusion.core.errors import UserError
from textdiffusion.guidance import Contains, Control, Guidance, TokensAt, tilted
from textdiffusion.processes.masked import MaskedDiffusion
from textdiffusion.samplers.mdlm import AncestralConfig, ancestral_sample

V, MASK, L = 5, 4, 3


class _FixedLogits(nn.Module):
    """Logits that depend on nothing: position l's law over the 4 real tokens is softmax(table[l])."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = table
        self.cfg = None
        self.p = nn.Parameter(torch.zeros(1))

    def forward(self, ids, t=None, **kwargs):
        return self.table[None].expand(ids.shape[0], -1, -1).clone()


class _LinearScore(Control):
    """log p(c | x) = sum_l A[l, x_l], read from one-hot tokens: its Taylor expansion is exact."""

    latent = True

    def __init__(self, weights: torch.Tensor):
        self.weights = weights

    def token_log_prob(self, onehot, mask_id):
        return (onehot * self.weights).sum((1, 2))


def _table(seed: int) -> torch.Tensor:
    table = torch.randn(L, V, generator=torch.Generator().manual_seed(seed))
    table[:, MASK] = 0.0
    return table


def test_the_tilt_of_a_linear_score_is_its_exact_change_for_every_token():
    weights = torch.randn(L, V, generator=torch.Generator().manual_seed(1))
    wrapper = tilted(_FixedLogits(_table(0)), Guidance([_LinearScore(weights)]), MASK, 1.0)
    ids = torch.tensor([[MASK, 2, MASK]])
    delta = wrapper.tilt(ids, _table(0)[None])

    def score(x):
        return float(weights[torch.arange(L), x[0]].sum())

    for pos in range(L):
        for w in range(V):
            changed = ids.clone()
            changed[0, pos] = w
            expected = score(changed) - score(ids) if ids[0, pos] == MASK else 0.0
            assert float(delta[0, pos, w]) == pytest.approx(expected, abs=1e-6)


def test_token_controls_tilt_by_the_gradient_in_the_log_beliefs():
    table = _table(2)
    probs = torch.softmax(table.index_fill(1, torch.tensor([MASK]), float("-inf")), -1)
    ids = torch.full((1, L), MASK)
    at = tilted(_FixedLogits(table), Guidance([TokensAt({1: 3})]), MASK, 1.0).tilt(ids, table[None])
    expected = torch.zeros(L, V)
    expected[1, 3] = 1.0
    torch.testing.assert_close(at[0], expected)
    # Contains([w]) scores log sum_l p_l(w): its gradient in log p_l(w) is position l's share of the matches
    contains = tilted(_FixedLogits(table), Guidance([Contains([0])]), MASK, 1.0).tilt(ids, table[None])
    share = probs[:, 0] / probs[:, 0].sum()
    torch.testing.assert_close(contains[0, :, 0], share)
    assert float(contains[0, :, 1:].abs().max()) == 0.0
    fixed = torch.tensor([[0, MASK, MASK]])  # a fixed token is a certain match; its own tilt is 0
    tilt_fixed = tilted(_FixedLogits(table), Guidance([Contains([0])]), MASK, 1.0).tilt(fixed, table[None])
    assert float(tilt_fixed[0, 0].abs().max()) == 0.0
    torch.testing.assert_close(tilt_fixed[0, 1:, 0], probs[1:, 0] / (1 + probs[1:, 0].sum()))


def test_one_ancestral_step_draws_the_tilted_law():
    table, gamma, n = _table(3), 1.5, 6000
    model = tilted(_FixedLogits(table), Guidance([TokensAt({0: 1})]), MASK, gamma)
    process = MaskedDiffusion(vocab_size=V, mask_id=MASK)
    out = ancestral_sample(model, process, torch.full((n, L), MASK), AncestralConfig(steps=1, cache=False),
                           generator=torch.Generator().manual_seed(0))
    logits = table[0].clone()
    logits[1] += gamma
    logits[MASK] = float("-inf")
    exact = torch.softmax(logits, -1)[:MASK]
    freq = torch.bincount(out.ids[:, 0], minlength=V)[:MASK].double() / n
    assert float((freq - exact).abs().max()) < 4.5 * float((exact * (1 - exact) / n).sqrt().max())
    untouched = torch.softmax(table[2, :MASK], -1)  # position 2 is not controlled: its law is the model's
    freq2 = torch.bincount(out.ids[:, 2], minlength=V)[:MASK].double() / n
    assert float((freq2 - untouched).abs().max()) < 4.5 * float((untouched * (1 - untouched) / n).sqrt().max())


def test_a_tilted_masked_pipeline_generates_and_checks_its_input(tiny_pipeline):
    model = tiny_pipeline.model
    assert tilted(model, None, 0, 2.0) is model and tilted(model, Guidance([TokensAt({0: 65})]), 0, 0.0) is model
    with pytest.raises(UserError, match="Guidance"):
        tilted(model, "love", tiny_pipeline.process.mask_id, 1.0)
    with pytest.raises(UserError, match=">= 0"):
        tilted(model, Guidance([TokensAt({0: 65})]), tiny_pipeline.process.mask_id, -1.0)
    wrapper = tilted(model, Guidance([TokensAt({0: 65})]), tiny_pipeline.process.mask_id, 50.0)
    pipe = Pipeline(wrapper, tiny_pipeline.process, tiny_pipeline.tokenizer, {})
    out = pipe.generate(num_samples=3, length=8, steps=4, seed=0)
    assert out.ids.shape == (3, 8) and bool((out.ids[:, 0] == 65).all())  # gamma 50 forces the token
