"""Tokenising a rank's share of a stream in DataLoader worker processes (data.num_workers > 0), delivered in the
order one process reads it, so that the trainer's batches are bit-identical whatever the number of workers.

The share's documents (all of them, validation and empty ones too: what a worker can count without parsing) are
cut into groups of `group` consecutive documents; worker k of K parses and tokenises groups k, k + K, ... and
passes over the others unparsed. torch's DataLoader asks its workers for items round-robin and hands them back
in that order, so group g arrives g-th (checked: a group out of turn is an error, never a silent reorder). The
packer (packing.iter_chunks_resumable) then sees the documents and their positions exactly as without workers,
and records the same resumable state: a run may resume with another number of workers. Each worker yields one
item per group it owns, empty ones too, so the round-robin never slips; each still scans the whole share
(reading lines or records, cheap next to tokenising them).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain

import numpy as np
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..core.errors import UserError
from .corpus import Split
from .shares import iter_share, train_part
from .tokenizers import Tokenizer

FAILED = "failed"  # an item that carries a worker's UserError instead of a group
GROUP = 64  # documents per item (one encode_batch call): small enough that the first arrives soon


@dataclass(frozen=True)
class Share:
    """What a worker needs to reopen rank `rank`'s share of `source` (picklable, for any start method)."""

    source: str
    plan: Split
    text_field: str = "text"
    hf_split: str = "train"
    rank: int = 0
    world: int = 1


class _Groups(IterableDataset):
    """In worker k of K: (group index, token ids of its training documents end to end, their offsets, their
    positions) for groups k, k + K, ... of the share from `position` on."""

    def __init__(self, share: Share, tok: Tokenizer, position: dict | None, group: int):
        self.share, self.tok, self.position, self.group = share, tok, position, group

    def __iter__(self) -> Iterator[tuple]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        try:
            yield from self._groups(worker, workers)
        except UserError as exc:  # e.g. a record without data.text_field: the trainer's one line, not a traceback
            yield FAILED, str(exc)

    def _groups(self, worker: int, workers: int) -> Iterator[tuple]:
        s, size = self.share, self.group
        texts: list[str] = []
        positions: list[dict] = []
        index = -1
        for index, (key, read, where) in enumerate(iter_share(s.source, s.text_field, s.hf_split, s.rank, s.world,
                                                              self.position)):
            g, j = divmod(index, size)
            if g % workers != worker:
                continue  # another worker's: not parsed here
            text = train_part(key, read(), s.plan)
            if text:
                texts.append(text)
                positions.append(where())
            if j == size - 1:
                yield self._item(g, texts, positions)
                texts, positions = [], []
        last, j = divmod(index, size)
        if index >= 0 and j != size - 1 and last % workers == worker:  # the share's last group, cut short
            yield self._item(last, texts, positions)

    def _item(self, g: int, texts: list[str], positions: list[dict]) -> tuple:
        ids = self.tok.encode_batch(texts) if texts else []
        lengths = [len(x) for x in ids]
        flat = np.fromiter(chain.from_iterable(ids), dtype=np.int32, count=sum(lengths))  # vocabularies < 2**31
        return g, flat, np.cumsum([0, *lengths]), positions


def _as_is(item):
    return item


def open_encoded(share: Share, tok: Tokenizer, num_workers: int, position: dict | None,
                 group: int | None = None) -> Iterator[tuple[list[int], dict]]:
    """(token ids, position after it) for each training document of the share from `position` on, tokenised by
    `num_workers` worker processes in groups of `group` documents (None: GROUP); the workers start at the first
    item asked for and stop with the iterator."""
    # A worker forked after the parent's Hugging Face tokenizer ran in parallel (validation is tokenised first)
    # would print a warning and run single-threaded anyway: say so up front, one thread per worker.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    loader = DataLoader(_Groups(share, tok, position, group or GROUP), batch_size=None, num_workers=num_workers,
                        collate_fn=_as_is)
    for expected, item in enumerate(loader):
        if item[0] == FAILED:
            raise UserError(item[1])
        g, flat, offsets, positions = item
        if g != expected:
            raise RuntimeError(f"data worker sent group {g} in group {expected}'s turn: the stream's order is lost")
        ids, bounds = flat.tolist(), offsets.tolist()
        for j, position_after in enumerate(positions):
            yield ids[bounds[j] : bounds[j + 1]], position_after
