"""SEDD's likelihood bound checked against exact answers on a tiny vocabulary (see `sedd_tiny`).

The bound, integrated exactly over t (quadrature) and x_t (enumeration), is >= the true NLL and close to
it -- equal to it for the absorbing graph with t_min = 0 -- and nelbo_per_sequence is an unbiased Monte
Carlo estimate of it (4.5 standard errors). Every draw is seeded.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from textdiffusion.processes.likelihood import nelbo
from textdiffusion.processes.sedd import SEDD

GRAPHS = ("absorb", "uniform")  # sedd_tiny.GRAPHS (tests/conftest.py)

# ---------------------------------------------------------------------------------------------
# the likelihood bound


@pytest.fixture(scope="module")
def nll(sedd_tiny) -> torch.Tensor:
    return -sedd_tiny.P_DATA.log()


@pytest.fixture(scope="module")
def exact_bound(analytic, sedd_exact, sedd_tiny, tiny_exact):
    """exact_bound(proc, model, nodes): the bound of every x0 of `sedd_tiny`, [K], integrated exactly."""
    all_sequences, sigma_bar, sigma_rate, transition = (analytic.all_sequences, sedd_exact.sigma_bar,
                                                        sedd_exact.sigma_rate, sedd_exact.transition)
    N_VALUES, VOCAB, LENGTH, SEQS = tiny_exact.N_VALUES, tiny_exact.VOCAB, sedd_tiny.LENGTH, sedd_tiny.SEQS

    def _states_weights(graph: str, sb: float) -> tuple[torch.Tensor, torch.Tensor]:
        """All states x [S, L] and w[k, s] = p_{t|0}(x_s | SEQS[k]) at total noise sb (dense)."""
        states = all_sequences(VOCAB, LENGTH)
        m = transition(graph, N_VALUES, sb)
        w = m[SEQS[:, None, :], states[None, :, :]].prod(-1)  # [K, S]
        return states, w

    def _expected_terms(proc: SEDD, model, t: float) -> torch.Tensor:
        """E_{x_t ~ p_{t|0}(.|x0)} [sigma(t) sum_l score entropy] for every x0, [K], by enumeration."""
        states, w = _states_weights(proc.graph_name, float(sigma_bar(proc.noise_name, t, proc.eps)))
        tt = torch.full((len(states),), t, dtype=torch.float64)
        g = proc.model_output(model, states, tt)
        k, s = w.shape
        x0 = SEQS[:, None, :].expand(k, s, LENGTH).reshape(-1, LENGTH)
        xt = states[None].expand(k, s, LENGTH).reshape(-1, LENGTH)
        terms = (
            proc.score_entropy(
                g[None].expand(k, *g.shape).reshape(-1, LENGTH, VOCAB), xt, x0, tt[None].expand(k, s).reshape(-1)
            )
            .sum(1)
            .view(k, s)
        )
        return (w * torch.where(w > 0, terms, torch.zeros_like(terms))).sum(1)

    def _exact_bound(proc: SEDD, model, nodes: int) -> torch.Tensor:
        """The bound of every x0, integrated by Gauss-Legendre quadrature, [K]: DWDSE + prior + reconstruction."""
        x, wq = np.polynomial.legendre.leggauss(nodes)
        total = torch.zeros(len(SEQS), dtype=torch.float64)
        if proc.graph_name == "absorb" and proc.noise_name == "loglinear":
            # E[integrand] is a polynomial in t of degree L - 1 here (exact score): quadrature in t is exact
            lo = proc.t_min
            for xi, wi in zip(x, wq, strict=True):
                t = lo + (1 - lo) * (xi + 1) / 2
                total += wi * (1 - lo) / 2 * _expected_terms(proc, model, float(t))
        else:  # in u = log sigmabar: sigma(t) dt = sigmabar du
            a, b = math.log(float(sigma_bar(proc.noise_name, proc.t_min, proc.eps))), math.log(proc.sigma_end)
            for xi, wi in zip(x, wq, strict=True):
                sb = math.exp(a + (b - a) * (xi + 1) / 2)
                if proc.noise_name == "loglinear":
                    t = -math.expm1(-sb) / (1 - proc.eps)
                else:
                    t = (math.log(sb) - math.log(proc.sigma_min)) / math.log(proc.sigma_max / proc.sigma_min)
                rate = float(sigma_rate(proc.noise_name, t, proc.eps))
                total += wi * (b - a) / 2 * _expected_terms(proc, model, t) / rate * sb
        # prior: KL(p_{1|0}(.|x0) || base) per position, from the dense transition
        if math.isfinite(proc.sigma_end):
            m1 = transition(proc.graph_name, N_VALUES, proc.sigma_end)
            a_keep = math.exp(-proc.sigma_end)
            if proc.graph_name == "uniform":
                base = torch.tensor([1 / N_VALUES] * N_VALUES + [0.0], dtype=torch.float64)
            else:
                base = torch.tensor([a_keep / N_VALUES] * N_VALUES + [1 - a_keep], dtype=torch.float64)
            kl = torch.where(m1 > 0, m1 * torch.log(m1 / base), torch.zeros_like(m1)).sum(1)  # per x0 token
            total += kl[SEQS].sum(1)
        # reconstruction: E[-log p(x0 | x_{t_min})] of the final analytic step
        if proc.sigma_low > 0:
            states, w = _states_weights(proc.graph_name, proc.sigma_low)
            g = proc.model_output(model, states, torch.full((len(states),), proc.t_min, dtype=torch.float64))
            logp = proc.reverse_log_probs(g.reshape(-1, VOCAB), states.reshape(-1), proc.t_min, None)
            logp = logp.view(len(states), LENGTH, VOCAB)
            nll = -logp[
                torch.arange(len(states))[None, :, None], torch.arange(LENGTH)[None, None, :], SEQS[:, None, :]
            ].sum(-1)  # [K, S]
            total += (w * torch.where(w > 0, nll, torch.zeros_like(nll))).sum(1)
        return total

    return _exact_bound


BOUND_CASES = [
    ("absorb", "loglinear", 0.0),
    ("absorb", "loglinear", 1e-3),
    ("absorb", "geometric", 1e-3),
    ("uniform", "loglinear", 1e-3),
    ("uniform", "geometric", 1e-3),
]


@pytest.mark.parametrize("graph,noise,t_min", BOUND_CASES, ids=["-".join(map(str, c)) for c in BOUND_CASES])
def test_bound_is_above_the_nll_and_tight_for_the_exact_score(graph, noise, t_min, sedd_tiny, exact_bound, nll):
    """DWDSE integrated over [t_min, 1] + prior KL + reconstruction at t_min, exactly, for every x0: the mean
    over p_data is >= H (it is H + KL(p_data || p_theta) + the path KL), and with the exact score every
    x0's bound is within 1e-4 nats of its NLL (p_theta differs from p_data by the base mismatch only)."""
    proc = sedd_tiny.tiny_process(graph, noise, t_min=t_min)
    model = sedd_tiny.exact_score(graph, noise)
    polynomial = graph == "absorb" and noise == "loglinear"
    bound = exact_bound(proc, model, 12 if polynomial else 40)
    if not polynomial:  # the quadrature has converged
        assert float((bound - exact_bound(proc, model, 24)).abs().max()) < 1e-5
    gap = bound - nll
    mean_gap = float((sedd_tiny.P_DATA * gap).sum())  # E[bound] - H = KL(p_data || p_theta) + E[path KL] >= 0
    assert mean_gap > -1e-9, f"E[bound] {mean_gap + sedd_tiny.ENTROPY:.6f} below the entropy {sedd_tiny.ENTROPY:.6f}"
    if graph == "absorb" and t_min == 0:
        torch.testing.assert_close(bound, nll, atol=1e-8, rtol=0)  # absorbing + exact score: tight
    else:
        assert float(gap.abs().max()) < 1e-4, f"bound - NLL up to {float(gap.abs().max()):.2e}"
        assert mean_gap < 1e-5, f"E[bound] - H = {mean_gap:.2e}"


@pytest.mark.parametrize("graph", GRAPHS)
def test_bound_sees_a_worse_score(graph, sedd_exact, sedd_tiny, tiny_exact, exact_bound):
    """The exact score of the product of p_data's marginals (context-free): the bound, averaged over
    x0 ~ p_data, exceeds H by at least KL(p_data || product) -- that model samples the product law."""
    wrong = sedd_exact.ExactScoreModel(sedd_tiny.PRODUCT, tiny_exact.N_VALUES, sedd_tiny.LENGTH, graph,
                                       eps=sedd_tiny.EPS[graph])
    bound = exact_bound(sedd_tiny.tiny_process(graph), wrong, 12 if graph == "absorb" else 24)
    kl = float((sedd_tiny.P_DATA * (sedd_tiny.P_DATA / sedd_tiny.PRODUCT).log()).sum())
    assert kl > 0.1 and float((sedd_tiny.P_DATA * bound).sum()) - sedd_tiny.ENTROPY > kl - 1e-4


@pytest.mark.parametrize("graph", GRAPHS)
def test_nelbo_per_sequence_is_an_unbiased_estimate_of_the_bound(graph, sedd_tiny, tiny_exact, exact_bound):
    """Monte Carlo over nelbo_per_sequence's own noise (t, x_t, and the reconstruction's x_{t_min}) agrees
    with the exact bound, for the likeliest and the rarest x0; so does eval.likelihood.nelbo."""
    proc = sedd_tiny.tiny_process(graph)
    model = sedd_tiny.exact_score(graph)
    exact = exact_bound(proc, model, 12 if graph == "absorb" else 40)
    order = sedd_tiny.P_DATA.argsort()
    gen = torch.Generator().manual_seed(5)
    for k in (int(order[-1]), int(order[0])):
        x0 = sedd_tiny.SEQS[k].repeat(512, 1)
        draws = []
        for _ in range(6):
            draws.append(proc.nelbo_per_sequence(model, x0, proc.sample_noise(x0, gen)).view(8, 64).mean(1))
        means = torch.cat(draws)  # batches of 64 stratified t: i.i.d. and unbiased
        mean, se = float(means.mean()), float(means.std() / math.sqrt(len(means)))
        assert abs(mean - float(exact[k])) < tiny_exact.Z * se + 1e-6, (
            f"x0={sedd_tiny.SEQS[k].tolist()}: {mean:.4f} +- {se:.4f} vs {float(exact[k]):.4f}"
        )
    res = nelbo(model, proc, sedd_tiny.SEQS.repeat(20, 1), t_samples=2, batch_size=270, seed=0)
    assert abs(res.nats_per_token - float(exact.mean()) / sedd_tiny.LENGTH) < tiny_exact.Z * res.stderr + 1e-6
