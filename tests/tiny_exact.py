"""The tiny exact setup that the MDLM, D3PM and SEDD exact tests share.

p_data is a fixed random (Dirichlet(1), seed 2) distribution over all 3**length sequences of a short
length over N_VALUES = 3 tokens; [MASK] is token 3. `tiny_data(length)` gives the tables the tests
compare against; `assert_matches` checks samples against an exact law with rigorous thresholds:
`tv_bound` (failure probability 1e-6) and Pearson chi^2 at its 1 - 3e-7 quantile.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from analytic import (
    all_sequences,
    chi2_quantile,
    chi2_statistic,
    histogram,
    marginal_masses,
    random_distribution,
    tv,
    tv_bound,
)

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
