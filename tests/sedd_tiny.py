"""SEDD's tiny exact setup, shared by the test_sedd_* files.

p_data is `tiny_exact`'s distribution over the 3**3 = 27 sequences of length 3 over 3 tokens; [MASK] is
token 3. `exact_score` gives `sedd_exact.ExactScoreModel`: the exact concrete score p_t(y at l) / p_t(x) of
that table (by enumeration and dense matrix exponentials), in the form SEDD's parameterisation expects.
"""

from __future__ import annotations

from sedd_exact import ExactScoreModel
from tiny_exact import MASK, N_VALUES, VOCAB, tiny_data

from textdiffusion.processes.sedd import SEDD

LENGTH = 3
SEQS, P_DATA, MASSES, PRODUCT, ENTROPY = tiny_data(LENGTH)  # PRODUCT: independent marginals
GRAPHS = ("absorb", "uniform")
EPS = {"absorb": 0.0, "uniform": 1e-3}  # the process's defaults


def tiny_process(graph: str, noise: str = "loglinear", cls=SEDD, **kw) -> SEDD:
    return cls(VOCAB, MASK, graph=graph, noise=noise, **kw)


def exact_score(graph: str, noise: str = "loglinear", fixed=(), time_conditioning: bool = True) -> ExactScoreModel:
    return ExactScoreModel(
        P_DATA, N_VALUES, LENGTH, graph, noise, eps=EPS[graph], fixed=tuple(fixed), time_conditioning=time_conditioning
    )
