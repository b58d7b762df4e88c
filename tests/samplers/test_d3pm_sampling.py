"""D3PM's sampler checked against exact answers on a tiny vocabulary, plus sampling the real Transformer.

p_data is the fixed random (Dirichlet(1), seed 2) distribution over the 3**4 = 81 sequences of
length 4 over 3 tokens used by the MDLM tests; [MASK] is token 3. `d3pm_exact.ExactD3PMDenoiser`
returns the true posterior p_data(x0_l | x_t) for the chosen forward process, and
`d3pm_exact.reverse_law` computes, by brute force over all 4**4 states, the exact output law of the
factorised reverse chain that the sampler runs. With T = 50 steps that law is within TV 0.014 of p_data
(the factorised chain is exact only as T grows; the residual falls as 1/T).

Thresholds are rigorous: `tv_bound` (failure probability 1e-6) and Pearson chi^2 at its 1 - 3e-7
quantile. Every draw is seeded.
"""

from __future__ import annotations

import pytest
import torch

from textdiffusion.core.errors import UserError
from textdiffusion.processes.d3pm import D3PM, NEG
from textdiffusion.samplers import SAMPLERS
from textdiffusion.samplers.d3pm import D3PMConfig, d3pm_sample

TRANSITIONS = ("absorbing", "uniform", "embedding")  # d3pm_tiny.TRANSITIONS (tests/conftest.py)

N_SAMPLES = 12_000


class _Eq4Literal(D3PM):
    """Control: the paper's eq. 4 taken literally, sum_x0 q(x_s, x_t | x0) p~(x0 | x_t) without 1/q(x_t | x0)."""

    def reverse_logits(self, log_x0, xt, s, t):
        return self.kernel.log_col(s, t, xt, log_x0.dtype) + self.kernel.log_mix(s, log_x0.clamp_min(NEG))


class _NoStay(D3PM):
    """Control: [MASK] forbidden in the reverse step (as one forbids it in the x0 prediction)."""

    def reverse_logits(self, log_x0, xt, s, t):
        out = super().reverse_logits(log_x0, xt, s, t)
        out[:, self.mask_id] = NEG
        return out


@pytest.fixture(scope="module")
def draw(d3pm_tiny, tiny_exact):
    """draw(model, process, n, seed, steps=None, context=None, **cfg): n D3PM samples from all-[MASK] rows."""

    def sample(model, process, n: int, seed: int, steps: int | None = None, context: dict[int, int] | None = None,
               **cfg):
        x = tiny_exact.masked_start(n, d3pm_tiny.LENGTH, context)
        return d3pm_sample(model, process, x, D3PMConfig(steps=steps, **cfg), torch.Generator().manual_seed(seed))

    return sample


# ---------------------------------------------------------------------------------------------
# the exact references


@pytest.mark.parametrize("transition", TRANSITIONS)
def test_reference_laws(transition, analytic, d3pm_tiny, tiny_exact):
    """The exact reverse law tends to p_data with T; eq. 4 taken literally is biased except for absorbing."""
    st = d3pm_tiny.exact_setup(transition)
    law = st.law()
    assert abs(float(law.sum()) - 1) < 1e-9
    # the factorised chain's residual at T = 50 (exact values 0.009-0.013)
    assert analytic.tv(law, d3pm_tiny.P_DATA) < 0.015
    eq4 = st.law(eq4=True)
    if transition == "absorbing":
        torch.testing.assert_close(eq4, law, atol=1e-12, rtol=0)
    else:
        assert analytic.tv(eq4, d3pm_tiny.P_DATA) > 0.2
    # with no information left (t = T) the exact denoiser gives p_data's marginals
    seqs, p_data, length = d3pm_tiny.SEQS, d3pm_tiny.P_DATA, d3pm_tiny.LENGTH
    marg = torch.stack([torch.stack([p_data[seqs[:, l] == v].sum() for v in range(tiny_exact.N_VALUES)])
                        for l in range(length)])
    absorbing = transition == "absorbing"
    start = torch.full((1, length), tiny_exact.MASK) if absorbing else torch.zeros(1, length, dtype=torch.long)
    out = torch.softmax(st.model(start, torch.ones(1)).double(), -1)[0, :, :tiny_exact.N_VALUES]
    torch.testing.assert_close(out, marg, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# the sampler reproduces p_data


@pytest.mark.parametrize("transition", TRANSITIONS)
def test_sampler_reproduces_data_distribution(transition, analytic, d3pm_tiny, tiny_exact, draw):
    """All T steps with the exact posterior: samples follow the exact chain law, which is within 0.015 of p_data."""
    st = d3pm_tiny.exact_setup(transition)
    res = draw(st.model, st.process, N_SAMPLES, seed=1)
    tiny_exact.assert_valid(res.ids)
    law = st.law()
    tiny_exact.assert_matches(res.ids, law, f"{transition}, all {d3pm_tiny.T} steps")
    dist = analytic.tv(analytic.histogram(res.ids, tiny_exact.N_VALUES), d3pm_tiny.P_DATA)
    limit = analytic.tv_bound(law, N_SAMPLES) + analytic.tv(law, d3pm_tiny.P_DATA)
    assert dist < limit, f"TV(samples, p_data) = {dist:.4f} >= {limit:.4f}"
    assert res.nfe <= d3pm_tiny.T


@pytest.mark.parametrize("transition", TRANSITIONS)
def test_strided_steps_follow_the_exact_law(transition, d3pm_tiny, tiny_exact, draw):
    """8 strided steps use q(x_s | x_t, x0) across the gaps: samples follow that chain's exact law."""
    st = d3pm_tiny.exact_setup(transition)
    frames = []
    res = draw(st.model, st.process, N_SAMPLES, seed=2, steps=8)
    tiny_exact.assert_valid(res.ids)
    tiny_exact.assert_matches(res.ids, st.law(8), f"{transition}, 8 steps")
    res = d3pm_sample(
        st.model,
        st.process,
        torch.full((3, d3pm_tiny.LENGTH), tiny_exact.MASK),
        D3PMConfig(steps=8),
        torch.Generator().manual_seed(0),
        record_frames=True,
        on_step=frames.append,
    )
    assert [f.step for f in res.frames] == list(range(9)) and len(frames) == 9
    assert [round(f.t * d3pm_tiny.T) for f in res.frames] == st.process.sampling_times(8)
    assert res.nfe <= 8


@pytest.mark.parametrize(
    "transition,wrong",
    [
        ("absorbing", _NoStay),
        ("uniform", _Eq4Literal),
        ("embedding", _Eq4Literal),
    ],
    ids=["absorbing-nostay", "uniform-eq4", "embedding-eq4"],
)
def test_wrong_reverse_formula_fails_the_check(transition, wrong, analytic, d3pm_tiny, tiny_exact, draw):
    """Controls: the same exact posterior with a wrong reverse formula lands far from p_data."""
    st = d3pm_tiny.exact_setup(transition)
    n = 6_000
    ids = draw(st.model, d3pm_tiny.tiny_process(transition, cls=wrong), n, seed=3).ids
    tiny_exact.assert_valid(ids)
    law = st.law()
    limit = analytic.tv_bound(law, n) + analytic.tv(law, d3pm_tiny.P_DATA)  # what the correct sampler must stay under
    dist = analytic.tv(analytic.histogram(ids, tiny_exact.N_VALUES), d3pm_tiny.P_DATA)
    assert dist > 2 * limit, f"{wrong.__name__}: TV(samples, p_data) = {dist:.4f} not clearly above {limit:.4f}"
    if wrong is _Eq4Literal:  # and it samples exactly the law the reference predicts for eq. 4
        tiny_exact.assert_matches(ids, st.law(eq4=True), "eq. 4 literal")


@pytest.mark.parametrize("transition", TRANSITIONS)
def test_infilling_samples_the_conditional(transition, analytic, d3pm_exact, d3pm_tiny, tiny_exact, draw):
    """Fixed tokens never change, and the gap follows p_data(gap | context) (exact chain law, context clean)."""
    context = {0: 2, 3: 1}
    proc = d3pm_tiny.tiny_process(transition)
    model = d3pm_exact.ExactD3PMDenoiser(d3pm_tiny.P_DATA, tiny_exact.N_VALUES, d3pm_tiny.LENGTH, proc,
                                         fixed=tuple(context))
    res = draw(model, proc, N_SAMPLES, seed=4, context=context)
    tiny_exact.assert_valid(res.ids)
    assert bool((res.ids[:, 0] == 2).all() and (res.ids[:, 3] == 1).all())
    start = d3pm_exact.start_law(proc, tiny_exact.N_VALUES, d3pm_tiny.LENGTH, context)
    law = d3pm_exact.reverse_law(proc, model, tiny_exact.N_VALUES, d3pm_tiny.LENGTH, proc.sampling_times(), start,
                                 fixed=tuple(context))
    tiny_exact.assert_matches(res.ids, law, f"{transition} infill")
    ctx = (d3pm_tiny.SEQS[:, 0] == 2) & (d3pm_tiny.SEQS[:, 3] == 1)
    assert analytic.tv(law, analytic.conditional_law(d3pm_tiny.P_DATA, d3pm_tiny.SEQS, tuple(context)) * ctx) < 0.02


# ---------------------------------------------------------------------------------------------
# the real model


@pytest.mark.parametrize("transition", TRANSITIONS)
def test_sampling_a_tiny_random_model(byte_tok, transition, tiny_transformer):
    """Untrained byte model: valid ids, never [MASK], fixed tokens untouched, frames and nfe as promised."""
    proc = D3PM(byte_tok.vocab_size, byte_tok.mask_id, transition=transition, num_steps=60)
    model = tiny_transformer(byte_tok, proc.needs_time_conditioning, seq_len=24).eval()
    cfg_cls, fn = SAMPLERS[proc.default_sampler]
    x = torch.full((3, 24), byte_tok.mask_id)
    x[:, :4] = torch.tensor(byte_tok.encode("Once"))
    for steps, temperature, top_p in ((None, 1.0, 1.0), (7, 0.0, 1.0), (500, 0.8, 0.9)):
        seen = []
        res = fn(
            model,
            proc,
            x,
            cfg_cls(steps=steps, temperature=temperature, top_p=top_p),
            generator=torch.Generator().manual_seed(0),
            record_frames=True,
            on_step=seen.append,
        )
        n = min(steps or 60, 60)
        assert res.ids.shape == x.shape and bool(((res.ids >= 0) & (res.ids < byte_tok.vocab_size)).all())
        assert not bool((res.ids == byte_tok.mask_id).any())
        assert bool(torch.equal(res.ids[:, :4], x[:, :4]))
        assert len(res.frames) == n + 1 == len(seen) and 1 <= res.nfe <= n
        assert all(bool(torch.equal(f.ids[:, :4], x[:, :4])) for f in res.frames)
    with pytest.raises(UserError):
        fn(model, proc, x, cfg_cls(steps=0))
