"""Round-trip scores of a sentence-concept decoder (eval/concept.py), with a stand-in encoder."""

from __future__ import annotations

import pytest
import torch

from textdiffusion.core.errors import UserError
from textdiffusion.eval.concept import char_error_rate, round_trip_scores


def letters(sentences: list[str]) -> torch.Tensor:
    """A stand-in encoder: counts of the letters a..d."""
    return torch.tensor([[s.count(ch) for ch in "abcd"] for s in sentences], dtype=torch.float32)


def test_char_error_rate_by_hand():
    assert char_error_rate("kitten", "kitten") == 0.0
    assert char_error_rate("sitting", "kitten") == pytest.approx(3 / 6)  # k->s, e->i, +g
    assert char_error_rate("", "abcd") == 1.0
    assert char_error_rate("", "") == 0.0 and char_error_rate("x", "") == 1.0


def test_round_trip_scores_by_hand():
    refs = ["abba", "cab", "dad"]
    decoded = ["abba", "cabs", "add"]  # exact, one insertion, one transposition (2 edits)
    scores = round_trip_scores(decoded, letters(refs), letters, refs)
    assert scores.n == 3 and scores.exact == pytest.approx(1 / 3)
    assert scores.cer == pytest.approx((0 + 1 / 3 + 2 / 3) / 3)
    # "cabs" and "add" have the letter counts of their references: the encoder cannot tell them apart
    assert scores.cosine == pytest.approx(1.0)
    off = round_trip_scores(["aaaa"], torch.tensor([[0.0, 1.0, 0.0, 0.0]]), letters)
    assert off.cosine == pytest.approx(0.0, abs=1e-6) and off.exact is None and off.cer is None
    two = round_trip_scores(["a", "c"], torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]), letters)
    assert two.cosine == pytest.approx((1 + 2 ** -0.5) / 2)  # each sentence against its own embedding, averaged


def test_mismatched_inputs_are_user_errors():
    with pytest.raises(UserError, match="one decoded sentence per embedding"):
        round_trip_scores(["a"], torch.zeros(2, 4), letters)
    with pytest.raises(UserError, match="references"):
        round_trip_scores(["a"], torch.ones(1, 4), letters, ["a", "b"])
