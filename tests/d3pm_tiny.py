"""D3PM's tiny exact setup, shared by the test_d3pm_* files.

p_data is `tiny_exact`'s distribution over the 3**4 = 81 sequences of length 4 (the one the MDLM tests
use). `ExactSetup` pairs a process (T = 50 steps) with `d3pm_exact.ExactD3PMDenoiser`, the true posterior
p_data(x0_l | x_t) for that forward process, and computes, by brute force over all 4**4 states, the exact
output law of the factorised reverse chain that the sampler runs and the exact NELBO of every sequence.
"""

from __future__ import annotations

import torch
from d3pm_exact import ExactD3PMDenoiser, exact_nelbo, reverse_law, start_law
from tiny_exact import MASK, N_VALUES, VOCAB, tiny_data

from textdiffusion.processes.d3pm import D3PM

LENGTH = 4
T = 50
SEQS, P_DATA, _, _, ENTROPY = tiny_data(LENGTH)
# tokens 0-1 and 1-2 are close, 0-2 far: with knn=1 the graph is the chain 0 - 1 - 2
TINY_EMBEDDING = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [0.0, 0.0]])
TRANSITIONS = ("absorbing", "uniform", "embedding")


def tiny_process(transition: str, num_steps: int = T, cls=D3PM, **kw) -> D3PM:
    return cls(VOCAB, MASK, transition=transition, num_steps=num_steps, knn=1, embedding=TINY_EMBEDDING, **kw)


class ExactSetup:
    def __init__(self, transition: str):
        self.process = tiny_process(transition)
        self.model = ExactD3PMDenoiser(P_DATA, N_VALUES, LENGTH, self.process)
        self.start = start_law(self.process, N_VALUES, LENGTH)
        self._bound: torch.Tensor | None = None

    @property
    def bound(self) -> torch.Tensor:
        """The exact NELBO of every data sequence."""
        if self._bound is None:
            self._bound = exact_nelbo(self.process, self.model, SEQS, N_VALUES)
        return self._bound

    def law(self, steps: int | None = None, eq4: bool = False) -> torch.Tensor:
        times = self.process.sampling_times(steps)
        return reverse_law(self.process, self.model, N_VALUES, LENGTH, times, self.start, eq4=eq4)


_SETUPS: dict[str, ExactSetup] = {}


def exact_setup(transition: str) -> ExactSetup:
    """One `ExactSetup` per transition, built on first use and shared by every test."""
    if transition not in _SETUPS:
        _SETUPS[transition] = ExactSetup(transition)
    return _SETUPS[transition]
