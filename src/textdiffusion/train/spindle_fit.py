"""The token counts a masked-spindle run (processes/spindle.py) fits its schedule to: the training split's.

`fit_spindle(trainer)` counts every token of the trainer's training chunks (an in-memory corpus or a prepared
one), gives the counts to the process, and writes them into the run's config (process.token_counts), so the
checkpoint's config.json (process section and train_config) carries them: a resumed run, a run started from it
(FinetuneTrainer) and `Pipeline.from_pretrained` all rebuild the same schedule without reading the corpus again.
"""

from __future__ import annotations

import numpy as np
import torch

from ..core.errors import UserError
from ..data.packing import ChunkBatches
from ..processes.spindle import SpindleMaskedDiffusion

ROWS_PER_READ = 65536  # prepared corpora are read in slabs of rows


def corpus_counts(batches: object, vocab_size: int) -> torch.Tensor:
    """How often each token id occurs in the training chunks of `batches` (ChunkBatches), [V] int64."""
    chunks = getattr(batches, "chunks", None) if isinstance(batches, ChunkBatches) else None
    if isinstance(chunks, torch.Tensor):
        return torch.bincount(chunks.flatten().cpu(), minlength=vocab_size)[:vocab_size]
    maps = getattr(chunks, "maps", None)
    if maps is not None:  # a prepared corpus: memory-mapped shards
        counts = np.zeros(vocab_size, dtype=np.int64)
        for rows in maps:
            for start in range(0, rows.shape[0], ROWS_PER_READ):
                slab = np.asarray(rows[start : start + ROWS_PER_READ]).reshape(-1).astype(np.int64)
                counts += np.bincount(slab, minlength=vocab_size)[:vocab_size]
        return torch.from_numpy(counts)
    raise UserError("process.name=masked-spindle counts the training tokens before training, which a streamed "
                    "corpus does not allow: `textdiffusion prepare` it first, or set data.streaming=false")


def fit_spindle(trainer) -> None:
    """Fit a masked-spindle trainer's schedule to its training corpus (module notes); other processes: nothing.
    A process that already has counts (a resumed run, read from its config) keeps them."""
    process = trainer.process
    if not isinstance(process, SpindleMaskedDiffusion):
        return
    fresh = process.counts is None
    if fresh:
        process.fit_counts(corpus_counts(trainer.batches, process.vocab_size))
    trainer.cfg.process.extra["token_counts"] = process.counts.tolist()
    if fresh:
        trainer._log({"step": trainer.step, "spindle_lambda": process.spindle_lambda,
                      "spindle_tokens_counted": int(process.counts.sum()), "spindle_clipped": process.clipped})
