"""Gradient guidance (Diffusion-LM's control): each control's score is the exact probability of its event when
token beliefs are independent across positions (checked by enumerating every sequence of a tiny vocabulary),
and guided sampling with the exact x0-predictor of `gaussian_toy` meets controls that unguided sampling meets
half or a sixth of the time. Guidance is a heuristic: inside the control's event it does not sample p_data's
conditional law (measured TV 0.15-0.4), so no test claims that."""

from __future__ import annotations

import itertools

import pytest
import torch

from textdiffusion.core.errors import UserError
from textdiffusion.guidance import Contains, Guidance, Length, TokensAt
from textdiffusion.samplers.gaussian import GaussianConfig, gaussian_sample

V, L = 4, 4


def _beliefs(seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.log_softmax(torch.randn(1, L, V, generator=gen, dtype=torch.float64), -1)


def _probability(event, logp: torch.Tensor) -> float:
    """P(event) for independent positions with beliefs logp [1, L, V], by enumerating all V**L sequences."""
    seqs = torch.tensor(list(itertools.product(range(V), repeat=L)))
    weights = logp[0].gather(1, seqs.T).sum(0).exp()  # [V**L]
    return float(weights[event(seqs)].sum())


@pytest.mark.parametrize("seed", [0, 1])
def test_positional_and_length_scores_are_exact_probabilities(seed):
    logp = _beliefs(seed)
    at = TokensAt({0: 2, 3: 1})
    assert at.log_prob(logp).exp().item() == pytest.approx(_probability(at.satisfied, logp), rel=1e-9)
    for n in (0, 2, 3):
        length = Length(n, eos_id=3)
        assert length.log_prob(logp).exp().item() == pytest.approx(_probability(length.satisfied, logp), rel=1e-6)


def test_contains_is_the_expected_number_of_occurrences():
    """exp(Contains) = sum over starts of P(match there) = E[#occurrences] >= P(contains), equal when two
    occurrences cannot overlap in one sequence; for certain beliefs it counts the occurrences."""
    logp = _beliefs(2)
    seqs = torch.tensor(list(itertools.product(range(V), repeat=L)))
    weights = logp[0].gather(1, seqs.T).sum(0).exp()
    for tokens in ([1], [0, 2], [3, 3, 1]):
        control = Contains(tokens)
        windows = seqs.unfold(1, len(tokens), 1)
        count = (windows == torch.tensor(tokens)).all(-1).sum(-1).double()
        assert control.log_prob(logp).exp().item() == pytest.approx(float((weights * count).sum()), rel=1e-9)
        assert float((weights * count).sum()) >= _probability(control.satisfied, logp) - 1e-12
    certain = torch.log(torch.nn.functional.one_hot(torch.tensor([[0, 2, 0, 2]]), V).double().clamp_min(1e-300))
    assert Contains([0, 2]).log_prob(certain).exp().item() == pytest.approx(2.0)
    assert Contains([2, 2]).satisfied(torch.tensor([[0, 2, 2, 1], [2, 0, 2, 0]])).tolist() == [True, False]


@pytest.mark.parametrize("control", [TokensAt({0: 1}), Contains([2, 0])], ids=["tokens-at", "contains"])
def test_guidance_meets_controls_the_unguided_sampler_rarely_meets(control, gaussian_toy, tiny_exact):
    length, n = 3, 400
    data = tiny_exact.tiny_data(length)
    prior = float(data.p_data[control.satisfied(data.seqs)].sum())  # 0.505 and 0.167
    process = gaussian_toy.toy_process(1000)
    model = gaussian_toy.ExactEmbeddingDenoiser(process, data.p_data, length)
    rates = {}
    for name, guidance in (("unguided", None), ("guided", Guidance([control]))):
        out = gaussian_sample(model, process, tiny_exact.masked_start(n, length), GaussianConfig(50, clamp=False,
                              guidance=guidance), generator=torch.Generator().manual_seed(0))
        rates[name] = float(control.satisfied(out.ids).float().mean())
        assert out.nfe == 50 * (1 if guidance is None else 1 + guidance.steps)
    assert abs(rates["unguided"] - prior) < 4.5 * (prior * (1 - prior) / n) ** 0.5
    assert rates["guided"] >= 0.95 > prior + 0.3


def test_guidance_through_a_pipeline_keeps_the_prompt_and_checks_its_input(gaussian_pipeline):
    pipe = gaussian_pipeline()
    word = pipe.tokenizer.encode("love")
    out = pipe.generate(num_samples=2, length=16, prompt="O ", steps=4, seed=0,
                        guidance=Guidance([Contains(word)], steps=2))
    assert out.nfe == 4 * 3 and all(text.startswith("O ") for text in out.texts)
    with pytest.raises(UserError, match="Guidance"):
        pipe.generate(steps=2, guidance="love")
    with pytest.raises(UserError, match="controls"):
        Guidance([])
    with pytest.raises(UserError, match="weights"):
        Guidance([Contains(word)], weights=(1.0, 2.0))
    with pytest.raises(UserError, match="no room"):
        pipe.generate(length=8, steps=2, guidance=Guidance([Length(8, pipe.tokenizer.eos_id)]))
