"""The editing task's noise and metrics (issue 16.5)."""

from __future__ import annotations

import random

import pytest

from textdiffusion.eval.editing import corrupt_line, edit_metrics, evaluate_editor, held_out_lines

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
