"""The entropy-bound sampler (DiffusionGemma's): its acceptance rule equals transformers' EntropyBoundSampler,
and its loop accepts, renoises and finalises as documented."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from textdiffusion.core.errors import UserError
from textdiffusion.samplers import SAMPLERS
from textdiffusion.samplers.entropy_bound import EntropyBoundConfig, entropy_bound_accept, entropy_bound_sample


@pytest.mark.parametrize("bound", [0.05, 0.5, 2.0])
def test_accept_rule_equals_transformers(bound):
    from transformers.models.diffusion_gemma.generation_diffusion_gemma import (
        EntropyBoundSampler,
        EntropyBoundSamplerConfig,
    )

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 12, 20, generator=gen) * torch.linspace(0.5, 8, 12)[None, :, None]
    reference = EntropyBoundSampler(EntropyBoundSamplerConfig(entropy_bound=bound), 12, 20, 8)
    reference.accept_canvas(torch.zeros(3, 12, dtype=torch.long), torch.ones(3, 12, dtype=torch.long), logits, 0)
    assert torch.equal(entropy_bound_accept(logits, bound), reference.accepted_token_mask)
    # by hand: the largest k lowest-entropy positions whose sum minus their maximum is within the bound
    p = logits.double().softmax(-1)
    entropy = -(p * p.log()).sum(-1)
    for row in range(3):
        values, order = entropy[row].sort()
        k = max(i for i in range(1, 13) if values[:i].sum() - values[i - 1] <= bound)
        assert set(order[:k].tolist()) == set(entropy_bound_accept(logits, bound)[row].nonzero().flatten().tolist())


class PeakedToy(torch.nn.Module):
    """Logits that ignore the input: positions 0-3 nearly certain of token 3 + i, positions 4-7 uniform."""

    cfg = SimpleNamespace(time_conditioning=False, seq_len=8)

    def forward(self, x, t=None):
        logits = torch.zeros(x.shape[0], 8, 10)
        for i in range(4):
            logits[:, i, 3 + i] = 30.0
        logits[:, 4:, 9] = -1.0  # an argmax for the final canvas: any id but 9
        return logits


def test_loop_accepts_lowest_entropy_renoises_rest_and_ends_on_argmax():
    process = SimpleNamespace(name="toy_uniform", mask_id=9, vocab_size=10)
    x = torch.full((2, 8), 9)
    x[:, 7] = 1  # a fixed token stays
    out = entropy_bound_sample(PeakedToy(), process, x, EntropyBoundConfig(steps=3, entropy_bound=0.1),
                               generator=torch.Generator().manual_seed(0), record_frames=True)
    first = out.frames[1].ids
    assert torch.equal(first[:, :4], torch.tensor([3, 4, 5, 6]).expand(2, 4))  # the four certain tokens
    assert not (first == 9).any() and (first[:, 7] == 1).all()  # canvas noise never holds [MASK]
    assert torch.equal(out.ids[:, :4], torch.tensor([3, 4, 5, 6]).expand(2, 4))
    assert (out.ids[:, 4:7] == 0).all() and (out.ids[:, 7] == 1).all() and out.nfe == 3
    assert "entropy_bound" in SAMPLERS
    with pytest.raises(UserError, match="uniform-state"):
        entropy_bound_sample(PeakedToy(), SimpleNamespace(name="masked", mask_id=9, vocab_size=10), x,
                             EntropyBoundConfig())


class RecordingCanvasToy(torch.nn.Module):
    """A canvas model that records what the sampler passes: the sequence up to the canvas end, where the
    canvas starts, and the self-conditioning logits."""

    cfg = SimpleNamespace(time_conditioning=False, canvas_model=True, canvas_length=4, seq_len=10)

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, t=None, canvas_start=None, self_conditioning=None):
        self.calls.append((x.shape[1], canvas_start, self_conditioning))
        return torch.linspace(-1, 1, 10).expand(x.shape[0], x.shape[1], 10) * (1 + len(self.calls))


def test_canvas_models_get_prompt_split_windows_and_tempered_self_conditioning():
    toy = RecordingCanvasToy()
    x = torch.full((1, 10), 9)
    x[:, :2] = torch.tensor([5, 6])  # a two-token prompt, then two canvases of 4 (the model's canvas_length)
    cfg = EntropyBoundConfig(steps=2, entropy_bound=0.1, t_max=0.8, t_min=0.4)
    out = entropy_bound_sample(toy, SimpleNamespace(name="uniform_canvas", mask_id=9, vocab_size=10), x, cfg,
                               generator=torch.Generator().manual_seed(0))
    assert [(n, c) for n, c, _ in toy.calls] == [(6, 2), (6, 2), (10, 6), (10, 6)]
    assert toy.calls[0][2] is None and toy.calls[2][2] is None  # each canvas starts without self-conditioning
    # the second step of a canvas reads the first step's logits, [MASK] forbidden, divided by t = 0.8 (2 of 2 left)
    first = torch.linspace(-1, 1, 10).expand(1, 6, 10).double() * 2
    first[..., 9] = float("-inf")
    torch.testing.assert_close(toy.calls[1][2], first / 0.8)
    assert out.nfe == 4 and torch.equal(out.ids[:, :2], torch.tensor([[5, 6]]))
    assert (out.ids[:, 2:] == 8).all()  # the argmax once [MASK] (id 9) is forbidden
