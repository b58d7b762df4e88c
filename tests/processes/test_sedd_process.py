"""SEDD's forward process and score entropy loss, checked against their definitions, plus plumbing with
the real Transformer.

The noise schedules and `corrupt` against the paper's definitions and dense matrix exponentials; the
denoising score entropy is zero at the true ratio and positive elsewhere, term by term and summed (see
`sedd_tiny` for the exact score model). Thresholds are rigorous: 4.5 standard errors for Monte Carlo
frequencies. Every draw is seeded.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from textdiffusion.core.errors import UserError
from textdiffusion.data.tokenizers import ByteTokenizer
from textdiffusion.processes import build_process
from textdiffusion.processes.sedd import SEDD, GeometricNoise, LogLinearNoise
from textdiffusion.samplers import SAMPLERS

GRAPHS = ("absorb", "uniform")  # sedd_tiny.GRAPHS (tests/conftest.py)


def _dense_rate(graph: str, v: int, mask: int) -> torch.Tensor:
    """R[a, b] = rate a -> b for a vocabulary of v symbols with [MASK] at `mask` (anywhere)."""
    real = [i for i in range(v) if i != mask]
    r = torch.zeros(v, v, dtype=torch.float64)
    for a in real:
        if graph == "absorb":
            r[a, mask] = 1.0
        else:
            r[a, real] = 1.0 / len(real)
    return r - torch.diag(r.sum(1))


# ---------------------------------------------------------------------------------------------
# noise schedules and the forward process


@pytest.mark.parametrize(
    "noise,kw",
    [("loglinear", {"eps": 0.0}), ("loglinear", {"eps": 1e-3}), ("geometric", {"sigma_min": 1e-4, "sigma_max": 20.0})],
    ids=["loglinear-eps0", "loglinear-eps1e-3", "geometric"],
)
def test_noise_schedules_match_their_definitions(noise, kw, sedd_exact):
    sched = LogLinearNoise(**kw) if noise == "loglinear" else GeometricNoise(**kw)
    t = torch.linspace(0.02, 0.98, 49, dtype=torch.float64)
    s = 0.6 * t
    want_t, want_s = sedd_exact.sigma_bar(noise, t, **kw), sedd_exact.sigma_bar(noise, s, **kw)
    torch.testing.assert_close(sched.total(t), want_t, rtol=1e-12, atol=0)
    h = 1e-6  # sigma = d sigmabar / dt, by central differences
    fd = (sedd_exact.sigma_bar(noise, t + h, **kw) - sedd_exact.sigma_bar(noise, t - h, **kw)) / (2 * h)
    torch.testing.assert_close(sched.rate(t), fd, rtol=1e-6, atol=0)
    torch.testing.assert_close(sched.rate(t), sedd_exact.sigma_rate(noise, t, **kw), rtol=1e-12, atol=0)
    torch.testing.assert_close(sched.log_expm1_total(t), torch.log(torch.expm1(want_t)), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(
        sched.log_rate_over_expm1(t), torch.log(sched.rate(t) / torch.expm1(want_t)), rtol=1e-10, atol=1e-12
    )
    torch.testing.assert_close(sched.delta(t, s), want_t - want_s, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(sched.delta(t, None), want_t, rtol=1e-12, atol=0)
    ratio = torch.log(torch.expm1(want_t - want_s) / torch.expm1(want_t))
    torch.testing.assert_close(sched.log_expm1_ratio(t, s), ratio, rtol=1e-9, atol=1e-12)
    assert float(sched.log_expm1_ratio(t, None).abs().max()) == 0.0  # the last step reveals everything
    ends = sched.total(torch.tensor([0.0, 1.0], dtype=torch.float64))
    if noise == "geometric":
        torch.testing.assert_close(ends, torch.tensor([1e-4, 20.0], dtype=torch.float64))
    else:
        assert float(ends[0]) == 0.0
        assert float(ends[1]) == (pytest.approx(-math.log(kw["eps"]), rel=1e-12) if kw["eps"] else math.inf)
        one = torch.tensor(1.0, dtype=torch.float64)
        assert float(sched.log_rate_over_expm1(one)) == 0.0  # sigma / (e^sigmabar - 1) = 1/t, finite at t = 1
        assert float(sched.log_expm1_ratio(one, torch.tensor(0.25, dtype=torch.float64))) == pytest.approx(
            math.log(0.75)
        )


@pytest.mark.parametrize("graph", GRAPHS)
def test_corrupt_draws_from_the_matrix_exponential(graph, tiny_exact):
    """x_t ~ expm(sigmabar R)[x0, .] for every x0, with [MASK] in the middle of the vocabulary; context stays."""
    v, mask = 6, 2
    proc = SEDD(v, mask, graph=graph)
    real = [i for i in range(v) if i != mask]
    n = 40_000
    x0 = torch.tensor(real).repeat(n, 1)  # [n, 5]: column l holds token real[l]
    gen = torch.Generator().manual_seed(0)
    t = torch.full((n,), 0.4, dtype=torch.float64)
    u = torch.rand(x0.shape, dtype=torch.float64, generator=gen)
    w = torch.rand(x0.shape, dtype=torch.float64, generator=gen)
    scored = torch.ones_like(x0, dtype=torch.bool)
    scored[:, 0] = False
    xt = proc.corrupt(x0, t, u, w, scored)
    assert torch.equal(xt[:, 0], x0[:, 0])
    m = torch.linalg.matrix_exp(float(proc.noise.total(t[:1])) * _dense_rate(graph, v, mask))
    for col in range(1, len(real)):
        freq = torch.bincount(xt[:, col], minlength=v).double() / n
        want = m[real[col]]
        se = torch.sqrt(want * (1 - want) / n)
        assert bool(((freq - want).abs() <= tiny_exact.Z * se + 1e-12).all()), \
            f"{graph} x0={real[col]}: {freq} vs {want}"
    if graph == "uniform":
        assert not bool((xt == mask).any())


def test_samplers_start_from_the_base_distribution(sedd_tiny, tiny_exact):
    gen = torch.Generator().manual_seed(0)
    uni = sedd_tiny.tiny_process("uniform").sample_base(60_000, gen)
    freq = torch.bincount(uni, minlength=tiny_exact.VOCAB).double() / len(uni)
    assert float(freq[tiny_exact.MASK]) == 0.0
    assert float((freq[:tiny_exact.N_VALUES] - 1 / tiny_exact.N_VALUES).abs().max()) < 0.01
    # eps = 0: exact absorption
    assert bool((sedd_tiny.tiny_process("absorb").sample_base(1000, gen) == tiny_exact.MASK).all())
    finite = sedd_tiny.tiny_process("absorb", eps=0.05)  # sigmabar(1) finite: a token survives with probability 0.05
    draws = finite.sample_base(60_000, gen)
    survived = float((draws != tiny_exact.MASK).double().mean())
    assert abs(survived - 0.05) < tiny_exact.Z * math.sqrt(0.05 * 0.95 / 60_000)
    assert finite.graph.prior_kl(finite.sigma_end) == pytest.approx(0.05 * math.log(tiny_exact.N_VALUES))


# ---------------------------------------------------------------------------------------------
# the score entropy: zero at the true ratio, positive elsewhere


def _brute_summands(
    graph: str, v: int, mask: int, x0: int, xt: int, sb: float, rate: float, ls: torch.Tensor
) -> torch.Tensor:
    """sigma Q(y -> x_t) [s_y - r_y log s_y + K(r_y)] for each y != x_t, straight from the definition."""
    r_mat = _dense_rate(graph, v, mask)
    m = torch.linalg.matrix_exp(sb * r_mat)
    ratio = m[x0] / m[x0, xt]
    out = torch.zeros(v, dtype=torch.float64)
    for y in range(v):
        if y == xt or r_mat[y, xt] <= 0:
            continue
        r = float(ratio[y])
        rest = r * (math.log(r) - 1) - r * float(ls[y]) if r > 0 else 0.0  # K(r) - r log s; K(0) = 0
        out[y] = rate * float(r_mat[y, xt]) * (math.exp(float(ls[y])) + rest)
    return out


def _pairs(graph: str, v: int, mask: int, sb: float) -> list[tuple[int, int]]:
    m = torch.linalg.matrix_exp(sb * _dense_rate(graph, v, mask))
    return [(a, b) for a in range(v) if a != mask for b in range(v) if m[a, b] > 0]


@pytest.mark.parametrize("graph", GRAPHS)
@pytest.mark.parametrize("noise", ["loglinear", "geometric"])
def test_score_entropy_is_zero_at_the_true_ratio_and_positive_elsewhere(graph, noise):
    """Every (x0, x_t) pair and several t: the process's term equals the definition's sum over y, is 0 at
    s = p_{t|0}(y|x0) / p_{t|0}(x_t|x0), and every summand is > 0 once that ratio is perturbed."""
    v, mask = 6, 2
    proc = SEDD(v, mask, graph=graph, noise=noise, eps=1e-3 if graph == "uniform" else 0.0)
    gen = torch.Generator().manual_seed(1)
    checked_positive = 0
    for t_val in (0.01, 0.3, 0.7, 0.97):
        t1 = torch.tensor([t_val], dtype=torch.float64)
        sb, rate = float(proc.noise.total(t1)), float(proc.noise.rate(t1))
        m = torch.linalg.matrix_exp(sb * _dense_rate(graph, v, mask))
        pairs = _pairs(graph, v, mask, sb)
        x0 = torch.tensor([a for a, _ in pairs])[:, None]
        xt = torch.tensor([b for _, b in pairs])[:, None]
        exact = torch.log(m[x0[:, 0]] / m[x0[:, 0], xt[:, 0]][:, None])  # log r_y, [P, V]
        t = t1.expand(len(pairs))
        rmat = _dense_rate(graph, v, mask)
        unused = (rmat[:, xt[:, 0]].T <= 0) | (torch.arange(v)[None, :] == xt)  # no rate y -> x_t: never read
        for perturbed in (False, True):
            ls = exact.clone()  # -inf where the ratio is 0 (absorb: every y != x0)
            if perturbed:
                ls = torch.where(torch.isfinite(ls), ls, torch.full_like(ls, -0.7))
                ls = ls + 0.5 * torch.randn(ls.shape, dtype=torch.float64, generator=gen)
            ls = ls.masked_fill(unused, 1.3)  # any value: the process must not read these
            shift = math.log(v - 1) + math.log(math.expm1(sb)) if graph == "absorb" else 0.0
            g = proc.graph.parameterise(ls[:, None, :] + shift, xt)  # what the model's raw output f becomes
            got = proc.score_entropy(g, xt, x0, t)[:, 0]
            for i, (a, b) in enumerate(pairs):
                summands = _brute_summands(graph, v, mask, a, b, sb, rate, ls[i])
                assert bool((summands >= -1e-12).all())
                want = float(summands.sum())
                if not perturbed:
                    assert abs(want) < 1e-10 and abs(float(got[i])) < 1e-9 * max(1.0, rate / t_val), (a, b, t_val)
                else:
                    assert float(got[i]) == pytest.approx(want, rel=1e-9, abs=1e-12), (a, b, t_val)
                    if proc.moves(torch.tensor([b])).item() and (graph == "uniform" or b == mask):
                        used = [y for y in range(v) if y != b and y != mask]
                        assert bool((summands[used] > 0).all()), (a, b, t_val)
                        checked_positive += 1
    assert checked_positive >= 20  # absorb: the 5 (x0, [MASK]) pairs at 4 times; uniform: 100


class _X0Oracle(nn.Module):
    """A model that knows x0 and returns the x0-conditional ratio p_{t|0}(y|x0)/p_{t|0}(x_t|x0): the
    minimiser of the denoising score entropy for each sample, so every term of the loss is 0. `sigma_bar` is
    `sedd_exact.sigma_bar`, the total noise from the paper's definitions."""

    def __init__(self, proc: SEDD, x0: torch.Tensor, sigma_bar, jitter: float = 0.0):
        super().__init__()
        self.proc, self.x0, self.sigma_bar, self.jitter = proc, x0, sigma_bar, jitter
        self.dummy = nn.Parameter(torch.zeros(()))
        self.rate = _dense_rate(proc.graph_name, proc.vocab_size, proc.mask_id)

    def forward(self, xt, t):
        sb = self.sigma_bar(self.proc.noise_name, t, self.proc.eps)
        m = torch.linalg.matrix_exp(sb[:, None, None] * self.rate)  # [B, V, V]
        rows = m[torch.arange(len(xt))[:, None], self.x0]  # [B, L, V]
        ls = torch.log(rows / rows.gather(-1, xt[..., None]))  # -inf where the ratio is 0
        if self.proc.graph_name == "absorb":
            ls = ls + math.log(self.proc.vocab_size - 1) + torch.log(torch.expm1(sb))[:, None, None]
        gen = torch.Generator().manual_seed(0)
        return ls + self.jitter * torch.randn(ls.shape, dtype=torch.float64, generator=gen) + 0 * self.dummy


@pytest.mark.parametrize("graph", GRAPHS)
def test_whole_loss_is_the_prior_term_at_the_true_ratio(graph, sedd_exact):
    """nelbo_per_sequence with the x0 oracle (t_min = 0: no reconstruction term) is exactly the prior KL;
    perturbed scores make every sequence's loss strictly larger. loss_mask'd context adds nothing."""
    v, mask, length = 6, 2, 5
    proc = SEDD(v, mask, graph=graph, t_min=0.0)
    gen = torch.Generator().manual_seed(3)
    x0 = torch.tensor([0, 1, 3, 4, 5])[torch.stack([torch.randperm(5, generator=gen) for _ in range(64)])]
    noise = proc.sample_noise(x0, gen)
    scored = torch.ones_like(x0, dtype=torch.bool)
    scored[:, 0] = False
    prior = proc.graph.prior_kl(proc.sigma_end)
    assert (prior == 0.0) == (graph == "absorb")
    exact = proc.nelbo_per_sequence(_X0Oracle(proc, x0, sedd_exact.sigma_bar), x0, noise, scored)
    torch.testing.assert_close(exact, torch.full((64,), (length - 1) * prior, dtype=torch.float64), atol=1e-9, rtol=0)
    wrong = proc.nelbo_per_sequence(_X0Oracle(proc, x0, sedd_exact.sigma_bar, jitter=0.3), x0, noise, scored)
    xt = proc.corrupt(x0, noise["t"], noise["u"], noise["v"], scored)
    scoring = (proc.moves(xt) & scored).any(1)
    assert bool((wrong[scoring] > exact[scoring] + 1e-9).all()) and bool(torch.equal(wrong[~scoring], exact[~scoring]))
    assert int(scoring.sum()) > 40


@pytest.mark.parametrize("graph", GRAPHS)
def test_log_score_is_the_concrete_score(graph, analytic, sedd_exact, sedd_tiny, tiny_exact):
    """log_score(model, x_t, t) undoes the parameterisation: with the exact model it is log p_t(y at l)/p_t(x_t)
    wherever the reverse chain can move, 0 at the current token, -inf where it is never used."""
    proc, model = sedd_tiny.tiny_process(graph), sedd_tiny.exact_score(graph)
    states = analytic.all_sequences(tiny_exact.VOCAB, sedd_tiny.LENGTH)
    if graph == "uniform":  # [MASK] is outside the uniform graph: no state holds it
        states = states[(states < tiny_exact.N_VALUES).all(1)]
    for t in (0.05, 0.5, 0.9):
        tt = torch.full((len(states),), t, dtype=torch.float64)
        got = proc.log_score(model, states, tt)
        want = model.log_ratios(states, sedd_exact.sigma_bar("loglinear", tt, sedd_tiny.EPS[graph]))
        cur = torch.nn.functional.one_hot(states, tiny_exact.VOCAB).bool()
        used = (states == tiny_exact.MASK)[..., None] & ~cur if graph == "absorb" else ~cur
        used[..., tiny_exact.MASK] = False
        torch.testing.assert_close(got[used], want[used], atol=1e-9, rtol=1e-9)
        assert float(got[cur].abs().max()) == 0.0 and bool(torch.isneginf(got[~used & ~cur]).all())
    if graph == "absorb":  # at t = 1 (sigmabar = inf) nothing can be unmasked: every score is 0
        one = proc.log_score(model, tiny_exact.masked_start(2, sedd_tiny.LENGTH), 1.0)
        assert bool(torch.isneginf(one[..., :tiny_exact.N_VALUES]).all())
        assert float(one[..., tiny_exact.MASK].abs().max()) == 0.0


# ---------------------------------------------------------------------------------------------
# the real Transformer and the byte tokenizer


@pytest.mark.parametrize(
    "graph,noise",
    [("absorb", "loglinear"), ("uniform", "loglinear"), ("absorb", "geometric"), ("uniform", "geometric")],
)
def test_loss_trains_the_transformer_and_respects_loss_mask(byte_tok: ByteTokenizer, graph, noise, check_loss_mask,
                                                            check_loss_trains):
    proc = build_process(
        "sedd", vocab_size=byte_tok.vocab_size, mask_id=byte_tok.mask_id, graph=graph, noise=noise, transition="uniform"
    )  # other families' options are ignored
    assert proc.needs_time_conditioning == (graph == "uniform")
    model, x0, _, noise_d = check_loss_trains(proc, byte_tok, seq_len=32)
    with torch.no_grad():  # the bound adds the reconstruction term (>= 0) to the training objective
        model.seen.clear()
        bound = proc.nelbo_per_sequence(model, x0, noise_d)
        assert len(model.seen) == 2 and bool((bound > 0).all())  # t_min = 1e-3: a second pass at x_{t_min}
        assert float(bound.sum()) >= float(proc.loss(model, x0, noise_d).total)
    # loss_mask: context is never corrupted and contributes nothing
    check_loss_mask(proc, model, x0, {**noise_d, "t": torch.tensor([0.7, 0.99], dtype=torch.float64)})


def test_large_vocabulary_needs_no_dense_matrix(sedd_tiny):
    """V = 50,257: the loss terms and both steps run on a few rows of [V] entries and stay finite."""
    v, mask = 50_257, 50_256
    gen = torch.Generator().manual_seed(0)
    for graph in sedd_tiny.GRAPHS:
        proc = SEDD(v, mask, graph=graph)
        x0 = torch.randint(0, v - 1, (4, 8), generator=gen)
        t = torch.tensor([0.01, 0.3, 0.8, 0.999], dtype=torch.float64)
        xt = proc.corrupt(
            x0,
            t,
            torch.rand(x0.shape, dtype=torch.float64, generator=gen),
            torch.rand(x0.shape, dtype=torch.float64, generator=gen),
        )
        g = proc.graph.parameterise(torch.randn(4, 8, v, generator=gen), xt)
        terms = proc.score_entropy(g, xt, x0, t)
        assert bool(torch.isfinite(terms).all()) and bool((terms >= 0).all())
        rows = proc.moves(xt)
        for s, method in ((0.5, "euler"), (0.5, "analytic"), (None, "analytic")):
            lp = proc.reverse_log_probs(g[rows][:5], xt[rows][:5], 0.9, s, method)
            assert lp.shape[1] == v and bool(torch.isfinite(lp.logsumexp(-1)).all())
            torch.testing.assert_close(lp.exp().sum(-1), torch.ones(len(lp), dtype=torch.float64))
            assert float(lp.exp()[:, mask].max()) == 0.0 or (graph == "absorb" and s is not None)


def test_config_round_trip_and_errors(sedd_tiny, tiny_exact):
    proc = sedd_tiny.tiny_process("uniform", "geometric", sigma_min=1e-3, sigma_max=15.0, t_min=1e-4)
    again = build_process("sedd", vocab_size=tiny_exact.VOCAB, mask_id=tiny_exact.MASK, **proc.config())
    assert again.config() == proc.config() and again.default_sampler == "sedd"
    assert sedd_tiny.tiny_process("absorb").eps == 0.0 and sedd_tiny.tiny_process("uniform").eps == 1e-3
    assert {"sedd", "sedd_analytic"} <= set(SAMPLERS)
    for bad in (
        {"graph": "gaussian"},
        {"noise": "cosine"},
        {"graph": "uniform", "eps": 0.0},
        {"eps": 1.0},
        {"noise": "geometric", "sigma_min": 2.0, "sigma_max": 1.0},
        {"t_min": 1.0},
    ):
        with pytest.raises(UserError):
            sedd_tiny.tiny_process(**{"graph": "absorb", **bad})
    with pytest.raises(UserError, match="no option"):
        build_process("sedd", vocab_size=tiny_exact.VOCAB, mask_id=tiny_exact.MASK, required=("schedule",),
                      schedule="cosine")
