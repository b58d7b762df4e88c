"""Test fixtures: D3PM's exact references."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from textdiffusion.processes.d3pm import D3PM

from .exact_analytic import MASK, N_VALUES, VOCAB, all_sequences, seq_index, tiny_data

# =====================================================================================================================
# fixture `d3pm_exact`
#
# Exact (brute-force) references for D3PM on a tiny vocabulary and a short length.
#
# Everything here is built from dense matrices and enumeration, independently of the closed forms
# and log-space code in `processes/d3pm.py`; only the per-step matrices Q_t (`transition_matrix`)
# are taken from the process, and those are checked against their definitions separately.
#
# * `dense_products(process)`   Qbar_t = Q_1 ... Q_t for t = 0..T, by explicit matrix products.
# * `ExactD3PMDenoiser`         the true posterior p_data(x0_l | x_t) under the forward process, as a
#                               time-conditioned drop-in for the network (a table lookup).
# * `reverse_law`               the exact output law of the factorised reverse chain (each position
#                               drawn independently from sum_x0 q(x_s | x_t, x0) p~(x0_l | x_t)),
#                               by multiplying [P, P] transition matrices over all P = V**L states.
# * `exact_nelbo`               the process's NELBO averaged exactly over t and over every x_t.
#
# The vocabulary is range(n_values) plus [MASK] = n_values; states are sequences over all V symbols
# (`seq_index` base V), data sequences are over the n_values real tokens (`seq_index` base n_values).
# =====================================================================================================================


def dense_products(process) -> list[torch.Tensor]:
    """[Qbar_0 = I, Qbar_1, ..., Qbar_T], float64, as running products of the per-step matrices."""
    out = [torch.eye(process.vocab_size, dtype=torch.float64)]
    for t in range(1, process.num_steps + 1):
        out.append(out[-1] @ process.transition_matrix(t))
    return out


def dense_between(process, s: int, t: int) -> torch.Tensor:
    """Q_{s->t} = Q_{s+1} ... Q_t by explicit products."""
    out = torch.eye(process.vocab_size, dtype=torch.float64)
    for r in range(s + 1, t + 1):
        out = out @ process.transition_matrix(r)
    return out


@dataclass
class _D3PMCfg:
    time_conditioning: bool = True


class ExactD3PMDenoiser(nn.Module):
    """logits[b, l, v] = log p_data(x0_l = v | x_t = ids[b]) at the step t = round(t_in * T).

    `fixed` positions are clean context (never noised), as `loss_mask` / infilling treat them: their
    likelihood factor is [x0_l == x_t,l]. Impossible inputs get uniform logits (never queried). `dtype`:
    float32 as a network's, float64 for exact-arithmetic checks. `randomize` turns it into an arbitrary model.
    """

    def __init__(self, probs: torch.Tensor, n_values: int, length: int, process, fixed: Sequence[int] = (),
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        self.cfg = _D3PMCfg()
        self.dummy = nn.Parameter(torch.zeros(()), requires_grad=False)
        self.num_steps = process.num_steps
        v = n_values + 1
        seqs = all_sequences(n_values, length)  # [K, L] data sequences
        states = all_sequences(v, length)  # [P, L] every input
        onehot = torch.nn.functional.one_hot(seqs, v).double()  # [K, L, V]
        tables = []
        for qbar in dense_products(process):
            factor = qbar[seqs[:, None, :], states[None, :, :]]  # [K, P, L]: q(x_t,l | x0_l)
            for l in fixed:
                factor[..., l] = (seqs[:, None, l] == states[None, :, l]).double()
            weights = factor.prod(-1) * probs.double()[:, None]  # [K, P]
            marg = torch.einsum("kp,klv->plv", weights, onehot)
            total = marg.sum(-1, keepdim=True)
            marg = torch.where(total > 0, marg / total.clamp_min(1e-300), torch.full_like(marg, 1.0 / v))
            tables.append(torch.log(marg.clamp_min(1e-300)))
        self.register_buffer("table", torch.stack(tables).to(dtype), persistent=False)  # [T+1, P, L, V]
        self.v = v

    def randomize(self, seed: int, scale: float = 2.0) -> ExactD3PMDenoiser:
        """Replace the table by logits ~ N(0, scale^2) ([MASK] never predicted): no joint law is behind them."""
        gen = torch.Generator().manual_seed(seed)
        table = scale * torch.randn(self.table.shape, generator=gen, dtype=torch.float64)
        table[..., self.v - 1] = float("-inf")
        self.table = table.to(self.table.dtype)
        return self

    def forward(self, ids: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        step = (t.double() * self.num_steps).round().long()
        return self.table[step, seq_index(ids, self.v)]


def _posterior_kernel(q_st: torch.Tensor, qbar_s: torch.Tensor, qbar_t: torch.Tensor, eq4: bool) -> torch.Tensor:
    """K[i, k, j] = q(x_s = j | x_t = k, x0 = i) (or, eq4=True, Q_st[j, k] Qbar_s[i, j] unnormalised)."""
    joint = qbar_s[:, None, :] * q_st.T[None, :, :]  # [i, k, j] = Qbar_s[i, j] Q_st[j, k]
    if eq4:
        return joint
    norm = qbar_t[:, :, None]  # sum_j joint = Qbar_t[i, k]
    return torch.where(norm > 0, joint / norm.clamp_min(1e-300), torch.zeros_like(joint))


def reverse_law(process, model: ExactD3PMDenoiser, n_values: int, length: int, times: Sequence[int],
                start: torch.Tensor, fixed: Sequence[int] = (), eq4: bool = False) -> torch.Tensor:
    """Law over the n_values**length data sequences of the factorised reverse chain visiting `times`.

    `start` is the law over all V**length states at times[0]. eq4=True uses the paper's eq. 4 literally:
    p(x_s | x_t) ∝ sum_x0 Q_{s->t}[x_s, x_t] Qbar_s[x0, x_s] p~(x0 | x_t), without 1/q(x_t | x0).
    """
    v = n_values + 1
    states = all_sequences(v, length)
    prods = dense_products(process)
    law = start.double()
    for t, s in zip(times[:-1], times[1:]):
        kern = _posterior_kernel(dense_between(process, s, t), prods[s], prods[t], eq4)  # [i, k, j]
        px0 = torch.softmax(model.table[t].double(), -1)  # [P, L, V]
        k_idx = states  # x_t,l for each state and position
        consistent = prods[t][:, k_idx].permute(1, 2, 0) > 0  # [P, L, i]: q(x_t,l | x0_l = i) > 0
        px0 = torch.where(consistent, px0, torch.zeros_like(px0))
        px0 = px0 / px0.sum(-1, keepdim=True).clamp_min(1e-300)
        step = torch.einsum("pli,plij->plj", px0, kern[:, k_idx, :].permute(1, 2, 0, 3))  # [P, L, V]
        step = step / step.sum(-1, keepdim=True).clamp_min(1e-300)
        for l in fixed:
            step[:, l] = torch.nn.functional.one_hot(states[:, l], v).double()
        # joint transition [P, P'] = prod_l step[P, l, x'_l]
        trans = step[:, 0, :]
        for l in range(1, length):
            trans = (trans[:, :, None] * step[:, l, None, :]).reshape(len(states), -1)
        law = law @ trans
    real = (states < n_values).all(1)
    assert float(law[~real].sum()) < 1e-9, "the reverse chain ended with [MASK] tokens"
    out = torch.zeros(n_values**length, dtype=torch.float64)
    out[seq_index(states[real], n_values)] = law[real]
    return out


def start_law(process, n_values: int, length: int, context: dict[int, int] | None = None) -> torch.Tensor:
    """The prior over all states: [MASK] everywhere (absorbing) or uniform tokens; context fixed."""
    v = n_values + 1
    states = all_sequences(v, length)
    per_pos = torch.zeros(v, dtype=torch.float64)
    if process.transition == "absorbing":
        per_pos[n_values] = 1.0
    else:
        per_pos[:n_values] = 1.0 / n_values
    law = torch.ones(len(states), dtype=torch.float64)
    for l in range(length):
        if context and l in context:
            law = law * (states[:, l] == context[l]).double()
        else:
            law = law * per_pos[states[:, l]]
    return law


@torch.no_grad()
def exact_nelbo(process, model: nn.Module, x0: torch.Tensor, n_values: int) -> torch.Tensor:
    """sum_t E_{x_t ~ q(x_t | x0)} [sum_l L_{t-1}] for each row of x0 ([N, L]), every x_t enumerated."""
    v = n_values + 1
    length = x0.shape[1]
    states = all_sequences(v, length)
    prods = dense_products(process)
    total = torch.zeros(len(x0), dtype=torch.float64)
    for t in range(1, process.num_steps + 1):
        prob = prods[t][x0[:, None, :], states[None, :, :]].prod(-1)  # [N, P] = q(x_t | x0)
        n_idx, p_idx = (prob > 0).nonzero(as_tuple=True)
        xs, xt = x0[n_idx], states[p_idx]
        tt = torch.full((len(xs),), t, dtype=torch.long)
        vb, _ = process.elbo_terms(model, xs, xt, tt)
        total.index_add_(0, n_idx, prob[n_idx, p_idx] * vb.double().sum(1))
    return total


@pytest.fixture(scope="session")
def d3pm_exact() -> SimpleNamespace:
    """The D3PM references of this section: `d3pm_exact.ExactD3PMDenoiser(...)`, `d3pm_exact.reverse_law(...)`, ..."""
    return SimpleNamespace(dense_products=dense_products, dense_between=dense_between,
                           ExactD3PMDenoiser=ExactD3PMDenoiser, reverse_law=reverse_law, start_law=start_law,
                           exact_nelbo=exact_nelbo)


# =====================================================================================================================
# fixture `d3pm_tiny`
#
# D3PM's tiny exact setup, shared by the test_d3pm_* files.
#
# p_data is `tiny_exact`'s distribution over the 3**4 = 81 sequences of length 4 (the one the MDLM tests
# use). `ExactSetup` pairs a process (T = 50 steps) with `d3pm_exact.ExactD3PMDenoiser`, the true posterior
# p_data(x0_l | x_t) for that forward process, and computes, by brute force over all 4**4 states, the exact
# output law of the factorised reverse chain that the sampler runs and the exact NELBO of every sequence.
# =====================================================================================================================


D3PM_LENGTH = 4
D3PM_T = 50
# tokens 0-1 and 1-2 are close, 0-2 far: with knn=1 the graph is the chain 0 - 1 - 2
D3PM_TINY_EMBEDDING = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [0.0, 0.0]])
D3PM_TRANSITIONS = ("absorbing", "uniform", "embedding")


def d3pm_tiny_process(transition: str, num_steps: int = D3PM_T, cls=D3PM, **kw) -> D3PM:
    return cls(VOCAB, MASK, transition=transition, num_steps=num_steps, knn=1, embedding=D3PM_TINY_EMBEDDING, **kw)


class D3PMExactSetup:
    def __init__(self, transition: str):
        self.seqs, self.p_data = tiny_data(D3PM_LENGTH)[:2]
        self.process = d3pm_tiny_process(transition)
        self.model = ExactD3PMDenoiser(self.p_data, N_VALUES, D3PM_LENGTH, self.process)
        self.start = start_law(self.process, N_VALUES, D3PM_LENGTH)
        self._bound: torch.Tensor | None = None

    @property
    def bound(self) -> torch.Tensor:
        """The exact NELBO of every data sequence."""
        if self._bound is None:
            self._bound = exact_nelbo(self.process, self.model, self.seqs, N_VALUES)
        return self._bound

    def law(self, steps: int | None = None, eq4: bool = False) -> torch.Tensor:
        times = self.process.sampling_times(steps)
        return reverse_law(self.process, self.model, N_VALUES, D3PM_LENGTH, times, self.start, eq4=eq4)


@pytest.fixture(scope="session")
def d3pm_tiny() -> SimpleNamespace:
    """D3PM's tiny setup: LENGTH, T, SEQS, P_DATA, ENTROPY, TRANSITIONS, tiny_process(transition, ...) and
    exact_setup(transition), one `D3PMExactSetup` per transition, built on first use and shared by every test."""
    seqs, p_data, _, _, entropy = tiny_data(D3PM_LENGTH)
    setups: dict[str, D3PMExactSetup] = {}

    def exact_setup(transition: str) -> D3PMExactSetup:
        if transition not in setups:
            setups[transition] = D3PMExactSetup(transition)
        return setups[transition]

    return SimpleNamespace(LENGTH=D3PM_LENGTH, T=D3PM_T, SEQS=seqs, P_DATA=p_data, ENTROPY=entropy,
                           TINY_EMBEDDING=D3PM_TINY_EMBEDDING, TRANSITIONS=D3PM_TRANSITIONS,
                           tiny_process=d3pm_tiny_process, exact_setup=exact_setup)


