"""Test fixtures: analytic: exact laws on toy vocabularies, and the tiny exact references."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import NamedTuple

import numpy as np
import pytest
import torch
from torch import nn

# =====================================================================================================================
# fixture `analytic`
#
# Exact (analytic) references for masked diffusion on a tiny vocabulary and a short length.
#
# The data distribution p_data is a known table over all n_values**length sequences, so everything
# a perfect model would know can be computed by enumeration:
#
# * `ExactDenoiser` -- a drop-in for the real denoiser whose logits are log p_data(x0_l = v | the
#   unmasked tokens of x_t): the true posterior, so the sampler and the NELBO can be checked against
#   the data distribution itself rather than against a trained (hence approximate) model.
# * `conditional_law` -- p_data(gap | fixed positions), what infilling must sample.
# * `sampler_law` -- the exact output law of the *factorised* ancestral sampler with that denoiser
#   for a given reveal-time distribution. Tokens revealed in the same step are drawn independently
#   from their marginals, so the sampler is exact only when no two tokens share a step; this law
#   accounts for that and says how far a finite number of steps is from p_data.
# * `tv_bound` -- a rigorous (Jensen + McDiarmid) upper bound on the total variation distance
#   between n i.i.d. draws' histogram and their law.
#
# Sequences are indexed in base n_values, most significant digit first (`seq_index`).
# =====================================================================================================================


def all_sequences(n_values: int, length: int) -> torch.Tensor:
    """Every sequence over range(n_values) of `length`, [n_values**length, length], row k has index k."""
    return torch.tensor(list(itertools.product(range(n_values), repeat=length)), dtype=torch.long)


def seq_index(x: torch.Tensor, n_values: int) -> torch.Tensor:
    """Index of each row of x ([..., L], values in range(n_values)) in `all_sequences`."""
    powers = n_values ** torch.arange(x.shape[-1] - 1, -1, -1, device=x.device)
    return (x.long() * powers).sum(-1)


def random_distribution(n_values: int, length: int, seed: int, concentration: float = 1.0) -> torch.Tensor:
    """A correlated, non-uniform distribution over all sequences: Dirichlet(concentration), float64."""
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(n_values**length, concentration))
    return torch.tensor(p, dtype=torch.float64)


def histogram(samples: torch.Tensor, n_values: int) -> torch.Tensor:
    """Empirical distribution of the rows of `samples` over all sequences, float64."""
    counts = torch.bincount(seq_index(samples, n_values), minlength=n_values ** samples.shape[-1])
    return counts.double() / samples.shape[0]


def tv(p: torch.Tensor, q: torch.Tensor) -> float:
    return 0.5 * float((p.double() - q.double()).abs().sum())


def tv_bound(law: torch.Tensor, n: int, delta: float = 1e-6) -> float:
    """With probability >= 1 - delta, TV(histogram of n i.i.d. draws from `law`, law) is below this.

    E|p_hat - p| <= sqrt(p(1-p)/n) (Jensen), and moving one draw changes the TV by at most 1/n, so
    McDiarmid gives P(TV > E[TV] + eps) <= exp(-2 n eps^2).
    """
    law = law.double()
    expected = 0.5 * float(torch.sqrt(law * (1 - law) / n).sum())
    return expected + math.sqrt(math.log(1 / delta) / (2 * n))


def chi2_statistic(counts: torch.Tensor, law: torch.Tensor, min_expected: float = 5.0) -> tuple[float, int]:
    """Pearson's chi^2 of `counts` against `law` (cells expecting < min_expected pooled); (stat, dof)."""
    counts, law = counts.double(), law.double()
    expected = counts.sum() * law
    small = expected < min_expected
    obs = torch.cat([counts[~small], counts[small].sum()[None]]) if small.any() else counts
    exp = torch.cat([expected[~small], expected[small].sum()[None]]) if small.any() else expected
    keep = exp > 0
    if bool((obs[~keep] > 0).any()):
        return math.inf, int(keep.sum()) - 1
    obs, exp = obs[keep], exp[keep]
    return float(((obs - exp) ** 2 / exp).sum()), len(exp) - 1


def chi2_quantile(dof: int, z: float = 5.0) -> float:
    """Upper quantile of chi^2_dof at a standard-normal z (Wilson-Hilferty); z=5 is about 1 - 3e-7."""
    h = 2.0 / (9.0 * dof)
    return dof * (1 - h + z * math.sqrt(h)) ** 3


# ---------------------------------------------------------------------------------------------
# exact denoiser


@dataclass
class _AnalyticCfg:
    time_conditioning: bool = False


class ExactDenoiser(nn.Module):
    """logits[b, l, v] = log p(x0_l = v | unmasked tokens of ids[b]) under a known table `probs`.

    The vocabulary is range(n_values) plus [MASK] = n_values. Everything is precomputed for each of
    the (n_values+1)**length possible inputs, so forward is a table lookup.

    Options for deliberately wrong or adversarial denoisers:
      context=False   ignore the unmasked tokens: every masked position gets its unconditional marginal
      power           posterior p**power, renormalised (power != 1 is a distorted posterior)
      mask_logit      logit given to [MASK] (-inf by default; a large value checks that callers forbid it)
    dtype is the logits' (float32 as a network's; float64 for exact-arithmetic checks of the bound).
    At unmasked positions the logits point at a *different* token ((x+1) mod n_values): SUBS must
    carry the input over, so a caller that trusts these logits there gets caught.
    """

    def __init__(self, probs: torch.Tensor, n_values: int, length: int, *, context: bool = True,
                 power: float = 1.0, mask_logit: float = float("-inf"), time_conditioning: bool = False,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        self.n_values, self.length, self.mask_id, self.vocab_size = n_values, length, n_values, n_values + 1
        self.cfg = _AnalyticCfg(time_conditioning=time_conditioning)
        self.dummy = nn.Parameter(torch.zeros(()), requires_grad=False)  # so next(model.parameters()) works
        probs = probs.double()
        seqs = all_sequences(n_values, length)  # [K, L]
        patterns = all_sequences(n_values + 1, length)  # [P, L]; digit n_values is [MASK]
        masked = patterns == self.mask_id
        agree = (masked[:, None, :] | (patterns[:, None, :] == seqs[None, :, :])).all(-1)  # [P, K]
        if not context:
            agree = torch.ones_like(agree)
        weights = agree.double() * probs  # [P, K]
        onehot = torch.nn.functional.one_hot(seqs, n_values).double()  # [K, L, V]
        marg = torch.einsum("pk,klv->plv", weights, onehot)
        marg = marg / marg.sum(-1, keepdim=True)
        logp = torch.log(marg) * power
        logp = logp - torch.logsumexp(logp, -1, keepdim=True)
        wrong = torch.nn.functional.one_hot((patterns + 1) % n_values, n_values).double() * 30.0
        logits = torch.where(masked[..., None], logp, wrong)
        logits = torch.cat([logits, torch.full(logits.shape[:-1] + (1,), mask_logit, dtype=torch.float64)], -1)
        self.register_buffer("table", logits.to(dtype), persistent=False)  # [P, L, V+1]

    def forward(self, ids: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        return self.table[seq_index(ids, self.n_values + 1)]  # advanced indexing: a fresh tensor


class PaddedExact(torch.nn.Module):
    """The exact posterior of a table as a block model: the recomputing view passes the clean
    prefix and the noisy block; positions after it are unknown, i.e. [MASK] for the table."""

    def __init__(self, exact: ExactDenoiser):
        super().__init__()
        self.exact, self.cfg = exact, type("Cfg", (), {"seq_len": exact.length, "time_conditioning": False})()

    def forward(self, ids, t=None, attn_mask=None, positions=None):
        pad = torch.full((len(ids), self.exact.length - ids.shape[1]), self.exact.mask_id)
        return self.exact(torch.cat([ids, pad], dim=1))[:, : ids.shape[1]]


# ---------------------------------------------------------------------------------------------
# exact laws


def marginal_masses(probs: torch.Tensor, seqs: torch.Tensor) -> torch.Tensor:
    """M[S, k] = p_data(x_S = seqs[k]_S) for every subset S of positions (bit l of S = position l)."""
    length = seqs.shape[1]
    out = torch.empty(2**length, len(seqs), dtype=torch.float64)
    for s in range(2**length):
        pos = [l for l in range(length) if s >> l & 1]
        agree = (seqs[:, None, pos] == seqs[None, :, pos]).all(-1).double()  # [K, K]
        out[s] = agree @ probs.double()
    return out


def _bits(positions: Sequence[int]) -> int:
    return sum(1 << l for l in positions)


def conditional_law(probs: torch.Tensor, seqs: torch.Tensor, fixed: Sequence[int]) -> torch.Tensor:
    """law[k] = p_data(x_gap = seqs[k]_gap | x_fixed = seqs[k]_fixed): for each context, a law over gaps."""
    return probs.double() / marginal_masses(probs, seqs)[_bits(fixed)]


def ordered_partitions(items: Sequence[int]) -> Iterator[list[tuple[int, ...]]]:
    """Every ordered set partition (sequence of non-empty disjoint blocks covering items)."""
    items = tuple(items)
    if not items:
        yield []
        return
    for size in range(1, len(items) + 1):
        for block in itertools.combinations(items, size):
            rest = [i for i in items if i not in block]
            for tail in ordered_partitions(rest):
                yield [block, *tail]


def reveal_probs(alpha, steps: int) -> torch.Tensor:
    """P(a masked token is revealed at step k), k < steps, for ancestral sampling on a uniform grid.

    With keep-probability alpha(t) and t_k = 1 - k/steps, a token still masked at t_k is revealed
    by t_{k+1} with probability (alpha_{k+1} - alpha_k)/(1 - alpha_k), so the reveal time has
    P(k) = (alpha_{k+1} - alpha_k)/(1 - alpha_0); the last step reveals everything (alpha_steps := 1).
    """
    ts = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    a = alpha(ts).double()
    a[-1] = 1.0
    return (a[1:] - a[:-1]) / (1 - a[0])


def _partition_prob(sizes: Sequence[int], q: torch.Tensor) -> float:
    """P(the blocks are revealed at strictly increasing steps, all of a block at one step)."""
    f = q ** sizes[0]
    for s in sizes[1:]:
        before = torch.cat([torch.zeros(1, dtype=f.dtype), torch.cumsum(f, 0)[:-1]])
        f = before * q**s
    return float(f.sum())


def sampler_law(probs: torch.Tensor, seqs: torch.Tensor, q: torch.Tensor, fixed: Sequence[int] = ()) -> torch.Tensor:
    """Exact output law of the factorised ancestral sampler with the exact denoiser.

    Each gap position's reveal step is i.i.d. with law q; positions revealed together are drawn
    independently from p_data(x_l | everything revealed before). law[k] = P(x_gap = seqs[k]_gap |
    x_fixed = seqs[k]_fixed). As q spreads over many steps it tends to `conditional_law`.
    """
    length = seqs.shape[1]
    m = marginal_masses(probs, seqs)
    gap = [l for l in range(length) if l not in set(fixed)]
    law = torch.zeros(len(seqs), dtype=torch.float64)
    for blocks in ordered_partitions(gap):
        weight = _partition_prob([len(b) for b in blocks], q)
        if weight == 0:
            continue
        known = _bits(fixed)
        term = torch.ones(len(seqs), dtype=torch.float64)
        for block in blocks:
            for l in block:
                term = term * m[known | 1 << l] / m[known]
            known |= _bits(block)
        law += weight * term
    return law


@pytest.fixture(scope="session")
def analytic() -> SimpleNamespace:
    """The exact references of this section: `analytic.ExactDenoiser(...)`, `analytic.tv(...)`, ..."""
    return SimpleNamespace(
        all_sequences=all_sequences, seq_index=seq_index, random_distribution=random_distribution, histogram=histogram,
        tv=tv, tv_bound=tv_bound, chi2_statistic=chi2_statistic, chi2_quantile=chi2_quantile,
        ExactDenoiser=ExactDenoiser, PaddedExact=PaddedExact, marginal_masses=marginal_masses,
        conditional_law=conditional_law, ordered_partitions=ordered_partitions, reveal_probs=reveal_probs,
        sampler_law=sampler_law,
    )


# =====================================================================================================================
# fixture `tiny_exact`
#
# The tiny exact setup that the MDLM, D3PM and SEDD exact tests share.
#
# p_data is a fixed random (Dirichlet(1), seed 2) distribution over all 3**length sequences of a short
# length over N_VALUES = 3 tokens; [MASK] is token 3. `tiny_data(length)` gives the tables the tests
# compare against; `assert_matches` checks samples against an exact law with rigorous thresholds:
# `tv_bound` (failure probability 1e-6) and Pearson chi^2 at its 1 - 3e-7 quantile.
# =====================================================================================================================


N_VALUES = 3
MASK = N_VALUES
VOCAB = N_VALUES + 1
Z = 4.5  # standard errors allowed for a Monte Carlo mean


class TinyData(NamedTuple):
    seqs: torch.Tensor  # [3**length, length], every sequence (row k has index k)
    p_data: torch.Tensor  # p_data of each sequence
    masses: torch.Tensor  # marginal_masses(p_data, seqs)
    product: torch.Tensor  # the product of p_data's marginals at each position (independent tokens)
    entropy: float  # H(p_data) in nats


def tiny_data(length: int) -> TinyData:
    seqs = all_sequences(N_VALUES, length)
    p_data = random_distribution(N_VALUES, length, seed=2, concentration=1.0)
    masses = marginal_masses(p_data, seqs)
    product = torch.stack([masses[1 << l] for l in range(length)]).prod(0)
    return TinyData(seqs, p_data, masses, product, float(-(p_data * p_data.log()).sum()))


def masked_start(n: int, length: int, fixed: dict[int, int] | None = None) -> torch.Tensor:
    """n all-[MASK] rows of `length`, with the `fixed` tokens ({position: token}) in place."""
    x = torch.full((n, length), MASK, dtype=torch.long)
    for pos, tok in (fixed or {}).items():
        x[:, pos] = tok
    return x


def assert_valid(ids: torch.Tensor, length: int | None = None) -> None:
    if length is not None:
        assert ids.shape[1] == length
    assert bool(((ids >= 0) & (ids < N_VALUES)).all()), "a [MASK] (or out-of-range token) survived sampling"


def assert_matches(ids: torch.Tensor, law: torch.Tensor, what: str, n_values: int = N_VALUES) -> float:
    """The histogram of ids is a plausible n-sample histogram of `law` (TV bound and chi^2 test)."""
    emp = histogram(ids, n_values)
    dist, bound = tv(emp, law), tv_bound(law, len(ids))
    assert dist < bound, f"{what}: TV(samples, law) = {dist:.4f} >= bound {bound:.4f}"
    stat, dof = chi2_statistic(emp * len(ids), law)
    assert stat < chi2_quantile(dof), f"{what}: chi^2 = {stat:.1f} on {dof} dof (limit {chi2_quantile(dof):.1f})"
    return dist


@pytest.fixture(scope="session")
def tiny_exact() -> SimpleNamespace:
    """The tiny setup of this section: `tiny_exact.N_VALUES`, `tiny_exact.tiny_data(4)`, `tiny_exact.assert_matches`."""
    return SimpleNamespace(N_VALUES=N_VALUES, MASK=MASK, VOCAB=VOCAB, Z=Z, TinyData=TinyData, tiny_data=tiny_data,
                           masked_start=masked_start, assert_valid=assert_valid, assert_matches=assert_matches)


