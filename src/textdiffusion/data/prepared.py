"""Pre-tokenised training data: packed chunks in memory-mapped shard files, written once by
`textdiffusion prepare` and read by training with data.source=prepared:DIR.

DIR holds index.json (the format, the data settings it was made with, and each split's shard files and row
counts), tokenizer/ (the tokenizer the ids come from) and the shards, `train-00000.bin`, ... and
`validation-00000.bin`: raw little-endian uint16 ids (uint32 for vocabularies past 65,536), rows of seq_len
tokens back to back. Nothing in DIR is a pickle. The folder is written beside its final place and renamed
into it, so a killed `prepare` leaves no half-written DIR.

Training reads rows by index through np.memmap (the operating system pages in what a batch touches), with
the same seeded per-epoch shuffle and (epoch, cursor) state as in-memory data (packing.ChunkBatches): it
resumes exactly, on any number of processes, and costs no tokenisation at training time.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from ..core.errors import UserError

PREFIX = "prepared:"
INDEX_FILE = "index.json"
FORMAT = "textdiffusion-prepared"
VERSION = 1
SHARD_BYTES = 1 << 30  # a new shard file every ~1 GiB of ids
# the data settings a prepared folder fixes: training must ask for the same ones
FIXED = ("tokenizer", "vocab_size", "seq_len", "packing")


def is_prepared(source: str) -> bool:
    return isinstance(source, str) and source.startswith(PREFIX)


def folder_of(source: str) -> Path:
    return Path(source[len(PREFIX):])


def read_index(folder: Path) -> dict:
    path = Path(folder) / INDEX_FILE
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is missing or corrupt ({exc}): run `textdiffusion prepare` for {folder} again") \
            from exc
    if not isinstance(index, dict) or index.get("format") != FORMAT or index.get("version") != VERSION:
        raise UserError(f"{path} is not a textdiffusion prepared-data index: run `textdiffusion prepare` again")
    return index


def check_settings(folder: Path, data: dict) -> dict:
    """The index of `folder`, after checking that the run's data settings match those it was prepared with."""
    index = read_index(folder)
    for key in FIXED:
        if key == "vocab_size" and index["settings"]["tokenizer"] != "bpe":
            continue  # only a trained BPE reads it
        if data[key] != index["settings"][key]:
            raise UserError(f"{folder} was prepared with data.{key}={index['settings'][key]!r} but this run asks "
                            f"for {data[key]!r}: set data.{key}={index['settings'][key]} or prepare the data again")
    return index


def _dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def write_split(folder: Path, split: str, rows: Iterable[list[int]], seq_len: int, vocab_size: int) -> dict:
    """Write `rows` (lists of seq_len ids) as shard files of `split` in `folder`; returns its index entry."""
    dtype = _dtype(vocab_size)
    per_shard = max(1, SHARD_BYTES // (seq_len * dtype.itemsize))
    shards: list[dict] = []
    fh, n_in_shard, buffer = None, 0, []

    def flush() -> None:
        if buffer:
            fh.write(np.asarray(buffer, dtype=dtype).tobytes())
            buffer.clear()

    try:
        for row in rows:
            if fh is None or n_in_shard == per_shard:
                if fh is not None:
                    flush()
                    fh.close()
                name = f"{split}-{len(shards):05d}.bin"
                fh, n_in_shard = (folder / name).open("wb"), 0
                shards.append({"file": name, "rows": 0})
            buffer.append(row)
            n_in_shard += 1
            shards[-1]["rows"] += 1
            if len(buffer) >= 4096:
                flush()
        if fh is not None:
            flush()
    finally:
        if fh is not None:
            fh.close()
    return {"rows": sum(s["rows"] for s in shards), "shards": shards}


def write_index(folder: Path, settings: dict, splits: dict, tokenizer_kind: str, vocab_size: int,
                split_plan: dict) -> None:
    index = {"format": FORMAT, "version": VERSION, "settings": settings, "tokenizer_kind": tokenizer_kind,
             "vocab_size": vocab_size, "dtype": _dtype(vocab_size).str, "split_plan": split_plan, "splits": splits}
    (folder / INDEX_FILE).write_text(json.dumps(index, indent=1), encoding="utf-8")


class PreparedChunks:
    """The rows of one split, addressed by global row index across its shard files (memory-mapped)."""

    def __init__(self, folder: Path, split: str = "train"):
        folder = Path(folder)
        index = read_index(folder)
        entry = index["splits"].get(split)
        if not entry or not entry["rows"]:
            raise UserError(f"{folder} holds no {split} rows: prepare it from more text or with a lower data.seq_len")
        seq_len, dtype = index["settings"]["seq_len"], np.dtype(index["dtype"])
        self.maps = []
        for shard in entry["shards"]:
            path = folder / shard["file"]
            expected = shard["rows"] * seq_len * dtype.itemsize
            if not path.is_file() or path.stat().st_size != expected:
                raise UserError(f"{path} is missing or not {expected} bytes long: prepare {folder} again")
            self.maps.append(np.memmap(path, dtype=dtype, mode="r", shape=(shard["rows"], seq_len)))
        self.starts = np.cumsum([0] + [m.shape[0] for m in self.maps])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, idx) -> torch.Tensor:
        """Rows `idx` (a tensor or list of row indices), as a [len(idx), seq_len] int64 tensor."""
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        shard = np.searchsorted(self.starts, idx, side="right") - 1
        out = np.empty((len(idx), self.maps[0].shape[1]), dtype=np.int64)
        for s in np.unique(shard):
            where = shard == s
            out[where] = self.maps[s][idx[where] - self.starts[s]]
        return torch.from_numpy(out)


def validation_rows(folder: Path, limit: int) -> torch.Tensor:
    chunks = PreparedChunks(folder, "validation")
    return chunks[np.arange(min(limit, len(chunks)))]
