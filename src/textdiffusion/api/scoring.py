"""Scoring long texts and files: windows of the model's length, scored in batches as the text
arrives, so memory stays bounded however long the input."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from ..core.checks import check_int
from ..core.errors import UserError
from ..core.progress import progress_bar
from ..data.tokenizers import Tokenizer
from ..processes import DiffusionProcess
from ..processes.likelihood import LikelihoodResult, nelbo_samples
from .cost import check_passes


class Scoring(Protocol):
    """What `score_pieces` uses of a Pipeline (api/pipeline.py), which passes itself."""

    model: nn.Module
    process: DiffusionProcess
    tokenizer: Tokenizer

    @property
    def seq_len(self) -> int: ...

    def _autocast(self) -> AbstractContextManager: ...

BLOCK_CHARS = 1 << 20  # score_file reads this many characters at a time


def read_text_blocks(path: str | Path, block_chars: int = BLOCK_CHARS) -> Iterator[tuple[str, int]]:
    """The text of a file in pieces of at most `block_chars` characters, each with the bytes read so far.

    Undecodable bytes become U+FFFD, as with Path.read_text(errors="replace"). A piece ends just
    before a whitespace character that follows a non-space one, where BPE pre-tokenizers (GPT-2's
    byte-level regex, Metaspace, whitespace splitting) start a new word anyway, so tokenizing piece
    by piece gives the tokens of the whole text. A block with no such place in its second half (binary
    data) is cut at its end, which byte tokenizers do not mind."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        carry = ""
        while True:
            chunk = fh.read(block_chars - len(carry))  # the carry counts: a piece never exceeds block_chars
            if not chunk:
                if carry:
                    yield carry, fh.buffer.tell()
                return
            block = carry + chunk
            cut = next((i for i in range(len(block) - 1, len(block) // 2, -1)
                        if block[i].isspace() and not block[i - 1].isspace()), len(block))
            carry = block[cut:]
            yield block[:cut], fh.buffer.tell()


@dataclass
class ScoreTotals:
    """Running sums over the windows of a text: the estimate, its Monte Carlo variance, tokens."""

    nats: float = 0.0
    variance: float = 0.0
    n_tokens: int = 0
    t_samples: int = 0

    def add(self, values: torch.Tensor, counted: torch.Tensor) -> None:
        """`values` [t_samples, windows]: each window's draws in nats; every window is its own estimate."""
        self.t_samples = values.shape[0]
        self.nats += float(values.mean(0).sum())
        # the variance of each window's mean over its draws; windows are scored independently
        self.variance += float(values.var(0).sum()) / self.t_samples if self.t_samples > 1 else 0.0
        self.n_tokens += int(counted.sum())


def score_pieces(pipe: Scoring, pieces: Iterable[tuple[str, int]], t_samples: int, seed: int, batch_size: int,
                  progress: bool | None, size: int | None, what: str) -> LikelihoodResult:
    """Tokenize (piece, input consumed so far) pairs as they come and score full windows of the model's
    length `batch_size` at a time; the tokens left over wait for the next piece, and the last partial
    window is scored alone. Batch k of the text draws its noise from seed + k, whatever the pieces."""
    t_samples = check_int("t_samples", t_samples, minimum=1)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    seed = check_int("seed", seed)
    window, totals, batches = pipe.seq_len, ScoreTotals(), 0
    pending = torch.empty(0, dtype=torch.long)  # tokens not scored yet

    def score_windows(chunks: torch.Tensor) -> None:
        nonlocal batches
        if batches == 0:  # the first batch's draws, before they run
            check_passes(pipe.model, pipe.tokenizer.vocab_size, "scoring", len(chunks), chunks.shape[1],
                         1 if pipe.process.exact_likelihood else t_samples,
                         "lower the windows per batch (--batch-size)",
                         "lower the Monte Carlo draws (--t-samples) or the windows per batch (--batch-size)")
        # the bar moves per Monte Carlo draw, not per batch: a batch of 16 windows x 32 draws takes minutes
        draws = 1 if pipe.process.exact_likelihood else t_samples
        shares = iter([chunks.numel() * (k + 1) // draws - chunks.numel() * k // draws for k in range(draws)])
        with pipe._autocast():
            values, counted = nelbo_samples(pipe.model, pipe.process, chunks, t_samples=t_samples,
                                            batch_size=len(chunks), seed=seed + batches,
                                            on_draw=lambda: bar.update(next(shares, 0)))
        batches += 1
        totals.add(values, counted)
        bar.set_postfix_str(f"{totals.nats / totals.n_tokens:.4f} nats/token", refresh=False)

    with progress_bar(progress, desc="scoring", unit="tok", unit_scale=True) as bar:
        tokens = 0
        for piece, consumed in pieces:
            ids = pipe.tokenizer.encode(piece)
            tokens += len(ids)
            if size and consumed:  # the total is unknown until the end: extrapolate from what was read
                bar.total = max(tokens, round(tokens * size / consumed))
            pending = torch.cat([pending, torch.tensor(ids, dtype=torch.long)])
            full = len(pending) // (batch_size * window) * batch_size * window
            for start in range(0, full, batch_size * window):
                score_windows(pending[start : start + batch_size * window].view(batch_size, window))
            pending = pending[full:].clone()  # drop the piece's storage, keep only the leftover
        if tokens == 0:
            raise UserError(f"cannot score an empty text: {what} has no tokens")
        bar.total = tokens
        full = len(pending) // window * window
        if full:
            score_windows(pending[:full].view(-1, window))
        if len(pending) > full:
            score_windows(pending[full:][None])
    exact = pipe.process.exact_likelihood
    stderr = math.sqrt(totals.variance) / totals.n_tokens if exact or totals.t_samples > 1 else float("nan")
    return LikelihoodResult(totals.nats / totals.n_tokens, stderr, totals.n_tokens, totals.t_samples, exact)
