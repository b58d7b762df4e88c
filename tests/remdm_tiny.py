"""The tiny ReMDM setup shared by test_remdm.py and test_remdm_conf.py: the known distribution, its
exact posterior, and helpers to sample and to compute the sampler's exact law (`remask_exact`)."""

from __future__ import annotations

import torch
from analytic import all_sequences, random_distribution
from remask_exact import remask_chain_law

from textdiffusion.processes.masked import MaskedDiffusion
from textdiffusion.samplers.remdm import ReMDMConfig, remdm_plan, remdm_sample

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


