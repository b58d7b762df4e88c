"""The latent diffusion sampler (samplers/latent.py) on a Gaussian toy with the exact denoiser, and its plumbing on
a real untrained latent model.

Toy (`latent_toy`, tests/td_fixtures/latent.py): independent coordinates z_i ~ N(m_i, s^2), whose exact denoiser is
linear in x_t, so the sampler's output law is a Gaussian whose mean and variance the fixture propagates step by
step (ancestral steps from the posterior of Ho et al. eq. 7, eta = 0 from DDIM's eq. 12) without the sampler's
code. Classifier-free guidance of scale w on two conditionals of equal variance is exactly the denoiser of a third,
N(m0 + w (m1 - m0), s^2) (the scores are affine in x_t and differ by a constant), so the guided sampler must write,
draw for draw, what the unguided sampler writes for that law.
"""

from __future__ import annotations

import math

import pytest
import torch

from textdiffusion.core.errors import UserError
from textdiffusion.samplers import FAMILY_SAMPLERS, SAMPLERS, SUMMARIES
from textdiffusion.samplers.latent import LatentConfig, decode, latent_sample, sample_latents

K, D, MASK = 4, 8, 5  # the toy's vocabulary is 6 tokens, [MASK] the last


@pytest.fixture
def toy_process(latent_toy):
    return lambda prediction="v", big_t=100: latent_toy.toy_process(K, D, prediction, big_t)


@pytest.mark.parametrize("prediction, steps, eta", [("v", None, 1.0), ("eps", 20, 1.0), ("x0", 20, 0.0),
                                                    ("v", 10, 0.0)])
def test_the_reverse_chain_samples_its_exact_gaussian_law(prediction, steps, eta, latent_toy, toy_process):
    torch.manual_seed(0)
    process = toy_process(prediction)
    m0, s = torch.randn(K, D), 0.6
    model = latent_toy.GaussianToyDenoiser(process, m0, m0, s)
    n = 600
    z = sample_latents(model, process, (n, K, D), LatentConfig(steps=steps, eta=eta),
                       generator=torch.Generator().manual_seed(1)).double()
    mean, var = latent_toy.chain_law(process, m0, s, steps, eta)
    standard = (z - mean) / var.sqrt()  # N(0, 1) in every one of the n * K * D coordinates
    count = standard.numel()
    assert abs(float(standard.mean())) < 5 / math.sqrt(count), (prediction, steps, eta)
    assert abs(float(standard.var()) - 1) < 5 * math.sqrt(2 / count), (prediction, steps, eta)
    # and per coordinate: the means sit where the law puts them (a bias in one parameterisation shows here)
    assert float((standard.mean(0)).abs().max()) < 5 / math.sqrt(n)


@pytest.mark.parametrize("w", [0.0, 1.0, 2.5])
def test_classifier_free_guidance_is_the_guided_gaussian_exactly(w, latent_toy, toy_process):
    torch.manual_seed(0)
    process = toy_process("eps")
    m0, m1, s = torch.randn(K, D), torch.randn(K, D), 0.5
    guided_model = latent_toy.GaussianToyDenoiser(process, m0, m1, s)
    target_model = latent_toy.GaussianToyDenoiser(process, m0 + w * (m1 - m0), m0 + w * (m1 - m0), s)
    cfg = LatentConfig(steps=25, eta=1.0, guidance=w)
    cond = torch.zeros(3, K, D)  # the toy reads only which rows have a condition
    guided = sample_latents(guided_model, process, (3, K, D), cfg, cond, None, torch.Generator().manual_seed(2))
    plain = sample_latents(target_model, process, (3, K, D), LatentConfig(steps=25, eta=1.0),
                           generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(guided, plain, atol=2e-4, rtol=1e-4)


def test_guidance_one_is_the_conditional_model_on_a_real_network(latent_toy, toy_process):
    torch.manual_seed(0)
    process = toy_process("v")
    net = process.build_network(latent_toy.tiny_cfg())
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


def test_a_prompt_is_kept_and_conditions_the_chain_and_gaps_are_refused(latent_toy, toy_process):
    torch.manual_seed(0)
    process = toy_process("v", big_t=50)
    net = process.build_network(latent_toy.tiny_cfg()).eval()
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


def test_the_sampler_is_listed_and_belongs_to_the_family(toy_process):
    assert SAMPLERS["latent"] == (LatentConfig, latent_sample)
    assert FAMILY_SAMPLERS["latent"][0] == "latent" == toy_process().default_sampler
    assert "latent" in SUMMARIES["latent"]


def test_the_frames_settle_on_the_greedy_text_of_the_clean_estimate(latent_toy, toy_process):
    """With a point-mass toy (s = 0) every step predicts the same zhat = m, so the frames' parallel greedy steps
    must reach the sequential greedy text of m within L steps (position i is settled after i + 1 of them)."""
    torch.manual_seed(0)
    process = toy_process("x0", big_t=50)
    m = torch.randn(K, D)
    model = latent_toy.GaussianToyDenoiser(process, m, m, 0.0).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))  # a decoder whose text depends on the latents and on its prefix
    # and one that would write [MASK] everywhere: the frames, like the text, must write the best other token
    model.head.register_forward_hook(lambda module, args, out: out + 50 * torch.nn.functional.one_hot(
        torch.tensor(MASK), out.shape[-1]))
    x = torch.full((2, 8), MASK)
    x[1, :2] = torch.tensor([3, 1])
    out = latent_sample(model, process, x, LatentConfig(steps=10), torch.Generator().manual_seed(0),
                        record_frames=True)
    lengths = torch.tensor([0, 2])
    greedy = decode(model, m.expand(2, K, D), x, lengths, MASK)
    assert torch.equal(out.frames[-1].ids, greedy) and torch.equal(out.frames[-3].ids, greedy)
    assert not any(bool((frame.ids == MASK).any()) for frame in out.frames)
    assert not torch.equal(out.frames[0].ids, greedy)  # the first frame is one parallel step from the prompt
