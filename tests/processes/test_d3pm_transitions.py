"""D3PM's transition matrices checked against their definitions, on a tiny vocabulary and on real ones.

The closed forms (Qbar_t, Q_{s->t}) against explicit products of the per-step matrices Q_t, the log-space
kernels the loss uses against dense matrices, `corrupt` against the rows it draws from, the schedules, the
absorbing posterior's closed form, the large-vocabulary path, the byte embedding, and the options.
Every draw is seeded.
"""

from __future__ import annotations

import math

import pytest
import torch

from textdiffusion.core.errors import UserError
from textdiffusion.data.tokenizers import ByteTokenizer
from textdiffusion.processes import build_process
from textdiffusion.processes.d3pm import D3PM, NEG

TRANSITIONS = ("absorbing", "uniform", "embedding")  # d3pm_tiny.TRANSITIONS (tests/conftest.py)


@pytest.mark.parametrize("transition", TRANSITIONS)
@pytest.mark.parametrize("schedule", ["auto", "mutual_info", "cosine", "linear"])
def test_closed_form_equals_product_of_steps(transition, schedule, d3pm_exact):
    """Qbar_t (closed form / eigenbasis) = Q_1 ... Q_t (explicit products) for every t; rows are laws."""
    # mask in the middle of the vocabulary, to catch code that assumes it is the last id
    emb = torch.tensor([[1.0, 0.0], [0.9, 0.4], [5.0, 5.0], [0.3, 1.0], [0.0, 1.0]])
    proc = D3PM(5, 2, transition=transition, num_steps=12, beta_schedule=schedule, knn=2, embedding=emb)
    real = [0, 1, 3, 4]
    prod = torch.eye(5, dtype=torch.float64)
    for t in range(1, 13):
        q_t = proc.transition_matrix(t)
        prod = prod @ q_t
        for m in (q_t, proc.cumulative_matrix(t)):
            assert bool((m >= -1e-12).all())
            torch.testing.assert_close(m.sum(1), torch.ones(5, dtype=torch.float64), atol=1e-10, rtol=0)
        torch.testing.assert_close(proc.cumulative_matrix(t), prod, atol=1e-9, rtol=0)
        if transition == "embedding":
            torch.testing.assert_close(q_t, q_t.T, atol=1e-12, rtol=0)  # symmetric, so doubly stochastic
        if transition != "absorbing":  # [MASK] is never produced from a real token
            assert float(q_t[real][:, 2].abs().max()) == 0.0
    torch.testing.assert_close(proc.cumulative_matrix(12, 5), d3pm_exact.dense_between(proc, 5, 12), atol=1e-9, rtol=0)
    # q(x_T | x0) is exactly the prior: the prior term of the bound is 0
    prior = torch.zeros(5, dtype=torch.float64)
    if transition == "absorbing":
        prior[2] = 1.0
    else:
        prior[real] = 0.25
    torch.testing.assert_close(proc.cumulative_matrix(12)[real], prior.expand(4, 5), atol=1e-12, rtol=0)


@pytest.mark.parametrize("transition", TRANSITIONS)
def test_log_space_kernels_match_dense_matrices(transition, d3pm_exact, d3pm_tiny, tiny_exact):
    """The loss's log-space columns, rows and mixtures agree with the dense matrices."""
    proc = d3pm_tiny.tiny_process(transition, num_steps=20)
    kern = proc.kernel
    gen = torch.Generator().manual_seed(0)
    s = torch.randint(0, 19, (64,), generator=gen)
    t = s + 1 + (torch.rand(64, generator=gen) * (20 - s)).long().clamp_max(19 - s)
    real = torch.tensor([0, 1, 2])
    k = real[torch.randint(0, 3, (64,), generator=gen)]
    if transition == "absorbing":
        k[::2] = tiny_exact.MASK
    w = torch.rand(64, tiny_exact.VOCAB, generator=gen, dtype=torch.float64)
    col = kern.log_col(s, t, k, torch.float64).exp()
    row = kern.log_row(t, k, torch.float64).exp()
    mix = kern.log_mix(s, w.log()).exp()
    for n in range(64):
        dense = d3pm_exact.dense_between(proc, int(s[n]), int(t[n]))
        torch.testing.assert_close(col[n], dense[:, k[n]], atol=1e-10, rtol=1e-8)
        qbar_t, qbar_s = d3pm_exact.dense_between(proc, 0, int(t[n])), d3pm_exact.dense_between(proc, 0, int(s[n]))
        torch.testing.assert_close(row[n], qbar_t[k[n]], atol=1e-10, rtol=1e-8)
        torch.testing.assert_close(mix[n], w[n] @ qbar_s, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("transition", TRANSITIONS)
def test_corrupt_draws_from_the_cumulative_rows(transition, analytic, d3pm_tiny, tiny_exact):
    """x_t = corrupt(x0, t) has law Qbar_t[x0, :]; unscored positions are left clean."""
    proc = d3pm_tiny.tiny_process(transition, num_steps=20)
    n = 20_000
    gen = torch.Generator().manual_seed(7)
    for x0_tok, t in ((0, 3), (1, 9), (2, 17)):
        x0 = torch.full((n, 1), x0_tok)
        tt = torch.full((n,), t)
        u, v = (torch.rand(n, 1, generator=gen, dtype=torch.float64) for _ in range(2))
        xt = proc.corrupt(x0, tt, u, v)[:, 0]
        emp = torch.bincount(xt, minlength=tiny_exact.VOCAB).double() / n
        law = proc.cumulative_matrix(t)[x0_tok]
        assert analytic.tv(emp, law) < analytic.tv_bound(law, n), (transition, x0_tok, t, emp, law)
    x0 = torch.zeros(4, d3pm_tiny.LENGTH, dtype=torch.long)
    scored = torch.tensor([[True, False, True, False]] * 4)
    xt = proc.corrupt(
        x0,
        torch.full((4,), 20),
        torch.ones(4, d3pm_tiny.LENGTH, dtype=torch.float64),
        torch.full((4, d3pm_tiny.LENGTH), 0.9, dtype=torch.float64),
        scored,
    )
    assert bool((xt[~scored] == 0).all()) and bool((xt[scored] != 0).any())


@pytest.mark.parametrize("transition", TRANSITIONS)
def test_mutual_information_schedule(transition, d3pm_tiny, tiny_exact):
    """beta_schedule='mutual_info': I(x0; x_t) with x0 uniform falls linearly from log K to 0."""
    proc = d3pm_tiny.tiny_process(transition, num_steps=10, beta_schedule="mutual_info")
    for t in range(11):
        q = proc.cumulative_matrix(t)[:tiny_exact.N_VALUES]  # rows: x0 uniform over the real tokens
        marg = q.mean(0)
        mi = float(-(marg * marg.clamp_min(1e-300).log()).sum() + (q * q.clamp_min(1e-300).log()).sum(1).mean())
        tol = 1e-9 if transition != "embedding" else 0.02 * math.log(3)  # embedding: interpolated on a grid
        assert abs(mi - (1 - t / 10) * math.log(3)) < tol, (t, mi)


def test_absorbing_posterior_has_the_closed_form_weight(tiny_exact):
    """Absorbing, mutual-information schedule: for a masked token, L_{t-1} = -log p~(x0 | x_t) / t."""
    proc = D3PM(tiny_exact.VOCAB, tiny_exact.MASK, transition="absorbing", num_steps=40)
    torch.testing.assert_close(proc.kernel.alpha_bar, 1 - torch.arange(41, dtype=torch.float64) / 40)
    gen = torch.Generator().manual_seed(1)
    log_x0 = torch.log_softmax(torch.randn(30, tiny_exact.VOCAB, generator=gen, dtype=torch.float64), -1)
    log_x0[:, tiny_exact.MASK] = NEG
    log_x0 = torch.log_softmax(log_x0, -1)
    x0 = torch.randint(0, tiny_exact.N_VALUES, (30,), generator=gen)
    t = torch.randint(1, 41, (30,), generator=gen)
    xt = torch.full((30,), tiny_exact.MASK)
    onehot = torch.full_like(log_x0, NEG).scatter_(1, x0[:, None], 0.0)
    lq = proc.reverse_log_probs(onehot, xt, t - 1, t)
    lp = proc.reverse_log_probs(log_x0, xt, t - 1, t)
    kl = (lq.exp() * (lq - lp)).sum(-1)
    torch.testing.assert_close(kl, -log_x0.gather(1, x0[:, None])[:, 0] / t, atol=1e-9, rtol=1e-7)


def test_large_vocabulary_uses_no_dense_matrix():
    """V = 50,257: uniform and absorbing run the posterior on a few rows; nothing V x V is formed."""
    v, mask = 50_257, 50_256
    for transition in ("uniform", "absorbing"):
        proc = D3PM(v, mask, transition=transition)
        logits = torch.randn(8, v)
        logits[:, mask] = NEG  # as model_log_probs does: [MASK] is never an x0 prediction
        log_x0 = torch.log_softmax(logits.double(), -1).float()
        xt = torch.tensor([mask if transition == "absorbing" else 17] * 8)
        t = torch.tensor([1, 2, 10, 100, 500, 900, 999, 1000])
        lp = proc.reverse_log_probs(log_x0, xt, t - 1, t)
        assert lp.shape == (8, v) and bool(torch.isfinite(lp).all())
        torch.testing.assert_close(lp.exp().sum(-1), torch.ones(8), atol=1e-4, rtol=0)
        stay = lp.exp()[:, mask].double()
        if transition == "uniform":
            assert float(stay.max()) == 0.0
        else:  # absorbing: stay masked with probability (1 - abar_s) / (1 - abar_t)
            abar = proc.kernel.alpha_bar
            torch.testing.assert_close(stay, (1 - abar[t - 1]) / (1 - abar[t]), atol=1e-5, rtol=0)
    with pytest.raises(UserError, match="at most 4096"):
        D3PM(v, mask, transition="embedding", embedding=torch.zeros(v, 2))


def test_byte_embedding_graph_is_local_and_chain_is_doubly_stochastic():
    tok = ByteTokenizer()
    proc = D3PM(tok.vocab_size, tok.mask_id, transition="embedding", num_steps=100)
    q = proc.cumulative_matrix(10)
    real = proc.real
    torch.testing.assert_close(q[real][:, real].sum(0), torch.ones(len(real), dtype=torch.float64), atol=1e-9, rtol=0)
    a = ord("a")
    near = q[a, real].argsort(descending=True)[:8].tolist()
    assert near[0] == a and all(chr(real[j]).isalpha() for j in near)  # 'a' diffuses to letters first
    c = proc.kernel.c
    assert float(c[0]) == 0.0 and math.isinf(float(c[-1])) and bool((c[1:] >= c[:-1]).all())


def test_config_round_trip_and_errors(byte_tok, d3pm_tiny, tiny_exact):
    proc = d3pm_tiny.tiny_process("embedding", num_steps=30, beta_schedule="cosine", hybrid_lambda=0.1)
    again = build_process("d3pm", vocab_size=tiny_exact.VOCAB, mask_id=tiny_exact.MASK, **proc.config())
    for t in (1, 7, 30):
        torch.testing.assert_close(again.cumulative_matrix(t), proc.cumulative_matrix(t))
    assert again.config() == proc.config()
    for bad in (
        {"transition": "gaussian"},
        {"beta_schedule": "sqrt"},
        {"num_steps": 0},
        {"hybrid_lambda": -1.0},
        {"transition": "embedding", "embedding": torch.zeros(3, 2)},
        {"transition": "embedding", "embedding": "/nonexistent/table.pt"},
        {"transition": "embedding", "uniform_rate": 0.0},
    ):
        with pytest.raises(UserError):
            D3PM(tiny_exact.VOCAB, tiny_exact.MASK, **bad)
    with pytest.raises(UserError, match="byte-level"):
        D3PM(1000, 999, transition="embedding")
