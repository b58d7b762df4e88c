"""Categorical draws, temperature and top-p (`samplers.base`), the primitives every sampler draws with.

Frequencies are checked within 5 standard errors; every draw uses a seeded torch.Generator.
"""

from __future__ import annotations

import math

import torch

from textdiffusion.samplers.base import sample_categorical, select_from_logits


def test_sample_categorical_frequencies():
    """Gumbel-max draws hit each category with its probability, including p = 1e-3; p = 0 never."""
    p = torch.tensor([1e-3, 0.25, 0.0, 0.749], dtype=torch.float64)
    n = 1_000_000
    logp = (p.log() + 3.0).expand(n, 4)  # an unnormalised shift must not matter
    draws = sample_categorical(logp, torch.Generator().manual_seed(0))
    counts = torch.bincount(draws, minlength=4).double()
    assert counts[2] == 0
    for k in (0, 1, 3):
        se = math.sqrt(n * p[k] * (1 - p[k]))
        assert abs(counts[k] - n * p[k]) < 5 * se, f"category {k}: {int(counts[k])} vs {n * float(p[k]):.0f}"
    again = sample_categorical(logp[:1000], torch.Generator().manual_seed(0))
    assert torch.equal(again, draws[:1000])


def _top_p_reference(probs: list[float], top_p: float) -> set[int]:
    order = sorted(range(len(probs)), key=lambda i: -probs[i])
    kept, mass = set(), 0.0
    for i in order:
        kept.add(i)
        mass += probs[i]
        if mass >= top_p:
            break
    return kept


def test_top_p_keeps_the_smallest_prefix_reaching_top_p():
    probs = torch.tensor([0.1, 0.4, 0.2, 0.3], dtype=torch.float64)
    for top_p, kept in ((0.05, {1}), (0.65, {1, 3}), (0.85, {1, 3, 2}), (0.95, {0, 1, 2, 3}), (1.0, {0, 1, 2, 3})):
        logp = select_from_logits(probs.log(), top_p=top_p)
        assert logp.dtype == torch.float64
        assert set(torch.isfinite(logp).nonzero().flatten().tolist()) == kept, top_p
        want = torch.where(torch.isfinite(logp), probs / probs[list(kept)].sum(), torch.zeros_like(probs))
        torch.testing.assert_close(logp.exp(), want)
    # random rows, temperatures and thresholds against a reference (temperature first, then top-p)
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 7, generator=gen, dtype=torch.float64) * 2
    logits[:, 6] = float("-inf")  # a forbidden token ([MASK]) stays forbidden
    tops = torch.rand(500, generator=gen, dtype=torch.float64) * 0.98 + 0.01
    checked = 0
    for row, top_p in zip(logits, tops.tolist(), strict=True):
        for temperature in (0.5, 1.0, 2.0):
            probs = torch.softmax(row / temperature, -1)
            sorted_mass = probs.sort(descending=True).values.cumsum(0)
            if bool(((sorted_mass - top_p).abs() < 1e-9).any()):
                continue  # a prefix mass equal to top_p: float rounding may go either way
            kept = _top_p_reference(probs.tolist(), top_p)
            logp = select_from_logits(row.float(), temperature=temperature, top_p=top_p)
            assert set(torch.isfinite(logp).nonzero().flatten().tolist()) == kept
            kept_idx = sorted(kept)
            torch.testing.assert_close(
                logp[kept_idx].exp(), probs[kept_idx] / probs[kept_idx].sum(), atol=1e-6, rtol=1e-5
            )
            checked += 1
    assert checked > 1400


def test_temperature_zero_is_argmax():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(200, 5, generator=gen)
    logits[:, 4] = float("-inf")
    for top_p in (1.0, 0.3):
        logp = select_from_logits(logits, temperature=0.0, top_p=top_p)
        assert logp.dtype == torch.float64
        assert torch.equal(logp.argmax(-1), logits.argmax(-1))
        assert bool((logp.exp().sum(-1) == 1).all()) and int(torch.isfinite(logp).sum()) == 200
        assert torch.equal(sample_categorical(logp, gen), logits.argmax(-1))
    # temperature T > 0 is softmax(logits / T)
    torch.testing.assert_close(
        select_from_logits(logits, temperature=0.7), torch.log_softmax(logits.double() / 0.7, -1)
    )


def test_gumbel_noise_is_drawn_from_float64_uniforms():
    """float32 uniforms cap the Gumbel tail near 17 and lower sample entropy: the noise must come from 53-bit
    uniforms, and sample_categorical must add exactly that noise."""
    from textdiffusion.samplers.base import gumbel_noise

    noise = gumbel_noise((200_000,), "cpu", torch.Generator().manual_seed(3))
    assert noise.dtype == torch.float64
    u = torch.exp(-torch.exp(-noise))  # back to the uniforms
    assert (u.float().double() != u).float().mean() > 0.99  # almost none is a float32 number
    logp = torch.randn(50, 7, generator=torch.Generator().manual_seed(4)).double()
    drawn = sample_categorical(logp, torch.Generator().manual_seed(5))
    expected = (logp + gumbel_noise(logp.shape, "cpu", torch.Generator().manual_seed(5))).argmax(-1)
    assert torch.equal(drawn, expected)
