"""What the process tests share: exact references for the spindle schedule (`spindle_exact`)."""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from textdiffusion.processes.spindle import SpindleMaskedDiffusion, spindle_rate

# Exact references for the spindle schedule (processes/spindle.py) on a tiny vocabulary.
#
# * `expected_bound(proc, model, x0)`  E over (s, u) of nelbo_per_sequence: every mask pattern is enumerated with
#   its probability under the per-token keep probabilities alpha_{x0_l}(t), the reconstruction part (s < t_min)
#   is t_min times its one value, and the diffusion part is integrated over t in [t_min, 1] by composite
#   Gauss-Legendre in log t (the integrand times t is smooth there). `nodes` sets the accuracy; comparing two
#   node counts measures it.
# * `ctmc_law(proc, query, ...)`  p_theta(x0) of the generative model whose bound it is, computed without the
#   bound's formula: the reverse-time Markov chain over partial sequences, started all-[MASK] at t = 1, in which a
#   masked position becomes j at rate h_j(t) mu(j | x_t, t) (h_j the schedule's hazard), is solved by the
#   Kolmogorov forward equation (RK4 in log t) down to t_min; then every position still masked is drawn from mu
#   at t_min, independently.
# * `sampler_chain_law(proc, query, ...)`  the exact law of what the `spindle` sampler writes in a number of steps.
# * `ExactSpindleDenoiser`  the true posterior p(x0_l | x_t, t) of a known data law under the spindle forward
#   process (it depends on t: each token value has its own masking probability), by enumeration.


@pytest.fixture(scope="session")
def spindle_exact(analytic) -> SimpleNamespace:
    """The spindle references of the notes above: `spindle_exact.ExactSpindleDenoiser(p_data, n_values, length,
    amp)`, `spindle_exact.expected_bound(proc, model, x0)`, `spindle_exact.ctmc_law(...)`,
    `spindle_exact.sampler_chain_law(...)`."""
    all_sequences, seq_index = analytic.all_sequences, analytic.seq_index

    class ExactSpindleDenoiser(nn.Module):
        """Logits of p_data(x0_l | x_t, t) under the spindle forward process with amplitudes `amp` [V]."""

        def __init__(self, p_data: torch.Tensor, n_values: int, length: int, amp: torch.Tensor):
            super().__init__()
            self.p_data, self.n_values, self.mask_id, self.amp = p_data, n_values, n_values, amp
            self.seqs = all_sequences(n_values, length)
            self.cfg = type("Cfg", (), {"time_conditioning": True})()
            self.dummy = nn.Parameter(torch.zeros(()), requires_grad=False)

        def forward(self, ids: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            t = t.double().reshape(-1, 1, 1)  # [K, 1, 1]
            a = self.amp[self.seqs][None]  # [1, S, L]
            gone = t + a * torch.sin(math.pi * t)  # P(x0_l masked at t) for every candidate x0
            masked = (ids == self.mask_id)[:, None, :]  # [K, 1, L]
            agree = ids[:, None, :] == self.seqs[None]  # [K, S, L]
            like = torch.where(masked, gone, torch.where(agree, 1 - gone, torch.zeros_like(gone))).prod(-1)
            post = like * self.p_data[None]  # [K, S]
            post = post / post.sum(-1, keepdim=True).clamp_min(1e-300)  # at t = 1 only all-[MASK] inputs are possible
            onehot = torch.nn.functional.one_hot(self.seqs, self.n_values + 1).double()  # [S, L, V]
            marg = torch.einsum("ks,slv->klv", post, onehot)
            logits = torch.log(marg.clamp_min(1e-300))
            logits[..., self.mask_id] = float("-inf")
            return logits

    def _nelbo(proc: SpindleMaskedDiffusion, model, x0: torch.Tensor, s: float, patterns: torch.Tensor) -> torch.Tensor:
        """nelbo_per_sequence at noise sample s for every x0 row and mask pattern, [K, M] float64."""
        k, m = len(x0), len(patterns)
        xs = x0.repeat_interleave(m, 0)
        u = patterns.double().repeat(k, 1)
        with torch.no_grad():
            out = proc.nelbo_per_sequence(model, xs, {"t": torch.full((k * m,), s, dtype=torch.float64), "u": u})
        return out.double().view(k, m)

    def _pattern_probs(proc: SpindleMaskedDiffusion, x0: torch.Tensor, t: float,
                       patterns: torch.Tensor) -> torch.Tensor:
        """P(mask pattern | x0) at time t, [K, M]."""
        gone = 1 - proc.token_alpha(x0, torch.full((len(x0),), t, dtype=torch.float64))  # P(masked) [K, L]
        m = patterns[None].double()  # [1, M, L]
        return (gone[:, None] ** m * (1 - gone[:, None]) ** (1 - m)).prod(-1)

    def expected_bound(proc: SpindleMaskedDiffusion, model, x0: torch.Tensor, nodes: int = 24,
                       panels: int = 4) -> torch.Tensor:
        """The exact expectation of nelbo_per_sequence over s ~ U[0, 1] and the mask draw, [K] (module notes)."""
        patterns = all_sequences(2, x0.shape[1]).bool()
        t_min = proc.t_min
        reconstruction = _nelbo(proc, model, x0, t_min / 2, patterns) * _pattern_probs(proc, x0, t_min, patterns)
        total = t_min * reconstruction.sum(1)
        xg, wg = np.polynomial.legendre.leggauss(nodes)
        edges = np.linspace(math.log(t_min), 0.0, panels + 1)
        for lo, hi in itertools.pairwise(edges):
            for xi, wi in zip(xg, wg, strict=True):
                v = lo + (hi - lo) * (xi + 1) / 2
                t = math.exp(v)
                est = _nelbo(proc, model, x0, t, patterns)
                total += wi * (hi - lo) / 2 * t * (est * _pattern_probs(proc, x0, t, patterns)).sum(1)
        return total

    def ctmc_law(proc: SpindleMaskedDiffusion, query, n_values: int, length: int, steps: int = 400) -> torch.Tensor:
        """p_theta(x0) for every sequence over range(n_values) (module notes), [n_values**length] float64.

        query(ids [K, L], t [K]) -> logits [K, L, n_values + 1] with [MASK] = n_values."""
        mask = n_values
        states = all_sequences(n_values + 1, length)  # partial sequences; index by seq_index in base n_values + 1
        n_states = len(states)
        src, dst, pos, val = [], [], [], []
        for k, x in enumerate(states.tolist()):
            for i, xi in enumerate(x):
                if xi != mask:
                    continue
                for j in range(n_values):
                    y = list(x)
                    y[i] = j
                    src.append(k)
                    dst.append(int(seq_index(torch.tensor(y), n_values + 1)))
                    pos.append(i)
                    val.append(j)
        src, dst, pos, val = (torch.tensor(a) for a in (src, dst, pos, val))
        amp = proc.amp[:n_values]

        def probs_at(t: float) -> torch.Tensor:
            logits = query(states, torch.full((n_states,), t, dtype=torch.float64)).double()
            return torch.softmax(logits[..., :n_values], -1)  # [S, L, n_values]

        def flow(v: float, p: torch.Tensor) -> torch.Tensor:
            """dP/dv, v = log t: the chain runs backwards in t, so dP/dv = t (outflow - inflow)."""
            t = math.exp(v)
            rate = spindle_rate(amp, torch.tensor(t, dtype=torch.float64))[val] * probs_at(t)[src, pos, val]
            moved = rate * p[src]
            out = torch.zeros_like(p).index_add_(0, src, moved)
            inflow = torch.zeros_like(p).index_add_(0, dst, moved)
            return t * (out - inflow)

        p = torch.zeros(n_states, dtype=torch.float64)
        p[-1] = 1.0  # all [MASK]: the last state in base-(n_values + 1) order
        v, end = 0.0, math.log(proc.t_min)
        dv = (end - v) / steps
        for _ in range(steps):
            k1 = flow(v, p)
            k2 = flow(v + dv / 2, p + dv / 2 * k1)
            k3 = flow(v + dv / 2, p + dv / 2 * k2)
            k4 = flow(v + dv, p + dv * k3)
            p = p + dv / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            v += dv
        final = probs_at(proc.t_min)  # [S, L, n_values]
        seqs = all_sequences(n_values, length)
        law = torch.zeros(len(seqs), dtype=torch.float64)
        for k, x in enumerate(states.tolist()):
            fits = torch.ones(len(seqs), dtype=torch.float64)
            for i, xi in enumerate(x):
                fits = fits * (final[k, i, seqs[:, i]] if xi == mask else (seqs[:, i] == xi).double())
            law += p[k] * fits
        return law

    def sampler_chain_law(proc: SpindleMaskedDiffusion, query, n_values: int, length: int, steps: int,
                          keep=None) -> torch.Tensor:
        """The exact law of the sequence the `spindle` sampler writes in `steps` steps from all [MASK], by carrying
        the distribution over partial sequences through each step's per-position laws (`proc.reverse_probs`; positions
        are drawn independently given x_t), [n_values**length]. `keep(t, s)` [V] replaces the per-token keep
        probabilities (to show what a wrong schedule does)."""
        vocab = n_values + 1
        states = all_sequences(vocab, length)
        p = torch.zeros(len(states), dtype=torch.float64)
        p[-1] = 1.0
        grid = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64).tolist()
        grid[-1] = 0.0
        for t, s in itertools.pairwise(grid):
            logp = torch.log_softmax(query(states, torch.full((len(states),), t, dtype=torch.float64)).double(), -1)
            if keep is None:
                step = proc.reverse_probs(logp, states, t, s)  # [S, L, V]
            else:
                probs = logp.exp()
                probs[..., n_values] = 0.0
                step = probs * keep(t, s)
                step[..., n_values] = 1 - step.sum(-1)
                step = torch.where((states == n_values)[..., None], step,
                                   torch.nn.functional.one_hot(states, vocab).double())
            nxt = torch.zeros_like(p)
            for target in states:  # P(x_s = target) = sum_x P(x) prod_l step[x, l, target_l]
                weight = step[:, torch.arange(length), target].prod(-1)
                nxt[int(seq_index(target, vocab))] = (p * weight).sum()
            p = nxt
        return p[seq_index(all_sequences(n_values, length), vocab)]

    return SimpleNamespace(ExactSpindleDenoiser=ExactSpindleDenoiser, expected_bound=expected_bound,
                           ctmc_law=ctmc_law, sampler_chain_law=sampler_chain_law)
