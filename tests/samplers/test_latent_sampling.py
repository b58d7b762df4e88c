"""The latent diffusion sampler (samplers/latent.py) on a Gaussian toy with the exact denoiser, and its plumbing on
a real untrained latent model.

Toy: every latent coordinate is independent, z_i ~ N(m_i, s^2) (m_i per coordinate, one m for the null condition
and another for a prefix condition). The exact denoiser is linear in x_t,
    E[z | x_t] = m + c_t (x_t - sqrt(abar_t) m),  c_t = sqrt(abar_t) s^2 / (abar_t s^2 + 1 - abar_t),
so every reverse step is an affine map of x_t plus Gaussian noise and the sampler's output law is a Gaussian
whose mean and variance are propagated here step by step, from the posterior (a, b, v) of Ho et al. eq. 7 for
ancestral steps and from DDIM's eq. 12 for eta = 0, without the sampler's code. Classifier-free guidance of scale
w on two conditionals of equal variance is exactly the denoiser of a third, N(m0 + w (m1 - m0), s^2) (the scores are
affine in x_t and differ by a constant), so the guided sampler must write, draw for draw, what the unguided
sampler writes for that law.
"""

from __future__ import annotations

import math

import pytest
import torch

from textdiffusion.core.errors import UserError
from textdiffusion.models.latent_autoencoder import LatentModel
from textdiffusion.models.transformer import ModelConfig
from textdiffusion.processes import gaussian_math
from textdiffusion.processes.latent import LatentDiffusion
from textdiffusion.samplers import FAMILY_SAMPLERS, SAMPLERS, SUMMARIES
from textdiffusion.samplers.latent import LatentConfig, latent_sample, sample_latents

K, D, VOCAB, MASK = 4, 8, 6, 5
TINY = ModelConfig(vocab_size=VOCAB, seq_len=8, d_model=16, n_layers=1, n_heads=2)


def toy_process(prediction: str = "v", big_t: int = 100) -> LatentDiffusion:
    return LatentDiffusion(VOCAB, MASK, num_latents=K, latent_dim=D, encoder_layers=1, decoder_layers=1,
                           resampler_layers=1, num_steps=big_t, prediction=prediction)


class GaussianToyDenoiser(LatentModel):
    """A latent model whose denoiser is the exact one of the toy (module notes), in the process's parameterisation;
    rows with a condition use the mean `m1`, rows without it `m0`."""

    def __init__(self, process: LatentDiffusion, m0: torch.Tensor, m1: torch.Tensor, s: float):
        super().__init__(TINY, K, D, 1, 1, 1)
        self.process, self.m0, self.m1, self.s = process, m0, m1, s

    def denoise(self, xt, t, cond=None, has_cond=None, previous=None):
        level = (t.double() * self.process.num_steps).round().long()
        abar = self.process.abar[level].float()[:, None, None]
        m = self.m0.expand_as(xt)
        if cond is not None:
            has = torch.ones(xt.shape[0], dtype=torch.bool) if has_cond is None else has_cond
            m = torch.where(has[:, None, None], self.m1, self.m0)
        c = abar.sqrt() * self.s ** 2 / (abar * self.s ** 2 + 1 - abar)
        zhat = m + c * (xt - abar.sqrt() * m)
        eps = (xt - abar.sqrt() * zhat) / (1 - abar).sqrt()
        return {"x0": zhat, "eps": eps, "v": abar.sqrt() * eps - (1 - abar).sqrt() * zhat}[self.process.prediction]


def reference_law(process: LatentDiffusion, m: torch.Tensor, s: float, steps: int | None,
                  eta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, variance) of the sampler's clean latents on the toy, float64 (module notes)."""
    abar = process.abar
    mean, var = torch.zeros_like(m, dtype=torch.float64), torch.ones_like(m, dtype=torch.float64)
    m = m.double()
    times = gaussian_math.sampling_times(process.num_steps, steps)
    for t, u in zip(times[:-1], times[1:]):
        at, au = float(abar[t]), float(abar[u])
        c = math.sqrt(at) * s * s / (at * s * s + 1 - at)  # zhat = c x_t + (1 - c sqrt(abar_t)) m
        if eta == 1:  # x_u ~ q(x_u | x_t, z = zhat) = N(a zhat + b x_t, v)
            a, b, v = (float(q) for q in gaussian_math.posterior(abar, u, t))
            alpha, beta, noise = a * c + b, a * (1 - c * math.sqrt(at)) * m, v
        else:  # DDIM eq. 12, eta = 0: x_u = sqrt(abar_u) zhat + sqrt(1 - abar_u) (x_t - sqrt(abar_t) zhat) / sqrt(1 - abar_t)
            r = math.sqrt((1 - au) / (1 - at))
            alpha = math.sqrt(au) * c + r * (1 - math.sqrt(at) * c)
            beta, noise = (math.sqrt(au) - r * math.sqrt(at)) * (1 - c * math.sqrt(at)) * m, 0.0
        mean, var = alpha * mean + beta, alpha * alpha * var + noise
    return mean / math.sqrt(float(abar[0])), var / float(abar[0])


@pytest.mark.parametrize("prediction, steps, eta", [("v", None, 1.0), ("eps", 20, 1.0), ("x0", 20, 0.0),
                                                    ("v", 10, 0.0)])
def test_the_reverse_chain_samples_its_exact_gaussian_law(prediction, steps, eta):
    torch.manual_seed(0)
    process = toy_process(prediction)
    m0, s = torch.randn(K, D), 0.6
    model = GaussianToyDenoiser(process, m0, m0, s)
    n = 600
    z = sample_latents(model, process, (n, K, D), LatentConfig(steps=steps, eta=eta),
                       generator=torch.Generator().manual_seed(1)).double()
    mean, var = reference_law(process, m0, s, steps, eta)
    standard = (z - mean) / var.sqrt()  # N(0, 1) in every one of the n * K * D coordinates
    count = standard.numel()
    assert abs(float(standard.mean())) < 5 / math.sqrt(count), (prediction, steps, eta)
    assert abs(float(standard.var()) - 1) < 5 * math.sqrt(2 / count), (prediction, steps, eta)
    # and per coordinate: the means sit where the law puts them (a bias in one parameterisation shows here)
    assert float((standard.mean(0)).abs().max()) < 5 / math.sqrt(n)


@pytest.mark.parametrize("w", [0.0, 1.0, 2.5])
def test_classifier_free_guidance_is_the_guided_gaussian_exactly(w):
    torch.manual_seed(0)
    process = toy_process("eps")
    m0, m1, s = torch.randn(K, D), torch.randn(K, D), 0.5
    guided_model = GaussianToyDenoiser(process, m0, m1, s)
    target_model = GaussianToyDenoiser(process, m0 + w * (m1 - m0), m0 + w * (m1 - m0), s)
    cfg = LatentConfig(steps=25, eta=1.0, guidance=w)
    cond = torch.zeros(3, K, D)  # the toy reads only which rows have a condition
    guided = sample_latents(guided_model, process, (3, K, D), cfg, cond, None, torch.Generator().manual_seed(2))
    plain = sample_latents(target_model, process, (3, K, D), LatentConfig(steps=25, eta=1.0),
                           generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(guided, plain, atol=2e-4, rtol=1e-4)


def test_guidance_one_is_the_conditional_model_on_a_real_network():
    torch.manual_seed(0)
    process = toy_process("v")
    net = process.build_network(TINY)
    with torch.no_grad():  # adaLN-zero starts every block as the identity: wake them so the condition counts
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    xt, cond = torch.randn(2, K, D), torch.randn(2, K, D)
    conditional = process.to_clean(net.denoise(xt, torch.full((2,), 0.3), cond).float(), xt, 30)
    unconditional = process.to_clean(net.denoise(xt, torch.full((2,), 0.3)).float(), xt, 30)
    assert not torch.allclose(conditional, unconditional, atol=1e-4)  # the condition reaches the output
    torch.testing.assert_close(process.predict(net, xt, 30, cond, guidance=1.0), conditional)
    torch.testing.assert_close(process.predict(net, xt, 30, cond, guidance=0.0), unconditional)
    three = process.predict(net, xt, 30, cond, guidance=3.0)
    torch.testing.assert_close(three, unconditional + 3 * (conditional - unconditional), atol=1e-5, rtol=1e-4)


def test_a_prompt_is_kept_and_conditions_the_chain_and_gaps_are_refused():
    torch.manual_seed(0)
    process = toy_process("v", big_t=50)
    net = process.build_network(TINY).eval()
    x = torch.full((2, 8), MASK)
    x[0, :3] = torch.tensor([1, 2, 3])
    frames_seen = []
    out = latent_sample(net, process, x, LatentConfig(steps=4, guidance=2.0), torch.Generator().manual_seed(0),
                        record_frames=True, on_step=frames_seen.append)
    assert out.ids[0, :3].tolist() == [1, 2, 3]
    assert not bool((out.ids == MASK).any())
    assert len(out.frames) == len(frames_seen) == 4 and out.frames[-1].t == 0.0
    assert out.nfe == 4 * 2 + 8  # guided: two denoiser passes a step; then one decoder pass a position
    gap = x.clone()
    gap[1, 5] = 4  # a fixed token after a [MASK]
    with pytest.raises(UserError, match="cannot fill gaps"):
        latent_sample(net, process, gap, LatentConfig(steps=2))
    with pytest.raises(UserError, match="eta"):
        latent_sample(net, process, x, LatentConfig(eta=2.0))
    with pytest.raises(UserError, match="guidance"):
        latent_sample(net, process, x, LatentConfig(guidance=-1.0))


def test_the_sampler_is_listed_and_belongs_to_the_family():
    assert SAMPLERS["latent"] == (LatentConfig, latent_sample)
    assert FAMILY_SAMPLERS["latent"][0] == "latent" == toy_process().default_sampler
    assert "latent" in SUMMARIES["latent"]
