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

from textdiffusion.core.errors import UserError
from textdiffusion.processes.schedules import get_schedule
from textdiffusion.samplers import remdm
from textdiffusion.samplers.mdlm import AncestralConfig, ancestral_sample
from textdiffusion.samplers.remdm import PAPER_ETA, ReMDMConfig, remdm_plan, remdm_sample, remdm_step


@pytest.fixture(scope="module")
def exact(analytic, remdm_tiny) -> torch.nn.Module:
    return analytic.ExactDenoiser(remdm_tiny.P_DATA, remdm_tiny.N_VALUES, remdm_tiny.LENGTH)


# ---------------------------------------------------------------------------------------------
# the references and the plan


def test_chain_law_reference(exact, analytic, remask_exact, remdm_tiny):
    """With sigma = 0 the chain is MDLM: it equals analytic.sampler_law (an independent computation by
    reveal-time partitions), with and without fixed tokens; the conf chain agrees with both."""
    for schedule, steps, fixed in (
        ("loglinear", 1, {}),
        ("cosine", 5, {}),
        ("loglinear", 16, {}),
        ("cosine", 3, {0: 2, 3: 1}),
    ):
        alpha = get_schedule(schedule).alpha
        q = analytic.reveal_probs(alpha, steps)
        law = analytic.sampler_law(remdm_tiny.P_DATA, remdm_tiny.SEQS, q, tuple(fixed))
        if fixed:
            law = law * (remdm_tiny.SEQS[:, list(fixed)] == torch.tensor(list(fixed.values()))).all(1)
        a = alpha(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)).tolist()
        a[-1] = 1.0
        chain = [((a[k + 1] - a[k]) / (1 - a[k]), 0.0) for k in range(steps)]
        torch.testing.assert_close(remask_exact.remask_chain_law(exact, remdm_tiny.start(1, fixed)[0], chain), law,
                                   atol=1e-7, rtol=0)
    small = analytic.ExactDenoiser(remdm_tiny.SMALL_P, remdm_tiny.SMALL_VALUES, remdm_tiny.SMALL_LENGTH)
    chain = [(1 / (6 - k), 0.0) for k in range(6)]  # loglinear, 6 steps
    start = remdm_tiny.start(1, length=remdm_tiny.SMALL_LENGTH, mask_id=remdm_tiny.SMALL_VALUES)[0]
    torch.testing.assert_close(remask_exact.conf_chain_law(small, start, chain),
                               remask_exact.remask_chain_law(small, start, chain))
    steps = remdm_tiny.chain_steps(ReMDMConfig(steps=8, schedule="rescale", eta=0.6))
    law = remask_exact.remask_chain_law(exact, remdm_tiny.start(1)[0], steps)
    assert abs(float(law.sum()) - 1) < 1e-9 and bool((law >= 0).all())


@pytest.mark.parametrize("schedule", ["loglinear", "cosine", "linear"])
def test_plan_follows_the_paper(schedule, remdm_tiny):
    """sigma_t per the paper for every schedule, never above sigma_max; times and alphas on the grid."""
    proc = remdm_tiny.process(schedule)
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
                smax = remdm_tiny.sigma_max(st.alpha_t, st.alpha_s)
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
            assert st.sigma == min(PAPER_ETA["loop"], remdm_tiny.sigma_max(held, held))
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


def test_sigma_never_exceeds_sigma_max_and_reveal_probabilities_are_probabilities(remdm_tiny):
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
        for st in remdm_plan(remdm_tiny.process(["loglinear", "cosine", "linear"][int(r[1] * 3)]), cfg):
            assert 0 <= st.sigma <= remdm_tiny.sigma_max(st.alpha_t, st.alpha_s) + 1e-12
            p = (st.alpha_s - (1 - st.sigma) * st.alpha_t) / (1 - st.alpha_t) if st.alpha_t < 1 else 1.0
            assert -1e-12 <= p <= 1 + 1e-12


def test_eta_zero_is_mdlm(exact, analytic, remdm_tiny):
    """sigma = 0 is MDLM's ancestral sampler: same generator, same samples and the same nfe."""
    timed = analytic.ExactDenoiser(remdm_tiny.P_DATA, remdm_tiny.N_VALUES, remdm_tiny.LENGTH, time_conditioning=True)
    for name in ("cap", "rescale", "conf"):
        for model, cache, steps in ((exact, True, 32), (exact, False, 7), (timed, True, 16)):
            cfg = ReMDMConfig(steps=steps, schedule=name, eta=0.0, cache=cache)
            ours = remdm_tiny.sample(model, 500, cfg, seed=3, fixed={1: 0})
            ref = ancestral_sample(
                model,
                remdm_tiny.process(),
                remdm_tiny.start(500, {1: 0}),
                AncestralConfig(steps=steps, cache=cache),
                torch.Generator().manual_seed(3),
            )
            assert torch.equal(ours.ids, ref.ids) and ours.nfe == ref.nfe


# ---------------------------------------------------------------------------------------------
# (b) one step keeps the marginal


def _check_step_marginal(remdm_tiny, model, cfg: ReMDMConfig, n: int, seed: int) -> None:
    """From z_t ~ q(z_t | x0), x0 ~ p_data: after each planned step the masked fraction is 1 - alpha_s.

    Mask patterns at t are i.i.d. per token and the step treats tokens independently, so the masked
    indicators after the step are i.i.d. Bernoulli(1 - alpha_s): the binomial standard error is exact."""
    gen = torch.Generator().manual_seed(seed)
    for st in remdm_plan(remdm_tiny.process(), cfg):
        x0 = remdm_tiny.SEQS[torch.multinomial(remdm_tiny.P_DATA, n, replacement=True, generator=gen)]
        zt = torch.where(torch.rand(x0.shape, generator=gen, dtype=torch.float64) < st.alpha_t, x0, remdm_tiny.MASK)
        generated = torch.ones_like(zt, dtype=torch.bool)
        zs, revealed, remasked, _ = remdm_step(
            zt, generated, model(zt), st.alpha_t, st.alpha_s, st.sigma, remdm_tiny.MASK, generator=gen
        )
        kept = (zt != remdm_tiny.MASK) & (zs != remdm_tiny.MASK)
        assert bool((zs[kept] == zt[kept]).all()), "a decoded token changed value instead of being remasked"
        mask = remdm_tiny.MASK
        assert torch.equal(remasked, (zt != mask) & (zs == mask)) and torch.equal(revealed, (zt == mask) & (zs != mask))
        p, tokens = 1 - st.alpha_s, zs.numel()
        frac = float((zs == remdm_tiny.MASK).double().mean())
        se = math.sqrt(max(p * (1 - p), 1e-12) / tokens)
        assert abs(frac - p) < remdm_tiny.Z * se + 1e-12, (
            f"{cfg.schedule} at alpha_s={st.alpha_s:.3f}: masked {frac:.4f}, want {p:.4f} +- {se:.4f}"
        )


STEP_CONFIGS = {
    "cap": ReMDMConfig(steps=8, schedule="cap", eta=0.3),
    "rescale": ReMDMConfig(steps=8, schedule="rescale", eta=0.7),
    "loop": ReMDMConfig(steps=10, schedule="loop", eta=0.3, alpha_on=0.6),
}


@pytest.mark.parametrize("name", list(STEP_CONFIGS))
def test_step_keeps_the_marginal(exact, name, monkeypatch, remdm_tiny):
    _check_step_marginal(remdm_tiny, exact, STEP_CONFIGS[name], n=20_000, seed=1)
    # control: revealing with MDLM's probability while remasking leaves too many masks
    monkeypatch.setattr(remdm, "_unmask_prob", remdm_tiny.wrong_unmask_prob)
    with pytest.raises(AssertionError, match="masked"):
        _check_step_marginal(remdm_tiny, exact, STEP_CONFIGS[name], n=20_000, seed=1)


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
def test_samples_follow_the_exact_law(exact, case, remask_exact, remdm_tiny):
    """50k samples against the exact law of the sampler (TV bound and chi^2). The same check rejects
    them as samples of MDLM's law with the same steps: what passes is the remasking itself."""
    cfg, fixed = LAW_CASES[case]
    n = 50_000
    frames: list[torch.Tensor] = []
    ids = remdm_tiny.sample(exact, n, cfg, seed=4, fixed=fixed, on_step=lambda f: frames.append(f.ids)).ids
    remdm_tiny.assert_valid(ids)
    remask_exact.assert_matches(ids, remdm_tiny.law(exact, cfg, fixed), remdm_tiny.N_VALUES, case)
    with pytest.raises(AssertionError, match="MDLM.s law"):
        mdlm_law = remdm_tiny.law(exact, dataclasses.replace(cfg, eta=0.0), fixed)
        remask_exact.assert_matches(ids, mdlm_law, remdm_tiny.N_VALUES, "MDLM's law")
    assert len(frames) == cfg.steps + 1 and not bool((frames[-1] == remdm_tiny.MASK).any())
    for f in frames:  # fixed tokens never change, not even for a step
        for pos, tok in fixed.items():
            assert bool((f[:, pos] == tok).all())


@pytest.mark.parametrize("case", ["rescale-8", "loop-16"])
def test_wrong_reveal_probability_fails_the_law_check(exact, case, monkeypatch, remask_exact, remdm_tiny):
    """Control: MDLM's reveal probability while remasking (sigma ignored) fails the same check."""
    cfg, _ = LAW_CASES[case]
    law = remdm_tiny.law(exact, cfg)
    monkeypatch.setattr(remdm, "_unmask_prob", remdm_tiny.wrong_unmask_prob)
    ids = remdm_tiny.sample(exact, 50_000, cfg, seed=4).ids
    remdm_tiny.assert_valid(ids)
    with pytest.raises(AssertionError, match="law"):
        remask_exact.assert_matches(ids, law, remdm_tiny.N_VALUES, "sigma ignored when revealing")


@pytest.mark.parametrize("name", ["cap", "rescale", "loop"])
def test_many_steps_reproduce_p_data(exact, name, analytic, remask_exact, remdm_tiny):
    """The paper's eta, 128 steps: the exact law is within a small residual of p_data (same-step reveals
    only), and 20k samples are within tv_bound + residual of p_data."""
    cfg = ReMDMConfig(steps=128, schedule=name)
    n = 20_000
    ids = remdm_tiny.sample(exact, n, cfg, seed=5).ids
    remdm_tiny.assert_valid(ids)
    law = remdm_tiny.law(exact, cfg)
    residual = analytic.tv(law, remdm_tiny.P_DATA)
    assert residual < 0.01, f"{name}: exact law is {residual:.4f} from p_data"
    remask_exact.assert_matches(ids, law, remdm_tiny.N_VALUES, f"{name}, 128 steps")
    dist = analytic.tv(analytic.histogram(ids, remdm_tiny.N_VALUES), remdm_tiny.P_DATA)
    limit = analytic.tv_bound(law, n) + residual
    assert dist < limit, f"{name}: TV(samples, p_data) = {dist:.4f} >= {limit:.4f}"


def test_wrong_posterior_fails_the_p_data_check(analytic, remdm_tiny):
    """Control for the check above: a context-free denoiser (independent marginals) is far outside."""
    wrong = analytic.ExactDenoiser(remdm_tiny.P_DATA, remdm_tiny.N_VALUES, remdm_tiny.LENGTH, context=False)
    exact = analytic.ExactDenoiser(remdm_tiny.P_DATA, remdm_tiny.N_VALUES, remdm_tiny.LENGTH)
    cfg = ReMDMConfig(steps=128, schedule="cap")
    n = 20_000
    law = remdm_tiny.law(exact, cfg)
    wrong_ids = remdm_tiny.sample(wrong, n, cfg, seed=5).ids
    dist = analytic.tv(analytic.histogram(wrong_ids, remdm_tiny.N_VALUES), remdm_tiny.P_DATA)
    assert dist > 2 * (analytic.tv_bound(law, n) + analytic.tv(law, remdm_tiny.P_DATA))


def test_mask_logit_and_time_input(exact, analytic, remdm_tiny):
    """A huge [MASK] logit changes nothing ([MASK] is never a value); a time-conditioned denoiser is
    given each row's step time, t* = alpha^-1(alpha_on) throughout the loop."""
    cfg = ReMDMConfig(steps=24, schedule="loop", eta=0.3, alpha_on=0.7)
    loud = analytic.ExactDenoiser(remdm_tiny.P_DATA, remdm_tiny.N_VALUES, remdm_tiny.LENGTH, mask_logit=50.0)
    a, b = remdm_tiny.sample(exact, 2000, cfg, seed=6), remdm_tiny.sample(loud, 2000, cfg, seed=6)
    assert torch.equal(a.ids, b.ids)
    seen: list[float] = []

    class Timed(analytic.ExactDenoiser):
        def forward(self, ids, t=None):
            assert t is not None and t.shape == (ids.shape[0],) and bool((t == t[0]).all())
            assert bool((ids == remdm_tiny.MASK).any(dim=1).all()), "a row without masks was sent to the denoiser"
            seen.append(float(t[0]))
            return super().forward(ids, t)

    timed = Timed(remdm_tiny.P_DATA, remdm_tiny.N_VALUES, remdm_tiny.LENGTH, time_conditioning=True)
    res = remdm_tiny.sample(timed, 2000, cfg, seed=6)
    plan = remdm_plan(remdm_tiny.process(), cfg)
    assert res.nfe == len(seen) <= len(plan)
    want = [st.t for st in plan][: len(seen)]
    assert seen == pytest.approx(want, abs=1e-7)  # float32 time input
    assert sum(1 for t in seen if abs(t - 0.3) < 1e-6) >= 10  # the loop: loglinear alpha = 0.7 at t* = 0.3


# ---------------------------------------------------------------------------------------------
# (e) infilling


@pytest.mark.parametrize(
    "name,fixed",
    [("cap", {0: 2, 3: 1}), ("loop", {1: 0}), ("rescale", {0: 1, 1: 2})],
    ids=["cap-middle", "loop-suffix", "rescale-prefix"],
)
def test_infilling_samples_the_true_conditional(exact, name, fixed, analytic, remask_exact, remdm_tiny):
    """Fixed tokens never change in any frame, and the gap follows p_data(gap | fixed) within the
    bound plus the exact law's residual."""
    cfg = ReMDMConfig(steps=96, schedule=name, eta=0.05 if name != "loop" else None)
    n = 20_000
    pos, toks = list(fixed), torch.tensor(list(fixed.values()))
    frames: list[torch.Tensor] = []
    ids = remdm_tiny.sample(exact, n, cfg, seed=10, fixed=fixed, on_step=lambda f: frames.append(f.ids)).ids
    remdm_tiny.assert_valid(ids)
    assert all(bool((f[:, pos] == toks).all()) for f in frames), "a fixed token changed"
    ctx = (remdm_tiny.SEQS[:, pos] == toks).all(1)
    cond = analytic.conditional_law(remdm_tiny.P_DATA, remdm_tiny.SEQS, tuple(pos)) * ctx
    law = remdm_tiny.law(exact, cfg, fixed) * ctx
    remask_exact.assert_matches(ids, law, remdm_tiny.N_VALUES, f"infill {fixed}")
    dist = analytic.tv(analytic.histogram(ids, remdm_tiny.N_VALUES), cond)
    limit = analytic.tv_bound(law, n) + analytic.tv(law, cond)
    assert dist < limit, f"TV(gap samples, p(gap | fixed)) = {dist:.4f} >= {limit:.4f}"
    gap_bits = sum(1 << l for l in range(remdm_tiny.LENGTH) if l not in fixed)
    blind = analytic.marginal_masses(remdm_tiny.P_DATA, remdm_tiny.SEQS)[gap_bits] * ctx
    assert analytic.tv(blind, cond) > 2 * limit  # ignoring the context is caught


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
def test_config_errors(exact, bad, match, remdm_tiny):
    with pytest.raises(UserError, match=match):
        remdm_tiny.sample(exact, 2, ReMDMConfig(**bad), seed=0)


def test_needs_a_masked_process(exact, remdm_tiny):
    class NotMasked:
        mask_id = remdm_tiny.MASK

    with pytest.raises(UserError, match="masked diffusion"):
        remdm_sample(exact, NotMasked(), remdm_tiny.start(2), ReMDMConfig(steps=4))
