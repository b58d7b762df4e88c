"""DiffusionBERT's spindle schedule (processes/spindle.py, samplers/spindle.py) checked against exact answers on a
tiny vocabulary: 3 token values + [MASK], sequences of 2 or 3 tokens, every mask pattern and sequence enumerated.

* the schedule: alpha_w(0) = 1, alpha_w(1) = 0, non-increasing, the hazard is -alpha'/(1 - alpha), and rarer
  (more informative) tokens are masked earlier;
* lambda = 0 is MDLM's log-linear process: the same masks and the same NELBO estimate;
* the bound: its exact expectation is >= -log p_theta(x0) of the generative chain (solved as an ODE, which agrees
  with masked_exact.model_law at lambda = 0), for an arbitrary table model; it is tight (up to the t_min step) for
  the true posterior, and not without the GenMD4 rate term;
* one sampler step: the per-position law is exactly q(x_s^l | x_t) of the forward process, and the draws follow it;
  whole runs with the true posterior tend to the data law (and would not with one shared schedule);
* a saved model rebuilds the same schedule (config round trip; `textdiffusion adapt` from a tiny BERT).
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from textdiffusion.api.pipeline import Pipeline
from textdiffusion.cli import main
from textdiffusion.core.errors import UserError
from textdiffusion.processes import build_process
from textdiffusion.processes.masked import MaskedDiffusion
from textdiffusion.processes.spindle import SpindleMaskedDiffusion, spindle_alpha, spindle_rate
from textdiffusion.samplers.spindle import SpindleConfig, spindle_sample, spindle_step

N_VALUES, MASK, VOCAB = 3, 3, 4
COUNTS = [60, 12, 2, 0]  # token 0 frequent, token 2 rare (most informative); [MASK] never in the data


def spindle(lam: float = 0.3, t_min: float = 1e-3, counts=COUNTS) -> SpindleMaskedDiffusion:
    return SpindleMaskedDiffusion(VOCAB, MASK, spindle_lambda=lam, token_counts=counts, t_min=t_min)


def test_schedule_is_a_valid_masking_schedule_and_masks_informative_tokens_first():
    t = torch.linspace(0, 1, 2001, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    for lam in (0.0, 0.3, 0.5, 2.0, 50.0):
        counts = torch.randint(0, 1000, (40,), generator=gen)
        proc = SpindleMaskedDiffusion(40, 7, spindle_lambda=lam, token_counts=counts.tolist())
        alpha = spindle_alpha(proc.amp[None, :], t[:, None])  # [T, V]
        assert torch.equal(alpha[0], torch.ones(40, dtype=torch.float64)) and float(alpha[-1].abs().max()) < 1e-15
        assert bool((alpha.diff(dim=0) <= 1e-15).all()), lam  # monotone for every token, clipped or not
        mid = t[1:-1, None]
        h = spindle_rate(proc.amp[None, :], mid)
        eps = 1e-6
        slope = (spindle_alpha(proc.amp[None, :], mid + eps) - spindle_alpha(proc.amp[None, :], mid - eps)) / (2 * eps)
        torch.testing.assert_close(h * (1 - alpha[1:-1]), -slope, atol=1e-7, rtol=1e-6)  # h = -alpha'/(1 - alpha)
    for lam in (0.1, 0.3):
        alpha = spindle_alpha(spindle(lam).amp[:3][None, :], t[1:-1, None])
        assert bool((alpha[:, 2] < alpha[:, 1]).all() and (alpha[:, 1] < alpha[:, 0]).all())  # rare: masked first
    # lambda 0.3 clips the frequent token at -1/pi; lambda 50 every real token at +-1/pi
    assert (spindle(0.1).clipped, spindle(0.3).clipped, spindle(50.0).clipped) == (0, 1, 3)


def _noise(b: int, length: int, seed: int, dtype=torch.float64) -> dict:
    gen = torch.Generator().manual_seed(seed)
    s = torch.rand(b, generator=gen, dtype=dtype)
    s[:4] = torch.tensor([1e-4, 5e-4, 0.999, 1.0], dtype=dtype)  # reconstruction draws and the t = 1 end
    return {"t": s, "u": torch.rand(b, length, generator=gen, dtype=dtype)}


def test_lambda_zero_is_mdlm_loglinear_exactly(masked_exact):
    model = masked_exact.TableDenoiser.random(N_VALUES, 3, seed=4)
    x0 = torch.randint(0, N_VALUES, (64, 3), generator=torch.Generator().manual_seed(1))
    plain = MaskedDiffusion(VOCAB, MASK, "loglinear", t_min=1e-3)
    zero = SpindleMaskedDiffusion(VOCAB, MASK, spindle_lambda=0.0, token_counts=COUNTS, t_min=1e-3)
    assert zero.uniform
    for dtype in (torch.float32, torch.float64):
        noise = _noise(64, 3, seed=2, dtype=dtype)
        t = plain.noise_level(noise["t"])
        assert torch.equal(plain.corrupt(x0, t, noise["u"])[1], zero.corrupt(x0, t, noise["u"])[1])
    noise = _noise(64, 3, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(zero.nelbo_per_sequence(model, x0, noise),
                                   plain.nelbo_per_sequence(model, x0, noise), rtol=1e-12, atol=0)
    for t, s in ((1.0, 0.75), (0.5, 0.25), (0.2, 0.0)):  # the sampler's step: (alpha_s - alpha_t) / (1 - alpha_t)
        torch.testing.assert_close(zero.keep_probs(t, s), torch.full((VOCAB,), (t - s) / t, dtype=torch.float64))


@pytest.fixture(scope="module")
def data_law(analytic) -> torch.Tensor:
    return analytic.random_distribution(N_VALUES, 3, seed=5)


def test_ctmc_law_reference_is_the_mdlm_law_at_lambda_zero(masked_exact, spindle_exact):
    """The ODE solution of the generative chain agrees with masked_exact's combinatorial law when every token
    shares the log-linear schedule (so the reference for lambda > 0 is trustworthy)."""
    table = masked_exact.TableDenoiser.random(N_VALUES, 2, seed=6)
    proc = spindle(0.0, t_min=1e-2)
    law = spindle_exact.ctmc_law(proc, lambda ids, t: table(ids), N_VALUES, 2)
    want = masked_exact.model_law(lambda ids: table(ids), N_VALUES, 2, keep_tmin=1 - proc.t_min)
    torch.testing.assert_close(law, want, atol=1e-9, rtol=0)
    assert abs(float(law.sum()) - 1) < 1e-9


def test_bound_is_an_upper_bound_for_any_model_and_tight_for_the_true_posterior(data_law, analytic, masked_exact,
                                                                                spindle_exact):
    proc = spindle(0.3, t_min=1e-3)
    seqs = analytic.all_sequences(N_VALUES, 3)
    # an arbitrary time-independent denoiser: the bound's exact expectation >= -log p_theta(x0), every x0
    table = masked_exact.TableDenoiser.random(N_VALUES, 3, seed=7)
    bound = spindle_exact.expected_bound(proc, table, seqs)
    # the quadrature has converged
    assert float((bound - spindle_exact.expected_bound(proc, table, seqs, nodes=32)).abs().max()) < 1e-7
    nll = -torch.log(spindle_exact.ctmc_law(proc, lambda ids, t: table(ids), N_VALUES, 3))
    gap = bound - nll
    assert float(gap.min()) > 0 and float(gap.max()) > 0.05, (gap.min(), gap.max())
    # the true posterior under the spindle forward process: the bound is -log p_data up to the t_min step
    exact = spindle_exact.ExactSpindleDenoiser(data_law, N_VALUES, 3, proc.amp)
    tight = spindle_exact.expected_bound(proc, exact, seqs)
    nll_exact = -torch.log(spindle_exact.ctmc_law(proc, exact, N_VALUES, 3))
    torch.testing.assert_close(nll_exact, -torch.log(data_law), atol=2e-4, rtol=0)  # the chain reverses q
    assert float((tight - nll_exact).min()) > -1e-7 and float((tight - nll_exact).max()) < 2e-4
    # without GenMD4's rate term sum_j (h_j - h_x0) mu(j) (only the per-token weight h_x0) it is not a bound:
    # it falls below -log p_theta(x0) for some x0
    no_term = type("NoRateTerm", (SpindleMaskedDiffusion,), {"uniform": property(lambda self: True)})
    loose = no_term(VOCAB, MASK, spindle_lambda=0.3, token_counts=COUNTS, t_min=1e-3)
    assert float((spindle_exact.expected_bound(loose, exact, seqs) - nll_exact).min()) < -0.5


def _forward_reverse_law(all_sequences, p_data: torch.Tensor, amp: torch.Tensor, xt: list[int], t: float,
                         s: float) -> torch.Tensor:
    """q(x_s^l | x_t) per position [L, V] by enumerating x0 and x_s: q(x_s | x0) then q(x_t | x_s) per token
    (all_sequences: `analytic.all_sequences`)."""
    length = len(xt)
    seqs = all_sequences(N_VALUES, length)
    out = torch.zeros(length, VOCAB, dtype=torch.float64)
    alpha = lambda w, tau: float(spindle_alpha(amp[w], torch.tensor(tau, dtype=torch.float64)))  # noqa: E731
    for x0, p0 in zip(seqs.tolist(), p_data.tolist(), strict=True):
        for xs in all_sequences(2, length).tolist():  # 1: masked at s
            ps = p0
            for l in range(length):
                a_s, a_t = alpha(x0[l], s), alpha(x0[l], t)
                if xs[l]:  # masked at s stays masked at t
                    ps *= (1 - a_s) * (xt[l] == MASK)
                else:  # clean at s: masked by t with probability 1 - a_t / a_s
                    ps *= a_s * ((1 - a_t / a_s) if xt[l] == MASK else a_t / a_s * (xt[l] == x0[l]))
            for l in range(length):
                out[l, MASK if xs[l] else x0[l]] += ps
    return out / out[0].sum()


def test_one_sampler_step_draws_the_exact_reverse_law(data_law, analytic, spindle_exact):
    proc = spindle(0.3)
    exact = spindle_exact.ExactSpindleDenoiser(data_law, N_VALUES, 3, proc.amp)
    xt = torch.tensor([[MASK, 1, MASK]])
    for t, s in ((0.6, 0.3), (0.95, 0.05), (0.3, 0.0)):
        logp = torch.log_softmax(exact(xt, torch.tensor([t], dtype=torch.float64)), -1)
        law = proc.reverse_probs(logp, xt, t, s)[0]
        reference = _forward_reverse_law(analytic.all_sequences, data_law, proc.amp, xt[0].tolist(), t, s)
        torch.testing.assert_close(law, reference, atol=1e-12, rtol=0)
    t, s, n = 0.6, 0.3, 40_000  # the draws follow that law: 5 standard errors per cell
    logits = exact(xt, torch.tensor([t], dtype=torch.float64)).float()
    out = spindle_step(proc, logits.expand(n, -1, -1), xt.expand(n, -1), t, s, torch.Generator().manual_seed(0))
    assert bool((out[:, 1] == 1).all())  # a clean token never changes
    law = proc.reverse_probs(torch.log_softmax(logits.double(), -1), xt, t, s)[0]
    for l in (0, 2):
        freq = torch.bincount(out[:, l], minlength=VOCAB).double() / n
        assert bool(((freq - law[l]).abs() <= 5 * (law[l] * (1 - law[l]) / n).sqrt() + 1e-12).all()), (l, freq)


def test_the_sampler_writes_the_data_law_with_the_true_posterior(analytic, spindle_exact):
    """Whole runs: the exact law of the sampler's output (carried through every step) tends to p_data as the
    steps grow (same-step reveals are the only error); with one shared schedule's keep probabilities instead of
    each token's own it stays far off. 20,000 draws of the sampler match its exact law."""
    p_data = analytic.random_distribution(N_VALUES, 2, seed=11)
    proc = spindle(0.3)
    exact = spindle_exact.ExactSpindleDenoiser(p_data, N_VALUES, 2, proc.amp)
    tvs = [analytic.tv(spindle_exact.sampler_chain_law(proc, exact, N_VALUES, 2, steps), p_data) for steps in (16, 64)]
    assert tvs[1] < 0.003 and tvs[1] < tvs[0] / 3, tvs
    shared = spindle_exact.sampler_chain_law(proc, exact, N_VALUES, 2, 64, keep=lambda t, s: (t - s) / t)
    assert analytic.tv(shared, p_data) > 0.1  # 0.19 here: far outside what the steps explain
    law = spindle_exact.sampler_chain_law(proc, exact, N_VALUES, 2, 64)
    n = 20_000
    ids = spindle_sample(exact, proc, torch.full((n, 2), MASK), SpindleConfig(steps=64),
                         torch.Generator().manual_seed(12)).ids
    assert not bool((ids == MASK).any())
    assert analytic.tv(analytic.histogram(ids, N_VALUES), law) < analytic.tv_bound(law, n)


def test_a_saved_process_rebuilds_the_same_schedule_scores_and_samples(masked_exact):
    proc = spindle(0.5)
    again = build_process("masked-spindle", vocab_size=VOCAB, mask_id=MASK, **json.loads(json.dumps(proc.config())))
    assert torch.equal(again.amp, proc.amp) and again.config() == proc.config()
    model = masked_exact.TableDenoiser.random(N_VALUES, 3, seed=8)
    x0 = torch.randint(0, N_VALUES, (16, 3), generator=torch.Generator().manual_seed(9))
    noise = _noise(16, 3, seed=10)
    with torch.no_grad():
        assert torch.equal(proc.nelbo_per_sequence(model, x0, noise), again.nelbo_per_sequence(model, x0, noise))
    start = torch.full((8, 3), MASK)
    draws = [spindle_sample(model, p, start, SpindleConfig(steps=5), torch.Generator().manual_seed(3)).ids
             for p in (proc, again)]
    assert torch.equal(draws[0], draws[1]) and not bool((draws[0] == MASK).any())


def test_adapt_from_a_masked_lm_with_the_spindle_schedule_round_trips(tmp_path, tiny_overrides, write_corpus,
                                                                      write_masked_lm):
    folder, _ = write_masked_lm(tmp_path / "bert", "bert")
    corpus = write_corpus(tmp_path / "c.jsonl", n_docs=60)
    out = tmp_path / "run"
    assert main(["adapt", "--from", str(folder), "--out", str(out), *tiny_overrides(corpus, steps=2, every=2),
                 "data.seq_len=24", "process.name=masked-spindle", "process.spindle_lambda=0.5"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    fitted = next(r for r in rows if "spindle_tokens_counted" in r)
    pipe = Pipeline.from_pretrained(out, device="cpu")
    proc = pipe.process
    assert isinstance(proc, SpindleMaskedDiffusion) and proc.spindle_lambda == 0.5
    assert int(proc.counts.sum()) == fitted["spindle_tokens_counted"] and proc.clipped == fitted["spindle_clipped"]
    saved = json.loads((out / "checkpoint" / "config.json").read_text())
    assert saved["train_config"]["process"]["extra"]["token_counts"] == proc.counts.tolist()  # for --resume
    assert main(["adapt", "--from", str(folder), "--out", str(out), "--resume", "train.steps=4"]) == 0
    assert torch.equal(Pipeline.from_pretrained(out, device="cpu").process.amp, proc.amp)
    ids = pipe.generate(length=16, steps=4, seed=0).ids
    assert not bool((ids == pipe.tokenizer.mask_id).any())
    with pytest.raises(UserError, match="one schedule per token"):
        pipe.generate(length=8, steps=2, seed=0, sampler="ancestral")


def test_bad_settings_fail_in_one_line(masked_exact):
    with pytest.raises(UserError, match="spindle_lambda must be"):
        SpindleMaskedDiffusion(VOCAB, MASK, spindle_lambda=-1.0)
    with pytest.raises(UserError, match="does not apply"):
        SpindleMaskedDiffusion(VOCAB, MASK, schedule="cosine")
    with pytest.raises(UserError, match="token_counts must be 4 counts"):
        SpindleMaskedDiffusion(VOCAB, MASK, token_counts=[1, 2])
    with pytest.raises(UserError, match="no token counts"):
        SpindleMaskedDiffusion(VOCAB, MASK).token_alpha(torch.zeros(1, 2, dtype=torch.long), torch.ones(1))
    with pytest.raises(UserError, match="runs masked-spindle models"):
        spindle_sample(masked_exact.TableDenoiser.random(N_VALUES, 2, seed=0), MaskedDiffusion(VOCAB, MASK),
                       torch.full((1, 2), MASK), SpindleConfig(steps=2))
    assert math.isclose(spindle(0.0).keep_probs(1.0, 0.0)[0].item(), 1.0)
