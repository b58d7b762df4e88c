"""DiffusER's 2-D beam search against exhaustive enumeration of every (tags, tokens) trajectory on a toy."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from textdiffusion.models import ModelConfig, Transformer
from textdiffusion.processes import build_process
from textdiffusion.processes.alignment import Op, Tags
from textdiffusion.processes.edit import INSERT_SLOT, REPLACE_SLOT, generator_canvas, generator_row, tag_canvas
from textdiffusion.samplers.edit import EditConfig, _apply, _fill_tags, beam_search, edit_sample, revision_times

V, MASK = 3, 2  # tokens 0 and 1, and [MASK]


@pytest.fixture(scope="module")
def toy():
    process = build_process("diffuser", vocab_size=V, mask_id=MASK, num_steps=2, max_insert=1)
    torch.manual_seed(3)
    model = Transformer(ModelConfig(vocab_size=V, seq_len=8, d_model=16, n_heads=2, n_layers=1,
                                    **process.model_fields())).eval()
    with torch.no_grad():  # larger weights: peaked, distinct scores (no ties between trajectories)
        for p in model.parameters():
            p.mul_(8.0 if p.dim() >= 2 else 1.0)
    return model, process


@torch.no_grad()
def successors(model, process, seq: list[int], t: float) -> list[tuple[float, list[int]]]:
    """Every (tags, tokens) the model can take from `seq` in one step, with its log-probability, by brute force:
    all ops in {KEEP, DELETE, REPLACE}^n, all insertion counts, all fillings of the slots."""
    tv = process.time(t, 1, "cpu")
    op_logp, ins_logp = process.tag_log_probs(model, tag_canvas([seq], process.sentinel), tv)
    out = []
    n = len(seq)
    for ops in itertools.product([Op.KEEP, Op.DELETE, Op.REPLACE], repeat=n):
        for counts in itertools.product(range(process.max_insert + 1), repeat=n + 1):
            tag_lp = sum(float(op_logp[0, i + 1, o]) for i, o in enumerate(ops))
            tag_lp += sum(float(ins_logp[0, g, c]) for g, c in enumerate(counts))
            tags = Tags(list(ops), [None] * n, [[process.sentinel] * c for c in counts])
            ids, marks = generator_row(seq, tags, process.sentinel)
            logp = process.token_log_probs(model, generator_canvas([ids], [marks], process.sentinel), tv)
            slots = [q for q, m in enumerate(marks) if m in (INSERT_SLOT, REPLACE_SLOT)]
            for fill in itertools.product(range(V - 1), repeat=len(slots)):
                lp = tag_lp + sum(float(logp[0, q, v]) for q, v in zip(slots, fill))
                if lp == -math.inf:
                    continue  # a REPLACE by the same token
                tokens = list(ids)
                for q, v in zip(slots, fill):
                    tokens[q] = v
                out.append((lp, _apply(seq, _fill_tags(seq, tags, marks, tokens))))
    return out


_BEST: dict = {}


def best_trajectory(model, process, start: list[int], steps: int) -> tuple[float, list[int], int]:
    """The best-scoring trajectory by enumerating all of them: (score, final sequence, how many there are)."""
    key = (tuple(start), steps)
    if key not in _BEST:
        _BEST[key] = _enumerate(model, process, start, steps)
    return _BEST[key]


def _enumerate(model, process, start: list[int], steps: int) -> tuple[float, list[int], int]:
    paths = [(0.0, start)]
    for t in revision_times(process, steps):
        paths = [(lp + s, nxt) for lp, seq in paths for s, nxt in successors(model, process, seq, t)]
    score, seq = max(paths, key=lambda p: p[0])
    return score, seq, len(paths)


@pytest.mark.parametrize("start", [[], [1]])
def test_wide_beam_returns_the_best_trajectory(toy, start):
    model, process = toy
    score, seq, count = best_trajectory(model, process, start, steps=2)
    assert count > 50  # a real search space, not a handful of paths
    best = beam_search(model, process, start, EditConfig(steps=2, beam=4096, revisions=100_000))[0]
    assert best.score == pytest.approx(score, abs=1e-6)
    assert best.seq == seq
    # the trajectory it returns is a chain of real steps, from the start to the sequence it reports
    assert best.history[0][0] == start and best.history[-1][0] == best.seq and len(best.history) == 3


def test_narrow_beams_never_beat_the_best_and_width_one_is_greedy(toy):
    model, process = toy
    score, _, _ = best_trajectory(model, process, [1], steps=2)
    prev = -math.inf
    for b, r in [(1, 1), (2, 2), (8, 8), (64, 64)]:
        got = beam_search(model, process, [1], EditConfig(steps=2, beam=b, revisions=r))[0].score
        assert got <= score + 1e-9
        prev = max(prev, got)
    # b = r = 1 takes the argmax tags, then the argmax tokens: the greedy (temperature 0) sampler's path
    greedy = edit_sample(model, process, torch.tensor([[1]]), EditConfig(steps=2, temperature=0.0, start="input"))
    beam1 = edit_sample(model, process, torch.tensor([[1]]), EditConfig(steps=2, beam=1, revisions=2, start="input"))
    one = beam_search(model, process, [1], EditConfig(steps=2, beam=1, revisions=1))[0]
    assert greedy.ids[0][greedy.ids[0] != MASK].tolist() == one.seq
    assert beam1.nfe == 4
