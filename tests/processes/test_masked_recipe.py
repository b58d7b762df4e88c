"""MDLM training-recipe options (issue 17.2): loss_weighting, ce_lambda and the md4-cosine schedule, exactly.

Toy: sequences of length 3 over 3 tokens ([MASK] = 3) and a denoiser given by a random table of logits
(`masked_exact.TableDenoiser`), so every -log p_theta(x0_l | x_t) is known. The expected training loss over
s ~ U[0, 1] and the mask draw is computed from `loss()` (every mask pattern enumerated with its probability,
s by Gauss-Legendre quadrature plus the s < t_min branch) and compared with closed forms written here from
the table alone, with the paper's formulas for alpha and the weight:

    F(a)  = sum_M a^{L-|M|} (1-a)^{|M|} CE(x0, M),   CE = sum_{l in M} -log softmax(table[x0 with M masked])_l
    elbo  = F(alpha(t_min)) + int_{t_min}^1 -alpha'(t)/(1-alpha(t)) F(alpha(t)) dt        (MDLM eq. 10 + recons)
    flat  = t_min F(alpha(t_min)) + int_{t_min}^1 F(alpha(t)) dt                        (weight 1, same t law)
    loss  = (elbo or flat) + ce_lambda * flat                                            (D3PM's L_lambda)

and `nelbo_per_sequence` (the bound) must not move with any option.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from textdiffusion.core.errors import UserError
from textdiffusion.processes.base import DiffusionProcess, build_process
from textdiffusion.processes.block import BlockDiffusion
from textdiffusion.processes.masked import MaskedDiffusion
from textdiffusion.processes.schedules import get_schedule
from textdiffusion.train.config import load_config

N_VALUES = 3  # tiny_exact.N_VALUES (tests/conftest.py)
MASK = N_VALUES
VOCAB = N_VALUES + 1
LENGTH = 3
SEQS = torch.tensor(list(itertools.product(range(N_VALUES), repeat=LENGTH)))  # [27, 3], as analytic.all_sequences
PATTERNS = torch.tensor(list(itertools.product((0, 1), repeat=LENGTH))).bool()  # [8, 3]: True = masked
EPS = torch.finfo(torch.float64).eps
LAMBDA = 0.37

# alpha(t) and -alpha'(t)/(1 - alpha(t)) as the papers write them (MD4: Shi et al. 2024, arXiv 2406.04329)
REFERENCE = {
    "loglinear": (lambda t: 1 - t, lambda t: 1 / t),
    "md4-cosine": (lambda t: 1 - math.cos(math.pi / 2 * (1 - t)),
                   lambda t: math.pi / 2 * math.tan(math.pi / 2 * (1 - t))),
}


@pytest.fixture(scope="module")
def model(masked_exact) -> torch.nn.Module:
    return masked_exact.TableDenoiser.random(N_VALUES, LENGTH, seed=5)


def _ce(model: torch.nn.Module, seq_index) -> torch.Tensor:
    """CE(x0, M) from the table alone, [27, 8]: [MASK]'s logit is dropped by slicing, not by the code's -inf
    (seq_index: `analytic.seq_index`)."""
    ids = torch.where(PATTERNS[None], MASK, SEQS[:, None, :])  # [K, M, L]
    logp = torch.log_softmax(model.table[seq_index(ids, N_VALUES + 1)][..., :N_VALUES], -1)  # [K, M, L, N]
    nll = -logp.gather(-1, SEQS[:, None, :, None].expand(-1, len(PATTERNS), -1, 1))[..., 0]
    return (nll * PATTERNS[None]).sum(-1)


def _probs(a: float) -> torch.Tensor:
    masked = PATTERNS.sum(1).double()
    return a ** (LENGTH - masked) * (1 - a) ** masked


def _reference(model: torch.nn.Module, seq_index, schedule: str, t_min: float,
               nodes: int = 64) -> dict[str, torch.Tensor]:
    """The closed forms of the module notes, [27] each; the integrals by Gauss-Legendre on [t_min, 1]."""
    alpha, weight = REFERENCE[schedule]
    ce = _ce(model, seq_index)
    recon = ce @ _probs(alpha(t_min))
    xg, wg = np.polynomial.legendre.leggauss(nodes)
    flat, elbo = t_min * recon, recon.clone()
    for xi, wi in zip(xg, wg, strict=True):
        t = t_min + (1 - t_min) * (xi + 1) / 2
        f = ce @ _probs(alpha(t)) * wi * (1 - t_min) / 2
        flat, elbo = flat + f, elbo + weight(t) * f
    return {"elbo": elbo, "flat": flat}


def _expected_loss(proc: MaskedDiffusion, model, nodes: int) -> torch.Tensor:
    """E over s ~ U[0, 1] and the mask draw of proc.loss for each x0 alone, [27]: u_l = 1 masks position l,
    u_l = 0 keeps it; one point for s < t_min (every such s gives x_{t_min}), Gauss-Legendre above."""
    xg, wg = np.polynomial.legendre.leggauss(nodes)
    points = [(proc.t_min / 2, proc.t_min)]
    points += [(proc.t_min + (1 - proc.t_min) * (x + 1) / 2, w * (1 - proc.t_min) / 2) for x, w in zip(xg, wg)]
    out = torch.zeros(len(SEQS), dtype=torch.float64)
    for s, ds in points:
        probs = _probs(float(proc.schedule.alpha(torch.tensor(max(s, proc.t_min), dtype=torch.float64))))
        t = torch.tensor([s], dtype=torch.float64)
        for k, x0 in enumerate(SEQS):
            for m, pattern in enumerate(PATTERNS):
                noise = {"t": t, "u": pattern.double()[None]}
                with torch.no_grad():
                    out[k] += ds * probs[m] * proc.loss(model, x0[None], noise).total.double()
    return out


# ---------------------------------------------------------------------------------------------
# (a) the expected training loss is the closed form for each recipe


@pytest.mark.parametrize("schedule, nodes", [("loglinear", 4), ("md4-cosine", 24)])
def test_expected_training_loss_is_the_closed_form(model, schedule, nodes, analytic):
    """loglinear: the integrands are polynomials of degree <= 3 in t, which 4 nodes integrate exactly;
    md4-cosine: smooth on [t_min, 1], 24 nodes against the reference's 64."""
    t_min = 0.05  # large enough that the s < t_min branch (weight 1/t_min vs 1) matters
    ref = _reference(model, analytic.seq_index, schedule, t_min)
    assert float((ref["elbo"] - ref["flat"]).abs().min()) > 0.1  # the two weightings differ for every x0
    want = {("elbo", 0.0): ref["elbo"], ("flat", 0.0): ref["flat"],
            ("elbo", LAMBDA): ref["elbo"] + LAMBDA * ref["flat"], ("flat", LAMBDA): (1 + LAMBDA) * ref["flat"]}
    for (weighting, lam), expected in want.items():
        proc = MaskedDiffusion(VOCAB, MASK, schedule=schedule, t_min=t_min, loss_weighting=weighting, ce_lambda=lam)
        got = _expected_loss(proc, model, nodes)
        torch.testing.assert_close(got, expected, rtol=1e-11, atol=1e-11, msg=f"{weighting}, ce_lambda={lam}")


def test_elbo_reference_is_the_existing_bound(model, masked_exact, analytic):
    """The closed-form elbo above is the NELBO the existing enumeration (masked_exact.bound_terms) computes."""
    proc = MaskedDiffusion(VOCAB, MASK, schedule="loglinear", t_min=0.05)
    terms = masked_exact.bound_terms(proc, model, SEQS)
    torch.testing.assert_close(terms["reconstruction"] + terms["diffusion"] + terms["prior"],
                               _reference(model, analytic.seq_index, "loglinear", 0.05)["elbo"], rtol=1e-11, atol=1e-11)


# ---------------------------------------------------------------------------------------------
# (b) the default is the old loss, bit for bit; (c) the bound never moves


def _batch(masked_exact, seed: int = 0, length: int = 6, batch: int = 16):
    gen = torch.Generator().manual_seed(seed)
    table = masked_exact.TableDenoiser(torch.randn((N_VALUES + 1) ** length, length, VOCAB, generator=gen),
                                       N_VALUES)  # float32
    x0 = torch.randint(0, N_VALUES, (batch, length), generator=gen)
    loss_mask = torch.rand(batch, length, generator=gen) < 0.7
    return table, x0, loss_mask, gen


def _old_nelbo(proc: MaskedDiffusion, model, x0, noise, loss_mask) -> torch.Tensor:
    """nelbo_per_sequence as it was written before the recipe options (issue 12's form)."""
    from textdiffusion.processes.masked import masked_nll

    s = noise["t"]
    t = proc.noise_level(s)
    xt, masked = proc.corrupt(x0, t, noise["u"], loss_mask)
    nll = masked_nll(proc.denoiser(model)(xt, t), x0, masked, proc.mask_id)
    n_scored = x0.shape[1] if loss_mask is None else loss_mask.sum(1)
    return proc.bound_weight(s) * nll.sum(dim=1) + proc.prior_nats * n_scored


@pytest.mark.parametrize("schedule", ["loglinear", "cosine", "linear", "md4-cosine"])
def test_default_loss_is_bit_identical_to_the_old_loss(schedule, masked_exact):
    model, x0, loss_mask, gen = _batch(masked_exact)
    proc = MaskedDiffusion(VOCAB, MASK, schedule=schedule)
    for mask in (None, loss_mask):
        noise = proc.sample_noise(x0, gen)
        new = proc.loss(model, x0, noise, mask)
        old_per_seq = _old_nelbo(proc, model, x0, noise, mask)
        assert torch.equal(new.total, old_per_seq.sum())
        assert torch.equal(new.total, DiffusionProcess.loss(proc, model, x0, noise, mask).total)
        assert new.n_tokens == (x0.numel() if mask is None else int(mask.sum()))
        assert torch.equal(proc.nelbo_per_sequence(model, x0, noise, mask), old_per_seq)


def test_the_bound_is_the_same_for_every_recipe(masked_exact):
    model, x0, loss_mask, gen = _batch(masked_exact, seed=1)
    base = MaskedDiffusion(VOCAB, MASK)
    noise = base.sample_noise(x0, gen)
    want = base.nelbo_per_sequence(model, x0, noise, loss_mask)
    losses = set()
    for weighting in ("elbo", "flat"):
        for lam in (0.0, 0.01, 2.0):
            proc = MaskedDiffusion(VOCAB, MASK, loss_weighting=weighting, ce_lambda=lam)
            assert torch.equal(proc.nelbo_per_sequence(model, x0, noise, loss_mask), want)
            assert torch.equal(proc.sample_noise(x0, torch.Generator().manual_seed(3))["t"],
                               base.sample_noise(x0, torch.Generator().manual_seed(3))["t"])  # same t law
            losses.add(float(proc.loss(model, x0, noise, loss_mask).total))
    assert len(losses) == 6  # while the training loss does move with each option


def test_loss_trains_through_the_recipe(masked_exact):
    """The non-default path keeps the graph and counts the same tokens."""
    model, x0, loss_mask, gen = _batch(masked_exact, seed=2)
    model.table.requires_grad_(True)
    proc = MaskedDiffusion(VOCAB, MASK, loss_weighting="flat", ce_lambda=0.1)
    out = proc.loss(model, x0, proc.sample_noise(x0, gen), loss_mask)
    out.total.backward()
    assert out.n_tokens == int(loss_mask.sum()) and float(model.table.grad.abs().sum()) > 0


# ---------------------------------------------------------------------------------------------
# (d) md4-cosine


def test_md4_cosine_schedule():
    sched = get_schedule("md4-cosine")
    alpha, weight = REFERENCE["md4-cosine"]
    for dtype in (torch.float32, torch.float64):
        ends = torch.tensor([0.0, 1.0], dtype=dtype)
        assert sched.alpha(ends).tolist() == [1.0, 0.0]
        # alpha'(1) = 0 up to cos(fl(pi/2)) = 6e-17; float32's fl(pi/2) > pi/2 must not make it negative
        assert 0 <= -float(sched.alpha_prime(ends)[1]) < 1e-15 and 0 <= float(sched.nelbo_weight(ends)[1]) < 1e-15
        assert bool(torch.isfinite(sched.nelbo_weight(ends)).all() and (sched.nelbo_weight(ends) >= 0).all())
    t = torch.linspace(1e-3, 1 - 1e-3, 101, dtype=torch.float64, requires_grad=True)
    a = sched.alpha(t)
    (grad,) = torch.autograd.grad(a.sum(), t)
    t = t.detach()
    torch.testing.assert_close(sched.alpha_prime(t), grad, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(a.detach(), torch.tensor([alpha(float(x)) for x in t], dtype=torch.float64))
    torch.testing.assert_close(sched.nelbo_weight(t), torch.tensor([weight(float(x)) for x in t], dtype=torch.float64))
    torch.testing.assert_close(sched.nelbo_weight(t), -sched.alpha_prime(t) / (1 - sched.alpha(t)))
    assert bool((a.detach().diff() < 0).all())
    # near 0 the weight is ~1/t (as loglinear's), to relative O(t^2), and accurate in float32 too
    small = torch.tensor([1e-6, 1e-4, 1e-3])
    torch.testing.assert_close(sched.nelbo_weight(small) * small, torch.ones(3), rtol=2e-6, atol=0)
    # a different curve from MDLM's `cosine` (alpha = cos(pi t / 2))
    assert abs(float(sched.alpha(torch.tensor(0.5))) - float(get_schedule("cosine").alpha(torch.tensor(0.5)))) > 0.4


def _max_joint_gap(seqs, p_data, masses) -> float:
    """max over x0 and |M| >= 2 of |log q(x0_M | x0_rest) - sum_{l in M} log q(x0_l | x0_rest)|: for the exact
    denoiser E[bound] + log p_data(x0) is at most P(>= 2 masked at t_min) times this (tests/test_nelbo_bound.py)."""
    full, worst = (1 << LENGTH) - 1, 0.0
    for pattern in PATTERNS[PATTERNS.sum(1) >= 2]:
        masked = [l for l in range(LENGTH) if pattern[l]]
        rest = full & ~sum(1 << l for l in masked)
        joint = (p_data / masses[rest]).log()
        factorised = sum((masses[rest | 1 << l] / masses[rest]).log() for l in masked)
        worst = max(worst, float((joint - factorised).abs().max()))
    return worst


@pytest.mark.parametrize("kind", ["exact", "random"])
@pytest.mark.parametrize("t_min", [1e-3, 0.05])
def test_md4_cosine_bound_is_above_the_model_nll(kind, t_min, analytic, masked_exact, tiny_exact):
    """As tests/test_nelbo_bound.py for the other schedules: E[nelbo_per_sequence] >= -log p_theta(x0) for
    every x0 (p_theta: the model's own reverse chain, exactly), sum exp(-bound) <= 1, and tight for the
    exact denoiser up to the factorised last step."""
    seqs, p_data, masses, *_ = tiny_exact.tiny_data(LENGTH)
    model = analytic.ExactDenoiser(p_data, N_VALUES, LENGTH, dtype=torch.float64) if kind == "exact" else \
        masked_exact.TableDenoiser.random(N_VALUES, LENGTH, seed=3)
    proc = MaskedDiffusion(VOCAB, MASK, schedule="md4-cosine", t_min=t_min, loss_weighting="flat", ce_lambda=1.0)
    terms = masked_exact.bound_terms(proc, model, seqs)
    bound = terms["reconstruction"] + terms["diffusion"] + terms["prior"]
    assert float(terms["prior"].abs().max()) == 0  # alpha(1) = 0 exactly
    tol = masked_exact.quadrature_check(proc, model, seqs) + 64 * EPS * float(bound.abs().max())
    keep = float(proc.schedule.alpha(torch.tensor(t_min, dtype=torch.float64)))
    law = masked_exact.model_law(model, N_VALUES, LENGTH, keep, 0.0)
    assert abs(float(law.sum()) - 1) < 64 * EPS
    margin = bound + law.log()
    assert float(margin.min()) >= -tol, f"bound below -log p_theta by {-float(margin.min()):.3e}"
    assert float(torch.exp(-bound).sum()) <= 1 + tol
    if kind == "exact":  # tight: only the factorised step at t_min (>= 2 tokens masked there) separates them
        p2 = 1 - keep**LENGTH - LENGTH * keep ** (LENGTH - 1) * (1 - keep)
        gap = float((bound + p_data.log()).abs().max())
        assert gap <= p2 * _max_joint_gap(seqs, p_data, masses) + tol, f"|bound - NLL| = {gap:.2e}"


# ---------------------------------------------------------------------------------------------
# (e) bad input, config and wire-up


def test_bad_options_are_refused():
    with pytest.raises(UserError, match="choose one of elbo, flat"):
        MaskedDiffusion(VOCAB, MASK, loss_weighting="Flat")
    for bad in (-0.1, float("nan"), float("inf"), True, "abc", None):
        with pytest.raises(UserError, match="ce_lambda must be a finite number >= 0"):
            MaskedDiffusion(VOCAB, MASK, ce_lambda=bad)
    with pytest.raises(UserError, match="unknown schedule 'md4_cosine'"):
        MaskedDiffusion(VOCAB, MASK, schedule="md4_cosine")
    assert MaskedDiffusion(VOCAB, MASK, ce_lambda="1e-3").ce_lambda == 1e-3  # YAML 1.1 reads 1e-3 as a string
    assert MaskedDiffusion(VOCAB, MASK, ce_lambda=0).ce_lambda == 0.0


def test_config_records_only_non_default_options():
    assert MaskedDiffusion(VOCAB, MASK).config() == {"schedule": "loglinear", "t_min": 1e-3, "antithetic": True}
    assert MaskedDiffusion(VOCAB, MASK, loss_weighting="elbo", ce_lambda=0.0).config() == \
        MaskedDiffusion(VOCAB, MASK).config()
    assert set(BlockDiffusion(VOCAB, MASK).config()) == {"schedule", "t_min", "antithetic", "block_size",
                                                        "mask_rate_min", "mask_rate_max"}
    proc = MaskedDiffusion(VOCAB, MASK, schedule="md4-cosine", loss_weighting="flat", ce_lambda=0.01)
    saved = proc.config()
    assert saved["loss_weighting"] == "flat" and saved["ce_lambda"] == 0.01
    again = build_process("masked", vocab_size=VOCAB, mask_id=MASK, **saved)
    assert (again.schedule_name, again.loss_weighting, again.ce_lambda) == ("md4-cosine", "flat", 0.01)
    assert again.config() == saved


def test_cli_overrides_reach_the_process():
    cfg = load_config("tiny", ["process.loss_weighting=flat", "process.ce_lambda=0.01", "process.schedule=md4-cosine"])
    assert cfg.process.schedule == "md4-cosine"
    proc = build_process(cfg.process.name, vocab_size=VOCAB, mask_id=MASK, **cfg.process.options())
    assert (proc.loss_weighting, proc.ce_lambda, proc.schedule_name) == ("flat", 0.01, "md4-cosine")
    assert load_config("tiny", ["process.ce_lambda=1e-3"]).process.extra == {"ce_lambda": "1e-3"}
    # masked-spindle has its own estimate and does not take the options: refused up front, by name
    with pytest.raises(UserError, match="process 'masked-spindle' has no option loss_weighting"):
        load_config("tiny", ["process.name=masked-spindle", "process.loss_weighting=flat"])


def test_block_process_is_unchanged(analytic, masked_exact, tiny_exact):
    """BD3-LM subclasses MaskedDiffusion: its loss is still its own nelbo_per_sequence summed."""
    gen = torch.Generator().manual_seed(0)
    seqs, p_data, *_ = tiny_exact.tiny_data(LENGTH)
    model = masked_exact.BlockTable(analytic.ExactDenoiser(p_data, N_VALUES, LENGTH, dtype=torch.float64), block_size=1)
    proc = BlockDiffusion(VOCAB, MASK, block_size=1)
    noise = proc.sample_noise(seqs, gen)
    assert torch.equal(proc.loss(model, seqs, noise).total, proc.nelbo_per_sequence(model, seqs, noise).sum())
    assert (proc.loss_weighting, proc.ce_lambda) == ("elbo", 0.0)
