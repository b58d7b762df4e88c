"""Classifier-free guidance (LLaDA's unsupervised CFG, samplers/cfg.py) against its closed form on a table model.

The toy denoiser is an arbitrary logit table over every input of length L with 3 values + [MASK], so the guided
law p~(v) ∝ p(v | prompt, x_t)^(1+w) / p(v | [MASK]s, x_t)^w is computed by hand from the table and compared
with (a) the wrapper's output, exactly, and (b) the draws of every masked sampler, by a chi-square test at
the 1 - 3e-7 level (one masked position: every sampler draws it from p~ in one step).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from textdiffusion.core.errors import UserError
from textdiffusion.models import ModelConfig, Transformer
from textdiffusion.processes import MaskedDiffusion
from textdiffusion.samplers import SAMPLERS
from textdiffusion.samplers.cfg import GuidedDenoiser, guided

N_VALUES, MASK = 3, 3
MASKED_SAMPLERS = ("ancestral", "confidence", "threshold", "remdm", "first_hitting", "semi_ar")


@pytest.fixture(scope="module")
def table_model(masked_exact):
    """table_model(length, seed): a random table of logits (`masked_exact.TableDenoiser`) over 3 values."""

    def build(length: int, seed: int) -> torch.nn.Module:
        model = masked_exact.TableDenoiser.random(N_VALUES, length, seed=seed, scale=1.5)
        model.cfg = SimpleNamespace(time_conditioning=False, seq_len=length)
        return model

    return build


@pytest.fixture(scope="module")
def law(analytic):
    """law(model, ids, pos): p(x_pos | ids) over the 3 values: the table's softmax without [MASK] (SUBS)."""

    def p(model: torch.nn.Module, ids: list[int], pos: int) -> torch.Tensor:
        row = model.table[analytic.seq_index(torch.tensor(ids), N_VALUES + 1), pos, :N_VALUES]
        return torch.softmax(row.double(), -1)

    return p


@pytest.fixture(scope="module")
def guided_law(law):
    """guided_law(model, ids, prompt, pos, w): the guided law of x_pos, in closed form."""

    def p(model: torch.nn.Module, ids: list[int], prompt: list[int], pos: int, w: float) -> torch.Tensor:
        uncond = [MASK if i in prompt else v for i, v in enumerate(ids)]
        q = law(model, ids, pos) ** (1 + w) / law(model, uncond, pos) ** w
        return q / q.sum()

    return p


def test_wrapper_is_the_closed_form_and_zero_is_the_model_itself(guided_law, table_model):
    model = table_model(3, seed=0)
    x = torch.tensor([[1, MASK, MASK], [2, MASK, MASK]])
    for w in (0.5, 2.0):
        out = torch.softmax(GuidedDenoiser(model, x[0] != MASK, MASK, w)(x)[..., :N_VALUES].double(), -1)
        for b in range(2):
            for pos in (1, 2):
                expected = guided_law(model, x[b].tolist(), [0], pos, w)
                assert torch.allclose(out[b, pos], expected, atol=1e-6)
    assert guided(model, x, MASK, 0.0) is model
    with pytest.raises(UserError, match="cfg_scale"):
        guided(model, x, MASK, -1.0)
    with pytest.raises(UserError, match="same prompt positions"):
        guided(model, torch.tensor([[1, MASK, MASK], [1, 1, MASK]]), MASK, 1.0)


@pytest.mark.parametrize("sampler", MASKED_SAMPLERS)
def test_scale_zero_is_identical_to_no_guidance(sampler, tiny_pipeline):
    steps = {} if sampler == "first_hitting" else {"steps": 4} if sampler != "threshold" else {}
    plain = tiny_pipeline.generate(num_samples=2, length=12, prompt="ab", sampler=sampler, seed=3, **steps)
    zero = tiny_pipeline.generate(num_samples=2, length=12, prompt="ab", sampler=sampler, seed=3, cfg_scale=0.0,
                                  **steps)
    assert torch.equal(plain.ids, zero.ids)


@pytest.mark.parametrize("sampler", MASKED_SAMPLERS)
def test_every_sampler_draws_the_guided_law(sampler, analytic, guided_law, law, table_model):
    w, n = 1.5, 4000
    model = table_model(2, seed=1)
    process = MaskedDiffusion(vocab_size=N_VALUES + 1, mask_id=MASK)
    config_cls, sample = SAMPLERS[sampler]
    options = {"steps": 1} if "steps" in config_cls.__dataclass_fields__ else {}
    x = torch.tensor([[2, MASK]]).repeat(n, 1)
    gen = torch.Generator().manual_seed(7)
    out = sample(model, process, x, config_cls(cfg_scale=w, **options), generator=gen).ids
    assert bool((out[:, 0] == 2).all())
    expected = guided_law(model, [2, MASK], [0], 1, w)
    stat, dof = analytic.chi2_statistic(torch.bincount(out[:, 1], minlength=N_VALUES), expected)
    assert stat < analytic.chi2_quantile(dof), (sampler, stat)
    # and the guided law is not the plain one, which the same test would reject
    plain = law(model, [2, MASK], 1)
    assert analytic.chi2_statistic(plain * n, expected)[0] > analytic.chi2_quantile(dof)


def test_first_hitting_two_positions_follow_the_guided_chain(analytic, guided_law, table_model):
    """Two masked positions, one reveal per pass in a uniformly random order: each reveal is drawn from the
    guided law given the prompt and what is revealed, so the joint law is a mixture over the two orders."""
    w, n = 1.0, 6000
    model = table_model(3, seed=2)
    process = MaskedDiffusion(vocab_size=N_VALUES + 1, mask_id=MASK)
    config_cls, sample = SAMPLERS["first_hitting"]
    x = torch.tensor([[1, MASK, MASK]]).repeat(n, 1)
    out = sample(model, process, x, config_cls(cfg_scale=w), generator=torch.Generator().manual_seed(11)).ids
    pairs = analytic.all_sequences(N_VALUES, 2)
    expected = torch.zeros(len(pairs), dtype=torch.float64)
    for k, (a, b) in enumerate(pairs.tolist()):
        first_1 = guided_law(model, [1, MASK, MASK], [0], 1, w)[a] * guided_law(model, [1, a, MASK], [0], 2, w)[b]
        first_2 = guided_law(model, [1, MASK, MASK], [0], 2, w)[b] * guided_law(model, [1, MASK, b], [0], 1, w)[a]
        expected[k] = 0.5 * (first_1 + first_2)
    counts = torch.bincount(analytic.seq_index(out[:, 1:], N_VALUES), minlength=len(pairs))
    stat, dof = analytic.chi2_statistic(counts, expected)
    assert stat < analytic.chi2_quantile(dof), stat


def test_kv_cached_guidance_matches_the_uncached_pass():
    """Fast-dLLM's caches with guidance: the doubled batch's cache, read for all rows or a subset, gives the
    guided logits of the full pass when the sequence has not changed (both halves read their own keys)."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=8, seq_len=10, d_model=16, n_layers=2, n_heads=2)).eval()
    mask = 7
    x = torch.tensor([[1, 2, 3, mask, mask, mask, mask, mask, mask, mask]] * 3)
    x[1, 5], x[2, 8] = 4, 5
    g = GuidedDenoiser(model, torch.arange(10) < 3, mask, 2.0)
    with torch.no_grad():
        full = g(x)
        cache = g.new_cache()
        assert torch.allclose(g(x, cache=cache), full, atol=1e-5)
        cache.keep(torch.arange(4))  # the prefix cache of a block starting at 4
        rest = g(x[:, 4:], cache=cache, commit=False, positions=torch.arange(4, 10))
        assert torch.allclose(rest, full[:, 4:], atol=1e-5)
        rows = torch.tensor([2, 0])
        sub = g(x[rows, 4:], cache=cache.rows(rows), commit=False, positions=torch.arange(4, 10))
        assert torch.allclose(sub, full[rows, 4:], atol=1e-5)
