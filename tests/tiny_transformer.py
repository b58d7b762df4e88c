"""An untrained tiny Transformer on the byte tokenizer, and the end-to-end loss checks every family shares."""

from __future__ import annotations

import torch
from torch import nn

from textdiffusion.models import ModelConfig, Transformer

TEXTS = ["To be, or not to be, that is the question", "Whether 'tis nobler in the mind to suffer"]


def tiny_transformer(tok, time_conditioning: bool, seq_len: int) -> Transformer:
    torch.manual_seed(0)
    return Transformer(
        ModelConfig(
            vocab_size=tok.vocab_size,
            seq_len=seq_len,
            d_model=32,
            n_layers=1,
            n_heads=2,
            time_conditioning=time_conditioning,
        )
    )


class Spy(nn.Module):
    """Records every input the wrapped model sees."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.cfg, self.seen = inner, inner.cfg, []

    def forward(self, ids, t=None):
        self.seen.append(ids.clone())
        return self.inner(ids, t)


def check_loss_trains(proc, tok, seq_len: int):
    """`proc.loss` on two 24-byte lines through a spied tiny Transformer: finite, positive, every token
    counted, and finite non-zero gradients. Returns (spy, x0, generator, noise) for the family's own checks."""
    model = Spy(tiny_transformer(tok, proc.needs_time_conditioning, seq_len))
    x0 = torch.tensor([ids[:24] for ids in tok.encode_batch(TEXTS)])
    gen = torch.Generator().manual_seed(0)
    noise = proc.sample_noise(x0, gen)
    out = proc.loss(model, x0, noise)
    assert bool(torch.isfinite(out.total)) and out.n_tokens == x0.numel() and out.total.item() > 0
    out.total.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(bool(torch.isfinite(g).all()) for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    return model, x0, gen, noise


def check_loss_mask(proc, model: Spy, x0: torch.Tensor, noise: dict[str, torch.Tensor]) -> None:
    """With loss_mask scoring positions 5-14 (`noise` must noise them): the context is never corrupted
    and contributes nothing, the bound is finite and positive, and only the scored tokens are counted."""
    mask = torch.zeros_like(x0, dtype=torch.bool)
    mask[:, 5:15] = True
    model.seen.clear()
    with torch.no_grad():
        per_seq = proc.nelbo_per_sequence(model, x0, noise, mask)
        assert all(bool(torch.equal(seen[~mask], x0[~mask])) for seen in model.seen)
        assert bool((model.seen[0][mask] != x0[mask]).any())
        assert bool(torch.isfinite(per_seq).all()) and bool((per_seq > 0).all())
        none = proc.nelbo_per_sequence(model, x0, noise, torch.zeros_like(mask))
        assert float(none.abs().max()) == 0.0
        assert proc.loss(model, x0, noise, mask).n_tokens == 20
