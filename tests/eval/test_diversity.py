"""Diversity metrics against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from textdiffusion.core.errors import UserError
from textdiffusion.eval.diversity import distinct_n, diversity_report, repetition_rate, unigram_entropy


def test_unigram_entropy_by_hand():
    assert unigram_entropy([7, 7, 7]) == 0.0
    assert unigram_entropy([]) == 0.0
    assert unigram_entropy([1, 1, 2, 2]) == pytest.approx(math.log(2))
    assert unigram_entropy([0, 1, 2, 3, 4]) == pytest.approx(math.log(5))
    # p = (3/4, 1/4): 3/4 log(4/3) + 1/4 log 4
    assert unigram_entropy([5, 5, 9, 5]) == pytest.approx(0.75 * math.log(4 / 3) + 0.25 * math.log(4))


def test_unigram_entropy_ignores_order_and_labels():
    ids = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5]
    relabelled = [100 + 7 * i for i in ids]
    assert unigram_entropy(ids) == pytest.approx(unigram_entropy(sorted(ids)))
    assert unigram_entropy(ids) == pytest.approx(unigram_entropy(relabelled))
    assert unigram_entropy(torch.tensor(ids)) == pytest.approx(unigram_entropy(ids))


def test_distinct_n_pools_over_samples():
    samples = [[1, 2, 3, 1, 2], [1, 2]]
    assert distinct_n(samples, 1) == pytest.approx(3 / 7)  # tokens 1,2,3 among 7
    assert distinct_n(samples, 2) == pytest.approx(3 / 5)  # (1,2) x3, (2,3), (3,1)
    assert distinct_n(samples, 3) == pytest.approx(3 / 3)  # the short sample has no trigram
    assert distinct_n(samples, 6) == 0.0  # no 6-gram anywhere
    assert distinct_n([[4, 4], [4, 4]], 1) == pytest.approx(1 / 4)


def test_repetition_rate_by_hand():
    assert repetition_rate([1, 2, 1, 2, 1], 2) == pytest.approx(2 / 4)  # (1,2) (2,1) then both again
    assert repetition_rate([1, 2, 1, 2, 1], 1) == pytest.approx(3 / 5)
    assert repetition_rate([8, 8, 8], 2) == pytest.approx(1 / 2)  # overlapping occurrences count
    assert repetition_rate([1, 2, 3, 4], 2) == 0.0
    assert repetition_rate([1, 2], 3) == 0.0 and repetition_rate([], 1) == 0.0


def test_diversity_report_keys_and_means():
    samples = torch.tensor([[1, 1, 2, 2], [3, 3, 3, 3]])
    rep = diversity_report(samples, ns=(1, 2))
    assert set(rep) == {"num_samples", "unigram_entropy", "distinct_1", "distinct_2", "repetition_1", "repetition_2"}
    assert rep["num_samples"] == 2
    assert rep["unigram_entropy"] == pytest.approx(math.log(2) / 2)
    assert rep["distinct_1"] == pytest.approx(3 / 8)
    assert rep["distinct_2"] == pytest.approx(4 / 6)  # (1,1) (1,2) (2,2) (3,3) among 6 bigrams
    assert rep["repetition_1"] == pytest.approx((2 / 4 + 3 / 4) / 2)
    assert rep["repetition_2"] == pytest.approx((0 + 2 / 3) / 2)


def test_bad_input_is_a_user_error():
    with pytest.raises(UserError, match="positive"):
        distinct_n([[1, 2]], 0)
    with pytest.raises(UserError, match="positive"):
        repetition_rate([1, 2], -1)
    with pytest.raises(UserError, match="no samples"):
        diversity_report([])
