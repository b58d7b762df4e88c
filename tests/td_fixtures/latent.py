"""Test fixtures: the Gaussian toy of latent diffusion (processes/latent.py, samplers/latent.py)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from textdiffusion.models.latent_autoencoder import LatentModel
from textdiffusion.models.transformer import ModelConfig
from textdiffusion.processes import gaussian_math
from textdiffusion.processes.latent import LatentDiffusion

# =====================================================================================================================
# fixture `latent_toy`
#
# Every latent coordinate is independent, z_i ~ N(m_i, s^2) (m_i per coordinate; one mean `m0` for the null
# condition and another `m1` for rows with a prefix condition). The exact denoiser is linear in x_t,
#     E[z | x_t] = m + c_t (x_t - sqrt(abar_t) m),  c_t = sqrt(abar_t) s^2 / (abar_t s^2 + 1 - abar_t),
# so every reverse step is an affine map of x_t plus Gaussian noise, and the law of what the reverse chain writes
# is a Gaussian whose mean and variance `chain_law` propagates step by step from the posterior (a, b, v) of Ho et
# al. eq. 7 (ancestral steps) or from DDIM's eq. 12 (eta = 0), without the sampler's code. `GaussianToyDenoiser`
# is a real LatentModel (random autoencoder) whose `denoise` returns that exact denoiser in the process's
# parameterisation (x0, eps or v).
# =====================================================================================================================


def _toy_process(k: int, d: int, prediction: str = "v", big_t: int = 100, vocab: int = 6,
                 **options) -> LatentDiffusion:
    return LatentDiffusion(vocab, vocab - 1, num_latents=k, latent_dim=d, encoder_layers=1, decoder_layers=1,
                           resampler_layers=1, num_steps=big_t, prediction=prediction, **options)


def _tiny_cfg(vocab: int = 6) -> ModelConfig:
    return ModelConfig(vocab_size=vocab, seq_len=8, d_model=16, n_layers=1, n_heads=2)


class GaussianToyDenoiser(LatentModel):
    """A latent model whose denoiser is the toy's exact one (notes above); rows with a condition use `m1`."""

    def __init__(self, process: LatentDiffusion, m0: torch.Tensor, m1: torch.Tensor, s: float):
        super().__init__(_tiny_cfg(process.vocab_size), process.num_latents, process.latent_dim, 1, 1, 1)
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


def _chain_law(process: LatentDiffusion, m: torch.Tensor, s: float, steps: int | None,
               eta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, variance) of x_0 / sqrt(abar_0) after the reverse chain from x_T ~ N(0, I), float64."""
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
        elif eta == 0:  # x_u = sqrt(abar_u) zhat + sqrt(1 - abar_u) (x_t - sqrt(abar_t) zhat) / sqrt(1 - abar_t)
            r = math.sqrt((1 - au) / (1 - at))
            alpha = math.sqrt(au) * c + r * (1 - math.sqrt(at) * c)
            beta, noise = (math.sqrt(au) - r * math.sqrt(at)) * (1 - c * math.sqrt(at)) * m, 0.0
        else:
            raise ValueError("the reference covers eta = 0 and eta = 1")
        mean, var = alpha * mean + beta, alpha * alpha * var + noise
    return mean / math.sqrt(float(abar[0])), var / float(abar[0])


def _model_law(process: LatentDiffusion, m: torch.Tensor, s: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, variance) of p(z), the model the bound is on: every level, ancestral, then z ~ p(z | x_0) =
    N(x_0 / sqrt(abar_0), (1 - abar_0) / abar_0)."""
    mean, var = _chain_law(process, m, s, None, 1.0)
    abar0 = float(process.abar[0])
    return mean, var + (1 - abar0) / abar0


@pytest.fixture(scope="session")
def latent_toy() -> SimpleNamespace:
    """The latent toy of the notes above: `latent_toy.toy_process(k, d, prediction="v", big_t=100, vocab=6,
    **options)`, `latent_toy.tiny_cfg(vocab)`, `latent_toy.GaussianToyDenoiser(process, m0, m1, s)`,
    `latent_toy.chain_law(process, m, s, steps, eta)`, `latent_toy.model_law(process, m, s)`."""
    return SimpleNamespace(toy_process=_toy_process, tiny_cfg=_tiny_cfg, GaussianToyDenoiser=GaussianToyDenoiser,
                           chain_law=_chain_law, model_law=_model_law)
