"""Documents -> token ids -> fixed-length chunks, with a resumable, DDP-aware batch cursor.

wrap: every document becomes [BOS] doc [EOS]; documents are concatenated and cut into chunks of
      exactly `seq_len` tokens (no padding; MDLM's recipe on OpenWebText).
pad:  one document per row, [BOS] doc [EOS] truncated to `seq_len`, then [PAD] to the length.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from ..errors import UserError
from .tokenizers import Tokenizer

ENCODE_BATCH = 256


def _encoded(docs: Iterable[str], tok: Tokenizer) -> Iterator[list[int]]:
    batch: list[str] = []
    for doc in docs:
        batch.append(doc)
        if len(batch) == ENCODE_BATCH:
            yield from tok.encode_batch(batch)
            batch = []
    if batch:
        yield from tok.encode_batch(batch)


def iter_chunks(docs: Iterable[str], tok: Tokenizer, seq_len: int, mode: str = "wrap") -> Iterator[list[int]]:
    """Stream fixed-length chunks; memory use is one chunk plus one document."""
    if mode not in ("wrap", "pad"):
        raise UserError(f"unknown packing mode {mode!r}: use wrap or pad")
    buf: list[int] = []
    for ids in _encoded(docs, tok):
        row = [tok.bos_id, *ids, tok.eos_id]
        if mode == "pad":
            row = row[:seq_len]
            yield row + [tok.pad_id] * (seq_len - len(row))
            continue
        buf.extend(row)
        start = 0  # cut by offset: re-slicing the buffer per chunk is quadratic in a long document
        while len(buf) - start >= seq_len:
            yield buf[start : start + seq_len]
            start += seq_len
        del buf[:start]


def pack_tensor(docs: Iterable[str], tok: Tokenizer, seq_len: int, mode: str = "wrap") -> torch.Tensor:
    """All chunks of a finite corpus as one [N, seq_len] tensor."""
    rows = list(iter_chunks(docs, tok, seq_len, mode))
    if not rows:
        raise UserError(f"the corpus yields no chunk of {seq_len} tokens: add text or lower data.seq_len")
    return torch.tensor(rows, dtype=torch.long)


class ChunkBatches:
    """Global batches from an in-memory chunk tensor, reshuffled each epoch by a seed.

    The state (epoch, cursor) is all that resuming needs. Every rank computes the same global
    batch and takes its own slice, so N processes see exactly what one process would.
    """

    def __init__(self, chunks: torch.Tensor, global_batch: int, seed: int = 0, shuffle: bool = True):
        if global_batch > len(chunks):
            raise UserError(f"global batch {global_batch} is larger than the {len(chunks)} training "
                            "chunks: lower train.batch_size or add data")
        self.chunks, self.global_batch, self.seed, self.shuffle = chunks, global_batch, seed, shuffle
        self.epoch, self.cursor = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(len(self.chunks))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(len(self.chunks), generator=g)

    def next_global(self) -> torch.Tensor:
        if self.cursor + self.global_batch > len(self.chunks):  # drop the ragged tail of an epoch
            self.epoch, self.cursor = self.epoch + 1, 0
            self._order = self._permutation()
        idx = self._order[self.cursor : self.cursor + self.global_batch]
        self.cursor += self.global_batch
        return self.chunks[idx]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.cursor = state["epoch"], state["cursor"]
        self._order = self._permutation()


class StreamBatches:
    """Global batches from a stream (e.g. a Hugging Face dataset), read once, in order.

    Resuming re-opens the stream and skips the chunks already consumed.
    """

    def __init__(self, make_chunks, global_batch: int):
        self.make_chunks, self.global_batch = make_chunks, global_batch
        self.consumed = 0
        self._it = None

    def _iterator(self) -> Iterator[list[int]]:
        if self._it is None:
            it = self.make_chunks()
            for _ in range(self.consumed):
                next(it)
            self._it = it
        return self._it

    def next_global(self) -> torch.Tensor:
        rows = []
        for _ in range(self.global_batch):
            try:
                rows.append(next(self._iterator()))
            except StopIteration:  # end of the stream: start it again (next epoch)
                self._it = self.make_chunks()
                self.consumed = 0
                rows.append(next(self._it))
            self.consumed += 1
        return torch.tensor(rows, dtype=torch.long)

    def state_dict(self) -> dict:
        return {"consumed": self.consumed}

    def load_state_dict(self, state: dict) -> None:
        self.consumed, self._it = state["consumed"], None
