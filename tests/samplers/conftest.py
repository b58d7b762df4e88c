"""What the sampler tests share: the exact output laws of remasking samplers (`remask_exact`) and the tiny
ReMDM setup (`remdm_tiny`) of test_remdm.py and test_remdm_conf.py."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from types import SimpleNamespace

import pytest
import torch

from textdiffusion.processes.masked import MaskedDiffusion
from textdiffusion.samplers.remdm import ReMDMConfig, remdm_plan, remdm_sample

# Exact output laws of remasking samplers on the tiny problems of `analytic` (tests/conftest.py).
#
# `analytic.sampler_law` covers samplers that only ever reveal tokens. Once decoded tokens can be sent
# back to [MASK] (ReMDM), the order of events no longer fits a reveal-time picture, so here the whole
# distribution over sampler states is propagated step by step instead:
#
# * `remask_chain_law(model, start, steps)` -- samplers whose step acts on each position independently
#   given z_t: a masked generated position is revealed with probability p, its value drawn from the
#   denoiser's posterior at z_t; a decoded generated position is remasked with probability sigma; fixed
#   positions stay. That is ReMDM-cap / -rescale / -loop (and MDLM when sigma = 0). The state is z itself,
#   one of the (n_values+1)**length sequences over tokens and [MASK], and each step is a dense transition
#   matrix T[z, z'] = prod_l K_l(z'_l | z).
# * `conf_chain_law(model, start, steps)` -- ReMDM-conf: a decoded token's remasking probability depends
#   on the confidence stored when it was decoded, so the state is z plus those confidences, and the
#   reachable states are enumerated exactly (a dict from state to probability).
#
# Both return law[k] = P(output = all_sequences(n_values, length)[k]), float64, and check that no
# probability is left on states that still hold a [MASK]. `assert_matches` is the two-sided sample check
# (TV bound and chi^2) for any n_values.


@pytest.fixture(scope="session")
def remask_exact(analytic, tiny_exact) -> SimpleNamespace:
    """Exact output laws of remasking samplers (see the notes above): `remask_exact.remask_chain_law(model, start,
    steps)`, `remask_exact.conf_chain_law(model, start, steps)` and `remask_exact.assert_matches(ids, law, n_values,
    what)`; `model` is an `analytic.ExactDenoiser`."""
    all_sequences, seq_index, ExactDenoiser = analytic.all_sequences, analytic.seq_index, analytic.ExactDenoiser

    def _posterior(model: ExactDenoiser) -> torch.Tensor:
        """post[P, L, V]: the denoiser's posterior over real tokens for every input pattern, float64."""
        return torch.softmax(model.table[..., : model.n_values].double(), dim=-1)

    def _data_law(dist: torch.Tensor, model: ExactDenoiser) -> torch.Tensor:
        """Law over clean sequences from a law over patterns; fails if mass is left on masked patterns."""
        patterns = all_sequences(model.n_values + 1, model.length)
        clean = (patterns != model.mask_id).all(-1)
        leftover = float(dist[~clean].sum())
        assert leftover < 1e-12, f"{leftover:.2e} of the probability still holds a [MASK] after the last step"
        law = torch.zeros(model.n_values**model.length, dtype=torch.float64)
        law[seq_index(patterns[clean], model.n_values)] = dist[clean]
        return law

    def remask_chain_law(model: ExactDenoiser, start: torch.Tensor,
                         steps: Sequence[tuple[float, float]]) -> torch.Tensor:
        """Exact output law from `start` ([L]; [MASK] where generated) of steps given as (p_reveal, sigma)."""
        n, length, mask = model.n_values, model.length, model.mask_id
        patterns = all_sequences(n + 1, length)  # [P, L]
        post = _posterior(model)  # [P, L, V]
        generated = start == mask
        is_masked = (patterns == mask)[..., None]  # [P, L, 1]
        same = torch.nn.functional.one_hot(patterns, n + 1).double()  # stay where you are
        to_mask = torch.nn.functional.one_hot(torch.full_like(patterns, mask), n + 1).double()
        reveal = torch.cat([post, torch.zeros_like(post[..., :1])], -1)  # a value from the posterior
        dist = torch.zeros(len(patterns), dtype=torch.float64)
        dist[int(seq_index(start, n + 1))] = 1.0
        for p, sigma in steps:
            kernel = torch.where(is_masked, p * reveal + (1 - p) * to_mask, (1 - sigma) * same + sigma * to_mask)
            kernel = torch.where(generated[None, :, None], kernel, same)  # [P, L, V+1]: K_l(symbol | z)
            trans = torch.ones(len(patterns), len(patterns), dtype=torch.float64)
            for l in range(length):
                trans *= kernel[:, l, patterns[:, l]]  # T[z, z'] *= K_l(z'_l | z)
            dist = dist @ trans
        return _data_law(dist, model)

    def conf_chain_law(model: ExactDenoiser, start: torch.Tensor, steps: Sequence[tuple[float, float]]) -> torch.Tensor:
        """Exact output law of ReMDM-conf from `start`; steps as (p_reveal, sigma).

        A masked position is revealed with probability p (MDLM's: conf gives masked tokens sigma = 0) and
        stores psi = the posterior probability of its value; a decoded generated position l is remasked
        with probability sigma * exp(-psi_l) / sum over the row's decoded generated tokens of exp(-psi).
        """
        n, length, mask = model.n_values, model.length, model.mask_id
        post = _posterior(model).tolist()
        generated = (start == mask).tolist()
        states: dict[tuple, float] = {(tuple(start.tolist()), (None,) * length): 1.0}
        powers = [(n + 1) ** (length - 1 - l) for l in range(length)]
        for p, sigma in steps:
            new: dict[tuple, float] = {}
            for (z, psi), mass in states.items():
                row = post[sum(v * w for v, w in zip(z, powers))]
                weights = [math.exp(-psi[l]) if generated[l] and z[l] != mask else 0.0 for l in range(length)]
                total = sum(weights)
                options = []  # per position: (symbol, psi, probability)
                for l in range(length):
                    if not generated[l]:
                        options.append([(z[l], None, 1.0)])
                    elif z[l] == mask:
                        options.append(
                            [(mask, None, 1 - p)] + [(v, row[l][v], p * row[l][v]) for v in range(n) if row[l][v] > 0]
                        )
                    else:
                        s = sigma * weights[l] / total
                        options.append([(z[l], psi[l], 1 - s), (mask, None, s)])
                for combo in itertools.product(*options):
                    prob = mass
                    for _, _, q in combo:
                        prob *= q
                    if prob > 0:
                        key = (tuple(c[0] for c in combo), tuple(c[1] for c in combo))
                        new[key] = new.get(key, 0.0) + prob
            states = new
        dist = torch.zeros((n + 1) ** length, dtype=torch.float64)
        for (z, _), mass in states.items():
            dist[sum(v * w for v, w in zip(z, powers))] += mass
        return _data_law(dist, model)

    def assert_matches(ids: torch.Tensor, law: torch.Tensor, n_values: int, what: str) -> float:
        """`tiny_exact.assert_matches` for any vocabulary size (TV bound and chi^2 test)."""
        return tiny_exact.assert_matches(ids, law, what, n_values)

    return SimpleNamespace(remask_chain_law=remask_chain_law, conf_chain_law=conf_chain_law,
                           assert_matches=assert_matches)


# The tiny ReMDM setup shared by test_remdm.py and test_remdm_conf.py: the known distribution, its
# exact posterior, and helpers to sample and to compute the sampler's exact law (`remask_exact`).


@pytest.fixture(scope="session")
def remdm_tiny(analytic, remask_exact) -> SimpleNamespace:
    """The tiny ReMDM setup: N_VALUES, LENGTH, MASK, SEQS, P_DATA, the smaller problem of ReMDM-conf's exact law
    (SMALL_VALUES, SMALL_LENGTH, SMALL_P), Z, and process / start / sample / sigma_max / chain_steps / law /
    wrong_unmask_prob / assert_valid."""
    all_sequences, random_distribution = analytic.all_sequences, analytic.random_distribution
    remask_chain_law = remask_exact.remask_chain_law

    N_VALUES, LENGTH = 3, 4
    MASK = N_VALUES
    SEQS = all_sequences(N_VALUES, LENGTH)
    P_DATA = random_distribution(N_VALUES, LENGTH, seed=2, concentration=1.0)
    # ReMDM-conf's exact law tracks every decoded token's confidence: feasible on 2**3 sequences
    SMALL_VALUES, SMALL_LENGTH = 2, 3
    SMALL_P = random_distribution(SMALL_VALUES, SMALL_LENGTH, seed=2, concentration=1.0)  # min p = 0.029
    Z = 4.5  # standard errors allowed for a Monte Carlo mean

    def _process(schedule: str = "loglinear", mask_id: int = MASK) -> MaskedDiffusion:
        return MaskedDiffusion(vocab_size=mask_id + 1, mask_id=mask_id, schedule=schedule)

    def _start(n: int, fixed: dict[int, int] | None = None, length: int = LENGTH, mask_id: int = MASK) -> torch.Tensor:
        x = torch.full((n, length), mask_id, dtype=torch.long)
        for pos, tok in (fixed or {}).items():
            x[:, pos] = tok
        return x

    def _sample(
        model,
        n: int,
        cfg: ReMDMConfig,
        seed: int,
        *,
        schedule: str = "loglinear",
        fixed=None,
        on_step=None,
        length: int = LENGTH,
        mask_id: int = MASK,
    ):
        gen = torch.Generator().manual_seed(seed)
        return remdm_sample(
            model, _process(schedule, mask_id), _start(n, fixed, length, mask_id), cfg, gen, on_step=on_step
        )

    def _sigma_max(alpha_t: float, alpha_s: float) -> float:
        if alpha_s == 1:
            return 0.0
        return 1.0 if alpha_t == 0 else min(1.0, (1 - alpha_s) / alpha_t)

    def _chain_steps(cfg: ReMDMConfig, schedule: str = "loglinear") -> list[tuple[float, float]]:
        """(reveal probability, sigma) of every step, the reveal probability from the paper's formula."""
        steps = []
        for st in remdm_plan(_process(schedule), cfg):
            if cfg.schedule == "conf":  # masked tokens have sigma^(l) = 0: MDLM's reveal probability
                p = 1.0 if st.alpha_t >= 1 else (st.alpha_s - st.alpha_t) / (1 - st.alpha_t)
            else:
                p = 1.0 if st.alpha_t >= 1 else (st.alpha_s - (1 - st.sigma) * st.alpha_t) / (1 - st.alpha_t)
            steps.append((min(max(p, 0.0), 1.0), st.sigma))
        return steps

    def _law(model, cfg: ReMDMConfig, fixed: dict[int, int] | None = None, schedule: str = "loglinear") -> torch.Tensor:
        """Exact law over full sequences; with fixed tokens, p(gap | fixed) on the consistent sequences."""
        return remask_chain_law(model, _start(1, fixed)[0], _chain_steps(cfg, schedule))

    def _wrong_unmask_prob(alpha_t: float, alpha_s: float, sigma: torch.Tensor) -> torch.Tensor:
        """MDLM's reveal probability while remasking with sigma: the marginal drifts towards [MASK]."""
        return torch.full_like(sigma, 1.0 if alpha_t >= 1 else (alpha_s - alpha_t) / (1 - alpha_t))

    def _assert_valid(ids: torch.Tensor, n_values: int = N_VALUES) -> None:
        assert bool(((ids >= 0) & (ids < n_values)).all()), "a [MASK] (or out-of-range token) survived sampling"

    return SimpleNamespace(N_VALUES=N_VALUES, LENGTH=LENGTH, MASK=MASK, SEQS=SEQS, P_DATA=P_DATA,
                           SMALL_VALUES=SMALL_VALUES, SMALL_LENGTH=SMALL_LENGTH, SMALL_P=SMALL_P, Z=Z,
                           process=_process, start=_start, sample=_sample, sigma_max=_sigma_max,
                           chain_steps=_chain_steps, law=_law, wrong_unmask_prob=_wrong_unmask_prob,
                           assert_valid=_assert_valid)
