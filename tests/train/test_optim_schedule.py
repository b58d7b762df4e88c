"""The learning-rate schedule and the EMA's warm start, by hand."""

from __future__ import annotations

import math

import pytest
import torch

from textdiffusion.train.optim import EMA, lr_at


def test_warmup_then_cosine_by_hand():
    base, warmup, total, floor = 1.0, 10, 110, 0.1
    assert lr_at(0, base, warmup, total, floor) == pytest.approx(0.1)  # the first step already moves
    assert lr_at(4, base, warmup, total, floor) == pytest.approx(0.5)
    assert lr_at(9, base, warmup, total, floor) == pytest.approx(1.0)
    assert lr_at(10, base, warmup, total, floor) == pytest.approx(1.0)  # cosine starts at its top
    assert lr_at(60, base, warmup, total, floor) == pytest.approx(floor + (1 - floor) * 0.5)  # half way
    assert lr_at(110, base, warmup, total, floor) == pytest.approx(floor)
    assert lr_at(500, base, warmup, total, floor) == pytest.approx(floor)  # past the end: the floor
    assert lr_at(35, base, warmup, total, floor) == pytest.approx(
        floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * 0.25)))


def test_ema_warm_start_by_hand():
    """decay_n = min(decay, (1 + n) / (10 + n)) at the n-th update: early averages follow the weights closely."""
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, decay=0.999)
    expected = 0.0
    for n, value in enumerate([1.0, 2.0, 3.0, 4.0], start=1):
        with torch.no_grad():
            model.weight.fill_(value)
        ema.update(model)
        d = min(0.999, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * value
        assert ema.shadow["weight"].item() == pytest.approx(expected, rel=1e-6)
    assert expected > 1.0  # with the plain decay 0.999 it would still be near 0
