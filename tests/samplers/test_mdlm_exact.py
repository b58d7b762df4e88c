"""MDLM checked against exact answers: an analytic denoiser on a tiny, known data distribution.

p_data is a fixed random (Dirichlet(1), seed 2) correlated distribution over all 3**4 = 81
sequences of length 4 over 3 tokens; [MASK] is token 3. `analytic.ExactDenoiser` returns the true
posterior p_data(x0_l | unmasked tokens), so:

(a) ancestral sampling must reproduce p_data (up to the factorised sampler's same-step reveals,
    whose effect `analytic.sampler_law` computes exactly), and must *not* for a wrong posterior;
(b) the continuous-time NELBO must equal -log p_data(x0) within Monte Carlo error (for a perfect
    denoiser the bound is tight), and exceed it for a wrong posterior;
(c) infilling must sample p_data(gap | fixed tokens) and never touch the fixed tokens.

Thresholds are rigorous rather than tuned: `tv_bound` (Jensen + McDiarmid, failure probability
1e-6) for total variation, Pearson chi^2 at its 1 - 3e-7 quantile, and 4.5 standard errors for
means. Every random draw uses a seeded torch.Generator, so the file is deterministic.
"""

from __future__ import annotations

import math

import pytest
import torch

from textdiffusion.processes.likelihood import nelbo
from textdiffusion.processes.masked import MaskedDiffusion
from textdiffusion.processes.schedules import get_schedule
from textdiffusion.samplers.mdlm import AncestralConfig, ancestral_sample

LENGTH = 4
MANY_STEPS = 256  # P(two of 4 tokens revealed in one step) = 2.3%; residual TV(law, p_data) = 0.002


@pytest.fixture(scope="module")
def data(tiny_exact):
    """seqs [81, 4]; min p_data = 5.4e-4; product: the product of the 4 marginals."""
    return tiny_exact.tiny_data(LENGTH)


@pytest.fixture(scope="module")
def exact(analytic, tiny_exact, data) -> torch.nn.Module:
    return analytic.ExactDenoiser(data.p_data, tiny_exact.N_VALUES, LENGTH)


@pytest.fixture(scope="module")
def make_process(tiny_exact):
    """make_process(schedule="loglinear", t_min=1e-3): MDLM on the tiny vocabulary."""

    def build(schedule: str = "loglinear", t_min: float = 1e-3) -> MaskedDiffusion:
        return MaskedDiffusion(vocab_size=tiny_exact.VOCAB, mask_id=tiny_exact.MASK, schedule=schedule, t_min=t_min)

    return build


@pytest.fixture(scope="module")
def draw(tiny_exact, make_process):
    """draw(model, n, steps, seed, ...): n ancestral samples of LENGTH tokens, `fixed` ones in place."""

    def sample(
        model,
        n: int,
        steps: int,
        seed: int,
        *,
        schedule: str = "loglinear",
        fixed=None,
        cache: bool = True,
        temperature: float = 1.0,
        on_step=None,
    ):
        cfg = AncestralConfig(steps=steps, temperature=temperature, cache=cache)
        gen = torch.Generator().manual_seed(seed)
        start = tiny_exact.masked_start(n, LENGTH, fixed)
        return ancestral_sample(model, make_process(schedule), start, cfg, gen, on_step=on_step)

    return sample


@pytest.fixture(scope="module")
def exact_law(analytic, data):
    """exact_law(steps, schedule="loglinear", fixed=()): the exact output law of the factorised sampler."""

    def law(steps: int, schedule: str = "loglinear", fixed=()) -> torch.Tensor:
        return analytic.sampler_law(data.p_data, data.seqs, analytic.reveal_probs(get_schedule(schedule).alpha, steps),
                                    fixed)

    return law


# ---------------------------------------------------------------------------------------------
# the references themselves


def test_exact_denoiser_is_the_true_posterior(exact, tiny_exact, data):
    """Brute force: for random inputs, softmax(logits) at masked positions = p_data(x_l | unmasked)."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, tiny_exact.VOCAB, (64, LENGTH), generator=gen)
    ids[0] = tiny_exact.MASK
    logits = exact(ids, None)
    assert logits.shape == (64, LENGTH, tiny_exact.VOCAB) and logits.dtype == torch.float32
    assert exact.cfg.time_conditioning is False and next(exact.parameters()) is not None
    assert bool(torch.isneginf(logits[..., tiny_exact.MASK]).all())
    for b in range(len(ids)):
        visible = ids[b] != tiny_exact.MASK
        agree = (data.seqs[:, visible] == ids[b, visible]).all(1)
        w = data.p_data * agree
        for l in range(LENGTH):
            if visible[l]:
                continue
            want = torch.stack([w[data.seqs[:, l] == v].sum() for v in range(tiny_exact.N_VALUES)]) / w.sum()
            got = torch.softmax(logits[b, l].double(), -1)[:tiny_exact.N_VALUES]
            torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    # with everything masked, the posterior at position l is p_data's marginal at l
    marginals = torch.stack(
        [torch.stack([data.p_data[data.seqs[:, l] == v].sum() for v in range(tiny_exact.N_VALUES)])
         for l in range(LENGTH)]
    )
    torch.testing.assert_close(torch.softmax(logits[0].double(), -1)[:, :tiny_exact.N_VALUES], marginals,
                               atol=1e-6, rtol=1e-5)


def test_sampler_law_reference(analytic, data, exact_law):
    """One step = independent marginals; many steps -> p_data; laws are normalised per context."""
    torch.testing.assert_close(exact_law(1), data.product)
    for schedule in ("loglinear", "cosine"):
        for steps in (1, 3, 16, MANY_STEPS):
            q = analytic.reveal_probs(get_schedule(schedule).alpha, steps)
            assert abs(float(q.sum()) - 1) < 1e-12 and bool((q >= 0).all())
            assert abs(float(exact_law(steps, schedule).sum()) - 1) < 1e-9
    # loglinear on a uniform grid: each token's reveal step is uniform over the steps
    torch.testing.assert_close(
        analytic.reveal_probs(get_schedule("loglinear").alpha, 10), torch.full((10,), 0.1, dtype=torch.float64)
    )
    assert analytic.tv(exact_law(MANY_STEPS), data.p_data) < 0.003
    assert analytic.tv(exact_law(1), data.p_data) > 0.3  # the correlation the factorised one-step sampler destroys
    cond = analytic.conditional_law(data.p_data, data.seqs, (0, 3))
    ctx = (data.seqs[:, 0] == 2) & (data.seqs[:, 3] == 1)
    assert abs(float(cond[ctx].sum()) - 1) < 1e-12


def test_seq_index_round_trip(analytic, tiny_exact, data):
    assert torch.equal(analytic.seq_index(data.seqs, tiny_exact.N_VALUES), torch.arange(len(data.seqs)))


# ---------------------------------------------------------------------------------------------
# (a) the sampler reproduces p_data


@pytest.fixture(scope="module")
def many_step_samples(exact, draw):
    return draw(exact, 40_000, MANY_STEPS, seed=1, cache=True)


def test_sampler_reproduces_data_distribution(many_step_samples, analytic, tiny_exact, data, exact_law):
    """40k samples, 256 steps: TV(samples, p_data) within the n-sample bound plus the exact residual."""
    ids = many_step_samples.ids
    tiny_exact.assert_valid(ids, LENGTH)
    law = exact_law(MANY_STEPS)
    residual = analytic.tv(law, data.p_data)  # same-step reveals: 0.0020
    tiny_exact.assert_matches(ids, law, "exact denoiser, 256 steps")
    dist = analytic.tv(analytic.histogram(ids, tiny_exact.N_VALUES), data.p_data)
    limit = analytic.tv_bound(law, len(ids)) + residual
    assert dist < limit, f"TV(samples, p_data) = {dist:.4f} >= {limit:.4f}"
    # the test has power: a sampler drawing the product of marginals would sit at TV >= 0.33 - bound
    assert analytic.tv(data.product, data.p_data) > 2 * limit


def test_cache_does_not_change_samples(exact, many_step_samples, draw):
    """Same seed, cache on or off: the denoiser ignores t, so every draw and every sample is identical."""
    uncached = draw(exact, 40_000, MANY_STEPS, seed=1, cache=False)
    assert torch.equal(uncached.ids, many_step_samples.ids)
    assert many_step_samples.nfe <= uncached.nfe <= MANY_STEPS


@pytest.mark.parametrize("wrong", ["context-free", "sharpened"])
def test_sampler_with_wrong_posterior_fails_the_check(wrong, analytic, tiny_exact, data, draw, exact_law):
    """The same check rejects a denoiser that ignores the context, or whose posterior is p**1.5."""
    model = (
        analytic.ExactDenoiser(data.p_data, tiny_exact.N_VALUES, LENGTH, context=False)
        if wrong == "context-free"
        else analytic.ExactDenoiser(data.p_data, tiny_exact.N_VALUES, LENGTH, power=1.5)
    )
    n = 20_000
    ids = draw(model, n, MANY_STEPS, seed=2).ids
    tiny_exact.assert_valid(ids, LENGTH)
    law = exact_law(MANY_STEPS)
    limit = analytic.tv_bound(law, n) + analytic.tv(law, data.p_data)  # what the correct sampler must stay under
    dist = analytic.tv(analytic.histogram(ids, tiny_exact.N_VALUES), data.p_data)
    assert dist > 2 * limit, f"{wrong}: TV(samples, p_data) = {dist:.4f} not clearly above {limit:.4f}"
    if wrong == "context-free":  # and it samples exactly what it should: independent marginals
        tiny_exact.assert_matches(ids, data.product, "context-free denoiser")


def test_one_step_reveals_independent_marginals(exact, analytic, tiny_exact, data, draw):
    """steps=1 reveals all tokens at once from their marginals: the product law, far from p_data."""
    ids = draw(exact, 40_000, 1, seed=3).ids
    tiny_exact.assert_valid(ids, LENGTH)
    tiny_exact.assert_matches(ids, data.product, "one step")
    assert analytic.tv(analytic.histogram(ids, tiny_exact.N_VALUES), data.p_data) > 0.25  # exact value 0.328


@pytest.mark.parametrize(
    "schedule,steps,fixed",
    [
        ("loglinear", 4, {}),
        ("cosine", 4, {}),
        ("cosine", 12, {}),
        ("linear", 8, {}),
        ("loglinear", 2, {0: 2, 3: 1}),
    ],
    ids=["loglinear-4", "cosine-4", "cosine-12", "linear-8", "loglinear-2-infill"],
)
def test_few_steps_follow_the_exact_sampler_law(exact, schedule, steps, fixed, tiny_exact, data, draw, exact_law):
    """Few steps: samples follow the exact law of the factorised sampler under this schedule, and the
    masked fraction after each step is (1 - alpha(t_k)) / (1 - alpha(1)). Guards the unmask probability."""
    n = 40_000
    gap = [l for l in range(LENGTH) if l not in fixed]
    masked_after: list[tuple[float, int]] = []
    res = draw(
        exact,
        n,
        steps,
        seed=4,
        schedule=schedule,
        fixed=fixed,
        on_step=lambda f: masked_after.append((f.t, int((f.ids == tiny_exact.MASK).sum()))),
    )
    ids = res.ids
    tiny_exact.assert_valid(ids, LENGTH)
    law = exact_law(steps, schedule, tuple(fixed))
    if fixed:
        assert bool((ids[:, list(fixed)] == torch.tensor(list(fixed.values()))).all())
        ctx = (data.seqs[:, list(fixed)] == torch.tensor(list(fixed.values()))).all(1)
        law = law * ctx
    tiny_exact.assert_matches(ids, law, f"{schedule}, {steps} steps")
    alpha = get_schedule(schedule).alpha
    a1 = float(alpha(torch.tensor(1.0, dtype=torch.float64)))
    tokens = n * len(gap)
    for t, count in masked_after:
        p = 0.0 if t == 0 else (1 - float(alpha(torch.tensor(t, dtype=torch.float64)))) / (1 - a1)
        se = math.sqrt(max(p * (1 - p), 1e-12) / tokens)
        assert abs(count / tokens - p) < tiny_exact.Z * se + 1e-12, \
            f"t={t:.3f}: masked {count / tokens:.4f}, want {p:.4f}"


def test_cache_reuse_and_nfe(exact, analytic, tiny_exact, data, draw):
    """Batch of one: the cache calls the denoiser once per distinct x_t (<= L times), never stale."""
    for seed in range(20):
        reveals: list[int] = []
        prev = [tiny_exact.masked_start(1, LENGTH)]

        def record(frame, reveals=reveals, prev=prev):
            if not torch.equal(frame.ids, prev[0]):
                reveals.append(frame.step)
            prev[0] = frame.ids

        cached = draw(exact, 1, 200, seed, cache=True, on_step=record)
        uncached = draw(exact, 1, 200, seed, cache=False)
        timed_model = analytic.ExactDenoiser(data.p_data, tiny_exact.N_VALUES, LENGTH, time_conditioning=True)
        timed = draw(timed_model, 1, 200, seed, cache=True)
        assert torch.equal(cached.ids, uncached.ids) and torch.equal(cached.ids, timed.ids)
        assert cached.nfe == len(reveals) <= LENGTH
        assert uncached.nfe == timed.nfe == reveals[-1]  # one call per step up to the last reveal


def test_sampler_and_nelbo_ignore_mask_logit_and_carry_unmasked_tokens(exact, analytic, tiny_exact, data, draw,
                                                                        make_process):
    """SUBS is the caller's job: a huge [MASK] logit, or logits pointing away from an unmasked token,
    change nothing (the exact denoiser's logits at unmasked positions favour a different token)."""
    loud = analytic.ExactDenoiser(data.p_data, tiny_exact.N_VALUES, LENGTH, mask_logit=50.0)
    a, b = draw(exact, 2000, 32, seed=5), draw(loud, 2000, 32, seed=5)
    assert torch.equal(a.ids, b.ids)
    tiny_exact.assert_valid(b.ids, LENGTH)
    proc = make_process()
    x0 = data.seqs.repeat(8, 1)
    noise = proc.sample_noise(x0, torch.Generator().manual_seed(0))
    torch.testing.assert_close(proc.nelbo_per_sequence(loud, x0, noise), proc.nelbo_per_sequence(exact, x0, noise))
    logp = proc.log_probs(loud, tiny_exact.masked_start(1, LENGTH, {1: 0, 2: 2}), torch.ones(1))
    assert float(logp[0, 1, 0]) == 0.0 and float(logp[0, 2, 2]) == 0.0
    assert bool(torch.isneginf(logp[..., tiny_exact.MASK]).all())


# ---------------------------------------------------------------------------------------------
# (b) the NELBO of a perfect denoiser is the true negative log-likelihood


def _nelbo_mc(model, proc: MaskedDiffusion, x0: torch.Tensor, batches: int, batch: int, seed: int):
    """Mean and standard error of the NELBO of one sequence x0 ([L]).

    Noise is drawn by `batches` calls of sample_noise on `batch` copies of x0, as a trainer would.
    t is stratified across a batch, so single rows are not i.i.d. (and each row alone is biased);
    batch means are i.i.d. and unbiased, so the standard error is taken across them."""
    # loglinear's 1/t weight makes single rows heavy-tailed (variance ~ log(1/t_min)): use many rows
    gen = torch.Generator().manual_seed(seed)
    xs = x0.repeat(batch, 1)
    draws = [proc.sample_noise(xs, gen) for _ in range(batches)]
    noise = {key: torch.cat([d[key] for d in draws]) for key in draws[0]}
    values = proc.nelbo_per_sequence(model, x0.repeat(batch * batches, 1), noise).double()
    means = values.view(batches, batch).mean(1)
    return float(means.mean()), float(means.std() / math.sqrt(batches))


@pytest.mark.parametrize(
    "schedule,batches,batch",
    [
        ("loglinear", 100, 4096),
        ("cosine", 100, 4096),
        ("linear", 100, 4096),
        ("loglinear", 20_000, 3),
        ("cosine", 20_000, 3),
    ],
    ids=["loglinear", "cosine", "linear", "loglinear-batch3", "cosine-batch3"],
)
def test_nelbo_equals_nll_for_the_exact_denoiser(exact, schedule, batches, batch, tiny_exact, data, make_process):
    """For the true posterior the continuous-time bound is tight: E[NELBO(x0)] = -log p_data(x0).

    With the reconstruction term at t_min the expected estimate is -log p_data(x0) + E[log q(x0 | x_{t_min})
    - log p_theta(x0 | x_{t_min})], and the two conditionals differ only when two or more tokens are masked
    at t_min: probability <= 6 (1 - alpha(t_min))^2, at most 1e-7 here (linear: 1 - alpha(1e-6) = 1.2e-4),
    far below the error bar (exact values: test_nelbo_bound.py). The batch-of-3 cases check that the
    stratified s of sample_noise is unbiased for every batch size, not just large ones."""
    proc = make_process(schedule, t_min=1e-6)
    order = data.p_data.argsort()
    for k in (int(order[-1]), int(order[40]), int(order[0])):  # most likely, median, rarest (p = 5e-4)
        nll = float(-data.p_data[k].log())
        mean, se = _nelbo_mc(exact, proc, data.seqs[k], batches=batches, batch=batch, seed=k)
        assert se < 0.2
        where = f"{schedule} x0={data.seqs[k].tolist()}"
        assert abs(mean - nll) < tiny_exact.Z * se, f"{where}: NELBO {mean:.4f} +- {se:.4f} vs NLL {nll:.4f}"


@pytest.mark.parametrize("schedule", ["loglinear", "cosine"])
def test_nelbo_is_strictly_larger_for_a_wrong_denoiser(exact, schedule, analytic, tiny_exact, data, make_process):
    """Averaged over x0 ~ p_data: the exact denoiser gives the entropy H; the context-free one gives
    exactly H + KL(p_data || product of marginals) (its masked terms are -log marginal_l(x0_l), each
    weighted by int -alpha' dt = 1), which is larger by far more than the Monte Carlo error."""
    proc = make_process(schedule, t_min=1e-6)
    wrong = analytic.ExactDenoiser(data.p_data, tiny_exact.N_VALUES, LENGTH, context=False)
    results = {}
    for name, model in (("exact", exact), ("context-free", wrong)):
        stats = torch.tensor(
            [_nelbo_mc(model, proc, data.seqs[k], batches=10, batch=1024, seed=100 + k) for k in range(len(data.seqs))],
            dtype=torch.float64,
        )
        mean = float((data.p_data * stats[:, 0]).sum())
        se = float(torch.sqrt((data.p_data**2 * stats[:, 1] ** 2).sum()))
        results[name] = (mean, se)
    cross = float(-(data.p_data * data.product.log()).sum())  # H + KL = 4.36 vs H = 4.02
    (m_exact, se_exact), (m_wrong, se_wrong) = results["exact"], results["context-free"]
    assert abs(m_exact - data.entropy) < tiny_exact.Z * se_exact, \
        f"exact: {m_exact:.4f} +- {se_exact:.4f} vs H {data.entropy:.4f}"
    assert abs(m_wrong - cross) < tiny_exact.Z * se_wrong + 1e-6, f"context-free: {m_wrong:.4f} vs {cross:.4f}"
    assert m_wrong - data.entropy > tiny_exact.Z * math.hypot(se_exact, se_wrong)  # 0.34 nats vs about 0.05


def test_likelihood_eval_reports_nll_per_token(exact, tiny_exact, data, make_process):
    """eval.likelihood.nelbo over every sequence (one per batch): mean NELBO/token = mean NLL / L."""
    bs = 256
    chunks = data.seqs.repeat_interleave(bs, dim=0)  # each batch holds one sequence, so stratification is per x0
    res = nelbo(exact, make_process(t_min=1e-6), chunks, t_samples=3, batch_size=bs, seed=0)
    target = float(-data.p_data.log().mean()) / LENGTH
    assert res.n_tokens == chunks.numel() and res.t_samples == 3
    assert 0 < res.stderr < 0.01
    assert abs(res.nats_per_token - target) < tiny_exact.Z * res.stderr, (
        f"{res.nats_per_token:.4f} +- {res.stderr:.4f} vs {target:.4f}"
    )


# ---------------------------------------------------------------------------------------------
# (c) infilling samples the true conditional of the gap


@pytest.mark.parametrize("fixed", [{0: 2, 3: 1}, {0: 2, 1: 2}, {3: 0}], ids=["middle", "prefix", "suffix"])
def test_infilling_samples_the_true_conditional(exact, fixed, analytic, tiny_exact, data, draw, exact_law):
    n = 20_000
    pos, toks = list(fixed), torch.tensor(list(fixed.values()))
    ids = draw(exact, n, MANY_STEPS, seed=6, fixed=fixed).ids
    tiny_exact.assert_valid(ids, LENGTH)
    assert bool((ids[:, pos] == toks).all()), "a fixed token changed"
    ctx = (data.seqs[:, pos] == toks).all(1)  # the sequences consistent with the fixed tokens
    cond = analytic.conditional_law(data.p_data, data.seqs, tuple(pos)) * ctx  # p_data(gap | fixed), all sequences
    law = exact_law(MANY_STEPS, fixed=tuple(pos)) * ctx
    tiny_exact.assert_matches(ids, law, f"infill {fixed}")
    dist = analytic.tv(analytic.histogram(ids, tiny_exact.N_VALUES), cond)
    limit = analytic.tv_bound(law, n) + analytic.tv(law, cond)
    assert dist < limit, f"TV(gap samples, p(gap | fixed)) = {dist:.4f} >= {limit:.4f}"
    # power: ignoring the context (drawing the gap from its unconditional law) would be caught
    gap_bits = sum(1 << l for l in range(LENGTH) if l not in fixed)
    assert analytic.tv(data.masses[gap_bits] * ctx, cond) > 2 * limit
