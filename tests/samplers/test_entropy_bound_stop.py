"""DiffusionGemma's early stop in the entropy-bound sampler: the rule decides as transformers'
StableAndConfidentStoppingCriteria does, step by step, and a stable, confident canvas ends its denoising."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from textdiffusion.core.errors import UserError
from textdiffusion.samplers.entropy_bound import EntropyBoundConfig, StableAndConfident, entropy_bound_sample


@pytest.mark.parametrize("stability", [0, 1, 2])
@pytest.mark.parametrize("confidence", [0.005, 0.3])
def test_rule_equals_transformers_step_by_step(stability, confidence):
    from transformers.models.diffusion_gemma.generation_diffusion_gemma import StableAndConfidentStoppingCriteria

    gen = torch.Generator().manual_seed(stability)
    reference = StableAndConfidentStoppingCriteria(stability, confidence)
    ours = StableAndConfident(stability, confidence)
    canvases = torch.randint(0, 6, (3, 4, 7), generator=gen)  # three canvases; steps reuse them to be stable
    sharpness = [0.5, 40.0, 40.0, 2.0, 40.0, 40.0, 40.0, 40.0]  # confident where the logits are sharp
    decisions = []
    for step, sharp in enumerate(sharpness):
        argmax = canvases[min(step // 2, 2)].clone()
        argmax[step % 4] = canvases[0, step % 4] if step > 5 else argmax[step % 4]  # rows settle late
        logits = torch.randn(4, 7, 9, generator=gen)
        logits.scatter_(-1, argmax[..., None], sharp)  # the argmax is argmax
        expected = reference(argmax, logits)
        got = ours(argmax, logits)
        assert torch.equal(got, expected), f"step {step}"
        decisions.append(got)
    assert torch.cat(decisions).any() and not torch.cat(decisions).all()  # the sequence tests both answers


class SettlingToy(torch.nn.Module):
    """Sharp logits for ids 3, 4, ... at every position from its first call on, whatever the input."""

    cfg = SimpleNamespace(time_conditioning=False, seq_len=6)

    def forward(self, x, t=None):
        logits = torch.zeros(x.shape[0], x.shape[1], 10)
        logits[:, torch.arange(x.shape[1]), 3 + torch.arange(x.shape[1]) % 5] = 60.0
        return logits


def test_a_stable_confident_canvas_stops_early():
    process = SimpleNamespace(name="toy_uniform", mask_id=9, vocab_size=10)
    x = torch.full((2, 6), 9)
    run = lambda **options: entropy_bound_sample(  # noqa: E731
        SettlingToy(), process, x, EntropyBoundConfig(steps=12, **options), generator=torch.Generator().manual_seed(0))
    expected = (3 + torch.arange(6) % 5).expand(2, 6)
    stopped, full, patient = run(), run(early_stop=False), run(stability_threshold=3)
    assert stopped.nfe == 2 and full.nfe == 12 and patient.nfe == 4  # stable once the argmax repeats
    for out in (stopped, full, patient):
        assert torch.equal(out.ids, expected)
    with pytest.raises(UserError, match="stability_threshold"):
        run(stability_threshold=-1)


class HalfSettlingToy(SettlingToy):
    """Row 0 settles as SettlingToy's; row 1's argmax changes at every call, so the batch runs every step."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x, t=None):
        logits = super().forward(x, t) * (8.0 / 60.0)  # sure, but not so sure that every position is accepted
        self.calls += 1
        logits[1] = torch.randn(x.shape[1], 10, generator=torch.Generator().manual_seed(self.calls))
        return logits


def test_a_finished_row_stays_as_it_was_while_the_batch_goes_on():
    process = SimpleNamespace(name="toy_uniform", mask_id=9, vocab_size=10)
    # a tiny entropy bound accepts one position per step and renoises the rest: a canvas that kept moving would
    # show it; a loose confidence threshold lets row 0 stop all the same
    cfg = EntropyBoundConfig(steps=8, entropy_bound=1e-9, confidence_threshold=5.0)
    out = entropy_bound_sample(HalfSettlingToy(), process, torch.full((2, 6), 9), cfg,
                               generator=torch.Generator().manual_seed(1), record_frames=True)
    assert out.nfe == 8  # row 1 never stops
    after_stop = [frame.ids[0] for frame in out.frames[2:-1]]  # row 0 stopped at step 2
    assert all(torch.equal(ids, after_stop[0]) for ids in after_stop)
    assert len({tuple(frame.ids[1].tolist()) for frame in out.frames[2:-1]}) > 1  # row 1 kept moving
