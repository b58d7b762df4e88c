"""Diffusion-LM's Gaussian process: the posterior q(x_s | x_t, z) and every term of the bound against
closed forms computed another way, and the whole bound against the data entropy with the exact predictor.

References that cannot be fooled: the posterior as a product of two Gaussian densities in x_s (precisions
add) and as the regression of x_s on x_t in a Monte Carlo forward chain built from one-step kernels; the
KLs from torch.distributions; the rounding term from Gaussian log-densities; and, for the assembled bound,
E_data[bound] >= E_data[-log p_model] >= H(p_data) for any network, with near equality for the exact
x0-predictor (`gaussian_toy`) as T grows.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from textdiffusion.core.errors import UserError
from textdiffusion.processes import build_process
from textdiffusion.processes.gaussian import NOISE_SCHEDULES, GaussianDiffusion, signal_levels
from textdiffusion.train.config import load_config


@pytest.mark.parametrize("schedule", NOISE_SCHEDULES)
def test_posterior_is_the_product_of_the_two_gaussians(schedule):
    process = GaussianDiffusion(vocab_size=5, mask_id=4, noise_schedule=schedule, num_steps=50)
    abar = process.abar
    for s, t in [(0, 1), (9, 10), (48, 49), (49, 50), (0, 50), (3, 17), (20, 45)]:
        a, b, v = process.posterior(s, t)
        # q(x_s | z) = N(sqrt(abar_s) z, 1 - abar_s) times q(x_t | x_s) = N(sqrt(r) x_s, 1 - r), r = abar_t / abar_s
        ratio = abar[t] / abar[s]
        precision = 1 / (1 - abar[s]) + ratio / (1 - ratio)
        assert float(v) == pytest.approx(float(1 / precision), rel=1e-10)
        assert float(a) == pytest.approx(float(abar[s].sqrt() / (1 - abar[s]) / precision), rel=1e-10)
        assert float(b) == pytest.approx(float(ratio.sqrt() / (1 - ratio) / precision), rel=1e-10)


def test_posterior_matches_a_monte_carlo_forward_chain(tiny_exact):
    """x_s ~ q(x_s | z) then x_t by t - s one-step kernels q(x_k | x_{k-1}); regress x_s on x_t."""
    process = GaussianDiffusion(vocab_size=5, mask_id=4, noise_schedule="cosine", num_steps=20)
    s, t, z, n = 4, 11, 1.3, 400_000
    gen = torch.Generator().manual_seed(0)
    abar = process.abar
    xs = abar[s].sqrt() * z + (1 - abar[s]).sqrt() * torch.randn(n, generator=gen, dtype=torch.float64)
    x = xs
    for k in range(s + 1, t + 1):
        alpha = abar[k] / abar[k - 1]
        x = alpha.sqrt() * x + (1 - alpha).sqrt() * torch.randn(n, generator=gen, dtype=torch.float64)
    a, b, v = (float(c) for c in process.posterior(s, t))
    cov = ((xs - xs.mean()) * (x - x.mean())).mean()
    slope = float(cov / x.var())
    intercept = float(xs.mean() - slope * x.mean())
    resid = float((xs - intercept - slope * x).var())
    se = math.sqrt(v / (n * float(x.var())))  # the slope's standard error
    assert abs(slope - b) < tiny_exact.Z * se
    assert abs(intercept - a * z) < tiny_exact.Z * se * (1 + abs(float(x.mean())))
    assert abs(resid - v) < tiny_exact.Z * v * math.sqrt(2 / n)


@pytest.mark.parametrize("schedule", NOISE_SCHEDULES)
def test_signal_levels_have_their_closed_forms(schedule):
    big_t = 100
    abar = signal_levels(schedule, big_t)
    assert bool((abar[1:] < abar[:-1]).all()) and 0 < float(abar[-1]) and float(abar[0]) < 1
    u = torch.arange(1, big_t + 1, dtype=torch.float64) / (big_t + 1)  # levels 0..T-1 (the last beta is clipped)
    if schedule == "sqrt":  # Diffusion-LM: abar(u) = 1 - sqrt(u + s), normalised at u = 0; the product telescopes
        expect = (1 - (u + 1e-4).sqrt()) / (1 - math.sqrt(1e-4))
    elif schedule == "cosine":
        expect = torch.cos(0.5 * math.pi * (u + 0.008) / 1.008) ** 2 / math.cos(0.5 * math.pi * 0.008 / 1.008) ** 2
    else:
        betas = torch.linspace(0.1, 20.0, big_t + 1, dtype=torch.float64) / (big_t + 1)
        expect = torch.exp(torch.log1p(-betas).cumsum(0))[:-1]
    torch.testing.assert_close(abar[:-1], expect, rtol=1e-10, atol=1e-12)


def test_each_term_of_the_bound_against_torch_distributions(gaussian_toy, tiny_exact):
    torch.manual_seed(0)
    process = gaussian_toy.toy_process(num_steps=40)
    table = gaussian_toy.toy_table()
    x0 = torch.tensor([[0, 2, 1], [1, 1, 0]])
    z = table[x0].double()
    t = torch.tensor([1, 23])
    noise = {"t": t, "t_weight": torch.full((2,), 40.0, dtype=torch.float64),  # t ~ U{1..40}: weight T
             "eps": torch.randn(2, 3, gaussian_toy.EMBED_DIM), "eps0": torch.randn(2, 3, gaussian_toy.EMBED_DIM)}
    zhat = torch.randn(2, 3, gaussian_toy.EMBED_DIM)

    class Fixed(torch.nn.Module):  # a "network" with the toy's table that predicts zhat
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding.from_pretrained(table.clone(), freeze=False)

        def forward(self, xt, u):
            return zhat

    parts = process.terms(Fixed(), x0, noise)
    abar = process.abar
    for i in range(2):
        ti = int(t[i])
        xt = abar[ti].sqrt() * z[i] + (1 - abar[ti]).sqrt() * noise["eps"][i].double()
        a, b, v = process.posterior(ti - 1, ti)
        q = Normal(a * z[i] + b * xt, v.sqrt())
        p = Normal(a * zhat[i].double() + b * xt, v.sqrt())
        kl = kl_divergence(q, p).sum(-1)  # per position
        torch.testing.assert_close(parts["diffusion"][i].double(), process.num_steps * kl, rtol=1e-4, atol=1e-6)
        prior = kl_divergence(Normal(abar[-1].sqrt() * z[i], (1 - abar[-1]).sqrt()), Normal(0.0, 1.0)).sum(-1)
        torch.testing.assert_close(parts["prior"][i].double(), prior, rtol=1e-4, atol=1e-7)
        x_0 = abar[0].sqrt() * z[i] + (1 - abar[0]).sqrt() * noise["eps0"][i].double()  # [L, d]
        dens = Normal(abar[0].sqrt() * table[:tiny_exact.N_VALUES].double(), (1 - abar[0]).sqrt())  # [V', d]
        loglik = dens.log_prob(x_0[:, None, :]).sum(-1)  # [L, V']: uniform prior over the real tokens
        rounding = -(loglik.gather(1, x0[i][:, None])[:, 0] - torch.logsumexp(loglik, dim=1))
        torch.testing.assert_close(parts["rounding"][i].double(), rounding, rtol=1e-4, atol=1e-5)
    total = process.nelbo_per_sequence(Fixed(), x0, noise)
    torch.testing.assert_close(total, (parts["diffusion"] + parts["prior"] + parts["rounding"]).sum(1))


def _bound_mean(process, model, x0, loss_mask=None, seed=1) -> tuple[float, float]:
    with torch.no_grad():
        noise = process.sample_noise(x0, torch.Generator().manual_seed(seed))
        values = process.nelbo_per_sequence(model, x0, noise, loss_mask).double()
    return float(values.mean()), float(values.std() / math.sqrt(len(values)))


def test_bound_of_the_exact_predictor_closes_on_the_data_entropy(gaussian_toy, tiny_exact):
    """E_data[bound] >= H(p_data) for any network; the exact x0-predictor's bound falls to H as T grows."""
    length, n = 2, 200_000
    data = tiny_exact.tiny_data(length)
    gen = torch.Generator().manual_seed(0)
    x0 = data.seqs[torch.multinomial(data.p_data, n, replacement=True, generator=gen)]
    gaps = {}
    for big_t in (10, 1000):
        process = gaussian_toy.toy_process(big_t)
        mean, se = _bound_mean(process, gaussian_toy.ExactEmbeddingDenoiser(process, data.p_data, length), x0)
        assert mean > data.entropy - tiny_exact.Z * se, \
            f"T={big_t}: bound {mean:.4f} below the entropy {data.entropy:.4f}"
        gaps[big_t] = mean - data.entropy
    assert gaps[1000] < 0.02 + tiny_exact.Z * se, \
        f"T=1000: the exact predictor's bound is {gaps[1000]:.4f} nats above H"
    assert gaps[10] > gaps[1000] + 0.2  # coarse steps: the Gaussian reverse steps are far from exact


def test_both_time_proposals_estimate_the_same_bound(gaussian_toy, tiny_exact):
    """t ~ U{1..T} (weight T) and t ~ pi (the mixture of uniform and w_t, weight 1 / pi(t)) are unbiased for the
    same sum, and pi's weights stay below 2T."""
    length, n = 2, 200_000
    data = tiny_exact.tiny_data(length)
    x0 = data.seqs[torch.multinomial(data.p_data, n, replacement=True, generator=torch.Generator().manual_seed(5))]
    process = gaussian_toy.toy_process(200)
    model = gaussian_toy.ExactEmbeddingDenoiser(process, data.p_data, length)
    gen = torch.Generator().manual_seed(6)
    with torch.no_grad():
        draws = {"uniform": process.train_noise(x0, gen), "mixture": process.sample_noise(x0, gen)}
        values = {k: process.nelbo_per_sequence(model, x0, v).double() for k, v in draws.items()}
    assert float(process.proposal[0]) == 0.0 and float(process.proposal.sum()) == pytest.approx(1.0)
    assert torch.equal(draws["uniform"]["t_weight"], torch.full((n,), 200.0, dtype=torch.float64))
    counts = torch.bincount(draws["mixture"]["t"], minlength=201).double()
    assert float((counts / n - process.proposal).abs().max()) < 1e-3  # stratified: close to pi itself
    mean = {k: float(v.mean()) for k, v in values.items()}
    se = math.hypot(*(float(v.std()) / math.sqrt(n) for v in values.values()))
    assert abs(mean["uniform"] - mean["mixture"]) < tiny_exact.Z * se
    assert float(draws["mixture"]["t_weight"].max()) <= 2 * 200


def test_infilling_bound_with_clean_context_closes_on_the_conditional_entropy(gaussian_toy, tiny_exact):
    """With the context position given clean and out of the loss mask, the bound is on -log p(gap | context)."""
    length, n, context = 2, 100_000, 2
    data = tiny_exact.tiny_data(length)
    cond = data.p_data.view(tiny_exact.N_VALUES, tiny_exact.N_VALUES)[context]
    cond = cond / cond.sum()
    gen = torch.Generator().manual_seed(3)
    x0 = torch.stack([torch.full((n,), context), torch.multinomial(cond, n, replacement=True, generator=gen)], 1)
    mask = torch.tensor([[False, True]]).expand(n, 2)
    process = gaussian_toy.toy_process(1000)
    model = gaussian_toy.ExactEmbeddingDenoiser(process, data.p_data, length, fixed={0: context})
    mean, se = _bound_mean(process, model, x0, mask)
    entropy = float(-(cond * cond.log()).sum())
    assert entropy - tiny_exact.Z * se < mean < entropy + 0.02 + tiny_exact.Z * se


def test_options_are_checked_with_one_line_errors():
    with pytest.raises(UserError, match="noise_schedule"):
        GaussianDiffusion(vocab_size=5, mask_id=4, noise_schedule="loglinear")
    with pytest.raises(UserError, match="embed_dim"):
        GaussianDiffusion(vocab_size=5, mask_id=4, embed_dim=0)
    with pytest.raises(UserError, match="objective"):
        GaussianDiffusion(vocab_size=5, mask_id=4, objective="vlb")
    with pytest.raises(UserError, match="num_steps"):
        build_process("gaussian", vocab_size=5, mask_id=4, num_steps=0)
    cfg = load_config("tiny", ["process.name=gaussian", "process.noise_schedule=cosine", "process.embed_dim=32"])
    assert build_process(cfg.process.name, vocab_size=260, mask_id=259, **cfg.process.options()).config() == {
        "noise_schedule": "cosine", "num_steps": 2000, "embed_dim": 32, "objective": "simple", "antithetic": True,
        "source_len": 0, "prediction": "embedding"}
    with pytest.raises(UserError, match="has no option"):
        load_config("tiny", ["process.name=gaussian", "process.graph=absorb"])


def test_token_prediction_with_the_exact_context_law_is_the_exact_posterior_mean(gaussian_toy, tiny_exact):
    """CDCD-style score interpolation: network logits log p(w_l | x_t,-l) plus the per-position Gaussian likelihood
    give p(w_l | x_t), and their mean embedding equals the exact E[z | x_t] of `ExactEmbeddingDenoiser`."""
    length = 3
    data = tiny_exact.tiny_data(length)
    process = GaussianDiffusion(vocab_size=tiny_exact.N_VALUES + 1, mask_id=tiny_exact.N_VALUES, num_steps=100,
                                embed_dim=gaussian_toy.EMBED_DIM, prediction="tokens")
    exact = gaussian_toy.ExactEmbeddingDenoiser(process, data.p_data, length)
    context = gaussian_toy.ExactContextLogits(process, data.p_data, length)
    gen = torch.Generator().manual_seed(4)
    for level in (1, 30, 70, 100):
        x0 = data.seqs[torch.multinomial(data.p_data, 64, replacement=True, generator=gen)]
        xt = process.corrupt(gaussian_toy.toy_table()[x0], torch.full((64,), level),
                             torch.randn(64, length, gaussian_toy.EMBED_DIM, generator=gen))
        zhat, logp = process.predict_with_tokens(context, xt, level)
        torch.testing.assert_close(zhat, exact(xt, process.model_time(level, 64, xt.device)), atol=2e-4, rtol=1e-4)
        assert bool(torch.isinf(logp[..., tiny_exact.N_VALUES]).all())  # [MASK] is never a token
    with pytest.raises(UserError, match="prediction='tokens'"):
        GaussianDiffusion(vocab_size=5, mask_id=4, objective="ce")
