"""Test fixtures: SEDD's exact references."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from textdiffusion.processes.sedd import SEDD

from .exact_analytic import MASK, N_VALUES, VOCAB, all_sequences, seq_index, tiny_data

# =====================================================================================================================
# fixture `sedd_exact`
#
# Exact (brute-force) references for SEDD on a tiny vocabulary and a short length.
#
# Built from dense matrices and enumeration, independently of the closed forms in `processes/sedd.py`:
# the noise schedules are re-derived here, the rate matrices written from their definitions, and every
# transition probability is a dense matrix exponential.
#
# * `rate_matrix(graph, n)`     R[a, b] = rate a -> b over V = n + 1 symbols ([MASK] = n); the paper's Q is R^T.
# * `ExactScoreModel`           raw outputs f such that SEDD's parameterisation gives the exact concrete score
#                               log p_t(x with y at l) / p_t(x) of the data table (a drop-in for the network).
# * `chain_law`                 the exact output law of the factorised (tau-leaping) sampler driven by the exact
#                               score, by multiplying transition matrices over all states.
#
# Sequences use `analytic.seq_index` (base V for states, base n for data).
# =====================================================================================================================


def sigma_bar(noise: str, t: torch.Tensor, eps: float = 0.0, sigma_min: float = 1e-4,
              sigma_max: float = 20.0) -> torch.Tensor:
    """Total noise, from the paper's definitions (float64)."""
    t = torch.as_tensor(t, dtype=torch.float64)
    if noise == "loglinear":
        return -torch.log(1 - (1 - eps) * t)
    return sigma_min ** (1 - t) * sigma_max**t


def sigma_rate(noise: str, t: torch.Tensor, eps: float = 0.0, sigma_min: float = 1e-4,
               sigma_max: float = 20.0) -> torch.Tensor:
    t = torch.as_tensor(t, dtype=torch.float64)
    if noise == "loglinear":
        return (1 - eps) / (1 - (1 - eps) * t)
    return sigma_bar(noise, t, eps, sigma_min, sigma_max) * math.log(sigma_max / sigma_min)


def rate_matrix(graph: str, n: int) -> torch.Tensor:
    """R[a, b] = forward rate a -> b (rows sum to 0); symbol n is [MASK]."""
    v = n + 1
    r = torch.zeros(v, v, dtype=torch.float64)
    if graph == "absorb":
        r[:n, n] = 1.0
    else:  # uniform over the n tokens; [MASK] is isolated
        r[:n, :n] = 1.0 / n
    r -= torch.diag(r.sum(1))
    return r


def transition(graph: str, n: int, sb: float) -> torch.Tensor:
    """M[a, b] = p_{t|0}(b | a) = expm(sigmabar R)[a, b]."""
    return torch.linalg.matrix_exp(sb * rate_matrix(graph, n))


@dataclass
class _SEDDCfg:
    time_conditioning: bool = True


class ExactScoreModel(nn.Module):
    """f[b, l, y] with log s_y = f_y - log N - log(e^sigmabar - 1) (absorb) or f_y (uniform) exact.

    `fixed` positions are clean context (never noised). Entries the process must ignore get junk:
    [MASK]'s column, the current token (uniform) and every entry at an unmasked absorb position.
    At t = 1 with sigmabar = inf (absorb, eps = 0) the score is taken at t = 1 - 1e-9 (its limit).
    """

    def __init__(self, probs: torch.Tensor, n_values: int, length: int, graph: str, noise: str = "loglinear",
                 eps: float = 0.0, sigma_min: float = 1e-4, sigma_max: float = 20.0, fixed: Sequence[int] = (),
                 time_conditioning: bool = True):
        super().__init__()
        self.cfg = _SEDDCfg(time_conditioning)
        self.dummy = nn.Parameter(torch.zeros(()), requires_grad=False)
        self.n, self.v, self.length, self.graph = n_values, n_values + 1, length, graph
        self.noise_args = (noise, eps, sigma_min, sigma_max)
        self.fixed = list(fixed)
        self.probs = probs.double()
        self.data = all_sequences(n_values, length)  # [K, L]
        self.powers = self.v ** torch.arange(length - 1, -1, -1)

    def sb(self, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float64)
        if self.graph == "absorb" and self.noise_args[0] == "loglinear" and self.noise_args[1] == 0:
            t = t.clamp_max(1 - 1e-9)
        noise, eps, lo, hi = self.noise_args
        return sigma_bar(noise, t, eps, lo, hi)

    def rate(self, t: float) -> float:
        t = float(torch.as_tensor(t, dtype=torch.float64).clamp_max(1 - 1e-9)) if self.graph == "absorb" else t
        noise, eps, lo, hi = self.noise_args
        return float(sigma_rate(noise, torch.tensor(t, dtype=torch.float64), eps, lo, hi))

    def state_probs(self, sb, states: torch.Tensor) -> torch.Tensor:
        """p_t(state) [T, S] for total noises sb [T] and states [S, L], by summing over the data table."""
        sb = torch.as_tensor(sb, dtype=torch.float64).reshape(-1)
        m = torch.linalg.matrix_exp(sb[:, None, None] * rate_matrix(self.graph, self.n))  # [T, V, V]
        factor = m[:, self.data[None, :, :], states[:, None, :]]  # [T, S, K, L]: p(state_l | x0_l)
        for l in self.fixed:
            factor[..., l] = (self.data[None, :, l] == states[:, None, l]).double()
        return factor.prod(-1) @ self.probs

    def log_ratios(self, ids: torch.Tensor, sb) -> torch.Tensor:
        """log p_t(ids with y at l) / p_t(ids), [B, L, V], at total noise sb (a float, or [B] per row)."""
        sb = torch.as_tensor(sb, dtype=torch.float64).reshape(-1)
        levels, which = torch.unique(sb, return_inverse=True)
        which = which.expand(len(ids))
        tables = torch.cat([self.state_probs(levels[i:i + 512], all_sequences(self.v, self.length))
                            for i in range(0, len(levels), 512)])  # [T, V**L]
        idx = seq_index(ids, self.v)
        shift = (torch.arange(self.v)[None, None, :] - ids[..., None]) * self.powers[None, :, None]  # [B, L, V]
        rows = which[:, None, None].expand(shift.shape)
        return torch.log(tables[rows, idx[:, None, None] + shift]) - torch.log(tables[which, idx])[:, None, None]

    def forward(self, ids: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        sb = self.sb(torch.as_tensor(t, dtype=torch.float64).expand(ids.shape[0]))
        lr = self.log_ratios(ids, sb)
        if self.graph == "absorb":
            f = lr + math.log(self.n) + torch.log(torch.expm1(sb))[:, None, None]
            junk = 7.0 * torch.nn.functional.one_hot((ids + 1) % self.n, self.v).double()
            f = torch.where((ids == self.n)[..., None], f, junk)
        else:
            f = lr.scatter(-1, ids[..., None], 5.0)
        return f.index_fill(-1, torch.tensor([self.n]), 3.0)


# ---------------------------------------------------------------------------------------------
# the exact law of the factorised sampler


def _step_dists(model: ExactScoreModel, states: torch.Tensor, t: float, s: float | None, method: str,
                wrong: str | None = None) -> torch.Tensor:
    """D[x, l, y] = p(x_s^l = y | x_t = x) for every state x, from the definitions (dense)."""
    graph, n, v = model.graph, model.n, model.v
    r = rate_matrix(graph, n)
    sb_t = float(model.sb(t))
    sb_s = 0.0 if s is None else float(model.sb(s))
    scores = model.log_ratios(states, sb_t).exp()  # [S, L, V]; 1 at the current token
    cur = torch.nn.functional.one_hot(states, v).double()
    if wrong == "unshifted":  # absorb's raw exp(g) taken as the score: the log(e^sigmabar - 1) shift forgotten
        scores = torch.where(cur.bool(), scores, scores * math.expm1(sb_t))
    if method == "euler" and s is not None:
        rate = model.rate(t)
        jump = (t - s) * rate * scores * r[:, states].permute(1, 2, 0) * (1 - cur)  # R[y, x_l] s_y
        total = jump.sum(-1, keepdim=True)
        jump = torch.where(total > 1, jump / total, jump)
        d = jump + cur * (1 - jump.sum(-1, keepdim=True))
    else:
        delta = sb_t - sb_s
        back = torch.linalg.matrix_exp((delta if wrong == "sign" else -delta) * r)  # expm(-D R)
        stag = (scores @ back).clamp_min(0.0)  # [e^{-D Q} s]_y = sum_z expm(-D R)[z, y] s_z
        fwd = torch.linalg.matrix_exp(delta * r)  # fwd[y, x] = P(y -> x)
        d = stag * (1.0 if wrong == "no_transition" else fwd[:, states].permute(1, 2, 0))
        if s is None and graph == "absorb":
            d[..., n] = 0.0
        d = d / d.sum(-1, keepdim=True)
    fixed = torch.zeros(model.length, dtype=torch.bool)
    fixed[model.fixed] = True
    return torch.where(fixed[None, :, None], cur, d)


def chain_law(model: ExactScoreModel, steps: int, method: str, start: torch.Tensor,
              wrong: str | None = None) -> torch.Tensor:
    """Law of the final state over all data sequences [n**L] (base n), starting from the law `start`
    over the states all_sequences(V, L) (zero mass where [MASK] cannot be)."""
    v, length = model.v, model.length
    states = all_sequences(v, length)
    law = start.double()
    ts = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64).tolist()
    for k in range(steps):
        s = ts[k + 1] if k < steps - 1 else None
        live = law > 0
        d = _step_dists(model, states[live], ts[k], s, method, wrong)  # [S', L, V]
        trans = torch.ones(int(live.sum()), len(states), dtype=torch.float64)
        for l in range(length):
            trans = trans * d[:, l, states[:, l]]
        law = law[live] @ trans
    clean = (states < model.n).all(1)
    assert float(law[~clean].sum()) < 1e-12, "a [MASK] survived the final step"
    return law[clean]  # states without [MASK], in the order of all_sequences(n, L)


def base_law(graph: str, n: int, length: int, fixed: dict[int, int] | None = None) -> torch.Tensor:
    """The sampler's start: all [MASK] (absorb) or uniform tokens (uniform) at the generated positions."""
    states = all_sequences(n + 1, length)
    ok = torch.ones(len(states), dtype=torch.bool)
    fixed = fixed or {}
    for l in range(length):
        if l in fixed:
            ok &= states[:, l] == fixed[l]
        elif graph == "absorb":
            ok &= states[:, l] == n
        else:
            ok &= states[:, l] < n
    return ok.double() / ok.sum()


def data_index(states: torch.Tensor, n: int) -> torch.Tensor:
    return seq_index(states, n)


@pytest.fixture(scope="session")
def sedd_exact() -> SimpleNamespace:
    """The SEDD references of this section: `sedd_exact.ExactScoreModel(...)`, `sedd_exact.chain_law(...)`, ..."""
    return SimpleNamespace(sigma_bar=sigma_bar, sigma_rate=sigma_rate, rate_matrix=rate_matrix, transition=transition,
                           ExactScoreModel=ExactScoreModel, chain_law=chain_law, base_law=base_law,
                           data_index=data_index)


# =====================================================================================================================
# fixture `sedd_tiny`
#
# SEDD's tiny exact setup, shared by the test_sedd_* files.
#
# p_data is `tiny_exact`'s distribution over the 3**3 = 27 sequences of length 3 over 3 tokens; [MASK] is
# token 3. `exact_score` gives `sedd_exact.ExactScoreModel`: the exact concrete score p_t(y at l) / p_t(x) of
# that table (by enumeration and dense matrix exponentials), in the form SEDD's parameterisation expects.
# =====================================================================================================================


SEDD_LENGTH = 3
SEDD_GRAPHS = ("absorb", "uniform")
SEDD_EPS = {"absorb": 0.0, "uniform": 1e-3}  # the process's defaults


def sedd_tiny_process(graph: str, noise: str = "loglinear", cls=SEDD, **kw) -> SEDD:
    return cls(VOCAB, MASK, graph=graph, noise=noise, **kw)


@pytest.fixture(scope="session")
def sedd_tiny() -> SimpleNamespace:
    """SEDD's tiny setup: LENGTH, SEQS, P_DATA, MASSES, PRODUCT (independent marginals), ENTROPY, GRAPHS, EPS,
    tiny_process(graph, ...) and exact_score(graph, noise, fixed, time_conditioning)."""
    seqs, p_data, masses, product, entropy = tiny_data(SEDD_LENGTH)

    def exact_score(graph: str, noise: str = "loglinear", fixed=(), time_conditioning: bool = True) -> ExactScoreModel:
        return ExactScoreModel(p_data, N_VALUES, SEDD_LENGTH, graph, noise, eps=SEDD_EPS[graph], fixed=tuple(fixed),
                               time_conditioning=time_conditioning)

    return SimpleNamespace(LENGTH=SEDD_LENGTH, SEQS=seqs, P_DATA=p_data, MASSES=masses, PRODUCT=product,
                           ENTROPY=entropy, GRAPHS=SEDD_GRAPHS, EPS=SEDD_EPS, tiny_process=sedd_tiny_process,
                           exact_score=exact_score)


