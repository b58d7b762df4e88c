"""Behaviours that change results while every coarser test still passes: the Gaussian process's training levels,
CDCD time warping's running fit, and DiffusER's tag targets. Each expectation is computed by hand here."""

from __future__ import annotations

import math

import pytest
import torch

from textdiffusion.processes import build_process
from textdiffusion.processes.edit import INSERT_SLOT, REPLACE_SLOT, Diffuser
from textdiffusion.processes.time_warp import TimeWarp


# ---- Gaussian diffusion: training levels are exactly 1..T ---------------------------------------------------
@pytest.mark.parametrize("antithetic", [True, False])
def test_uniform_training_levels_cover_exactly_1_to_T(antithetic):
    T = 7
    process = build_process("gaussian", vocab_size=11, mask_id=10, num_steps=T, antithetic=antithetic)
    draws = [process.sample_t(64, "cpu", torch.Generator().manual_seed(s))[0] for s in range(50)]
    t = torch.cat(draws)
    assert set(t.tolist()) == set(range(1, T + 1))  # never level 0, never past T, every level drawn
    counts = torch.bincount(t, minlength=T + 1)[1:].double()
    expected = len(t) / T
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 22.5  # chi-square, 6 degrees of freedom, p = 0.001
    _, weight = process.sample_t(64, "cpu", torch.Generator().manual_seed(0))
    assert torch.all(weight == T)  # 1 / pi(t) of the uniform draw


def test_proposal_levels_never_include_0():
    process = build_process("gaussian", vocab_size=11, mask_id=10, num_steps=5)
    proposal = torch.tensor([0.5, 0.1, 0.1, 0.1, 0.1, 0.1], dtype=torch.float64)  # mass on 0 must be ignored
    proposal = proposal / proposal.sum()
    t, weight = process.sample_t(4000, "cpu", torch.Generator().manual_seed(1), proposal)
    assert int(t.min()) >= 1 and int(t.max()) <= 5
    assert torch.allclose(weight, 1.0 / proposal[t])


# ---- CDCD time warping: the running fit of each bin ----------------------------------------------------------
def test_a_bin_visited_several_times_follows_the_update_rule():
    """Documented rule: the first visit sets the average; n samples later move it as n one-sample updates by
    their mean: m <- d^n m + (1 - d^n) mean."""
    d = 0.9
    warp = TimeWarp(num_steps=8, bins=4, decay=d)  # bins hold levels {1,2}, {3,4}, {5,6}, {7,8}
    warp.update(torch.tensor([1, 2, 5]), torch.tensor([2.0, 4.0, 10.0]))
    m0 = 3.0  # first visit of bin 0: the mean of 2 and 4
    assert warp.means.tolist() == pytest.approx([m0, 0.0, 10.0, 0.0])
    warp.update(torch.tensor([2]), torch.tensor([5.0]))
    m1 = d * m0 + (1 - d) * 5.0
    warp.update(torch.tensor([1, 1, 2, 6]), torch.tensor([1.0, 2.0, 3.0, 20.0]))
    m2 = d**3 * m1 + (1 - d**3) * 2.0
    assert warp.means[0].item() == pytest.approx(m2, rel=1e-12)
    assert warp.means[2].item() == pytest.approx(d * 10.0 + (1 - d) * 20.0, rel=1e-12)
    assert warp.seen.tolist() == [6, 0, 2, 0]
    # n samples at once = n one-sample updates by their mean
    one_by_one = TimeWarp(num_steps=8, bins=4, decay=d)
    one_by_one.update(torch.tensor([1, 2, 5]), torch.tensor([2.0, 4.0, 10.0]))
    one_by_one.update(torch.tensor([2]), torch.tensor([5.0]))
    for _ in range(3):
        one_by_one.update(torch.tensor([1]), torch.tensor([2.0]))
    assert one_by_one.means[0].item() == pytest.approx(m2, rel=1e-12)


def test_levels_fall_in_the_documented_bins():
    warp = TimeWarp(num_steps=10, bins=4)  # edges 0, 2 (2.5 rounds to 2), 5, 8 (7.5 rounds to 8), 10
    assert warp.edges.tolist() == [0, 2, 5, 8, 10]
    assert warp.bin_of(torch.arange(1, 11)).tolist() == [0, 0, 1, 1, 1, 2, 2, 2, 3, 3]


# ---- DiffusER: the tagger's and generator's targets ----------------------------------------------------------
class Oracle(torch.nn.Module):
    """Puts logit `sure` on hand-written targets: tagger ops and insert counts per tag-canvas position, tokens per
    generator-canvas position; one position may be made to bet on a wrong answer."""

    def __init__(self, process: Diffuser, ops, counts, tokens, wrong: tuple[str, int, int] | None = None, sure=40.0):
        super().__init__()
        self.p, self.ops, self.counts, self.tokens, self.wrong, self.sure = process, ops, counts, tokens, wrong, sure

    def forward(self, ids, t, attn_mask=None, marks=None, tags=False):
        width = 3 + self.p.max_insert + 1 if tags else self.p.vocab_size
        out = torch.zeros(1, ids.shape[1], width)
        picks = [(i, op) for i, op in enumerate(self.ops)] + [(i, 3 + c) for i, c in enumerate(self.counts)] \
            if tags else list(enumerate(self.tokens))
        for i, j in picks:
            out[0, i, j] = self.sure
        if self.wrong is not None and (self.wrong[0] == "tags") == tags:
            _, i, j = self.wrong
            out[0, i, j] = 2 * self.sure  # outbids the right answer by `sure`
        return out


def diffuser() -> Diffuser:
    return Diffuser(vocab_size=12, mask_id=11, max_insert=3)


# x_t = [5, 6, 7] edited into x_{t-1} = [5, 9, 7, 8]: KEEP 5, REPLACE 6 -> 9, KEEP 7, INSERT 8 at the end.
# tag canvas [start, 5, 6, 7]: ops KEEP(start) KEEP REPLACE KEEP (KEEP=0, DELETE=1, REPLACE=2); insert counts of the
# gap after each position 0 0 0 1. Generator canvas [start, 5, 6(REPLACE slot), 7, slot(INSERT)]: tokens . 5 9 7 8.
OPS, COUNTS, TOKENS = [0, 0, 2, 0], [0, 0, 0, 1], [0, 5, 9, 7, 8]


def loss_of(model) -> float:
    process = model.p
    example = process.pair_example([5, 9, 7, 8], [5, 6, 7])
    return float(process.examples_loss(model, [example], torch.tensor([1]))[0])


def test_the_true_edits_cost_nothing():
    process = diffuser()
    prev, xt, tags = process.pair_example([5, 9, 7, 8], [5, 6, 7])
    assert [int(o) for o in tags.ops] == OPS[1:] and tags.insert_counts == COUNTS
    assert loss_of(Oracle(process, OPS, COUNTS, TOKENS)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("wrong", [("tags", 2, 0), ("tags", 3, 1), ("tags", 3, 3 + 0), ("tags", 1, 3 + 2),
                                   ("tags", 0, 3 + 1), ("tokens", 2, 3), ("tokens", 4, 3)])
def test_one_wrong_bet_costs_exactly_its_own_loss(wrong):
    """Betting `sure` more on a wrong answer at one position costs -log softmax of the right one there:
    log(1 + e^sure + (others)) - 0 ~= sure: only that position's target is read."""
    process = diffuser()
    sure = 40.0
    loss = loss_of(Oracle(process, OPS, COUNTS, TOKENS, wrong, sure))
    assert loss == pytest.approx(sure, abs=1e-3)


@pytest.mark.parametrize("wrong", [("tokens", 1, 4), ("tokens", 3, 2), ("tags", 0, 2)])
def test_positions_without_a_target_are_not_scored(wrong):
    """The generator scores only REPLACE and INSERT slots (kept tokens are copied); the start sentinel is KEEP."""
    assert loss_of(Oracle(diffuser(), OPS, COUNTS, TOKENS, wrong)) == pytest.approx(0.0, abs=1e-6)


def test_a_replace_slot_never_writes_the_token_it_replaces():
    process = diffuser()
    marks_seen = []

    class Recorder(Oracle):
        def forward(self, ids, t, attn_mask=None, marks=None, tags=False):
            if not tags:
                marks_seen.append(marks[0].tolist())
            return super().forward(ids, t, attn_mask, marks, tags)

    # a bet on 6 (the replaced token) at the REPLACE slot is masked out: the loss stays 0
    assert loss_of(Recorder(process, OPS, COUNTS, TOKENS, ("tokens", 2, 6), 40.0)) == pytest.approx(0.0, abs=1e-6)
    assert marks_seen[0][2] == REPLACE_SLOT and marks_seen[0][4] == INSERT_SLOT
    assert math.isfinite(loss_of(Oracle(process, OPS, COUNTS, TOKENS)))
