"""The first-hitting sampler checked against exact answers on the tiny known distribution of analytic.py.

p_data is the Dirichlet(1), seed 2 distribution over the 81 sequences of 4 tokens from {0, 1, 2}
([MASK] = 3) of test_mdlm_exact, and `analytic.ExactDenoiser` is its true posterior. The first-hitting
sampler reveals one token per denoiser call, each drawn from the exact conditional given the tokens
revealed before it, so its output law is p_data *exactly* (no same-step residual, unlike MDLM):

(a) 20k samples match p_data (TV bound and chi^2), and p(gap | fixed) when infilling; greedy
    confidence-ordered decoding and a sharpened posterior fail the same check;
(b) hitting times: with n masks left at time t, the next reveal time tau has
    P(tau <= s) = ((1 - alpha(s)) / (1 - alpha(t)))^n, so U = ((1 - alpha(tau)) / (1 - alpha(t)))^n is
    U(0, 1); a Kolmogorov-Smirnov test with the DKW bound checks it for every reveal and schedule, and
    fails for a wrong exponent or a wrong inverse schedule;
(c) nfe is the number of masks (the largest in a batch), and rows with fewer masks leave early.

Thresholds are rigorous: `tv_bound` and DKW at failure probability 1e-6, chi^2 at its 1 - 3e-7
quantile. Every draw uses a seeded torch.Generator, so the file is deterministic.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from textdiffusion.core.errors import UserError
from textdiffusion.processes.masked import MaskedDiffusion
from textdiffusion.processes.schedules import Schedule, get_schedule
from textdiffusion.samplers import first_hitting
from textdiffusion.samplers.first_hitting import FirstHittingConfig, first_hitting_sample, time_at_alpha

N_VALUES, LENGTH = 3, 4
MASK = N_VALUES
SEQS = torch.tensor(list(itertools.product(range(N_VALUES), repeat=LENGTH)))  # as analytic.all_sequences


@pytest.fixture(scope="module")
def p_data(analytic) -> torch.Tensor:
    return analytic.random_distribution(N_VALUES, LENGTH, seed=2, concentration=1.0)


@pytest.fixture(scope="module")
def exact(analytic, p_data) -> torch.nn.Module:
    return analytic.ExactDenoiser(p_data, N_VALUES, LENGTH)


def _process(schedule: str = "loglinear") -> MaskedDiffusion:
    return MaskedDiffusion(vocab_size=N_VALUES + 1, mask_id=MASK, schedule=schedule)


def _start(n: int, fixed: dict[int, int] | None = None) -> torch.Tensor:
    x = torch.full((n, LENGTH), MASK, dtype=torch.long)
    for pos, tok in (fixed or {}).items():
        x[:, pos] = tok
    return x


def _sample(model, x: torch.Tensor, seed: int, *, schedule: str = "loglinear", on_step=None, **cfg):
    gen = torch.Generator().manual_seed(seed)
    return first_hitting_sample(model, _process(schedule), x, FirstHittingConfig(**cfg), gen, on_step=on_step)


def _assert_valid(ids: torch.Tensor) -> None:
    assert bool(((ids >= 0) & (ids < N_VALUES)).all()), "a [MASK] (or out-of-range token) survived sampling"


@pytest.fixture(scope="module")
def recorder(analytic, p_data):
    """recorder(): a new time-conditioned exact denoiser of p_data that records every call's inputs and times."""

    class Recorder(analytic.ExactDenoiser):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, time_conditioning=True, **kwargs)
            self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

        def forward(self, ids, t=None):
            assert t is not None and t.shape == (ids.shape[0],)
            self.calls.append((ids.clone(), t.double().clone()))
            return super().forward(ids, t)

    return lambda: Recorder(p_data, N_VALUES, LENGTH)


# ---------------------------------------------------------------------------------------------
# (a) the output law


def test_samples_are_p_data(exact, remask_exact, p_data):
    """Sequential exact conditionals: the law is p_data itself, so the bound has no residual term."""
    res = _sample(exact, _start(20_000), seed=1)
    _assert_valid(res.ids)
    assert res.nfe == LENGTH
    remask_exact.assert_matches(res.ids, p_data, N_VALUES, "first hitting")


def _most_confident(masked: torch.Tensor, logits: torch.Tensor, generator) -> torch.Tensor:
    """The masked position whose posterior has the largest top probability (MaskGIT / LLaDA order)."""
    top = torch.softmax(logits[..., :MASK].double(), dim=-1).amax(-1)
    return torch.where(masked, top, -1.0).argmax(dim=1)


@pytest.mark.parametrize("wrong", ["greedy-confidence", "sharpened"])
def test_wrong_variants_fail(exact, wrong, monkeypatch, remask_exact, p_data):
    """Controls: the most confident position decoded greedily (argmax), or values drawn at temperature
    0.8, are caught by the same check."""
    if wrong == "greedy-confidence":
        monkeypatch.setattr(first_hitting, "_choose_positions", _most_confident)
        ids = _sample(exact, _start(20_000), seed=1, temperature=0.0).ids
    else:
        ids = _sample(exact, _start(20_000), seed=1, temperature=0.8).ids
    _assert_valid(ids)
    with pytest.raises(AssertionError, match=wrong):
        remask_exact.assert_matches(ids, p_data, N_VALUES, wrong)


def test_any_context_chosen_order_is_exact(exact, monkeypatch, remask_exact, p_data):
    """Why the position rule alone is no control: with exact conditionals, *any* order chosen from the
    revealed tokens gives p_data (chain rule). Most-confident-first with sampled values passes."""
    monkeypatch.setattr(first_hitting, "_choose_positions", _most_confident)
    ids = _sample(exact, _start(20_000), seed=2).ids
    remask_exact.assert_matches(ids, p_data, N_VALUES, "confidence order, sampled values")


@pytest.mark.parametrize("fixed", [{0: 2, 3: 1}, {3: 0}, {1: 1, 2: 0, 3: 2}], ids=["middle", "suffix", "one-gap"])
def test_infilling_samples_the_true_conditional(exact, fixed, analytic, remask_exact, p_data):
    n = 20_000
    pos, toks = list(fixed), torch.tensor(list(fixed.values()))
    frames: list[torch.Tensor] = []
    res = _sample(exact, _start(n, fixed), seed=3, on_step=lambda f: frames.append(f.ids))
    _assert_valid(res.ids)
    assert res.nfe == LENGTH - len(fixed) and len(frames) == res.nfe + 1
    assert all(bool((f[:, pos] == toks).all()) for f in frames), "a fixed token changed"
    ctx = (SEQS[:, pos] == toks).all(1)
    cond = analytic.conditional_law(p_data, SEQS, tuple(pos)) * ctx
    remask_exact.assert_matches(res.ids, cond, N_VALUES, f"infill {fixed}")
    assert analytic.tv(analytic.histogram(res.ids, N_VALUES), cond) < analytic.tv_bound(cond, n)


def test_mixed_batch_rows_finish_on_their_own(exact, analytic, remask_exact, p_data, recorder):
    """Rows with 4, 2, 1 and 0 masks: each gets exactly its own number of reveals, leaves the batch
    when done (no row without masks reaches the denoiser), and follows its own (conditional) law."""
    groups = [({}, 4), ({0: 2, 3: 1}, 2), ({0: 1, 1: 2, 2: 0}, 1), ({0: 1, 1: 1, 2: 1, 3: 1}, 0)]
    per = 6000
    x = torch.cat([_start(per, fixed) for fixed, _ in groups])
    x = torch.cat([x[per : 2 * per], x[:per], x[2 * per :]])  # row 0 has 2 masks
    model = recorder()
    frames: list[tuple[int, float]] = []
    res = _sample(model, x, seed=4, on_step=lambda f: frames.append((f.step, f.t)))
    assert res.nfe == 4 == len(model.calls)
    assert [len(ids) for ids, _ in model.calls] == [3 * per, 2 * per, per, per]
    for ids, _ in model.calls:
        assert bool((ids == MASK).any(dim=1).all()), "a row without masks was sent to the denoiser"
    # frames: one per reveal; t is row 0's hitting time while it has masks, then 0
    assert [s for s, _ in frames] == [0, 1, 2, 3, 4]
    assert frames[0][1] == 1.0 > frames[1][1] > frames[2][1] > 0 and frames[3][1] == frames[4][1] == 0.0
    assert frames[1][1] == pytest.approx(float(model.calls[0][1][0]), abs=1e-7)
    ids = torch.cat([res.ids[per : 2 * per], res.ids[:per], res.ids[2 * per :]])  # back to group order
    _assert_valid(ids)
    for g, (fixed, _) in enumerate(groups):
        rows = ids[g * per : (g + 1) * per]
        pos, toks = list(fixed), torch.tensor(list(fixed.values()), dtype=torch.long)
        assert bool((rows[:, pos] == toks).all())
        if len(fixed) < LENGTH:
            ctx = (SEQS[:, pos] == toks).all(1) if fixed else torch.ones(len(SEQS), dtype=torch.bool)
            cond = analytic.conditional_law(p_data, SEQS, tuple(pos)) * ctx
            remask_exact.assert_matches(rows, cond, N_VALUES, f"group {fixed}")


def test_nothing_to_do_and_mask_logit(exact, analytic, p_data):
    done = _sample(exact, torch.tensor([[0, 1, 2, 0]]), seed=0)
    assert done.nfe == 0 and torch.equal(done.ids, torch.tensor([[0, 1, 2, 0]]))
    loud = analytic.ExactDenoiser(p_data, N_VALUES, LENGTH, mask_logit=50.0)
    a, b = _sample(exact, _start(2000), seed=5), _sample(loud, _start(2000), seed=5)
    assert torch.equal(a.ids, b.ids)  # [MASK] is never a value, however large its logit


def _check_uniform_positions(model, n: int, seed: int) -> None:
    """Each reveal picks a masked position uniformly: the k-th reveal hits each of the L positions with
    probability 1/L (marginally over the earlier ones), checked position by position (4.5 SE); `model`: the
    exact denoiser."""
    frames: list[torch.Tensor] = []
    _sample(model, _start(n), seed=seed, on_step=lambda f: frames.append(f.ids))
    for k in range(1, len(frames)):
        hit = (frames[k - 1] == MASK) & (frames[k] != MASK)
        assert bool((hit.sum(1) == 1).all()), "not exactly one token revealed per step"
        freq = hit.double().mean(0)
        se = math.sqrt(0.25 * 0.75 / n)
        for l in range(LENGTH):
            assert abs(float(freq[l]) - 0.25) < 4.5 * se, f"reveal {k} hits position {l} with frequency {freq[l]:.4f}"


def test_positions_are_uniform(monkeypatch, exact):
    """The law check cannot see the order (any context-chosen order is exact), so check it directly;
    left-to-right decoding fails."""
    _check_uniform_positions(exact, 20_000, seed=8)
    monkeypatch.setattr(first_hitting, "_choose_positions", lambda masked, logits, gen: masked.double().argmax(1))
    with pytest.raises(AssertionError, match="frequency"):
        _check_uniform_positions(exact, 20_000, seed=8)


# ---------------------------------------------------------------------------------------------
# (b) hitting times


def _ks_uniform(u: torch.Tensor) -> float:
    """Kolmogorov-Smirnov distance between the empirical CDF of u and U(0, 1)."""
    u, n = u.sort().values, len(u)
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return float(torch.maximum(i / n - u, u - (i - 1) / n).max())


def _dkw(n: int, delta: float = 1e-6) -> float:
    """P(KS > eps) <= 2 exp(-2 n eps^2) (Dvoretzky-Kiefer-Wolfowitz, Massart's constant)."""
    return math.sqrt(math.log(2 / delta) / (2 * n))


def _check_hitting_times(model, schedule: str, fixed: dict[int, int], n: int, seed: int) -> None:
    """Every reveal time of every row, through U = ((1 - alpha(tau_k)) / (1 - alpha(tau_{k-1})))^{n_k};
    `model`: a new `recorder()`."""
    _sample(model, _start(n, fixed), seed=seed, schedule=schedule)
    alpha = get_schedule(schedule).alpha
    prev = 1 - alpha(torch.ones(n, dtype=torch.float64))
    pooled = []
    for k, (ids, t) in enumerate(model.calls):
        left = (ids == MASK).sum(1).double()
        assert bool((left == LENGTH - len(fixed) - k).all())
        now = 1 - alpha(t)
        u = (now / prev) ** left
        ks, eps = _ks_uniform(u), _dkw(n)
        assert ks < eps, f"{schedule}: KS of reveal {k + 1} with {int(left[0])} masks = {ks:.4f} >= {eps:.4f}"
        pooled.append(u)
        prev = now
    u = torch.cat(pooled)
    ks, eps = _ks_uniform(u), _dkw(len(u))
    assert ks < eps, f"{schedule}: pooled KS = {ks:.4f} >= {eps:.4f}"


@pytest.mark.parametrize("schedule", ["loglinear", "cosine", "linear"])
def test_hitting_times_follow_the_first_hitting_law(schedule, recorder):
    _check_hitting_times(recorder(), schedule, {}, n=20_000, seed=6)
    _check_hitting_times(recorder(), schedule, {1: 0}, n=10_000, seed=7)


def test_wrong_hitting_times_fail(monkeypatch, recorder):
    """Controls: the exponent 1/(n+1) instead of 1/n, or inverting loglinear for the cosine schedule."""
    with monkeypatch.context() as m:
        m.setattr(first_hitting, "_next_masked_fraction", lambda frac, n, u: frac * u ** (1.0 / (n.double() + 1)))
        with pytest.raises(AssertionError, match="KS"):
            _check_hitting_times(recorder(), "loglinear", {}, n=20_000, seed=6)
    with monkeypatch.context() as m:
        m.setattr(first_hitting, "time_at_alpha", lambda schedule, a: (1 - torch.as_tensor(a)).double())
        with pytest.raises(AssertionError, match="KS"):
            _check_hitting_times(recorder(), "cosine", {}, n=20_000, seed=6)


class _Quadratic(Schedule):
    name = "quadratic"

    def alpha(self, t):
        return (1 - t) ** 2


def test_time_at_alpha_inverts_every_schedule():
    t = torch.linspace(0.0, 1.0, 1001, dtype=torch.float64)
    for schedule in (get_schedule("loglinear"), get_schedule("cosine"), get_schedule("linear"), _Quadratic()):
        back = time_at_alpha(schedule, schedule.alpha(t))
        torch.testing.assert_close(schedule.alpha(back), schedule.alpha(t), atol=1e-12, rtol=0)
        assert float(time_at_alpha(schedule, 2.0)) == 0.0 and float(time_at_alpha(schedule, -1.0)) == 1.0
    inner = t[1:-1]  # bisection recovers t itself where alpha is strictly decreasing
    torch.testing.assert_close(time_at_alpha(_Quadratic(), _Quadratic().alpha(inner)), inner, atol=1e-9, rtol=0)


@pytest.mark.parametrize(
    "bad,match", [(dict(temperature=-1.0), "temperature"), (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p")]
)
def test_config_errors(exact, bad, match):
    with pytest.raises(UserError, match=match):
        _sample(exact, _start(2), seed=0, **bad)
