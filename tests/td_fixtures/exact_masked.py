"""Test fixtures: MDLM's exact references."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from textdiffusion.processes import MaskedDiffusion
from textdiffusion.processes.block import BlockDiffusion

from .exact_analytic import all_sequences, seq_index

# =====================================================================================================================
# fixture `masked_exact`
#
# Exact expectations of the masked-diffusion bound (MDLM, BD3-LM) on a tiny vocabulary, and the exact law
# of the generative model that the bound is a bound for.
#
# * `bound_terms(process, model, x0)`   E over sample_noise's (s, u) of nelbo_per_sequence, split into its
#   reconstruction (s < t_min), diffusion (s >= t_min) and prior parts, exactly: every mask pattern is
#   enumerated (u_l = 1 masks position l, u_l = 0 keeps it) with its probability, and s is integrated by
#   Gauss-Legendre quadrature after the substitution a = alpha(t). For a model that ignores t (all models
#   here), the integrand in a is sum_M P(M | a) w(t) CE(M) / -alpha'(t) = sum_M a^{L-|M|} (1-a)^{|M|-1} CE(M):
#   a polynomial of degree <= L - 1, which n >= L/2 nodes integrate exactly, for every schedule. What is
#   left is float64 rounding; `quadrature_check` measures it by repeating with more nodes.
# * `model_law(query, ...)`   p_theta(x0) for every sequence: the reverse chain started at the prior, run over
#   [t_min, 1] with SUBS's unmasking rates, then the factorised denoising step at t_min. For a model that
#   ignores t, each position still masked is revealed at an i.i.d. time (the rate -alpha'/(1-alpha) does not
#   depend on the model), so the revealed positions come in a uniformly random order, each drawn from the
#   model given what was revealed before; positions still masked at t_min are drawn together. A position
#   survives to t = 1 unmasked (alpha(1) > 0) with a token uniform over the N = V - 1 others (the prior).
#   Per position: initially unmasked with probability alpha(1), revealed in (t_min, 1] with alpha(t_min) -
#   alpha(1), still masked at t_min with 1 - alpha(t_min). Blocks (BD3-LM) multiply one such law per block,
#   each conditioned on the clean blocks before it.
# =====================================================================================================================


class TableDenoiser(nn.Module):
    """A denoiser given by an arbitrary table of logits for each of the (n_values + 1)**length inputs."""

    def __init__(self, table: torch.Tensor, n_values: int):
        super().__init__()
        self.n_values, self.mask_id = n_values, n_values
        self.cfg = type("Cfg", (), {"time_conditioning": False})()
        self.dummy = nn.Parameter(torch.zeros(()), requires_grad=False)
        self.register_buffer("table", table, persistent=False)  # [P, L, V]

    @classmethod
    def random(cls, n_values: int, length: int, seed: int, scale: float = 2.0) -> TableDenoiser:
        """Logits ~ N(0, scale^2) for every input and position: no joint law is behind them."""
        gen = torch.Generator().manual_seed(seed)
        table = scale * torch.randn((n_values + 1) ** length, length, n_values + 1, generator=gen,
                                    dtype=torch.float64)
        return cls(table, n_values)

    def forward(self, ids: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        return self.table[seq_index(ids, self.n_values + 1)]


class BlockTable(nn.Module):
    """A block-diffusion model from a table model: position l of block b sees the clean blocks before b
    (second half of the [x_t ; x0] input), its own noisy block (first half), and [MASK] after b."""

    def __init__(self, inner: nn.Module, block_size: int):
        super().__init__()
        self.inner, self.block_size, self.mask_id = inner, block_size, inner.mask_id
        self.cfg = type("Cfg", (), {"time_conditioning": False})()

    def forward(self, ids, t=None, attn_mask=None, positions=None, outputs=None):
        length = ids.shape[1] // 2
        xt, x0 = ids[:, :length], ids[:, length:]
        block = torch.arange(length) // self.block_size
        out = None
        for b in range(int(block[-1]) + 1):
            view = torch.where(block < b, x0, torch.where(block == b, xt, torch.full_like(xt, self.mask_id)))
            logits = self.inner(view)
            out = logits if out is None else torch.where((block == b)[None, :, None], logits, out)
        return out


def inverse_alpha(schedule, a: torch.Tensor) -> torch.Tensor:
    """t with alpha(t) = a, for the schedules of `schedules.py`."""
    if schedule.name == "md4-cosine":
        return torch.arcsin(1 - a) * 2 / math.pi
    if schedule.name == "loglinear":
        return 1 - a
    if schedule.name == "cosine":
        return torch.arccos(a) * 2 / math.pi
    if schedule.name == "linear":
        return (-torch.log(a) - schedule.sigma_min) / (schedule.sigma_max - schedule.sigma_min)
    raise ValueError(schedule.name)


def _estimates(proc: MaskedDiffusion, model, x0: torch.Tensor, s: float, patterns: torch.Tensor) -> torch.Tensor:
    """nelbo_per_sequence at noise sample s for every x0 row and mask pattern, [K, M] float64."""
    k, m = len(x0), len(patterns)
    xs = x0.repeat_interleave(m, 0)
    u = patterns.double().repeat(k, 1)
    if isinstance(proc, BlockDiffusion):
        t = torch.full((k * m, proc.num_blocks(x0.shape[1])), s, dtype=torch.float64)
    else:
        t = torch.full((k * m,), s, dtype=torch.float64)
    with torch.no_grad():
        return proc.nelbo_per_sequence(model, xs, {"t": t, "u": u}).double().view(k, m)


def _pattern_probs(a: float, patterns: torch.Tensor) -> torch.Tensor:
    masked = patterns.sum(1).double()
    return a ** (patterns.shape[1] - masked) * (1 - a) ** masked


def bound_terms(proc: MaskedDiffusion, model, x0: torch.Tensor, nodes: int | None = None) -> dict[str, torch.Tensor]:
    """The exact expectation of nelbo_per_sequence over s ~ U[0, 1] and the mask draw, by parts, each [K].

    reconstruction  int_0^{t_min} ds: every s < t_min gives the same sample (x_{t_min}), so t_min times it
    diffusion       int_{t_min}^1 ds, by Gauss-Legendre in a = alpha(t) (exact: see the module notes)
    prior           the constant part: the sample for the all-kept pattern
    """
    length = x0.shape[1]
    nodes = nodes or length + 2
    patterns = all_sequences(2, length).bool()  # row 0 masks nothing
    sched = proc.schedule
    alpha = lambda t: float(sched.alpha(torch.tensor(t, dtype=torch.float64)))  # noqa: E731
    below = proc.t_min / 2
    est = _estimates(proc, model, x0, below, patterns)
    prior = est[:, 0].clone()
    a0, a1 = alpha(proc.t_min), max(alpha(1.0), 0.0)
    recon = proc.t_min * ((est - prior[:, None]) * _pattern_probs(a0, patterns)).sum(1)
    xg, wg = np.polynomial.legendre.leggauss(nodes)
    diffusion = torch.zeros(len(x0), dtype=torch.float64)
    for xi, wi in zip(xg, wg, strict=True):
        a = a1 + (a0 - a1) * (xi + 1) / 2
        t = inverse_alpha(sched, torch.tensor(a, dtype=torch.float64))
        a_code = float(sched.alpha(t))  # the keep probability the code's mask threshold uses
        speed = -float(sched.alpha_prime(t))  # dt = da / -alpha'(t)
        est = _estimates(proc, model, x0, float(t), patterns) - prior[:, None]
        diffusion += wi * (a0 - a1) / 2 * (est * _pattern_probs(a_code, patterns)).sum(1) / speed
    return {"reconstruction": recon, "diffusion": diffusion, "prior": prior}


def expected_bound(proc: MaskedDiffusion, model, x0: torch.Tensor, nodes: int | None = None) -> torch.Tensor:
    terms = bound_terms(proc, model, x0, nodes)
    return terms["reconstruction"] + terms["diffusion"] + terms["prior"]


def quadrature_check(proc: MaskedDiffusion, model, x0: torch.Tensor) -> float:
    """max |E_n - E_{n+4}| over x0: the quadrature plus float64 rounding error of `expected_bound`."""
    n = x0.shape[1] + 2
    return float((expected_bound(proc, model, x0, n) - expected_bound(proc, model, x0, n + 4)).abs().max())


def old_expectation(terms: dict[str, torch.Tensor], t_min: float) -> torch.Tensor:
    """What the estimate before the fix averaged to: t ~ U[t_min, 1], no reconstruction and no prior term,
    i.e. the diffusion integral over [t_min, 1] divided by 1 - t_min."""
    return terms["diffusion"] / (1 - t_min)


def model_law(query: Callable[[torch.Tensor], torch.Tensor], n_values: int, length: int, keep_tmin: float,
              keep_end: float = 0.0, blocks: Sequence[Sequence[int]] | None = None) -> torch.Tensor:
    """p_theta(x0) of every sequence over range(n_values) (see the module notes), [n_values**length] float64.

    query(ids [K, L]) gives logits [K, L, n_values + 1] for inputs with [MASK] = n_values; keep_tmin =
    alpha(t_min), keep_end = alpha(1). `blocks` (default: one block) are revealed in order."""
    seqs = all_sequences(n_values, length)
    mask = n_values
    blocks = [list(range(length))] if blocks is None else [list(b) for b in blocks]

    def cond(known: Sequence[int], pos: int) -> torch.Tensor:
        """p_theta(x0_pos | x0 at `known`, [MASK] elsewhere) for every sequence, [K]."""
        ids = torch.full_like(seqs, mask)
        ids[:, list(known)] = seqs[:, list(known)]
        logp = torch.log_softmax(query(ids).double()[:, pos, :n_values], -1)
        return logp.gather(1, seqs[:, pos : pos + 1])[:, 0].exp()

    law = torch.ones(len(seqs), dtype=torch.float64)
    before: list[int] = []
    for block in blocks:
        block_law = torch.zeros(len(seqs), dtype=torch.float64)
        for roles in itertools.product("ISR", repeat=len(block)):  # initial / revealed in (t_min, 1] / remaining
            weight = math.prod({"I": keep_end / n_values, "S": keep_tmin - keep_end, "R": 1 - keep_tmin}[r]
                               for r in roles)
            if weight == 0:
                continue
            start = before + [p for p, r in zip(block, roles, strict=True) if r == "I"]
            revealed = [p for p, r in zip(block, roles, strict=True) if r == "S"]
            orders = list(itertools.permutations(revealed))
            chain = torch.zeros(len(seqs), dtype=torch.float64)
            for order in orders:
                term = torch.ones(len(seqs), dtype=torch.float64)
                for i, pos in enumerate(order):
                    term = term * cond(start + list(order[:i]), pos)
                chain += term / len(orders)
            last = torch.ones(len(seqs), dtype=torch.float64)
            for pos in (p for p, r in zip(block, roles, strict=True) if r == "R"):
                last = last * cond(start + revealed, pos)
            block_law += weight * chain * last
        law = law * block_law
        before += block
    return law


@pytest.fixture(scope="session")
def masked_exact() -> SimpleNamespace:
    """The references of this section: `masked_exact.TableDenoiser`, `masked_exact.bound_terms(...)`, ..."""
    return SimpleNamespace(TableDenoiser=TableDenoiser, BlockTable=BlockTable, inverse_alpha=inverse_alpha,
                           bound_terms=bound_terms, expected_bound=expected_bound, quadrature_check=quadrature_check,
                           old_expectation=old_expectation, model_law=model_law)


