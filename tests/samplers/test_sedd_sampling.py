"""SEDD's samplers checked against exact answers on a tiny vocabulary, plus sampling the real Transformer.

`sedd_exact.chain_law` computes the exact output law of the factorised sampler that the exact score (see
`sedd_tiny`) drives: each sampler reproduces p_data (up to its exactly known tau-leaping residual), for
both graphs, and a deliberately wrong step formula fails the same check.

Thresholds are rigorous: `tv_bound` (failure probability 1e-6) and Pearson chi^2 at its 1 - 3e-7 quantile.
Every draw is seeded.
"""

from __future__ import annotations

import pytest
import torch

from textdiffusion.api.pipeline import Pipeline
from textdiffusion.core.errors import UserError
from textdiffusion.data.tokenizers import ByteTokenizer
from textdiffusion.processes.sedd import SEDD
from textdiffusion.samplers import SAMPLERS
from textdiffusion.samplers.sedd import SEDDAnalyticConfig, SEDDEulerConfig, sedd_analytic_sample, sedd_euler_sample

GRAPHS = ("absorb", "uniform")  # sedd_tiny.GRAPHS (tests/conftest.py)

N_SAMPLES = 20_000
MANY_STEPS = 64


@pytest.fixture(scope="module")
def draw(sedd_tiny, tiny_exact):
    """draw(model, proc, method, n, steps, seed, fixed=None, cache=True, on_step=None): n SEDD samples."""

    def sample(
        model, proc: SEDD, method: str, n: int, steps: int, seed: int, fixed=None, cache: bool = True, on_step=None
    ):
        euler = method == "euler"
        fn, cfg = (sedd_euler_sample, SEDDEulerConfig) if euler else (sedd_analytic_sample, SEDDAnalyticConfig)
        return fn(
            model,
            proc,
            tiny_exact.masked_start(n, sedd_tiny.LENGTH, fixed),
            cfg(steps=steps, cache=cache),
            torch.Generator().manual_seed(seed),
            on_step=on_step,
        )

    return sample


# ---------------------------------------------------------------------------------------------
# the samplers reproduce p_data


def test_reference_chain_law(analytic, sedd_exact, sedd_tiny, tiny_exact):
    """The dense chain law for absorb/loglinear is MDLM's exact ancestral law (reveal prob (t - s)/t)."""
    model = sedd_tiny.exact_score("absorb")
    for steps in (1, 4, 16):
        want = analytic.sampler_law(sedd_tiny.P_DATA, sedd_tiny.SEQS, analytic.reveal_probs(lambda t: 1 - t, steps))
        for method in ("euler", "analytic"):
            base = sedd_exact.base_law("absorb", tiny_exact.N_VALUES, sedd_tiny.LENGTH)
            law = sedd_exact.chain_law(model, steps, method, base)
            assert abs(float(law.sum()) - 1) < 1e-9
            torch.testing.assert_close(law, want, atol=1e-9, rtol=0)
    # one step draws independent marginals: far from p_data
    assert analytic.tv(sedd_tiny.PRODUCT, sedd_tiny.P_DATA) > 0.2


CASES = [
    ("absorb", "loglinear", "euler"),
    ("absorb", "loglinear", "analytic"),
    ("absorb", "geometric", "euler"),
    ("uniform", "loglinear", "euler"),
    ("uniform", "loglinear", "analytic"),
    ("uniform", "geometric", "analytic"),
]


@pytest.mark.parametrize("graph,noise,method", CASES, ids=["-".join(c) for c in CASES])
def test_samplers_reproduce_the_data_distribution(graph, noise, method, analytic, sedd_exact, sedd_tiny, tiny_exact,
                                                  draw):
    """64 steps with the exact score: samples follow the exact chain law (whose own distance to p_data is
    the tau-leaping residual, <= 0.014 here), and hence p_data itself; never a [MASK]."""
    model = sedd_tiny.exact_score(graph, noise)
    proc = sedd_tiny.tiny_process(graph, noise)
    base = sedd_exact.base_law(graph, tiny_exact.N_VALUES, sedd_tiny.LENGTH)
    law = sedd_exact.chain_law(model, MANY_STEPS, method, base)
    residual = analytic.tv(law, sedd_tiny.P_DATA)
    assert residual < 0.015
    res = draw(model, proc, method, N_SAMPLES, MANY_STEPS, seed=1)
    tiny_exact.assert_valid(res.ids)
    tiny_exact.assert_matches(res.ids, law, f"{graph}/{noise}/{method}")
    dist = analytic.tv(analytic.histogram(res.ids, tiny_exact.N_VALUES), sedd_tiny.P_DATA)
    limit = analytic.tv_bound(law, N_SAMPLES) + residual
    assert dist < limit, f"TV(samples, p_data) = {dist:.4f} >= {limit:.4f}"
    assert analytic.tv(sedd_tiny.PRODUCT, sedd_tiny.P_DATA) > 2 * limit  # power: independent marginals would be caught
    assert res.nfe <= MANY_STEPS


@pytest.mark.parametrize(
    "graph,noise,method,steps",
    [
        ("absorb", "geometric", "analytic", 4),
        ("uniform", "loglinear", "euler", 3),
        ("uniform", "geometric", "analytic", 5),
    ],
)
def test_few_steps_follow_the_exact_chain_law(graph, noise, method, steps, analytic, sedd_exact, sedd_tiny,
                                              tiny_exact, draw):
    """Few steps are biased, by exactly the amount the chain law says: guards the step probabilities."""
    model = sedd_tiny.exact_score(graph, noise)
    law = sedd_exact.chain_law(model, steps, method, sedd_exact.base_law(graph, tiny_exact.N_VALUES, sedd_tiny.LENGTH))
    frames = []
    res = draw(model, sedd_tiny.tiny_process(graph, noise), method, N_SAMPLES, steps, seed=2, on_step=frames.append)
    tiny_exact.assert_valid(res.ids)
    tiny_exact.assert_matches(res.ids, law, f"{graph}/{noise}/{method}/{steps}")
    assert analytic.tv(law, sedd_tiny.P_DATA) > 0.03
    assert len(frames) == steps + 1 and [f.step for f in frames] == list(range(steps + 1))
    assert frames[0].t == 1.0 and frames[-1].t == 0.0 and torch.equal(frames[-1].ids, res.ids)


class _Unshifted(SEDD):
    """Control (absorb): exp(g) taken as the score, i.e. the log(e^sigmabar - 1) shift forgotten."""

    def reverse_log_probs(self, g, xt, t, s, method="analytic"):
        if s is not None:
            g = g + self.noise.log_expm1_total(torch.tensor(min(t, 1 - 1e-9), dtype=torch.float64))
        return super().reverse_log_probs(g, xt, t, s, method)


class _NoTransition(SEDD):
    """Control (uniform): the analytic step without its factor e^{D Q}(x_t, y)."""

    def reverse_log_probs(self, g, xt, t, s, method="analytic"):
        d = self.noise.delta(torch.tensor(t, dtype=torch.float64), None if s is None else torch.tensor(s))
        sc = torch.exp(g.double() - g.double().max(-1, keepdim=True).values)
        a = (sc + torch.expm1(-d) / self.graph.n * sc.sum(-1, keepdim=True)).clamp_min(0.0)
        return torch.log(a / a.sum(-1, keepdim=True))


@pytest.mark.parametrize(
    "graph,method,cls",
    [("absorb", "euler", _Unshifted), ("absorb", "analytic", _Unshifted), ("uniform", "analytic", _NoTransition)],
    ids=["absorb-unshifted-euler", "absorb-unshifted-analytic", "uniform-no-transition"],
)
def test_a_wrong_step_formula_fails_the_check(graph, method, cls, analytic, sedd_exact, sedd_tiny, tiny_exact, draw):
    model = sedd_tiny.exact_score(graph)
    base = sedd_exact.base_law(graph, tiny_exact.N_VALUES, sedd_tiny.LENGTH)
    law = sedd_exact.chain_law(model, MANY_STEPS, method, base)
    # what the correct sampler stays under
    limit = analytic.tv_bound(law, N_SAMPLES) + analytic.tv(law, sedd_tiny.P_DATA)
    res = draw(model, sedd_tiny.tiny_process(graph, cls=cls), method, N_SAMPLES, MANY_STEPS, seed=3)
    dist = analytic.tv(analytic.histogram(res.ids, tiny_exact.N_VALUES), sedd_tiny.P_DATA)
    assert dist > 2 * limit, f"the wrong formula went unnoticed: TV {dist:.4f} vs limit {limit:.4f}"


@pytest.mark.parametrize("graph", GRAPHS)
@pytest.mark.parametrize("fixed", [{0: 2}, {0: 2, 2: 1}, {2: 0}], ids=["prefix", "both-ends", "suffix"])
def test_infilling_samples_the_true_conditional(graph, fixed, analytic, sedd_exact, sedd_tiny, tiny_exact, draw):
    """Fixed positions never change, and the gap follows p_data(gap | fixed) (exact score given the context)."""
    model = sedd_tiny.exact_score(graph, fixed=fixed)
    pos, toks = list(fixed), torch.tensor(list(fixed.values()))
    start = sedd_exact.base_law(graph, tiny_exact.N_VALUES, sedd_tiny.LENGTH, fixed)
    law = sedd_exact.chain_law(model, MANY_STEPS, "analytic", start)
    ctx = (sedd_tiny.SEQS[:, pos] == toks).all(1)
    cond = analytic.conditional_law(sedd_tiny.P_DATA, sedd_tiny.SEQS, tuple(pos)) * ctx
    n = 10_000
    res = draw(model, sedd_tiny.tiny_process(graph), "analytic", n, MANY_STEPS, seed=4, fixed=fixed)
    tiny_exact.assert_valid(res.ids)
    assert bool((res.ids[:, pos] == toks).all()), "a fixed token changed"
    tiny_exact.assert_matches(res.ids, law, f"infill {fixed}")
    dist = analytic.tv(analytic.histogram(res.ids, tiny_exact.N_VALUES), cond)
    limit = analytic.tv_bound(law, n) + analytic.tv(law, cond)
    assert dist < limit, f"TV(gap samples, p(gap | fixed)) = {dist:.4f} >= {limit:.4f}"
    gap_bits = sum(1 << l for l in range(sedd_tiny.LENGTH) if l not in fixed)
    assert analytic.tv(sedd_tiny.MASSES[gap_bits] * ctx, cond) > 2 * limit  # ignoring the context would be caught


def test_cache_reuses_outputs_only_for_unchanged_rows(sedd_tiny, draw):
    """Absorb with a denoiser that ignores t: cached and uncached runs draw the same samples, and the cached
    one calls the denoiser once per distinct x_t (at most L + 1 times for a single row)."""
    model = sedd_tiny.exact_score("absorb", time_conditioning=False)
    for method in ("euler", "analytic"):
        for seed in range(3):
            a = draw(model, sedd_tiny.tiny_process("absorb"), method, 1, 100, seed, cache=True)
            b = draw(model, sedd_tiny.tiny_process("absorb"), method, 1, 100, seed, cache=False)
            assert torch.equal(a.ids, b.ids)
            assert a.nfe <= sedd_tiny.LENGTH < b.nfe
        many = draw(model, sedd_tiny.tiny_process("absorb"), method, 2000, 32, seed=9, cache=True)
        again = draw(model, sedd_tiny.tiny_process("absorb"), method, 2000, 32, seed=9, cache=False)
        assert torch.equal(many.ids, again.ids)


# ---------------------------------------------------------------------------------------------
# the real Transformer and the byte tokenizer


@pytest.mark.parametrize("graph", GRAPHS)
@pytest.mark.parametrize("sampler", ["sedd", "sedd_analytic"])
def test_sampling_a_tiny_random_model(byte_tok: ByteTokenizer, graph, sampler, tiny_transformer):
    """Untrained byte model: valid ids, never [MASK], fixed tokens untouched, frames and nfe as promised."""
    proc = SEDD(byte_tok.vocab_size, byte_tok.mask_id, graph=graph)
    model = tiny_transformer(byte_tok, proc.needs_time_conditioning, seq_len=32).eval()
    cfg_cls, fn = SAMPLERS[sampler]
    x = torch.full((3, 24), byte_tok.mask_id)
    x[:, :4] = torch.tensor(byte_tok.encode("Once"))
    x[:, -2:] = torch.tensor(byte_tok.encode("."))[0]
    for steps in (1, 9, 40):
        seen = []
        res = fn(
            model,
            proc,
            x,
            cfg_cls(steps=steps),
            generator=torch.Generator().manual_seed(0),
            record_frames=True,
            on_step=seen.append,
        )
        assert res.ids.shape == x.shape and bool(((res.ids >= 0) & (res.ids < byte_tok.vocab_size)).all())
        assert not bool((res.ids == byte_tok.mask_id).any())
        fixed = x != byte_tok.mask_id
        assert all(bool(torch.equal(f.ids[fixed], x[fixed])) for f in res.frames)
        assert len(res.frames) == steps + 1 == len(seen) and 1 <= res.nfe <= steps
        if graph == "uniform":
            assert res.nfe == steps and not bool((res.frames[0].ids == byte_tok.mask_id).any())
    with pytest.raises(UserError):
        fn(model, proc, x, cfg_cls(steps=0))
    with pytest.raises(UserError, match="SEDD process"):
        from textdiffusion.processes import MaskedDiffusion

        fn(model, MaskedDiffusion(byte_tok.vocab_size, byte_tok.mask_id), x, cfg_cls(steps=2))


def test_pipeline_generates_and_scores_with_sedd(byte_tok: ByteTokenizer, tiny_transformer):
    proc = SEDD(byte_tok.vocab_size, byte_tok.mask_id, graph="uniform")
    pipe = Pipeline(tiny_transformer(byte_tok, True, seq_len=32).eval(), proc, byte_tok, {})
    out = pipe.generate(num_samples=2, length=16, prompt="Hi", seed=0, steps=6)
    assert len(out.texts) == 2 and out.texts[0].startswith("Hi") and out.nfe == 6
    again = pipe.generate(num_samples=2, length=16, prompt="Hi", seed=0, steps=6, sampler="sedd_analytic")
    assert not bool((again.ids == byte_tok.mask_id).any())
