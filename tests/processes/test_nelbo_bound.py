"""The likelihood bounds of MDLM, BD3-LM and D3PM are bounds: exact expectations by enumeration (issue 12).

Toy: p_data over the 3**3 = 27 sequences of length 3 over 3 tokens (`tiny_exact`), [MASK] = 3. For every
sequence, the expected value of nelbo_per_sequence over all of sample_noise's randomness is computed exactly
(`masked_exact.bound_terms`: every mask pattern, and s integrated by Gauss-Legendre quadrature that is exact
for these time-independent models; D3PM: `d3pm_exact.exact_nelbo`, every t and x_t), and compared with the
exact NLL of the model it bounds, -log p_theta(x0), p_theta being the law of the model's own reverse chain
(`masked_exact.model_law`, `d3pm_exact.reverse_law`). For every model, exact or arbitrary:

* E[estimate](x0) >= -log p_theta(x0) for every x0, and so sum_x0 exp(-E[estimate](x0)) <= 1;
* averaged over p_data, E[estimate] >= H(p_data).

For the exact denoiser the bound is also within a derived distance of -log p_data(x0). Note that it need
not be above -log p_data(x0) for every x0: p_theta ends with a factorised denoising step at t_min, so
p_theta(x0) can exceed p_data(x0) (with the linear schedule at t_min = 0.05, by 0.68 nats); only the bound
on -log p_theta is a theorem. Tolerances: the quadrature is exact up to float64 rounding, which
`quadrature_check` measures (n against n + 4 nodes), plus 64 ulps of the largest value for the rounding of
the sums themselves; nothing is tuned.

Before the fix MDLM drew t ~ U[t_min, 1] with no term for [0, t_min]: for the exact denoiser (loglinear,
t_min = 1e-3) 17 of the 27 sequences got an expected estimate below their NLL, by up to 1.8e-3 nats;
`test_the_old_masked_estimate_was_not_a_bound` keeps that computation.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from textdiffusion.processes.block import BlockDiffusion
from textdiffusion.processes.likelihood import nelbo
from textdiffusion.processes.masked import MaskedDiffusion

LENGTH = 3
EPS = torch.finfo(torch.float64).eps


@pytest.fixture(scope="module")
def data(tiny_exact):
    """seqs, p_data, masses, product, entropy of the 27 sequences of length 3."""
    return tiny_exact.tiny_data(LENGTH)


@pytest.fixture(scope="module")
def nll_data(data) -> torch.Tensor:
    return -data.p_data.log()


@pytest.fixture(scope="module")
def model_of(analytic, masked_exact, tiny_exact, data):
    """model_of("exact"): the true posterior of p_data; model_of("random"): a random table of logits."""

    def build(kind: str):
        if kind == "exact":
            return analytic.ExactDenoiser(data.p_data, tiny_exact.N_VALUES, LENGTH, dtype=torch.float64)
        return masked_exact.TableDenoiser.random(tiny_exact.N_VALUES, LENGTH, seed=3)

    return build


def _keep(proc: MaskedDiffusion, t: float) -> float:
    return max(float(proc.schedule.alpha(torch.tensor(t, dtype=torch.float64))), 0.0)


def _blocks(block_size: int) -> list[list[int]]:
    return [list(range(lo, min(lo + block_size, LENGTH))) for lo in range(0, LENGTH, block_size)]


def _check_bound(bound: torch.Tensor, law: torch.Tensor, tol: float, data) -> float:
    """The assertions every valid bound must pass; returns the smallest margin over -log p_theta."""
    assert abs(float(law.sum()) - 1) < 64 * EPS, f"p_theta sums to {float(law.sum())}"
    margin = bound + law.log()
    assert float(margin.min()) >= -tol, f"bound below -log p_theta by {-float(margin.min()):.3e} (tol {tol:.1e})"
    total = float(torch.exp(-bound).sum())
    assert total <= 1 + tol, f"sum_x0 exp(-bound) = {total:.12f} > 1"
    assert float((data.p_data * bound).sum()) >= data.entropy - tol
    return float(margin.min())


def _max_joint_ratio(keep: float, data) -> tuple[float, float]:
    """(P(>= 2 of the L tokens masked at t_min), max |log q(x0_M | x0_rest) - sum_{l in M} log p(x0_l | x0_rest)|
    over |M| >= 2): for the exact denoiser, |E[estimate] + log p_data(x0)| <= their product, because
    E[estimate] = -log p_data(x0) + E_{x_{t_min}} [log q(x0 | x_{t_min}) - log p_theta(x0 | x_{t_min})] and the
    two conditionals agree when at most one token is masked."""
    p2 = 1 - keep**LENGTH - LENGTH * keep ** (LENGTH - 1) * (1 - keep)
    full = (1 << LENGTH) - 1
    worst = 0.0
    for size in range(2, LENGTH + 1):
        for masked in itertools.combinations(range(LENGTH), size):
            rest = full & ~sum(1 << l for l in masked)
            joint = (data.p_data / data.masses[rest]).log()
            factorised = sum((data.masses[rest | 1 << l] / data.masses[rest]).log() for l in masked)
            worst = max(worst, float((joint - factorised).abs().max()))
    return p2, worst


# ---------------------------------------------------------------------------------------------
# MDLM


@pytest.mark.parametrize("kind", ["exact", "random"])
@pytest.mark.parametrize("t_min", [1e-3, 0.05])
@pytest.mark.parametrize("schedule", ["loglinear", "cosine", "linear"])
def test_masked_bound_is_above_the_model_nll(schedule, t_min, kind, masked_exact, tiny_exact, data, model_of, nll_data):
    proc = MaskedDiffusion(tiny_exact.VOCAB, tiny_exact.MASK, schedule=schedule, t_min=t_min)
    model = model_of(kind)
    terms = masked_exact.bound_terms(proc, model, data.seqs)
    bound = terms["reconstruction"] + terms["diffusion"] + terms["prior"]
    tol = masked_exact.quadrature_check(proc, model, data.seqs) + 64 * EPS * float(bound.abs().max())
    law = masked_exact.model_law(model, tiny_exact.N_VALUES, LENGTH, _keep(proc, t_min), _keep(proc, 1.0))
    _check_bound(bound, law, tol, data)
    assert bool((terms["reconstruction"] > 0).all())  # the term the fix added is there, for every x0
    if kind == "exact" and schedule != "linear":  # alpha(1) = 0: the prior is exact
        p2, worst = _max_joint_ratio(_keep(proc, t_min), data)
        gap = float((bound - nll_data).abs().max())
        assert gap <= p2 * worst + tol, f"|bound - NLL| = {gap:.2e} > {p2 * worst:.2e}"


def test_the_old_masked_estimate_was_not_a_bound(masked_exact, tiny_exact, data, model_of, nll_data):
    """The estimate before the fix (t ~ U[t_min, 1], no reconstruction term) averaged to the diffusion
    integral over [t_min, 1] divided by 1 - t_min. For the exact denoiser it is below -log p_theta(x0) for
    17 of the 27 sequences (loglinear, t_min = 1e-3); with the linear schedule it even gives
    sum_x0 exp(-estimate) > 1, which no bound can. The fixed estimate passes both."""
    model = model_of("exact")
    proc = MaskedDiffusion(tiny_exact.VOCAB, tiny_exact.MASK, schedule="loglinear", t_min=1e-3)
    terms = masked_exact.bound_terms(proc, model, data.seqs)
    law = masked_exact.model_law(model, tiny_exact.N_VALUES, LENGTH, _keep(proc, 1e-3))
    old = masked_exact.old_expectation(terms, proc.t_min)
    tol = masked_exact.quadrature_check(proc, model, data.seqs) + 64 * EPS * float(old.abs().max())
    below = (old + law.log()) < -tol  # the smallest of the 17 violations is 6.3e-5 nats, far above tol
    assert int(below.sum()) == 17 and float(-(old + law.log()).min()) > 1.5e-3
    assert float((old - nll_data).min()) < -1.5e-3  # and below -log p_data
    new = terms["reconstruction"] + terms["diffusion"] + terms["prior"]
    assert float((new + law.log()).min()) > tol  # 2.3e-8
    proc = MaskedDiffusion(tiny_exact.VOCAB, tiny_exact.MASK, schedule="linear", t_min=1e-3)
    terms = masked_exact.bound_terms(proc, model, data.seqs)
    assert float(torch.exp(-masked_exact.old_expectation(terms, proc.t_min)).sum()) > 1.05
    assert float(torch.exp(-(terms["reconstruction"] + terms["diffusion"] + terms["prior"])).sum()) < 1


def _mc_mean(proc, model, x0: torch.Tensor, batches: int, batch: int, seed: int) -> tuple[float, float]:
    """Mean and standard error of nelbo_per_sequence over sample_noise draws (batch means are i.i.d.)."""
    gen = torch.Generator().manual_seed(seed)
    xs = x0.repeat(batch, 1)
    with torch.no_grad():
        means = torch.stack([proc.nelbo_per_sequence(model, xs, proc.sample_noise(xs, gen)).double().mean()
                             for _ in range(batches)])
    return float(means.mean()), float(means.std() / math.sqrt(batches))


@pytest.mark.parametrize("kind", ["exact", "random"])
def test_masked_estimate_is_unbiased_for_the_exact_expectation(kind, masked_exact, tiny_exact, data, model_of):
    """nelbo_per_sequence over sample_noise's own draws (s ~ U[0, 1], the mask uniforms) averages to the
    enumerated expectation: the reconstruction branch is drawn and weighted as the exact value assumes.
    Linear schedule with t_min = 0.05, where that term is large (alpha(t_min) = e^-1); also through
    eval.likelihood.nelbo."""
    proc = MaskedDiffusion(tiny_exact.VOCAB, tiny_exact.MASK, schedule="linear", t_min=0.05)
    model = model_of(kind)
    terms = masked_exact.bound_terms(proc, model, data.seqs)
    exact = terms["reconstruction"] + terms["diffusion"] + terms["prior"]
    assert float(terms["reconstruction"].min()) > 0.5
    order = data.p_data.argsort()
    for k in (int(order[-1]), int(order[0])):
        mean, se = _mc_mean(proc, model, data.seqs[k], batches=100, batch=64, seed=k)
        assert abs(mean - float(exact[k])) < tiny_exact.Z * se, \
            f"x0={data.seqs[k].tolist()}: {mean:.4f} +- {se:.4f} vs {exact[k]:.4f}"
        without = float(exact[k] - terms["reconstruction"][k])  # the test has power: the term matters
        assert abs(mean - without) > 3 * tiny_exact.Z * se
    res = nelbo(model, proc, data.seqs.repeat(100, 1), t_samples=4, batch_size=675, seed=0)
    assert abs(res.nats_per_token - float(exact.mean()) / LENGTH) < tiny_exact.Z * res.stderr


# ---------------------------------------------------------------------------------------------
# BD3-LM


@pytest.mark.parametrize("kind", ["exact", "random"])
@pytest.mark.parametrize("schedule", ["loglinear", "linear"])
@pytest.mark.parametrize("block_size", [1, 2, 3])
def test_block_bound_is_above_the_model_nll(block_size, schedule, kind, masked_exact, tiny_exact, data, model_of):
    """The same checks per block; p_theta is the product over blocks of the block's reverse chain given
    the clean blocks before it. Block size 1 with loglinear is the autoregressive NLL exactly."""
    proc = BlockDiffusion(tiny_exact.VOCAB, tiny_exact.MASK, block_size=block_size, schedule=schedule, t_min=1e-3)
    inner = model_of(kind)
    model = masked_exact.BlockTable(inner, block_size)
    terms = masked_exact.bound_terms(proc, model, data.seqs)
    bound = terms["reconstruction"] + terms["diffusion"] + terms["prior"]
    tol = masked_exact.quadrature_check(proc, model, data.seqs) + 64 * EPS * float(bound.abs().max())
    law = masked_exact.model_law(inner, tiny_exact.N_VALUES, LENGTH, _keep(proc, 1e-3), _keep(proc, 1.0),
                                 _blocks(block_size))
    margin = _check_bound(bound, law, tol, data)
    if block_size == 1 and schedule == "loglinear":
        assert abs(margin) <= tol and float((bound + law.log()).abs().max()) <= tol
    if kind == "exact" and schedule == "loglinear" and block_size == 2:  # the old estimate was below here too
        old = masked_exact.old_expectation(terms, proc.t_min)
        assert int(((old + law.log()) < -1e-4).sum()) > 0


def test_block_estimate_is_unbiased_for_the_exact_expectation(masked_exact, tiny_exact, data, model_of):
    proc = BlockDiffusion(tiny_exact.VOCAB, tiny_exact.MASK, block_size=2, schedule="linear", t_min=0.05)
    model = masked_exact.BlockTable(model_of("random"), 2)
    exact = masked_exact.bound_terms(proc, model, data.seqs)
    total = exact["reconstruction"] + exact["diffusion"] + exact["prior"]
    order = data.p_data.argsort()
    for k in (int(order[-1]), int(order[0])):
        mean, se = _mc_mean(proc, model, data.seqs[k], batches=100, batch=64, seed=10 + k)
        assert abs(mean - float(total[k])) < tiny_exact.Z * se, \
            f"x0={data.seqs[k].tolist()}: {mean:.4f} +- {se:.4f} vs {total[k]:.4f}"
        assert abs(mean - float(total[k] - exact["reconstruction"][k])) > 3 * tiny_exact.Z * se
    # unclipped: trains the bound
    assert torch.equal(proc.train_noise(data.seqs, torch.Generator().manual_seed(0))["t"],
                       proc.sample_noise(data.seqs, torch.Generator().manual_seed(0))["t"])


# ---------------------------------------------------------------------------------------------
# D3PM

D3PM_SCHEDULES = ["auto", "cosine", "linear"]


@pytest.mark.parametrize("schedule", [*D3PM_SCHEDULES, "mutual_info"])
@pytest.mark.parametrize("transition", ["absorbing", "uniform", "embedding"])
def test_d3pm_prior_term_is_zero(transition, schedule, d3pm_exact, d3pm_tiny, tiny_exact):
    """L_T = KL(q(x_T | x0) || p(x_T)) = 0: Qbar_T maps every real token to the prior the sampler starts
    from ([MASK] for absorbing, uniform over the real tokens otherwise), for T = 1, 6 and 50."""
    for steps in (1, 6, 50):
        proc = d3pm_tiny.tiny_process(transition, num_steps=steps, beta_schedule=schedule)
        prior = d3pm_exact.start_law(proc, tiny_exact.N_VALUES, 1)  # over the V states of one position
        rows = d3pm_exact.dense_products(proc)[-1][:tiny_exact.N_VALUES]
        assert float((rows - prior).abs().max()) < 16 * EPS, (transition, schedule, steps)


@pytest.mark.parametrize("kind", ["exact", "random"])
@pytest.mark.parametrize("schedule", D3PM_SCHEDULES)
@pytest.mark.parametrize("transition", ["absorbing", "uniform", "embedding"])
def test_d3pm_bound_is_above_the_model_nll(transition, schedule, kind, d3pm_exact, d3pm_tiny, tiny_exact, data):
    """sum_t E_{x_t}[L_{t-1}] (L_0 = -log p(x0 | x1) included, L_T = 0) against the exact law of the
    factorised reverse chain (T = 6 steps), for the true posterior and for arbitrary logits. Tolerance:
    T * L per-position terms, each a few dozen float64 operations on values up to S = max(|bound|, 10)
    (logits are within +-10 here), so 64 T L ulps of S."""
    steps = 6
    proc = d3pm_tiny.tiny_process(transition, num_steps=steps, beta_schedule=schedule)
    model = d3pm_exact.ExactD3PMDenoiser(data.p_data, tiny_exact.N_VALUES, LENGTH, proc, dtype=torch.float64)
    if kind == "random":
        model.randomize(seed=4)
    bound = d3pm_exact.exact_nelbo(proc, model, data.seqs, tiny_exact.N_VALUES)
    start = d3pm_exact.start_law(proc, tiny_exact.N_VALUES, LENGTH)
    law = d3pm_exact.reverse_law(proc, model, tiny_exact.N_VALUES, LENGTH, proc.sampling_times(), start)
    tol = 64 * steps * LENGTH * EPS * max(float(bound.abs().max()), 10.0)
    _check_bound(bound, law, tol, data)


@pytest.mark.parametrize("transition", ["absorbing", "uniform", "embedding"])
def test_d3pm_one_step_bound_is_the_exact_nll_of_the_true_posterior(transition, d3pm_exact, d3pm_tiny, tiny_exact,
                                                                     data):
    """T = 1: the bound is E[-log p(x0 | x1)] with x1 ~ q(x1 | x0) = the prior, independent of x0; the true
    posterior of each position is then its p_data marginal, so p_theta is the product of the marginals and
    the bound is exactly -log p_theta (L_0 is all there is, and it is counted once)."""
    proc = d3pm_tiny.tiny_process(transition, num_steps=1)
    model = d3pm_exact.ExactD3PMDenoiser(data.p_data, tiny_exact.N_VALUES, LENGTH, proc, dtype=torch.float64)
    bound = d3pm_exact.exact_nelbo(proc, model, data.seqs, tiny_exact.N_VALUES)
    nll = -data.product.log()
    torch.testing.assert_close(bound, nll, atol=64 * LENGTH * EPS * float(nll.max()), rtol=0)
