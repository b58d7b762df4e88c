"""Diffusion-LM's sampler: with the exact x0-predictor (`gaussian_toy`) it reproduces a known discrete law
after rounding, ancestrally over every level and with strided DDIM steps, and infills from the exact
conditional law; each step is checked against the closed-form posterior; clamping, frames and the
Pipeline plumbing (prompts, infilling, scoring, sampler compatibility) on a real untrained backbone.

Regime: the Gaussian reverse steps are exact only as the step size shrinks; the settings below are within
TV 0.014 of p_data (measured), far inside the rigorous 12,000-sample bound `tv_bound` (0.036), while
controls with a wrong variance or a prediction at the wrong level land at TV 0.12-0.15.
"""

from __future__ import annotations

import pytest
import torch

from textdiffusion.core.errors import UserError
from textdiffusion.processes import MaskedDiffusion
from textdiffusion.samplers import SAMPLERS, SUMMARIES
from textdiffusion.samplers.gaussian import GaussianConfig, ddim_step, gaussian_sample

N_SAMPLES = 12_000
LENGTH = 2


@pytest.mark.parametrize("big_t, steps, eta", [(200, None, 1.0), (1000, 50, 1.0), (1000, 50, 0.0)],
                         ids=["ancestral-all-levels", "ancestral-strided", "ddim"])
def test_exact_predictor_reproduces_the_discrete_law(big_t, steps, eta, gaussian_toy, tiny_exact):
    data = tiny_exact.tiny_data(LENGTH)
    process = gaussian_toy.toy_process(big_t)
    model = gaussian_toy.ExactEmbeddingDenoiser(process, data.p_data, LENGTH)
    out = gaussian_sample(model, process, tiny_exact.masked_start(N_SAMPLES, LENGTH),
                          GaussianConfig(steps, eta, clamp=False), generator=torch.Generator().manual_seed(0))
    tiny_exact.assert_valid(out.ids, LENGTH)
    assert out.nfe == model.calls == (steps or big_t)
    tiny_exact.assert_matches(out.ids, data.p_data, f"T={big_t}, steps={steps}, eta={eta}")


def test_infilling_samples_the_exact_conditional_law(analytic, gaussian_toy, tiny_exact):
    data = tiny_exact.tiny_data(LENGTH)
    process = gaussian_toy.toy_process(1000)
    model = gaussian_toy.ExactEmbeddingDenoiser(process, data.p_data, LENGTH, fixed={1: 0})
    x = tiny_exact.masked_start(N_SAMPLES, LENGTH, fixed={1: 0})
    out = gaussian_sample(model, process, x, GaussianConfig(steps=50, clamp=False),
                          generator=torch.Generator().manual_seed(1))
    assert bool((out.ids[:, 1] == 0).all())
    law = analytic.conditional_law(data.p_data, data.seqs, fixed=[1])
    law = torch.where(data.seqs[:, 1] == 0, law, torch.zeros_like(law))
    tiny_exact.assert_matches(out.ids, law, "infill position 0 given position 1 = 0")


def test_a_step_with_eta_one_is_the_gaussian_posterior(gaussian_toy):
    process = gaussian_toy.toy_process(100)
    gen = torch.Generator().manual_seed(0)
    dim = gaussian_toy.EMBED_DIM
    xt, zhat = torch.randn(4, 3, dim, generator=gen), torch.randn(4, 3, dim, generator=gen)
    for s, t in [(0, 1), (40, 41), (10, 60)]:
        a, b, v = (float(c) for c in process.posterior(s, t))
        mean = ddim_step(process, xt, zhat, t, s, 1.0, torch.zeros_like(xt))
        torch.testing.assert_close(mean, a * zhat + b * xt, rtol=1e-5, atol=1e-5)
        spread = ddim_step(process, xt, zhat, t, s, 1.0, torch.ones_like(xt)) - mean
        torch.testing.assert_close(spread, torch.full_like(xt, v ** 0.5), rtol=1e-5, atol=1e-6)
        ddim = ddim_step(process, xt, zhat, t, s, 0.0, torch.ones_like(xt))  # eta = 0: no noise at all
        assert torch.equal(ddim, ddim_step(process, xt, zhat, t, s, 0.0, torch.zeros_like(xt)))


class _Constant(torch.nn.Module):
    """Predicts the same vector at every position (to check the clamping trick); `table`: the toy's embeddings."""

    def __init__(self, vector: torch.Tensor, table: torch.Tensor):
        super().__init__()
        self.embed = torch.nn.Embedding.from_pretrained(table, freeze=False)
        self.vector = vector

    def forward(self, xt, u):
        return self.vector.expand_as(xt)


def test_clamping_snaps_each_prediction_to_the_nearest_embedding(gaussian_toy, tiny_exact):
    process = gaussian_toy.toy_process(100)
    table = gaussian_toy.toy_table()
    near_one = table[1] + torch.tensor([0.9, -0.6, 1.1])  # still nearest to token 1 (and never [MASK])
    x = tiny_exact.masked_start(64, 3)
    runs = {}
    for name, vector, clamp in [("clamped", near_one, True), ("exact", table[1], False), ("raw", near_one, False)]:
        out = gaussian_sample(_Constant(vector, gaussian_toy.toy_table()), process, x,
                              GaussianConfig(steps=20, clamp=clamp), generator=torch.Generator().manual_seed(5),
                              record_frames=True)
        runs[name] = out
    assert torch.equal(runs["clamped"].ids, runs["exact"].ids)
    assert all(torch.equal(a.ids, b.ids) for a, b in zip(runs["clamped"].frames, runs["exact"].frames, strict=True))
    assert not all(torch.equal(a.ids, b.ids) for a, b in zip(runs["raw"].frames, runs["exact"].frames, strict=True))


def test_pipeline_prompts_infills_frames_and_scores(gaussian_pipeline):
    pipe = gaussian_pipeline()
    out = pipe.generate(num_samples=2, length=20, prompt="ROMEO.", steps=8, seed=0, return_frames=True)
    assert out.nfe == 8 and len(out.frames) == 9 and [f.step for f in out.frames] == list(range(9))
    assert [f.t for f in out.frames][0] == 1.0 and out.frames[-1].t == 0.0
    prompt = torch.tensor(pipe.tokenizer.encode("ROMEO."))
    for frame in out.frames:  # the fixed context is shown as itself, every generated position as a token
        assert torch.equal(frame.ids[:, : len(prompt)], prompt.expand(2, -1))
        assert not bool((frame.ids == pipe.tokenizer.mask_id).any())
    assert torch.equal(out.frames[-1].ids, out.ids)
    assert all(text.startswith("ROMEO.") for text in out.texts)
    fill = pipe.infill("The [MASK]x5 of the night", steps=4, seed=1, context="noised", eta=0.0)
    assert fill.texts[0].startswith("The ") and fill.texts[0].endswith(" of the night") and len(fill.fills[0][0]) == 5
    assert pipe.generate(length=12, steps=5, seed=3).texts == pipe.generate(length=12, steps=5, seed=3).texts
    res = pipe.score("To be, or not to be", t_samples=2)[0]
    assert res.n_tokens == len(pipe.tokenizer.encode("To be, or not to be")) and res.nats_per_token > 0
    assert "gaussian" in SAMPLERS and "gaussian" in SUMMARIES


def test_samplers_and_families_refuse_each_other(tiny_pipeline, gaussian_pipeline, tiny_exact):
    pipe = gaussian_pipeline()
    with pytest.raises(UserError, match="continuous embedding"):
        pipe.generate(sampler="ancestral", steps=2)
    with pytest.raises(UserError, match="continuous embedding"):
        tiny_pipeline.generate(sampler="gaussian", steps=2)
    with pytest.raises(UserError, match="eta"):
        pipe.generate(steps=2, eta=1.5)
    with pytest.raises(UserError, match="rounding"):
        pipe.generate(steps=2, rounding="floor")
    with pytest.raises(UserError, match="gaussian"):
        gaussian_sample(tiny_pipeline.model, MaskedDiffusion(vocab_size=260, mask_id=tiny_exact.MASK),
                        tiny_exact.masked_start(1, 4), GaussianConfig())
    assert tiny_exact.N_VALUES == 3
