"""Next-sentence concept diffusion (processes/concept.py): the scaler, the forward process, the x0 loss, the reverse
step against Ho et al.'s formulas by hand, and classifier-free guidance."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from textdiffusion.core.errors import UserError
from textdiffusion.models.concept import ConceptDenoiser, ConceptNetConfig
from textdiffusion.processes import gaussian_math
from textdiffusion.processes.concept import ConceptDiffusion, ConceptNoise, EmbeddingScaler


def test_scaler_standardises_each_coordinate_and_inverts():
    e = torch.randn(500, 4) * torch.tensor([0.01, 0.1, 1.0, 5.0]) + torch.tensor([1.0, -2.0, 0.0, 3.0])
    scaler = EmbeddingScaler.fit(e)
    x = scaler(e)
    assert torch.allclose(x.mean(0), torch.zeros(4), atol=1e-4)
    assert torch.allclose(x.std(0), torch.ones(4), atol=1e-4)
    assert torch.allclose(scaler.inverse(x), e, atol=1e-4)
    flat = EmbeddingScaler.fit(torch.ones(3, 2), min_std=0.5)  # a constant coordinate: the floor, not a division by 0
    assert torch.equal(flat.std, torch.full((2,), 0.5))
    with pytest.raises(UserError, match="at least 2"):
        EmbeddingScaler.fit(torch.ones(1, 3))


def test_corrupt_is_the_forward_marginal():
    proc = ConceptDiffusion(num_steps=20)
    x0, eps = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    t = torch.tensor([[1, 7, 20], [3, 3, 19]])
    xt = proc.corrupt(x0, t, eps)
    abar = gaussian_math.signal_levels("cosine", 20)
    for b in range(2):
        for j in range(3):
            a = float(abar[t[b, j]])
            assert torch.allclose(xt[b, j], math.sqrt(a) * x0[b, j] + math.sqrt(1 - a) * eps[b, j], atol=1e-6)


class Oracle(nn.Module):
    """Returns a fixed answer (default: the clean sentences themselves, which the real network sees only as context);
    records what it was given."""

    def __init__(self, answer: torch.Tensor | None = None):
        super().__init__()
        self.answer = answer

    def forward(self, context, xt, t, drop=None):
        self.seen = (context, xt, t, drop)
        return context.clone() if self.answer is None else self.answer


def test_loss_is_the_mse_of_the_x0_prediction_per_sentence():
    proc = ConceptDiffusion(num_steps=10, cond_drop=0.5)
    x0 = torch.randn(2, 4, 3)
    noise = proc.sample_noise(x0, torch.Generator().manual_seed(0))
    oracle = Oracle()
    assert float(proc.loss(oracle, x0, noise).total) == 0.0  # the target is x0 (not eps, not v)
    context, xt, t, drop = oracle.seen
    assert torch.equal(context, x0) and torch.equal(drop, noise.drop)
    assert torch.allclose(xt, proc.corrupt(x0, noise.t, noise.eps)) and torch.allclose(t, noise.t / 10)
    zeros = proc.loss(Oracle(torch.zeros_like(x0)), x0, noise)
    assert zeros.n_tokens == 8
    assert float(zeros.mean) == pytest.approx(float(x0.pow(2).mean()), rel=1e-6)
    valid = torch.tensor([[True, True, False, False], [True, True, True, False]])
    masked = proc.loss(Oracle(torch.zeros_like(x0)), x0, noise, valid)
    assert masked.n_tokens == 5
    assert float(masked.total) == pytest.approx(float(x0.pow(2).mean(-1)[valid].sum()), rel=1e-6)


def test_noise_draws_levels_one_to_t_and_drops_at_the_rate():
    proc = ConceptDiffusion(num_steps=5, cond_drop=0.25)
    noise = proc.sample_noise(torch.zeros(400, 10, 2), torch.Generator().manual_seed(1))
    assert noise.eps.shape == (400, 10, 2) and noise.t.shape == noise.drop.shape == (400, 10)
    assert set(noise.t.unique().tolist()) == {1, 2, 3, 4, 5}
    assert abs(float(noise.drop.float().mean()) - 0.25) < 0.03  # 4000 draws: 4.6 sigma
    with pytest.raises(UserError, match="cond_drop"):
        ConceptDiffusion(cond_drop=1.0)
    with pytest.raises(UserError, match="num_steps"):
        ConceptDiffusion(num_steps=0)


def test_ancestral_step_is_hos_posterior_by_hand():
    """One ancestral step t -> t - 1 on a 1-D toy: Ho et al. 2020 eq. 6-7 from the betas, not gaussian_math's form."""
    proc = ConceptDiffusion(num_steps=8, noise_schedule="linear")
    abar = proc.abar.tolist()
    xt, x0_hat, z = torch.tensor([0.7]), torch.tensor([-1.3]), torch.tensor([0.4])
    for t in (1, 5, 8):
        alpha = abar[t] / abar[t - 1]
        beta = 1 - alpha
        mean = (math.sqrt(abar[t - 1]) * beta / (1 - abar[t]) * -1.3
                + math.sqrt(alpha) * (1 - abar[t - 1]) / (1 - abar[t]) * 0.7)
        var = beta * (1 - abar[t - 1]) / (1 - abar[t])
        got = proc.reverse_step(x0_hat, xt, t, t - 1, 1.0, z)
        assert float(got) == pytest.approx(mean + math.sqrt(var) * 0.4, abs=1e-6)


def test_ddim_step_keeps_the_implied_noise():
    """eta = 0 over a strided step (Song et al. 2021, eq. 12): x_s = sqrt(abar_s) x0_hat + sqrt(1 - abar_s) eps_hat."""
    proc = ConceptDiffusion(num_steps=10)
    abar = proc.abar.tolist()
    xt, x0_hat = torch.tensor([0.2, -0.5]), torch.tensor([1.0, 0.3])
    eps_hat = (xt - math.sqrt(abar[9]) * x0_hat) / math.sqrt(1 - abar[9])
    want = math.sqrt(abar[3]) * x0_hat + math.sqrt(1 - abar[3]) * eps_hat
    got = proc.reverse_step(x0_hat, xt, 9, 3, 0.0, torch.randn(2))
    assert torch.allclose(got, want, atol=1e-6)
    with pytest.raises(UserError, match="reverse step"):
        proc.reverse_step(x0_hat, xt, 3, 3, 0.0, torch.randn(2))


def guided_net() -> ConceptDenoiser:
    torch.manual_seed(0)
    net = ConceptDenoiser(ConceptNetConfig(embed_dim=4, d_model=16, n_layers=1, denoiser_layers=1, n_heads=2,
                                           context=3))
    with torch.no_grad():  # adaLN-zero starts the blocks as the identity, which reads no context: give them weights
        for block in net.blocks:
            block.modulation.weight.normal_(std=0.2)
    return net.eval()


def test_guidance_one_is_the_conditional_model_and_zero_the_unconditional():
    proc, net = ConceptDiffusion(num_steps=10), guided_net()
    h = net.context_states(torch.randn(2, 2, 4))[:, -1]
    xt = torch.randn(2, 4)
    time = torch.full((2,), 0.6)
    cond = net.denoise(h, xt, time)
    uncond = net.denoise(net.null.expand(2, -1), xt, time)
    assert (cond - uncond).abs().max() > 1e-3
    assert torch.equal(proc.predict(net, h, xt, 6, 1.0), cond)
    assert torch.equal(proc.predict(net, h, xt, 6, 0.0), uncond)
    assert torch.allclose(proc.predict(net, h, xt, 6, 2.5), uncond + 2.5 * (cond - uncond), atol=1e-6)
    assert torch.allclose(proc.predict(net, h, xt, 6, 2.5), 2.5 * cond - 1.5 * uncond, atol=1e-5)
    calls = []
    denoise = net.denoise
    net.denoise = lambda *a: calls.append(a[0]) or denoise(*a)
    for scale, passes in ((0.0, 1), (1.0, 1), (2.5, 2)):  # scales 0 and 1 cost one pass, the others two
        calls.clear()
        proc.predict(net, h, xt, 6, scale)
        assert len(calls) == passes


def test_noise_record_is_what_the_loss_reads():
    proc = ConceptDiffusion(num_steps=4)
    x0 = torch.randn(1, 2, 3)
    noise = ConceptNoise(t=torch.tensor([[4, 1]]), eps=torch.zeros(1, 2, 3), drop=torch.tensor([[False, True]]))
    oracle = Oracle(torch.zeros_like(x0))
    proc.loss(oracle, x0, noise)
    abar = proc.abar
    assert torch.allclose(oracle.seen[1][0, 0], math.sqrt(float(abar[4])) * x0[0, 0], atol=1e-6)  # eps = 0
    assert torch.allclose(oracle.seen[1][0, 1], math.sqrt(float(abar[1])) * x0[0, 1], atol=1e-6)
