"""ReMDM-conf checked against exact answers: remasking depends on each decoded token's stored confidence,
so the state carries those confidences; it is checked kernel by kernel and against its own exact law
(`remask_exact.conf_chain_law`) on a smaller problem (8 sequences of 3 binary tokens)."""


from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from textdiffusion.samplers import remdm
from textdiffusion.samplers.remdm import ReMDMConfig, confidence_sigmas, remdm_step


def test_conf_step_kernel(monkeypatch, remdm_tiny):
    """One conf step from a fixed state: decoded token l is remasked with probability
    sigma * softmax(-psi)_l over the row's decoded generated tokens (fixed tokens excluded), a masked
    token is revealed with MDLM's probability, and the stored psi is the drawn token's probability."""
    n = 200_000
    alpha_t, alpha_s, sigma = 0.5, 0.6, 0.6
    x = torch.tensor([[0, 1, 2, remdm_tiny.MASK, remdm_tiny.MASK, 1]]).repeat(n, 1)
    generated = torch.tensor([True, True, True, True, True, False]).repeat(n, 1)  # the last token is fixed
    psi = torch.tensor([0.1, 0.5, 0.95, 0.0, 0.0, 0.0], dtype=torch.float64).repeat(n, 1)
    logits = torch.log(torch.tensor([0.2, 0.3, 0.5, 0.0])).repeat(n, 6, 1)

    def check() -> None:
        gen = torch.Generator().manual_seed(7)
        sig = remdm.confidence_sigmas(sigma, x, generated, psi, remdm_tiny.MASK)
        xs, revealed, remasked, prob = remdm_step(x, generated, logits, alpha_t, alpha_s, sig, remdm_tiny.MASK,
                                                  generator=gen)
        w = torch.exp(-torch.tensor([0.1, 0.5, 0.95], dtype=torch.float64))
        want = sigma * w / w.sum()
        p_reveal = (alpha_s - alpha_t) / (1 - alpha_t)
        for l, p in enumerate(want.tolist() + [p_reveal, p_reveal, 0.0]):
            event = revealed[:, l] if l in (3, 4) else remasked[:, l]
            freq = float(event.double().mean())
            se = math.sqrt(max(p * (1 - p), 1e-12) / n)
            assert abs(freq - p) < remdm_tiny.Z * se + 1e-12, f"position {l}: {freq:.4f} vs {p:.4f}"
        assert bool((xs[:, 5] == 1).all())
        want_prob = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)[xs[revealed]]
        torch.testing.assert_close(prob, want_prob, atol=1e-6, rtol=0)

    check()
    # control: remasking the *confident* tokens first (softmax(+psi)) is caught
    monkeypatch.setattr(remdm, "confidence_sigmas", lambda s, x, g, c, m: confidence_sigmas(s, x, g, -c, m))
    with pytest.raises(AssertionError, match="position"):
        check()


@pytest.fixture(scope="module")
def small_sample(analytic, remdm_tiny):
    """small_sample(cfg, n, seed, model=None, fixed=None): ReMDM draws on the smaller problem (by default with
    its exact denoiser)."""
    length, values = remdm_tiny.SMALL_LENGTH, remdm_tiny.SMALL_VALUES

    def sample(cfg: ReMDMConfig, n: int, seed: int, model=None, fixed=None):
        model = model or analytic.ExactDenoiser(remdm_tiny.SMALL_P, values, length)
        return remdm_tiny.sample(model, n, cfg, seed, fixed=fixed, length=length, mask_id=values)

    return sample


@pytest.fixture(scope="module")
def small_conf_law(analytic, remask_exact, remdm_tiny):
    """small_conf_law(cfg, fixed=None): the exact law of ReMDM-conf on the smaller problem."""
    length, values = remdm_tiny.SMALL_LENGTH, remdm_tiny.SMALL_VALUES

    def law(cfg: ReMDMConfig, fixed=None) -> torch.Tensor:
        model = analytic.ExactDenoiser(remdm_tiny.SMALL_P, values, length)
        start = remdm_tiny.start(1, fixed, length, values)[0]
        return remask_exact.conf_chain_law(model, start, remdm_tiny.chain_steps(cfg))

    return law


def _unnormalised_sigmas(sigma, x, generated, confidence, mask_id):
    """A plausible bug: exp(-psi) * sigma without the softmax normalisation (far more remasking)."""
    decoded = generated & (x != mask_id)
    return torch.where(decoded, torch.exp(-confidence.double()), 0.0) * sigma


def test_conf_follows_its_exact_law(monkeypatch, analytic, remask_exact, remdm_tiny, small_conf_law, small_sample):
    """ReMDM-conf samples against its exact law (states carry the stored confidences); the same check
    rejects them as MDLM samples. The law is not p_data: the value-dependent remasking tilts it, by an
    exactly computed 0.054 in TV against MDLM's same-step residual of 0.018."""
    cfg = ReMDMConfig(steps=16, schedule="conf", eta=1.0)
    n = 50_000
    law = small_conf_law(cfg)
    mdlm = small_conf_law(dataclasses.replace(cfg, eta=0.0))
    ids = small_sample(cfg, n, seed=8).ids
    remdm_tiny.assert_valid(ids, remdm_tiny.SMALL_VALUES)
    remask_exact.assert_matches(ids, law, remdm_tiny.SMALL_VALUES, "conf, 16 steps")
    with pytest.raises(AssertionError, match="MDLM"):
        remask_exact.assert_matches(ids, mdlm, remdm_tiny.SMALL_VALUES, "MDLM's law")
    assert analytic.tv(law, remdm_tiny.SMALL_P) > analytic.tv(mdlm, remdm_tiny.SMALL_P) + 0.02
    # control: unnormalised weights (sigma * exp(-psi) per token) are caught
    monkeypatch.setattr(remdm, "confidence_sigmas", _unnormalised_sigmas)
    wrong = small_sample(cfg, n, seed=8).ids
    with pytest.raises(AssertionError, match="unnormalised"):
        remask_exact.assert_matches(wrong, law, remdm_tiny.SMALL_VALUES, "conf with unnormalised weights")


def test_conf_infilling_never_remasks_fixed_tokens(analytic, remask_exact, remdm_tiny, small_conf_law):
    cfg = ReMDMConfig(steps=16, schedule="conf", eta=1.0)
    n = 20_000
    frames: list[torch.Tensor] = []
    model = analytic.ExactDenoiser(remdm_tiny.SMALL_P, remdm_tiny.SMALL_VALUES, remdm_tiny.SMALL_LENGTH)
    ids = remdm_tiny.sample(
        model,
        n,
        cfg,
        9,
        fixed={1: 0},
        length=remdm_tiny.SMALL_LENGTH,
        mask_id=remdm_tiny.SMALL_VALUES,
        on_step=lambda f: frames.append(f.ids),
    ).ids
    assert all(bool((f[:, 1] == 0).all()) for f in frames)
    small_seqs = analytic.all_sequences(remdm_tiny.SMALL_VALUES, remdm_tiny.SMALL_LENGTH)
    ctx = small_seqs[:, 1] == 0
    remask_exact.assert_matches(ids, small_conf_law(cfg, {1: 0}) * ctx, remdm_tiny.SMALL_VALUES, "conf infill")
