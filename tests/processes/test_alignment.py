"""Levenshtein alignment: minimal against a breadth-first search over single edits, and exact round-trips."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings, strategies as st

from textdiffusion.core.errors import UserError
from textdiffusion.processes.alignment import Op, align, apply_edits, cost, from_tags, levenshtein, to_tags
from textdiffusion.processes.edit import corrupt_step

ALPHABET = (0, 1, 2)


def bfs_distance(src: tuple[int, ...], tgt: tuple[int, ...]) -> int:
    """The fewest single-token insertions, deletions and substitutions from src to tgt, by breadth-first search
    over all sequences (no dynamic programming: it cannot share a bug with `distance_table`)."""
    frontier, seen, depth = {src}, {src}, 0
    while tgt not in frontier:
        nxt = set()
        for s in frontier:
            for k in range(len(s) + 1):
                for a in ALPHABET:
                    nxt.add(s[:k] + (a,) + s[k:])
            for k in range(len(s)):
                nxt.add(s[:k] + s[k + 1 :])
                for a in ALPHABET:
                    nxt.add(s[:k] + (a,) + s[k + 1 :])
        frontier = nxt - seen
        seen |= frontier
        depth += 1
    return depth


def test_alignment_is_minimal_against_breadth_first_search():
    seqs = [s for n in range(4) for s in itertools.product(ALPHABET, repeat=n)]
    rng = random.Random(0)
    pairs = [(a, b) for a in seqs for b in seqs]
    for src, tgt in rng.sample(pairs, 250) + [((), ()), ((0, 1, 2), ()), ((), (2, 2, 2)), ((0, 1), (1, 0))]:
        edits = align(src, tgt)
        assert apply_edits(src, edits) == list(tgt)
        assert cost(edits) == levenshtein(src, tgt) == bfs_distance(src, tgt), (src, tgt, edits)


tokens = st.lists(st.integers(0, 5), max_size=24)


@settings(max_examples=200, deadline=None)
@given(tokens, tokens)
def test_align_then_apply_recovers_the_target(src, tgt):
    edits = align(src, tgt)
    assert apply_edits(src, edits) == tgt
    assert cost(edits) == levenshtein(src, tgt) <= max(len(src), len(tgt))
    # the per-position tag form carries the same alignment
    tags = to_tags(src, edits)
    assert len(tags.ops) == len(src) and len(tags.inserts) == len(src) + 1
    assert from_tags(src, tags) == edits
    assert sum(tags.insert_counts) == sum(op == Op.INSERT for op, _ in edits)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=0, max_size=40), st.integers(0, 2**31 - 1))
def test_corrupt_then_invert_round_trips(x0, seed):
    """Corrupt a sequence by the forward edit process, then the alignment back from x_t recovers x0 exactly,
    and never needs more edits than the corruption made."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = list(x0)
    for _ in range(3):
        x = corrupt_step(x, rng, probs=(0.4, 0.2, 0.2, 0.2), mean_length=2.0, vocab_size=41, forbidden=(),
                         max_len=48)
        assert len(x) <= 48
    edits = align(x, x0)
    assert apply_edits(x, edits) == list(x0)
    tags = to_tags(x, edits)
    assert apply_edits(x, from_tags(x, tags)) == list(x0)


def test_alignment_never_puts_a_delete_next_to_an_insert():
    # unit costs: DELETE + INSERT (2) is beaten by one REPLACE (1), so a minimal alignment has no such pair
    rng = random.Random(1)
    for _ in range(300):
        src = [rng.randrange(3) for _ in range(rng.randrange(8))]
        tgt = [rng.randrange(3) for _ in range(rng.randrange(8))]
        ops = [op for op, _ in align(src, tgt)]
        for a, b in zip(ops, ops[1:]):
            assert {a, b} != {Op.DELETE, Op.INSERT}


def test_apply_rejects_edits_of_another_source():
    with pytest.raises(UserError, match="source token 0 is 1"):
        apply_edits([1, 2], [(Op.KEEP, 2), (Op.KEEP, 2)])
    with pytest.raises(UserError, match="consume 1 of the 2"):
        apply_edits([1, 2], [(Op.KEEP, 1)])
