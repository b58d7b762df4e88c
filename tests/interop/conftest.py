"""What the interop tests share: the tiny Kuleshov-group DiT (MDLM / BD3-LM / DUO checkpoints) in their format."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

V, L, D, H, N_LAYERS, COND = 50258, 16, 16, 2, 2, 8  # GPT-2 + [MASK]; everything else tiny


def their_state(adaln: bool = True, seed: int = 0, bd3lm: bool = False,
                uniform: bool = False) -> dict[str, torch.Tensor]:
    """Random weights under their key names (adaLN non-zero, so the modulation is exercised). The output row of
    the last id is zero, as MDLM / BD3-LM training leaves their [MASK] row, except for DUO (`uniform`)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, std=0.3):
        return torch.randn(*shape, generator=g) * std

    s = {"backbone.vocab_embed.embedding": r(V, D, std=1.0),
         "backbone.rotary_emb.inv_freq": 1.0 / 10000 ** (torch.arange(0, D // H, 2).float() / (D // H))}
    if adaln:
        s.update({"backbone.sigma_map.mlp.0.weight": r(COND, 256), "backbone.sigma_map.mlp.0.bias": r(COND),
                  "backbone.sigma_map.mlp.2.weight": r(COND, COND), "backbone.sigma_map.mlp.2.bias": r(COND)})
    for i in range(N_LAYERS):
        p = f"backbone.blocks.{i}."
        s.update({p + "norm1.weight": 1 + r(D), p + "attn_qkv.weight": r(3 * D, D), p + "attn_out.weight": r(D, D),
                  p + "norm2.weight": 1 + r(D), p + "mlp.0.weight": r(4 * D, D), p + "mlp.0.bias": r(4 * D),
                  p + "mlp.2.weight": r(D, 4 * D), p + "mlp.2.bias": r(D)})
        if adaln:
            s.update({p + "adaLN_modulation.weight": r(6 * D, COND), p + "adaLN_modulation.bias": r(6 * D)})
    s.update({"backbone.output_layer.norm_final.weight": 1 + r(D),
              "backbone.output_layer.linear.weight": r(V, D), "backbone.output_layer.linear.bias": r(V)})
    if adaln:
        s.update({"backbone.output_layer.adaLN_modulation.weight": r(2 * D, COND),
                  "backbone.output_layer.adaLN_modulation.bias": r(2 * D)})
    if not uniform:
        s["backbone.output_layer.linear.weight"][V - 1] = 0
        s["backbone.output_layer.linear.bias"][V - 1] = 0
    if bd3lm:
        s.update({"sampling_eps_min": torch.tensor(1e-3), "sampling_eps_max": torch.tensor(0.999)})
    return s


@pytest.fixture(scope="session")
def kuleshov_dit() -> SimpleNamespace:
    """The tiny Kuleshov-group DiT: its shape V (GPT-2 + [MASK]), L, D, H, N_LAYERS, COND, and
    their_state(adaln=True, seed=0, bd3lm=False, uniform=False), random weights under their key names."""
    return SimpleNamespace(V=V, L=L, D=D, H=H, N_LAYERS=N_LAYERS, COND=COND, their_state=their_state)
