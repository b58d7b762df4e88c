"""Where documents come from, and which of them are validation.

A source is one of:
  shakespeare             the bundled corpus (42 works, see corpora/shakespeare/CREDIT.md)
  path/to/file.txt|.md    one document per file
  path/to/file.jsonl      one document per line, its `text_field`
  path/to/file.parquet    one document per row, its `text_field` (read in batches)
  path/to/folder          every such file below it, in sorted order
  hf:NAME[:CONFIG]        a Hugging Face dataset, streamed (NAME may be a local dataset folder)

The split is decided per document by a seeded hash of its key (file path and row; for a Hugging Face
stream, the index of its data file and its row there, so that a process reading only some files knows it),
so it never overlaps, needs no pass over the data, and works the same for streams of unknown length. A local
source with too few documents for that (the hash puts all of them on one side, e.g. a lone .txt
file) is split by position instead: the last `val_fraction` of each document is validation.
One process's share of a streamed source, resumable from a position, is data/shares.py.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import UserError

BUNDLED = {"shakespeare": Path(__file__).resolve().parent.parent / "corpora" / "shakespeare"}
TEXT_SUFFIXES = {".txt", ".md"}
SUFFIXES = TEXT_SUFFIXES | {".jsonl", ".parquet"}


def is_validation(key: str, seed: int, val_fraction: float) -> bool:
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < val_fraction


def validation_chars(text: str, val_fraction: float) -> int:
    """How many characters at the end of `text` are validation when a source is split by position."""
    return int(len(text) * val_fraction)


@dataclass(frozen=True)
class Split:
    """How a source divides into training and validation text (see plan_split)."""

    by_position: bool  # True: the last val_fraction of each document; False: whole documents by hash
    val_fraction: float
    seed: int
    documents: int | None = None  # non-empty documents, where counted
    val_documents: int | None = None  # of them, validation (split by document)
    chars: int | None = None  # characters of all documents, and of their validation ends (by position)
    val_chars: int | None = None
    first: str = ""  # the key of the first document: the file name of a lone file

    def describe(self, source: str) -> str:
        """One line for the training log."""
        percent = f"{self.val_fraction * 100:g}%"
        if self.by_position:
            n = self.documents or 0
            what = self.first if n == 1 else f"each of the {n:,} documents of {source}"
            return (f"validation: the last {percent} of {what} by position ({self.val_chars:,} of {self.chars:,} "
                    f"characters), as {n:,} document{'s are' if n != 1 else ' is'} too few to split by document")
        how = f"data.val_fraction={self.val_fraction:g}, data.split_seed={self.seed}"
        if self.documents is None:
            return f"validation: about {percent} of the documents of {source}, by a seeded hash ({how})"
        return (f"validation: {self.val_documents:,} of {self.documents:,} documents of {source}, "
                f"by a seeded hash ({how})")


def plan_split(source: str, val_fraction: float = 0.05, seed: int = 0, text_field: str = "text",
               hf_split: str = "train", count: bool = False) -> Split:
    """Split by document where the seeded hash puts at least one document on each side, else by position.

    Reads documents until it has seen one of each side (at once for a large corpus), or all of them with
    `count`. A Hugging Face stream is always split by document: deciding otherwise would need a pass over it."""
    if source.startswith("hf:"):
        return Split(False, val_fraction, seed)
    n = n_val = chars = val_chars = 0
    first = ""
    complete = True
    for key, text in _iter_keyed(source, text_field, hf_split):
        if not text:
            continue
        first = first or key
        n += 1
        n_val += is_validation(key, seed, val_fraction)
        chars += len(text)
        val_chars += validation_chars(text, val_fraction)
        if not count and 0 < n_val < n:
            complete = False
            break
    if 0 < n_val < n:
        if not complete:
            return Split(False, val_fraction, seed)
        return Split(False, val_fraction, seed, documents=n, val_documents=n_val)
    return Split(True, val_fraction, seed, documents=n, chars=chars, val_chars=val_chars, first=first)


def iter_documents(source: str, split: str = "train", val_fraction: float = 0.05, seed: int = 0,
                   text_field: str = "text", hf_split: str = "train", plan: Split | None = None) -> Iterator[str]:
    """Yield the documents of `split` ('train', 'validation' or 'all') from `source`, lazily.

    `plan` is plan_split's answer for the same source (it then sets val_fraction and seed); without it,
    the split is planned here, which reads the source's first documents once more."""
    if split not in ("train", "validation", "all"):
        raise UserError(f"unknown split {split!r}: use train, validation or all")
    if split != "all" and plan is None:
        plan = plan_split(source, val_fraction, seed, text_field, hf_split)
    for key, text in _iter_keyed(source, text_field, hf_split):
        if not text:
            continue
        if split == "all":
            yield text
        elif plan.by_position:
            cut = len(text) - validation_chars(text, plan.val_fraction)
            part = text[cut:] if split == "validation" else text[:cut]
            if part:
                yield part
        elif is_validation(key, plan.seed, plan.val_fraction) == (split == "validation"):
            yield text


def _iter_keyed(source: str, text_field: str, hf_split: str) -> Iterator[tuple[str, str]]:
    if source.startswith("hf:"):
        yield from _iter_hf(source[3:], text_field, hf_split)
        return
    root = BUNDLED.get(source, Path(source))
    if not root.exists():
        raise UserError(f"data source {source!r} not found: give a file, a folder, 'shakespeare' "
                        "or hf:DATASET_NAME")
    files = sorted(p for p in root.rglob("*") if p.suffix in SUFFIXES) if root.is_dir() else [root]
    if not files:
        raise UserError(f"no .txt/.md/.jsonl/.parquet files under {root}")
    for f in files:
        rel = f.relative_to(root).as_posix() if root.is_dir() else f.name
        yield from _iter_file(f, rel, text_field)


def _iter_file(path: Path, key: str, text_field: str) -> Iterator[tuple[str, str]]:
    if path.suffix in TEXT_SUFFIXES:
        yield key, path.read_text(encoding="utf-8", errors="replace")
    elif path.suffix == ".jsonl":
        with path.open(encoding="utf-8", errors="replace") as fh:
            for row, line in enumerate(fh):
                if line.strip():
                    try:
                        record = json.loads(line)
                    except ValueError as exc:
                        raise UserError(f"{path} line {row + 1} is not JSON ({exc}): a .jsonl file holds one "
                                        f'JSON object per line, e.g. {{"{text_field}": "..."}}') from None
                    yield f"{key}:{row}", field_of(record, text_field, path)
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        row = 0
        for batch in pq.ParquetFile(path).iter_batches(columns=[text_field], batch_size=1024):
            for text in batch.column(0).to_pylist():
                yield f"{key}:{row}", text or ""
                row += 1
    else:
        raise UserError(f"unsupported file type {path.suffix}: use .txt, .md, .jsonl or .parquet")


def field_of(record: dict, text_field: str, path: Path | str) -> str:
    if text_field not in record:
        raise UserError(f"{path}: record has no field {text_field!r} (set data.text_field)")
    return record[text_field] or ""


def open_hf(name: str, hf_split: str):
    """The streamed Hugging Face dataset `name` (NAME[:CONFIG]), as a datasets.IterableDataset."""
    import datasets

    path, _, config = name.partition(":")
    try:
        return datasets.load_dataset(path, config or None, split=hf_split, streaming=True)
    except Exception as exc:  # the datasets library raises many kinds; all mean "cannot load"
        raise UserError(f"cannot load Hugging Face dataset {name!r}: {exc}") from exc


def hf_key(name: str, hf_split: str, shard: int, row: int) -> str:
    """A streamed document's key: its data file (shard) and row in it, so that a process reading only some of
    the files still knows which of its documents are validation."""
    return f"{name}:{hf_split}:{shard}:{row}"


def _iter_hf(name: str, text_field: str, hf_split: str) -> Iterator[tuple[str, str]]:
    stream = open_hf(name, hf_split)
    for shard in range(stream.n_shards):  # one file after another: the stream's own order
        for row, record in enumerate(stream.shard(num_shards=stream.n_shards, index=shard)):
            yield hf_key(name, hf_split, shard, row), field_of(record, text_field, name)
