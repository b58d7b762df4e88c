"""D3PM's bound and hybrid loss: the exact NELBO on a tiny vocabulary (see `d3pm_tiny`), and the loss
training the real Transformer.

`d3pm_exact.exact_nelbo` averages the process's NELBO exactly over t and every x_t; it must bound the
exact NLL of the sampler's law, and eval.likelihood.nelbo must estimate it without bias (4.5 standard
errors). Every draw is seeded.
"""

from __future__ import annotations

import pytest
import torch

from textdiffusion.processes import build_process
from textdiffusion.processes.d3pm import D3PM
from textdiffusion.processes.likelihood import nelbo

TRANSITIONS = ("absorbing", "uniform", "embedding")  # d3pm_tiny.TRANSITIONS (tests/conftest.py)

# ---------------------------------------------------------------------------------------------
# the bound


@pytest.mark.parametrize("transition", TRANSITIONS)
def test_nelbo_is_an_upper_bound_on_the_nll(transition, d3pm_tiny, tiny_exact):
    """Exact over t and x_t: NELBO(x0) >= -log p_theta(x0) for every x0 (p_theta = the chain's exact law),
    so E[NELBO] >= H(p_data); with the true posterior the gap is small. The Monte Carlo estimate through
    eval.likelihood.nelbo is unbiased for it."""
    st = d3pm_tiny.exact_setup(transition)
    bound = st.bound
    nll = -st.law().log()
    assert bool((bound >= nll - 1e-9).all()), f"bound below the NLL by {float((nll - bound).max()):.2e}"
    expected = float((d3pm_tiny.P_DATA * bound).sum())
    assert d3pm_tiny.ENTROPY <= expected < d3pm_tiny.ENTROPY + 0.03, \
        f"E[NELBO] = {expected:.4f}, H = {d3pm_tiny.ENTROPY:.4f}"
    # Monte Carlo: sequences drawn from p_data, 4 (t, x_t) draws each, in nats per token
    idx = torch.multinomial(d3pm_tiny.P_DATA, 3000, replacement=True, generator=torch.Generator().manual_seed(5))
    res = nelbo(st.model, st.process, d3pm_tiny.SEQS[idx], t_samples=4, batch_size=1000, seed=6)
    want = float(bound[idx].mean()) / d3pm_tiny.LENGTH
    assert abs(res.nats_per_token - want) < tiny_exact.Z * res.stderr, (res.nats_per_token, want, res.stderr)


def test_nelbo_sees_a_worse_model(d3pm_exact, d3pm_tiny, tiny_exact):
    """A denoiser that ignores its input (p_data's marginals) pays more than the true posterior."""
    st = d3pm_tiny.exact_setup("uniform")
    blind = d3pm_exact.ExactD3PMDenoiser(d3pm_tiny.P_DATA, tiny_exact.N_VALUES, d3pm_tiny.LENGTH, st.process)
    blind.table[:] = blind.table[-1:].clone()  # the t = T posterior (marginals) at every t
    blind_bound = d3pm_exact.exact_nelbo(st.process, blind, d3pm_tiny.SEQS, tiny_exact.N_VALUES)
    worse = float((d3pm_tiny.P_DATA * blind_bound).sum())
    assert worse > float((d3pm_tiny.P_DATA * st.bound).sum()) + 0.3


# ---------------------------------------------------------------------------------------------
# the real model


@pytest.mark.parametrize("transition", TRANSITIONS)
def test_loss_trains_the_transformer_and_respects_loss_mask(byte_tok, transition, check_loss_mask, check_loss_trains):
    proc = build_process(
        "d3pm",
        vocab_size=byte_tok.vocab_size,
        mask_id=byte_tok.mask_id,
        transition=transition,
        num_steps=1000,
        schedule="loglinear",
    )  # other families' options are ignored
    assert proc.needs_time_conditioning == (transition != "absorbing")
    model, x0, gen, noise = check_loss_trains(proc, byte_tok, seq_len=24)
    # lambda = 0: the training loss is the NELBO estimate
    pure = D3PM(byte_tok.vocab_size, byte_tok.mask_id, transition=transition, hybrid_lambda=0.0)
    with torch.no_grad():
        torch.testing.assert_close(pure.loss(model, x0, noise).total, pure.nelbo_per_sequence(model, x0, noise).sum())
    # loss_mask: context is never corrupted and contributes nothing; the scored part is noised at t = 700, 1000
    noise = {
        "t": torch.tensor([700, 1000]),
        "u": torch.rand(x0.shape, dtype=torch.float64, generator=gen),
        "v": torch.rand(x0.shape, dtype=torch.float64, generator=gen),
    }
    check_loss_mask(proc, model, x0, noise)
