"""Documents -> token ids -> fixed-length chunks, with a resumable, DDP-aware batch cursor.

wrap: every document becomes [BOS] doc [EOS]; documents are concatenated and cut into chunks of
      exactly `seq_len` tokens (no padding; MDLM's recipe on OpenWebText).
pad:  one document per row, [BOS] doc [EOS] truncated to `seq_len`, then [PAD] to the length.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from ..core.errors import UserError
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


def _encode_positioned(docs: Iterator[tuple[str, object]], tok: Tokenizer) -> Iterator[tuple[list[int], object]]:
    """(token ids, position) for each (text, position) of `docs`, encoded ENCODE_BATCH documents at a time."""
    while True:
        batch = [doc for _, doc in zip(range(ENCODE_BATCH), docs)]
        if not batch:
            return
        yield from zip(tok.encode_batch([text for text, _ in batch]), [position for _, position in batch])


def iter_chunks_resumable(open_docs, tok: Tokenizer, seq_len: int, mode: str = "wrap",
                          state: dict | None = None, open_ids=None) -> Iterator[tuple[list[int], tuple]]:
    """iter_chunks over `open_docs(position)` (an iterator of (text, position after it)), yielding each chunk
    with a mark from which chunk_state() makes the state to resume right after it: the position of the last
    document read into the buffer and the buffer's tokens not yet emitted. Resuming re-reads nothing before
    that position (documents encoded ahead in a batch are simply read again). `open_ids(position)`, where given,
    yields (token ids, position) already encoded (by worker processes: data/workers.py) in place of open_docs."""
    if mode not in ("wrap", "pad"):
        raise UserError(f"unknown packing mode {mode!r}: use wrap or pad")
    buf = list(state["pending"]) if state else []
    position = state["position"] if state else None
    encoded = open_ids(position) if open_ids is not None else _encode_positioned(open_docs(position), tok)
    start = 0  # a resumed buffer may still hold whole chunks of its last document
    while mode == "wrap" and len(buf) - start >= seq_len:
        start += seq_len
        yield buf[start - seq_len : start], (state["position"], buf, start)
    del buf[:start]
    for ids, position in encoded:
        row = [tok.bos_id, *ids, tok.eos_id]
        if mode == "pad":
            row = row[:seq_len]
            yield row + [tok.pad_id] * (seq_len - len(row)), (position, buf, 0)
            continue
        buf.extend(row)
        start = 0
        while len(buf) - start >= seq_len:
            start += seq_len
            yield buf[start - seq_len : start], (position, buf, start)
        del buf[:start]


def chunk_state(mark: tuple) -> dict:
    """The resumable state of iter_chunks_resumable's mark (read before the iterator moves on)."""
    position, buf, start = mark
    return {"position": position, "pending": buf[start:]}


class ShardedStreamBatches:
    """Global batches from a stream that every rank reads only its share of (iter_train_shard), resumed from a
    recorded position instead of by skipping through the stream.

    Each rank packs its own documents into its batch_size / world rows; the rows are gathered (`gather_rows`, an
    all-gather in rank order) into the global batch, of which the trainer gives each rank back its own rows.
    The state holds every rank's position (`gather_states` collects them: state_dict() is a collective), so a
    resumed run must have the same number of ranks; prepared data (data/prepared.py) resumes on any number.
    """

    def __init__(self, open_docs, tok: Tokenizer, seq_len: int, mode: str, global_batch: int, rank: int = 0,
                 world: int = 1, gather_rows=None, gather_states=None, open_ids=None):
        self.open_docs, self.tok, self.seq_len, self.mode = open_docs, tok, seq_len, mode
        self.open_ids = open_ids  # documents tokenised elsewhere (iter_chunks_resumable)
        self.global_batch, self.rank, self.world = global_batch, rank, world
        self.local = global_batch // world
        self.gather_rows = gather_rows or (lambda rows: rows)
        self.gather_states = gather_states or (lambda state: [state])
        self.consumed, self.epoch = 0, 0
        self._resume: dict | None = None  # where this rank's stream reopens
        self._mark = None
        self._it = None

    def _next_row(self) -> list[int]:
        for _ in range(2):
            if self._it is None:
                self._it = iter_chunks_resumable(self.open_docs, self.tok, self.seq_len, self.mode, self._resume,
                                                  self.open_ids)
            try:
                row, self._mark = next(self._it)
                return row
            except StopIteration:  # the end of this rank's share: start it again (the next epoch)
                self._it, self._resume, self._mark = None, None, None
                self.epoch += 1
        raise UserError(f"rank {self.rank}'s share of the stream yields no chunk of {self.seq_len} tokens: add "
                        "documents, lower data.seq_len or use fewer processes")

    def next_global(self) -> torch.Tensor:
        rows = torch.tensor([self._next_row() for _ in range(self.local)], dtype=torch.long)
        self.consumed += self.global_batch
        return self.gather_rows(rows)

    def _own_state(self) -> dict:
        if self._mark is not None:
            return {**chunk_state(self._mark), "epoch": self.epoch}
        return {**(self._resume or {"position": None, "pending": []}), "epoch": self.epoch}

    def state_dict(self) -> dict:
        return {"consumed": self.consumed, "world_size": self.world, "shards": self.gather_states(self._own_state())}

    def load_state_dict(self, state: dict) -> None:
        if "shards" not in state:
            raise UserError("the checkpoint's data position is of an older stream format (every rank read it all): "
                            "resume it with the textdiffusion version that wrote it, or start afresh")
        if state["world_size"] != self.world:
            raise UserError(f"this streamed run was saved with {state['world_size']} processes, each at its own "
                            f"place in the stream: resume it with {state['world_size']} processes (data prepared "
                            "with `textdiffusion prepare` resumes on any number)")
        own = state["shards"][self.rank] if len(state["shards"]) == self.world else None
        if not isinstance(own, dict):
            raise UserError("the checkpoint's stream position is corrupt: resume from an earlier copy")
        self.consumed, self.epoch = state["consumed"], own["epoch"]
        self._resume = None if own["position"] is None and not own["pending"] else \
            {"position": own["position"], "pending": own["pending"]}
        self._it, self._mark = None, None
