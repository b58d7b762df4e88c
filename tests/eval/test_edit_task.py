"""The editing task's noise and metrics (issue 16.5)."""

from __future__ import annotations

import random

import pytest

from textdiffusion.eval.editing import (
    KINDS,
    corrupt_line,
    edit_metrics,
    error_kind,
    evaluate_editor,
    held_out_lines,
    noisy_chain,
    training_lines,
)
from textdiffusion.processes.alignment import apply_edits, from_tags
from textdiffusion.processes.edit import Diffuser

LINE = "What say you to the gentleman of the night"


def test_noise_is_seeded_and_each_error_is_small():
    a = [corrupt_line(LINE, random.Random(s)) for s in range(200)]
    assert a == [corrupt_line(LINE, random.Random(s)) for s in range(200)]
    words = LINE.split(" ")
    changed = [x for x in a if x != LINE]
    assert len(changed) > 190  # a swap of two equal letters or words is the only no-op
    for x in a:
        w = x.split(" ")
        # one error: a word dropped or repeated, two words swapped, or one word's letters edited
        assert abs(len(w) - len(words)) <= 1
        if len(w) == len(words):
            assert sum(p != q for p, q in zip(w, words)) in (0, 1, 2)


def test_metrics_count_exact_matches_and_character_distances():
    refs = ["abc", "hello world"]
    noisy = ["abd", "hello  world"]
    s = edit_metrics(["abc", "hello"], noisy, refs)
    assert (s.n, s.exact, s.char_distance) == (2, 0.5, pytest.approx((0 + 6) / 2))
    assert (s.input_exact, s.input_char_distance) == (0.0, 1.0)


def test_an_oracle_editor_is_perfect_and_identity_scores_the_input():
    lines = held_out_lines(["x\n" + LINE + "\nshort\n" + LINE + "\nAnother line of the play, long enough"], 60)
    assert lines == [LINE, "Another line of the play, long enough"]
    perfect, _ = evaluate_editor(lambda noisy: list(lines), lines, seed=1)
    identity, rows = evaluate_editor(lambda noisy: noisy, lines, seed=1)
    assert perfect.exact == 1.0 and perfect.char_distance == 0.0
    assert identity.char_distance == identity.input_char_distance > 0 and rows[0][0] == LINE


def test_training_lines_leave_out_the_test_lines():
    docs = ["x\n" + LINE + "\nAnother line of the play, long enough\n" + LINE]
    assert training_lines(docs, [LINE], 60) == ["Another line of the play, long enough"]


def test_noisy_chain_adds_one_realistic_error_per_step():
    chain = noisy_chain(LINE, 3, random.Random(7))
    rng = random.Random(7)
    expected = [LINE]
    for _ in range(3):
        expected.append(corrupt_line(expected[-1], rng, 1))
    assert chain == expected and len(chain) == 4 and chain[0] == LINE


def test_pair_examples_tag_the_noisy_line_back_to_the_previous_one():
    """DiffusER's training target on a realistic-noise pair: its tags turn x_t into x_{t-1} exactly (when no
    gap needs more than max_insert insertions), and a longer gap is cut at max_insert."""
    process = Diffuser(260, 259, num_steps=3, max_insert=4)
    for seed in range(20):
        prev, xt = (list(s.encode()) for s in noisy_chain(LINE, 2, random.Random(seed))[1:])
        p, x, tags = process.pair_example(prev, xt)
        assert (p, x) == (prev, xt)
        if max(tags.insert_counts) < 4:
            assert apply_edits(xt, from_tags(xt, tags)) == prev
    _, _, tags = process.pair_example(list(b"abcdefgh"), list(b"a"))
    assert tags.insert_counts == [0, 4] and len(tags.inserts[1]) == 4


def test_error_kind_reads_the_kind_of_one_error_back():
    """Each kind of error, made with its own branch of corrupt_line, is named back (the seeds where an error is
    a no-op or two readings coincide are checked against the words, not skipped)."""
    seen = set()
    for seed in range(300):
        rng = random.Random(seed)
        state = rng.getstate()
        kind = rng.choice(KINDS)  # the draw corrupt_line makes first
        rng.setstate(state)
        noisy = corrupt_line(LINE, rng)
        got = error_kind(LINE, noisy)
        if noisy == LINE:
            assert got == "none"
        elif kind == "typo":  # a typo that swaps two letters may read as nothing else
            assert got == "typo"
        else:
            assert got == kind
        seen.add(got)
    assert seen >= set(KINDS)
