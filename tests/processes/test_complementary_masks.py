"""Fast-dLLM v2's complementary masks: the mirrored draw masks exactly the tokens the first keeps, and the
training loss is the mean of the two one-draw estimates (so it stays an unbiased estimate of the bound)."""

from __future__ import annotations

import pytest
import torch

from textdiffusion.core.errors import UserError
from textdiffusion.models import ModelConfig, Transformer
from textdiffusion.processes import BlockDiffusion, MaskedDiffusion

VOCAB, LENGTH = 11, 16


def tiny_model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig(vocab_size=VOCAB, seq_len=2 * LENGTH, d_model=32, n_layers=1, n_heads=2)).eval()


def data(batch: int = 4) -> torch.Tensor:
    return torch.randint(0, VOCAB - 1, (batch, LENGTH), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("s", [0.01, 0.3, 0.5, 0.97])
def test_the_mirrored_draw_masks_the_complement(s):
    process = MaskedDiffusion(VOCAB, VOCAB - 1, complementary_masks=True)
    x0 = data()
    u = torch.rand(x0.shape, generator=torch.Generator().manual_seed(1))
    t = torch.full((x0.shape[0],), s)
    _, first = process.corrupt(x0, process.noise_level(t), u)
    _, second = process.corrupt(x0, process.noise_level(1 - t), 1 - u)
    assert torch.equal(first ^ second, torch.ones_like(first))  # every token masked in exactly one of the pair


def test_block_draws_mirror_per_block():
    process = BlockDiffusion(VOCAB, VOCAB - 1, block_size=4, complementary_masks=True)
    x0 = data()
    noise = process.train_noise(x0, torch.Generator().manual_seed(2))
    noise["t"] = noise["t"].clamp(0.01, 0.99)  # inside [t_min, 1 - t_min], where the pair is exact
    masks = []
    for t, u in ((noise["t"], noise["u"]), (1 - noise["t"], 1 - noise["u"])):
        s = process.token_t(t, LENGTH)
        masks.append(u >= process.schedule.alpha(process.noise_level(s)))
    assert torch.equal(masks[0] ^ masks[1], torch.ones_like(masks[0]))


@pytest.mark.parametrize("make", [lambda c: MaskedDiffusion(VOCAB, VOCAB - 1, complementary_masks=c),
                                  lambda c: BlockDiffusion(VOCAB, VOCAB - 1, block_size=4, complementary_masks=c),
                                  lambda c: MaskedDiffusion(VOCAB, VOCAB - 1, ce_lambda=0.5, complementary_masks=c)])
def test_the_loss_is_the_mean_of_the_draw_and_its_mirror(make):
    model, x0 = tiny_model(), data()
    paired, plain = make(True), make(False)
    noise = plain.train_noise(x0, torch.Generator().manual_seed(3))
    mirrored = {k: 1 - v for k, v in noise.items()}
    with torch.no_grad():
        got = paired.loss(model, x0, noise)
        expected = (plain.loss(model, x0, noise).total + plain.loss(model, x0, mirrored).total) / 2
    torch.testing.assert_close(got.total, expected, rtol=1e-5, atol=1e-5)
    assert got.n_tokens == x0.numel()
    assert paired.config()["complementary_masks"] is True and "complementary_masks" not in plain.config()


def test_bad_settings_are_refused():
    with pytest.raises(UserError, match="loglinear"):
        MaskedDiffusion(VOCAB, VOCAB - 1, schedule="cosine", complementary_masks=True)
    with pytest.raises(UserError, match="mask_rate_min = 1 - mask_rate_max"):
        BlockDiffusion(VOCAB, VOCAB - 1, mask_rate_min=0.3, mask_rate_max=0.8, complementary_masks=True)
    BlockDiffusion(VOCAB, VOCAB - 1, mask_rate_min=0.2, mask_rate_max=0.8, complementary_masks=True)
