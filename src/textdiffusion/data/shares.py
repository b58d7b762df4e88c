"""One rank's share of a streamed source, with a position to resume from after each of its documents.

Local sources: documents go round-robin to ranks by their ordinal in the source (rank r of w takes ordinals r,
r + w, ...), decided before a document is parsed, so a rank parses and tokenises only its own share. The position
after a document says where to reopen the source: a file's index and byte offset for .jsonl (a seek), the file
index for .txt/.md, the row inside a .parquet file (its earlier rows are read again, not tokenised).

Hugging Face streams (hf:): when the dataset's files (IterableDataset.n_shards) split evenly over the ranks, rank
r reads only files r, r + w, ... (what datasets.distributed.split_dataset_by_node does, done file by file here so
that each document keeps its (file, row) key); otherwise every rank reads every file and keeps every w-th
document, as for local sources. A file is read HF_BATCH records at a time; the position after a document is the
file, the row in it, the file stream's own state (IterableDataset.state_dict) before the batch and how many of the
batch are read: a resume reloads that state (load_state_dict) and skips them.

Validation is iter_documents' split (by document key, data/corpus.py), whatever the number of ranks.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

from ..core.errors import UserError
from .corpus import (
    BUNDLED,
    SUFFIXES,
    TEXT_SUFFIXES,
    Split,
    field_of,
    hf_key,
    is_validation,
    open_hf,
    validation_chars,
)


class Record(NamedTuple):
    """One document of a share: its key, a call that parses it (lazily: a reader that skips it never parses it)
    and a call that gives the position after it (valid until the iterator moves on)."""

    key: str
    read: Callable[[], str]
    where: Callable[[], dict]


def iter_train_shard(source: str, plan: Split, text_field: str = "text", hf_split: str = "train", rank: int = 0,
                     world: int = 1, position: dict | None = None) -> Iterator[tuple[str, dict]]:
    """Yield (training text, position after it) for rank `rank` of `world`, from `position` on (None: the start)."""
    for key, read, where in iter_share(source, text_field, hf_split, rank, world, position):
        text = train_part(key, read(), plan)
        if text:
            yield text, where()


def iter_share(source: str, text_field: str = "text", hf_split: str = "train", rank: int = 0, world: int = 1,
               position: dict | None = None) -> Iterator[Record]:
    """Every document of rank `rank`'s share (validation and empty ones too), from `position` on."""
    if source.startswith("hf:"):
        return _hf_share(source[3:], text_field, hf_split, rank, world, position)
    return _local_share(source, text_field, rank, world, position)


def train_part(key: str, text: str, plan: Split) -> str:
    """What of one document is training text (iter_documents' rule)."""
    if not text:
        return ""
    if plan.by_position:
        return text[: len(text) - validation_chars(text, plan.val_fraction)]
    return "" if is_validation(key, plan.seed, plan.val_fraction) else text


def hf_files_split(n_files: int, world: int) -> bool:
    """Whether `world` ranks each read their own files of a stream of `n_files` (else all read all of them)."""
    return world == 1 or n_files % world == 0


def describe_hf_share(source: str, hf_split: str, world: int) -> str | None:
    """One line for the training log on how the ranks divide an hf: stream (None for one rank)."""
    if world == 1 or not source.startswith("hf:"):
        return None
    n = open_hf(source[3:], hf_split).n_shards
    if hf_files_split(n, world):
        return f"data: each of the {world} processes reads its own {n // world} of the {n} files of {source}"
    files = f"the 1 file of {source} does" if n == 1 else f"the {n} files of {source} do"
    return (f"data: {files} not split evenly over {world} processes, so "
            f"each reads all of them and tokenises 1 document in {world} (a file count that is a multiple of the "
            "process count lets each read only its own files)")


# ---- local files ---------------------------------------------------------------------------------------------

def _local_share(source: str, text_field: str, rank: int, world: int, position: dict | None) -> Iterator[Record]:
    root = BUNDLED.get(source, Path(source))
    if not root.exists():
        raise UserError(f"data source {source!r} not found: give a file, a folder, 'shakespeare' or hf:DATASET_NAME")
    files = sorted(p for p in root.rglob("*") if p.suffix in SUFFIXES) if root.is_dir() else [root]
    pos = {"file": 0, "offset": 0, "row": 0, "ordinal": 0, **(position or {})}
    for index in range(pos["file"], len(files)):
        path = files[index]
        rel = path.relative_to(root).as_posix() if root.is_dir() else path.name
        start = pos if index == pos["file"] else {"offset": 0, "row": 0}
        ordinal = pos["ordinal"]
        for key, read, offset, row in _positioned(path, rel, text_field, start["offset"], start["row"]):
            mine = ordinal % world == rank
            ordinal += 1
            if mine:
                after = {"file": index, "offset": offset, "row": row, "ordinal": ordinal}
                yield Record(key, read, lambda after=after: after)
        pos = {"file": index + 1, "offset": 0, "row": 0, "ordinal": ordinal}


def _positioned(path: Path, key: str, text_field: str, offset: int, row: int):
    """(key, read the text, byte offset after, row after) for each document of one file from (offset, row);
    `read` parses lazily, so another rank's documents are never parsed."""
    if path.suffix in TEXT_SUFFIXES:  # one document: offset 1 after it marks the file as read
        if offset == 0:
            yield key, lambda: path.read_text(encoding="utf-8", errors="replace"), 1, 1
    elif path.suffix == ".jsonl":
        with path.open("rb") as fh:
            fh.seek(offset)
            for line in iter(fh.readline, b""):
                row += 1
                if line.strip():
                    yield (f"{key}:{row - 1}", lambda line=line: field_of(json.loads(line), text_field, path),
                           fh.tell(), row)
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        seen = 0
        for batch in pq.ParquetFile(path).iter_batches(columns=[text_field], batch_size=1024):
            for text in batch.column(0).to_pylist():
                seen += 1
                if seen > row:
                    yield f"{key}:{seen - 1}", lambda text=text: text or "", 0, seen
    else:
        raise UserError(f"unsupported file type {path.suffix}: use .txt, .md, .jsonl or .parquet")


# ---- Hugging Face streams ------------------------------------------------------------------------------------

HF_BATCH = 1000  # records per read; a position is the state before its batch and how many of the batch are read


def _hf_share(name: str, text_field: str, hf_split: str, rank: int, world: int,
              position: dict | None) -> Iterator[Record]:
    stream = open_hf(name, hf_split)
    n = stream.n_shards
    by_file = hf_files_split(n, world)
    pos = _check_hf_position(position, n, name) if position is not None else None
    ordinal = pos["ordinal"] if pos else 0  # counts every file's documents where the ranks share files
    for shard in range(rank, n, world) if by_file else range(n):
        if pos and shard < pos["shard"]:
            continue
        part = stream.shard(num_shards=n, index=shard)  # contiguous: exactly data file `shard`
        row, skip = 0, 0
        if pos and shard == pos["shard"]:
            part.load_state_dict(pos["hf_state"])
            row, skip = pos["row"], pos["skip"]
        at = pos["hf_state"] if pos and shard == pos["shard"] else part.state_dict()
        # IterableDataset.iter, not iter(): inside a DataLoader worker, iter() would hand this worker only some
        # of the file (datasets splits files over workers), and data/workers.py needs all of the share
        for batch in part.iter(batch_size=HF_BATCH):
            texts = field_of(batch, text_field, name)  # the batch's column: a list
            for j in range(skip, len(texts)):
                row += 1
                if not by_file:
                    ordinal += 1
                    if (ordinal - 1) % world != rank:
                        continue
                after = {"files": n, "shard": shard, "row": row, "ordinal": ordinal, "hf_state": at, "skip": j + 1}
                yield Record(hf_key(name, hf_split, shard, row - 1), lambda text=texts[j]: text or "",
                             lambda after=after: after)
            at, skip = part.state_dict(), 0  # where the next batch starts: a resume reloads it and skips
        pos = None


def _check_hf_position(position: dict, n_files: int, name: str) -> dict:
    if "shard" not in position:
        raise UserError("the checkpoint's position in the hf: stream is from a version that read the whole stream "
                        "on every process: resume it with that version, or start afresh")
    if position["files"] != n_files:
        raise UserError(f"the Hugging Face dataset {name!r} now has {n_files} files, but the checkpoint's position "
                        f"is in its {position['files']} files: resume with the same dataset revision, or start afresh")
    return position
