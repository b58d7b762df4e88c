"""ReMDM (remasking) sampler checked against exact answers on the tiny known distribution of analytic.py.

p_data is the Dirichlet(1), seed 2 distribution over the 81 sequences of 4 tokens from {0, 1, 2}
([MASK] = 3) that test_mdlm_exact uses, and `analytic.ExactDenoiser` is its true posterior. With it:

(a) the plan: every step's sigma_t follows the paper's schedule and never exceeds
    sigma_max = min(1, (1 - alpha_s)/alpha_t); sigma = 0 is MDLM, sample for sample;
(b) one step from z_t ~ q(z_t | x0) leaves a masked fraction of exactly 1 - alpha_s (the marginal ReMDM
    keeps), and a reveal probability that ignores sigma breaks it;
(c) samples follow the exact law of the sampler (`remask_exact.remask_chain_law`, which propagates the
    distribution over all 256 states step by step), including few-step runs where remasking changes
    the law a lot; with many steps that law is within a small computed residual of p_data, so the
    samples are too; a wrong reveal formula fails;
(d) ReMDM-conf (value-dependent remasking, so its state needs the stored confidences) is checked
    kernel by kernel and against its own exact law (`remask_exact.conf_chain_law`) on a smaller
    problem (8 sequences of 3 binary tokens);
(e) infilling never touches the fixed tokens and samples p_data(gap | fixed).

Thresholds are rigorous: `tv_bound` (failure probability 1e-6), chi^2 at its 1 - 3e-7 quantile, and
4.5 standard errors for means. Every draw uses a seeded torch.Generator, so the file is deterministic.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from analytic import (
    ExactDenoiser,
    all_sequences,
    conditional_law,
    histogram,
    marginal_masses,
    random_distribution,
    reveal_probs,
    sampler_law,
    tv,
    tv_bound,
)
from remask_exact import assert_matches, conf_chain_law, remask_chain_law

from textdiffusion.errors import UserError
from textdiffusion.processes.masked import MaskedDiffusion
from textdiffusion.samplers import remdm
from textdiffusion.samplers.mdlm import AncestralConfig, ancestral_sample
from textdiffusion.samplers.remdm import (
    PAPER_ETA,
    ReMDMConfig,
    confidence_sigmas,
    remdm_plan,
    remdm_sample,
    remdm_step,
)
from textdiffusion.schedules import get_schedule

N_VALUES, LENGTH = 3, 4
MASK = N_VALUES
SEQS = all_sequences(N_VALUES, LENGTH)
P_DATA = random_distribution(N_VALUES, LENGTH, seed=2, concentration=1.0)
# ReMDM-conf's exact law tracks every decoded token's confidence: feasible on 2**3 sequences
SMALL_VALUES, SMALL_LENGTH = 2, 3
SMALL_P = random_distribution(SMALL_VALUES, SMALL_LENGTH, seed=2, concentration=1.0)  # min p = 0.029
Z = 4.5  # standard errors allowed for a Monte Carlo mean


@pytest.fixture(scope="module")
def exact() -> ExactDenoiser:
    return ExactDenoiser(P_DATA, N_VALUES, LENGTH)


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


# ---------------------------------------------------------------------------------------------
# the references and the plan


def test_chain_law_reference(exact):
    """With sigma = 0 the chain is MDLM: it equals analytic.sampler_law (an independent computation by
    reveal-time partitions), with and without fixed tokens; the conf chain agrees with both."""
    for schedule, steps, fixed in (
        ("loglinear", 1, {}),
        ("cosine", 5, {}),
        ("loglinear", 16, {}),
        ("cosine", 3, {0: 2, 3: 1}),
    ):
        alpha = get_schedule(schedule).alpha
        q = reveal_probs(alpha, steps)
        law = sampler_law(P_DATA, SEQS, q, tuple(fixed))
        if fixed:
            law = law * (SEQS[:, list(fixed)] == torch.tensor(list(fixed.values()))).all(1)
        a = alpha(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)).tolist()
        a[-1] = 1.0
        chain = [((a[k + 1] - a[k]) / (1 - a[k]), 0.0) for k in range(steps)]
        torch.testing.assert_close(remask_chain_law(exact, _start(1, fixed)[0], chain), law, atol=1e-7, rtol=0)
    small = ExactDenoiser(SMALL_P, SMALL_VALUES, SMALL_LENGTH)
    chain = [(1 / (6 - k), 0.0) for k in range(6)]  # loglinear, 6 steps
    start = _start(1, length=SMALL_LENGTH, mask_id=SMALL_VALUES)[0]
    torch.testing.assert_close(conf_chain_law(small, start, chain), remask_chain_law(small, start, chain))
    law = remask_chain_law(exact, _start(1)[0], _chain_steps(ReMDMConfig(steps=8, schedule="rescale", eta=0.6)))
    assert abs(float(law.sum()) - 1) < 1e-9 and bool((law >= 0).all())


@pytest.mark.parametrize("schedule", ["loglinear", "cosine", "linear"])
def test_plan_follows_the_paper(schedule):
    """sigma_t per the paper for every schedule, never above sigma_max; times and alphas on the grid."""
    proc = _process(schedule)
    alpha = proc.schedule.alpha
    for steps in (1, 7, 64):
        ts = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
        a = alpha(ts).tolist()
        a[-1] = 1.0
        for name, eta in (("cap", 0.1), ("rescale", 0.4), ("conf", 0.7), ("cap", None), ("rescale", None)):
            plan = remdm_plan(proc, ReMDMConfig(steps=steps, schedule=name, eta=eta))
            eta = PAPER_ETA[name] if eta is None else eta
            assert len(plan) == steps
            for k, st in enumerate(plan):
                assert (st.t, st.t_next) == (float(ts[k]), float(ts[k + 1]))
                assert (st.alpha_t, st.alpha_s) == (a[k], a[k + 1])
                smax = _sigma_max(st.alpha_t, st.alpha_s)
                want = min(eta, smax) if name == "cap" else eta * smax
                assert abs(st.sigma - want) < 1e-15 and 0 <= st.sigma <= smax + 1e-15
            assert plan[-1].sigma == 0.0 and plan[-1].alpha_s == 1.0  # the last step reveals everything
    # the loop: (1 - t_on), (t_on - t_off) and t_off of the steps; alpha held at alpha_on in the middle
    for alpha_on in (0.9, None):
        cfg = ReMDMConfig(steps=100, schedule="loop", alpha_on=alpha_on)
        plan = remdm_plan(proc, cfg)
        phases = [sum(1 for st in plan[a:b] if st.sigma > 0) for a, b in ((0, 45), (45, 95), (95, 100))]
        assert phases == [0, 50, 0]
        held = float(alpha(torch.tensor(0.55, dtype=torch.float64))) if alpha_on is None else alpha_on
        t_star = plan[45].t
        assert abs(float(alpha(torch.tensor(t_star, dtype=torch.float64))) - held) < 1e-12
        for st in plan[45:95]:
            assert (st.t, st.t_next, st.alpha_t, st.alpha_s) == (t_star, t_star, held, held)
            assert st.sigma == min(PAPER_ETA["loop"], _sigma_max(held, held))
        assert plan[44].alpha_s == held == plan[95].alpha_t and plan[-1].alpha_s == 1.0
        assert plan[0].t == 1.0 and plan[-1].t_next == 0.0
        assert all(x.alpha_s >= x.alpha_t for x in plan) and all(x.t_next <= x.t for x in plan)
    # loop's sigma is capped by sigma_max at alpha_on: (1 - 0.95)/0.95 < 0.5
    plan = remdm_plan(proc, ReMDMConfig(steps=10, schedule="loop", eta=0.5, alpha_on=0.95))
    assert max(st.sigma for st in plan) == pytest.approx(0.05 / 0.95)
    # few steps: every phase still gets one
    for steps in (3, 4, 5):
        plan = remdm_plan(proc, ReMDMConfig(steps=steps, schedule="loop"))
        assert len(plan) == steps and plan[0].sigma == 0 and plan[-1].sigma == 0
        assert any(st.sigma > 0 for st in plan)


def test_sigma_never_exceeds_sigma_max_and_reveal_probabilities_are_probabilities():
    """Random configurations: 0 <= sigma <= sigma_max and the reveal probability stays in [0, 1]."""
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        r = torch.rand(4, generator=gen, dtype=torch.float64).tolist()
        name = remdm.SCHEDULES[int(r[0] * 4)]
        t_off = 0.5 * r[2]
        cfg = ReMDMConfig(
            steps=3 + int(r[1] * 40),
            schedule=name,
            eta=r[3],
            t_on=t_off + 0.1 + 0.4 * r[1],
            t_off=t_off,
            alpha_on=0.05 + 0.9 * r[2],
        )
        for st in remdm_plan(_process(["loglinear", "cosine", "linear"][int(r[1] * 3)]), cfg):
            assert 0 <= st.sigma <= _sigma_max(st.alpha_t, st.alpha_s) + 1e-12
            p = (st.alpha_s - (1 - st.sigma) * st.alpha_t) / (1 - st.alpha_t) if st.alpha_t < 1 else 1.0
            assert -1e-12 <= p <= 1 + 1e-12


def test_eta_zero_is_mdlm(exact):
    """sigma = 0 is MDLM's ancestral sampler: same generator, same samples and the same nfe."""
    timed = ExactDenoiser(P_DATA, N_VALUES, LENGTH, time_conditioning=True)
    for name in ("cap", "rescale", "conf"):
        for model, cache, steps in ((exact, True, 32), (exact, False, 7), (timed, True, 16)):
            cfg = ReMDMConfig(steps=steps, schedule=name, eta=0.0, cache=cache)
            ours = _sample(model, 500, cfg, seed=3, fixed={1: 0})
            ref = ancestral_sample(
                model,
                _process(),
                _start(500, {1: 0}),
                AncestralConfig(steps=steps, cache=cache),
                torch.Generator().manual_seed(3),
            )
            assert torch.equal(ours.ids, ref.ids) and ours.nfe == ref.nfe


# ---------------------------------------------------------------------------------------------
# (b) one step keeps the marginal


def _check_step_marginal(model, cfg: ReMDMConfig, n: int, seed: int) -> None:
    """From z_t ~ q(z_t | x0), x0 ~ p_data: after each planned step the masked fraction is 1 - alpha_s.

    Mask patterns at t are i.i.d. per token and the step treats tokens independently, so the masked
    indicators after the step are i.i.d. Bernoulli(1 - alpha_s): the binomial standard error is exact."""
    gen = torch.Generator().manual_seed(seed)
    for st in remdm_plan(_process(), cfg):
        x0 = SEQS[torch.multinomial(P_DATA, n, replacement=True, generator=gen)]
        zt = torch.where(torch.rand(x0.shape, generator=gen, dtype=torch.float64) < st.alpha_t, x0, MASK)
        generated = torch.ones_like(zt, dtype=torch.bool)
        zs, revealed, remasked, _ = remdm_step(
            zt, generated, model(zt), st.alpha_t, st.alpha_s, st.sigma, MASK, generator=gen
        )
        kept = (zt != MASK) & (zs != MASK)
        assert bool((zs[kept] == zt[kept]).all()), "a decoded token changed value instead of being remasked"
        assert torch.equal(remasked, (zt != MASK) & (zs == MASK)) and torch.equal(revealed, (zt == MASK) & (zs != MASK))
        p, tokens = 1 - st.alpha_s, zs.numel()
        frac = float((zs == MASK).double().mean())
        se = math.sqrt(max(p * (1 - p), 1e-12) / tokens)
        assert abs(frac - p) < Z * se + 1e-12, (
            f"{cfg.schedule} at alpha_s={st.alpha_s:.3f}: masked {frac:.4f}, want {p:.4f} +- {se:.4f}"
        )


STEP_CONFIGS = {
    "cap": ReMDMConfig(steps=8, schedule="cap", eta=0.3),
    "rescale": ReMDMConfig(steps=8, schedule="rescale", eta=0.7),
    "loop": ReMDMConfig(steps=10, schedule="loop", eta=0.3, alpha_on=0.6),
}


@pytest.mark.parametrize("name", list(STEP_CONFIGS))
def test_step_keeps_the_marginal(exact, name, monkeypatch):
    _check_step_marginal(exact, STEP_CONFIGS[name], n=20_000, seed=1)
    # control: revealing with MDLM's probability while remasking leaves too many masks
    monkeypatch.setattr(remdm, "_unmask_prob", _wrong_unmask_prob)
    with pytest.raises(AssertionError, match="masked"):
        _check_step_marginal(exact, STEP_CONFIGS[name], n=20_000, seed=1)


# ---------------------------------------------------------------------------------------------
# (c) the output law


LAW_CASES = {  # strong remasking, few steps: 50k samples tell the law from MDLM's (chi^2 300-800 vs 160)
    "cap-8": (ReMDMConfig(steps=8, schedule="cap", eta=0.3), {}),
    "rescale-8": (ReMDMConfig(steps=8, schedule="rescale", eta=0.7), {}),
    "rescale-4-eta1": (ReMDMConfig(steps=4, schedule="rescale", eta=1.0), {}),
    "loop-16": (ReMDMConfig(steps=16, schedule="loop", eta=1.0, t_on=0.8, t_off=0.1, alpha_on=0.5), {}),
    "cap-6-infill": (ReMDMConfig(steps=6, schedule="cap", eta=0.5), {0: 2, 3: 1}),
}


@pytest.mark.parametrize("case", list(LAW_CASES))
def test_samples_follow_the_exact_law(exact, case):
    """50k samples against the exact law of the sampler (TV bound and chi^2). The same check rejects
    them as samples of MDLM's law with the same steps: what passes is the remasking itself."""
    cfg, fixed = LAW_CASES[case]
    n = 50_000
    frames: list[torch.Tensor] = []
    ids = _sample(exact, n, cfg, seed=4, fixed=fixed, on_step=lambda f: frames.append(f.ids)).ids
    _assert_valid(ids)
    assert_matches(ids, _law(exact, cfg, fixed), N_VALUES, case)
    with pytest.raises(AssertionError, match="MDLM.s law"):
        assert_matches(ids, _law(exact, dataclasses.replace(cfg, eta=0.0), fixed), N_VALUES, "MDLM's law")
    assert len(frames) == cfg.steps + 1 and not bool((frames[-1] == MASK).any())
    for f in frames:  # fixed tokens never change, not even for a step
        for pos, tok in fixed.items():
            assert bool((f[:, pos] == tok).all())


@pytest.mark.parametrize("case", ["rescale-8", "loop-16"])
def test_wrong_reveal_probability_fails_the_law_check(exact, case, monkeypatch):
    """Control: MDLM's reveal probability while remasking (sigma ignored) fails the same check."""
    cfg, _ = LAW_CASES[case]
    law = _law(exact, cfg)
    monkeypatch.setattr(remdm, "_unmask_prob", _wrong_unmask_prob)
    ids = _sample(exact, 50_000, cfg, seed=4).ids
    _assert_valid(ids)
    with pytest.raises(AssertionError, match="law"):
        assert_matches(ids, law, N_VALUES, "sigma ignored when revealing")


@pytest.mark.parametrize("name", ["cap", "rescale", "loop"])
def test_many_steps_reproduce_p_data(exact, name):
    """The paper's eta, 128 steps: the exact law is within a small residual of p_data (same-step reveals
    only), and 20k samples are within tv_bound + residual of p_data."""
    cfg = ReMDMConfig(steps=128, schedule=name)
    n = 20_000
    ids = _sample(exact, n, cfg, seed=5).ids
    _assert_valid(ids)
    law = _law(exact, cfg)
    residual = tv(law, P_DATA)
    assert residual < 0.01, f"{name}: exact law is {residual:.4f} from p_data"
    assert_matches(ids, law, N_VALUES, f"{name}, 128 steps")
    dist, limit = tv(histogram(ids, N_VALUES), P_DATA), tv_bound(law, n) + residual
    assert dist < limit, f"{name}: TV(samples, p_data) = {dist:.4f} >= {limit:.4f}"


def test_wrong_posterior_fails_the_p_data_check():
    """Control for the check above: a context-free denoiser (independent marginals) is far outside."""
    wrong = ExactDenoiser(P_DATA, N_VALUES, LENGTH, context=False)
    exact = ExactDenoiser(P_DATA, N_VALUES, LENGTH)
    cfg = ReMDMConfig(steps=128, schedule="cap")
    n = 20_000
    law = _law(exact, cfg)
    dist = tv(histogram(_sample(wrong, n, cfg, seed=5).ids, N_VALUES), P_DATA)
    assert dist > 2 * (tv_bound(law, n) + tv(law, P_DATA))


def test_mask_logit_and_time_input(exact):
    """A huge [MASK] logit changes nothing ([MASK] is never a value); a time-conditioned denoiser is
    given each row's step time, t* = alpha^-1(alpha_on) throughout the loop."""
    cfg = ReMDMConfig(steps=24, schedule="loop", eta=0.3, alpha_on=0.7)
    loud = ExactDenoiser(P_DATA, N_VALUES, LENGTH, mask_logit=50.0)
    a, b = _sample(exact, 2000, cfg, seed=6), _sample(loud, 2000, cfg, seed=6)
    assert torch.equal(a.ids, b.ids)
    seen: list[float] = []

    class Timed(ExactDenoiser):
        def forward(self, ids, t=None):
            assert t is not None and t.shape == (ids.shape[0],) and bool((t == t[0]).all())
            assert bool((ids == MASK).any(dim=1).all()), "a row without masks was sent to the denoiser"
            seen.append(float(t[0]))
            return super().forward(ids, t)

    res = _sample(Timed(P_DATA, N_VALUES, LENGTH, time_conditioning=True), 2000, cfg, seed=6)
    plan = remdm_plan(_process(), cfg)
    assert res.nfe == len(seen) <= len(plan)
    want = [st.t for st in plan][: len(seen)]
    assert seen == pytest.approx(want, abs=1e-7)  # float32 time input
    assert sum(1 for t in seen if abs(t - 0.3) < 1e-6) >= 10  # the loop: loglinear alpha = 0.7 at t* = 0.3


# ---------------------------------------------------------------------------------------------
# (d) ReMDM-conf


def test_conf_step_kernel(monkeypatch):
    """One conf step from a fixed state: decoded token l is remasked with probability
    sigma * softmax(-psi)_l over the row's decoded generated tokens (fixed tokens excluded), a masked
    token is revealed with MDLM's probability, and the stored psi is the drawn token's probability."""
    n = 200_000
    alpha_t, alpha_s, sigma = 0.5, 0.6, 0.6
    x = torch.tensor([[0, 1, 2, MASK, MASK, 1]]).repeat(n, 1)
    generated = torch.tensor([True, True, True, True, True, False]).repeat(n, 1)  # the last token is fixed
    psi = torch.tensor([0.1, 0.5, 0.95, 0.0, 0.0, 0.0], dtype=torch.float64).repeat(n, 1)
    logits = torch.log(torch.tensor([0.2, 0.3, 0.5, 0.0])).repeat(n, 6, 1)

    def check() -> None:
        gen = torch.Generator().manual_seed(7)
        sig = remdm.confidence_sigmas(sigma, x, generated, psi, MASK)
        xs, revealed, remasked, prob = remdm_step(x, generated, logits, alpha_t, alpha_s, sig, MASK, generator=gen)
        w = torch.exp(-torch.tensor([0.1, 0.5, 0.95], dtype=torch.float64))
        want = sigma * w / w.sum()
        p_reveal = (alpha_s - alpha_t) / (1 - alpha_t)
        for l, p in enumerate(want.tolist() + [p_reveal, p_reveal, 0.0]):
            event = revealed[:, l] if l in (3, 4) else remasked[:, l]
            freq = float(event.double().mean())
            se = math.sqrt(max(p * (1 - p), 1e-12) / n)
            assert abs(freq - p) < Z * se + 1e-12, f"position {l}: {freq:.4f} vs {p:.4f}"
        assert bool((xs[:, 5] == 1).all())
        want_prob = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)[xs[revealed]]
        torch.testing.assert_close(prob, want_prob, atol=1e-6, rtol=0)

    check()
    # control: remasking the *confident* tokens first (softmax(+psi)) is caught
    monkeypatch.setattr(remdm, "confidence_sigmas", lambda s, x, g, c, m: confidence_sigmas(s, x, g, -c, m))
    with pytest.raises(AssertionError, match="position"):
        check()


def _small_sample(cfg: ReMDMConfig, n: int, seed: int, model=None, fixed=None):
    model = model or ExactDenoiser(SMALL_P, SMALL_VALUES, SMALL_LENGTH)
    return _sample(model, n, cfg, seed, fixed=fixed, length=SMALL_LENGTH, mask_id=SMALL_VALUES)


def _small_conf_law(cfg: ReMDMConfig, fixed=None) -> torch.Tensor:
    model = ExactDenoiser(SMALL_P, SMALL_VALUES, SMALL_LENGTH)
    return conf_chain_law(model, _start(1, fixed, SMALL_LENGTH, SMALL_VALUES)[0], _chain_steps(cfg))


def _unnormalised_sigmas(sigma, x, generated, confidence, mask_id):
    """A plausible bug: exp(-psi) * sigma without the softmax normalisation (far more remasking)."""
    decoded = generated & (x != mask_id)
    return torch.where(decoded, torch.exp(-confidence.double()), 0.0) * sigma


def test_conf_follows_its_exact_law(monkeypatch):
    """ReMDM-conf samples against its exact law (states carry the stored confidences); the same check
    rejects them as MDLM samples. The law is not p_data: the value-dependent remasking tilts it, by an
    exactly computed 0.054 in TV against MDLM's same-step residual of 0.018."""
    cfg = ReMDMConfig(steps=16, schedule="conf", eta=1.0)
    n = 50_000
    law = _small_conf_law(cfg)
    mdlm = _small_conf_law(dataclasses.replace(cfg, eta=0.0))
    ids = _small_sample(cfg, n, seed=8).ids
    _assert_valid(ids, SMALL_VALUES)
    assert_matches(ids, law, SMALL_VALUES, "conf, 16 steps")
    with pytest.raises(AssertionError, match="MDLM"):
        assert_matches(ids, mdlm, SMALL_VALUES, "MDLM's law")
    assert tv(law, SMALL_P) > tv(mdlm, SMALL_P) + 0.02
    # control: unnormalised weights (sigma * exp(-psi) per token) are caught
    monkeypatch.setattr(remdm, "confidence_sigmas", _unnormalised_sigmas)
    wrong = _small_sample(cfg, n, seed=8).ids
    with pytest.raises(AssertionError, match="unnormalised"):
        assert_matches(wrong, law, SMALL_VALUES, "conf with unnormalised weights")


def test_conf_infilling_never_remasks_fixed_tokens():
    cfg = ReMDMConfig(steps=16, schedule="conf", eta=1.0)
    n = 20_000
    frames: list[torch.Tensor] = []
    model = ExactDenoiser(SMALL_P, SMALL_VALUES, SMALL_LENGTH)
    ids = _sample(
        model,
        n,
        cfg,
        9,
        fixed={1: 0},
        length=SMALL_LENGTH,
        mask_id=SMALL_VALUES,
        on_step=lambda f: frames.append(f.ids),
    ).ids
    assert all(bool((f[:, 1] == 0).all()) for f in frames)
    small_seqs = all_sequences(SMALL_VALUES, SMALL_LENGTH)
    ctx = small_seqs[:, 1] == 0
    assert_matches(ids, _small_conf_law(cfg, {1: 0}) * ctx, SMALL_VALUES, "conf infill")


# ---------------------------------------------------------------------------------------------
# (e) infilling


@pytest.mark.parametrize(
    "name,fixed",
    [("cap", {0: 2, 3: 1}), ("loop", {1: 0}), ("rescale", {0: 1, 1: 2})],
    ids=["cap-middle", "loop-suffix", "rescale-prefix"],
)
def test_infilling_samples_the_true_conditional(exact, name, fixed):
    """Fixed tokens never change in any frame, and the gap follows p_data(gap | fixed) within the
    bound plus the exact law's residual."""
    cfg = ReMDMConfig(steps=96, schedule=name, eta=0.05 if name != "loop" else None)
    n = 20_000
    pos, toks = list(fixed), torch.tensor(list(fixed.values()))
    frames: list[torch.Tensor] = []
    ids = _sample(exact, n, cfg, seed=10, fixed=fixed, on_step=lambda f: frames.append(f.ids)).ids
    _assert_valid(ids)
    assert all(bool((f[:, pos] == toks).all()) for f in frames), "a fixed token changed"
    ctx = (SEQS[:, pos] == toks).all(1)
    cond = conditional_law(P_DATA, SEQS, tuple(pos)) * ctx
    law = _law(exact, cfg, fixed) * ctx
    assert_matches(ids, law, N_VALUES, f"infill {fixed}")
    dist, limit = tv(histogram(ids, N_VALUES), cond), tv_bound(law, n) + tv(law, cond)
    assert dist < limit, f"TV(gap samples, p(gap | fixed)) = {dist:.4f} >= {limit:.4f}"
    gap_bits = sum(1 << l for l in range(LENGTH) if l not in fixed)
    assert tv(marginal_masses(P_DATA, SEQS)[gap_bits] * ctx, cond) > 2 * limit  # ignoring the context is caught


# ---------------------------------------------------------------------------------------------
# configuration


@pytest.mark.parametrize(
    "bad,match",
    [
        (dict(schedule="maxcap"), "unknown ReMDM schedule"),
        (dict(eta=1.5), "eta"),
        (dict(eta=-0.1), "eta"),
        (dict(t_on=0.3, t_off=0.3), "t_off < t_on"),
        (dict(t_on=1.2), "t_off < t_on"),
        (dict(t_off=-0.1), "t_off < t_on"),
        (dict(alpha_on=1.0), "alpha_on"),
        (dict(alpha_on=0.0), "alpha_on"),
        (dict(steps=0), "steps"),
        (dict(steps=2.5), "steps"),
        (dict(steps=2, schedule="loop"), "at least 3 steps"),
        (dict(temperature=-1.0), "temperature"),
        (dict(top_p=0.0), "top_p"),
    ],
)
def test_config_errors(exact, bad, match):
    with pytest.raises(UserError, match=match):
        _sample(exact, 2, ReMDMConfig(**bad), seed=0)


def test_needs_a_masked_process(exact):
    class NotMasked:
        mask_id = MASK

    with pytest.raises(UserError, match="masked diffusion"):
        remdm_sample(exact, NotMasked(), _start(2), ReMDMConfig(steps=4))
