"""CDCD's time warping: the monotone fit is the least-squares one, the warped proposal is exactly the fitted
curve's increments (plus the uniform floor), the levels the process draws follow it (Kolmogorov-Smirnov limit on
stratified draws), their importance weights recover uniform-t expectations, and a `ce` training step fits it."""

from __future__ import annotations

import itertools

import pytest
import torch

from textdiffusion.core.errors import UserError
from textdiffusion.processes import build_process
from textdiffusion.processes.gaussian import GaussianDiffusion
from textdiffusion.processes.time_warp import TimeWarp, isotonic


def _brute_isotonic(values: list[float], grid: torch.Tensor) -> float:
    """The least sum of squares over every non-decreasing sequence on a fine grid (small K only)."""
    best = float("inf")
    for combo in itertools.combinations_with_replacement(grid.tolist(), len(values)):
        best = min(best, sum((c - v) ** 2 for c, v in zip(combo, values, strict=True)))
    return best


def test_isotonic_is_the_least_squares_monotone_fit():
    assert isotonic(torch.tensor([1.0, 3.0, 2.0, 4.0])).tolist() == [1.0, 2.5, 2.5, 4.0]
    assert isotonic(torch.tensor([3.0, 2.0, 1.0])).tolist() == [2.0, 2.0, 2.0]
    gen = torch.Generator().manual_seed(0)
    grid = torch.arange(0, 4.01, 0.25, dtype=torch.float64)
    for _ in range(4):
        values = (torch.randint(0, 17, (4,), generator=gen).double() * 0.25).tolist()
        fit = isotonic(torch.tensor(values))
        assert bool((fit[1:] >= fit[:-1]).all())
        # the grid holds every pooled mean of quarter-values only approximately: the fit is at least as good
        assert float(((fit - torch.tensor(values)) ** 2).sum()) <= _brute_isotonic(values, grid) + 1e-12


def _fed_warp(curve, big_t: int = 200, bins: int = 8) -> TimeWarp:
    warp = TimeWarp(big_t, bins=bins, floor=0.2)
    levels = torch.arange(1, big_t + 1)
    warp.update(levels, curve(levels.double() / big_t))
    return warp


def test_proposal_is_the_fitted_curves_increments_with_the_floor():
    warp = TimeWarp(100, bins=4)
    assert torch.equal(warp.proposal()[1:], torch.full((100,), 0.01, dtype=torch.float64))  # nothing seen yet
    warp = _fed_warp(lambda u: u.pow(2))
    big_t = warp.num_steps
    # every level visited once: each bin's average is the mean loss over its levels
    for k in range(warp.bins):
        lo, hi = int(warp.edges[k]) + 1, int(warp.edges[k + 1])
        expected = (torch.arange(lo, hi + 1).double() / big_t).pow(2).mean()
        assert float(warp.means[k]) == pytest.approx(float(expected), rel=1e-12)
    curve = warp.cdf()
    pi = warp.proposal()
    assert float(pi[0]) == 0 and float(pi.sum()) == pytest.approx(1.0, abs=1e-12)
    cdf = pi.cumsum(0)
    normalised = (curve - curve[0]) / (curve[-1] - curve[0])
    levels = torch.arange(big_t + 1, dtype=torch.float64)
    torch.testing.assert_close(cdf, 0.8 * normalised + 0.2 * levels / big_t, rtol=0, atol=1e-12)
    # a loss rising as u^2 is warped towards high noise: between the outer bin centres the density grows as u
    inner = pi[int(warp.centres[0]) + 2 : int(warp.centres[-1]) - 1] - 0.2 / big_t
    assert bool((inner[1:] >= inner[:-1] - 1e-15).all()) and float(inner[-1]) > 3 * float(inner[0])


def test_warped_levels_follow_the_proposal_and_their_weights_unbias_the_mean():
    process = GaussianDiffusion(vocab_size=5, mask_id=4, num_steps=200, embed_dim=4, objective="ce",
                                prediction="tokens", time_warp=True)
    process.warp = _fed_warp(lambda u: torch.sqrt(u))
    pi = process.warp.proposal()
    n = 40_000
    t, weight = process.sample_t(n, "cpu", torch.Generator().manual_seed(0), pi)
    empirical = torch.bincount(t, minlength=201).double().cumsum(0) / n
    # stratified draws are at least as close to the law as i.i.d. ones: the DKW bound at 1e-6 holds
    assert float((empirical - pi.cumsum(0)).abs().max()) < (torch.log(torch.tensor(2e6)) / (2 * n)).sqrt()
    torch.testing.assert_close(weight, 1 / pi[t])
    f = (t.double() / 200).sin()  # any function of the level: E_pi[f(t) / (T pi(t))] = mean over t of f(t)
    exact = (torch.arange(1, 201).double() / 200).sin().mean()
    assert float((f * weight / 200).mean()) == pytest.approx(float(exact), abs=3e-3)


def test_a_ce_loss_fits_the_warp_and_bad_options_are_refused(gaussian_toy, tiny_exact):
    length, big_t = 3, 64
    data = tiny_exact.tiny_data(length)
    base = gaussian_toy.toy_process(big_t)
    process = GaussianDiffusion(vocab_size=base.vocab_size, mask_id=base.mask_id, num_steps=big_t,
                                embed_dim=base.embed_dim, objective="ce", prediction="tokens", time_warp=True)
    model = gaussian_toy.ExactContextLogits(process, data.p_data, length)
    x0 = data.seqs[torch.multinomial(data.p_data, 256, replacement=True, generator=torch.Generator().manual_seed(1))]
    for seed in range(4):
        noise = process.train_noise(x0, torch.Generator().manual_seed(seed))
        with torch.enable_grad():
            process.loss(model, x0, noise)
    assert int(process.warp.seen.sum()) == 4 * 256
    # the exact model's cross-entropy rises with the noise level: the monotone fit gives a non-uniform warp
    assert float(process.warp.means[-1]) > float(process.warp.means[0]) + 0.3
    assert float(process.warp.proposal()[1:].std()) > 0
    assert process.config()["time_warp"] is True
    with torch.no_grad():  # evaluation does not move the fit
        process.loss(model, x0, process.train_noise(x0, torch.Generator().manual_seed(9)))
    assert int(process.warp.seen.sum()) == 4 * 256
    with pytest.raises(UserError, match="objective=ce"):
        build_process("gaussian", vocab_size=5, mask_id=4, time_warp=True)
    with pytest.raises(UserError, match="true or false"):
        build_process("gaussian", vocab_size=5, mask_id=4, objective="ce", prediction="tokens", time_warp="yes")
    assert "time_warp" not in build_process("gaussian", vocab_size=5, mask_id=4).config()


def test_a_resumed_run_continues_the_same_warp_fit(tmp_path, tiny_config, write_corpus):
    """The fit is trainer state: after a resume the proposal (and so the next noise draw) is the saved one."""
    from textdiffusion.train.trainer import Trainer

    corpus = write_corpus(tmp_path / "corpus.jsonl", n_docs=40)
    extra = ("process.name=gaussian", "process.prediction=tokens", "process.objective=ce", "process.time_warp=true",
             "process.num_steps=40", "model.time_conditioning=true")
    cfg = tiny_config(tmp_path / "run", corpus, *extra)
    first = Trainer(cfg)
    for _ in range(24):  # 24 x 8 draws: every one of the 32 bins sees a loss, so the proposal is warped
        first.train_step()
    first.save()
    assert first.process.warp.cdf() is not None
    resumed = Trainer(cfg, resume=True)
    assert resumed.process.training_state() == first.process.training_state()
    assert torch.equal(resumed.process.warp.proposal(), first.process.warp.proposal())
    fresh = Trainer(tiny_config(tmp_path / "fresh", corpus, *extra))
    assert not torch.equal(fresh.process.warp.proposal(), first.process.warp.proposal())
    with pytest.raises(UserError, match="bins"):
        resumed.process.warp.load_state({"means": [0.0], "seen": [1]})
