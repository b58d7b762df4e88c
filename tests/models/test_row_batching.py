"""Per-row positions [B, L] and per-row boolean masks [B, 1, L, K] (what a merged serving pass hands the model):
each row's logits are the ones it gets alone with its own [L] positions and [L, K] mask."""

from __future__ import annotations

import pytest
import torch

from textdiffusion.models import ModelConfig, Transformer
from textdiffusion.models.dit import KuleshovDiT, KuleshovDiTConfig

BUILD = {
    "transformer": lambda: Transformer(ModelConfig(vocab_size=23, seq_len=12, d_model=16, n_layers=2, n_heads=2,
                                                   time_conditioning=True)),
    "dit": lambda: KuleshovDiT(KuleshovDiTConfig(vocab_size=23, seq_len=12, d_model=16, n_layers=2, n_heads=2,
                                                 cond_dim=8, time_conditioning=True)),
}


@pytest.mark.parametrize("kind", sorted(BUILD))
def test_each_row_gets_its_own_positions_and_mask(kind):
    torch.manual_seed(0)
    model = BUILD[kind]().eval()
    with torch.no_grad():
        for p in model.parameters():  # far from the (adaLN-zero) init: positions and masks show in the logits
            p.normal_(0.0, 0.3)
    g = torch.Generator().manual_seed(1)
    ids, t = torch.randint(0, 23, (3, 6), generator=g), torch.rand(3, generator=g)
    positions = torch.stack([torch.arange(6), torch.arange(4, 10), torch.tensor([9, 2, 14, 3, 0, 20])])  # 14, 20:
    mask = torch.rand(3, 1, 6, 6, generator=g) < 0.5  # past the tables (computed, not looked up)
    mask |= torch.eye(6, dtype=torch.bool)
    with torch.no_grad():
        together = model(ids, t, attn_mask=mask, positions=positions)
        for r in range(3):
            alone = model(ids[r : r + 1], t[r : r + 1], attn_mask=mask[r, 0], positions=positions[r])
            torch.testing.assert_close(together[r : r + 1], alone, atol=2e-5, rtol=1e-4)
        shared = model(ids, t, attn_mask=mask[0, 0], positions=positions[0])  # one mask and positions for all
    assert (shared[1:] - together[1:]).abs().max() > 1e-2  # which would show
