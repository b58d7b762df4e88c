"""Where documents come from, and which of them are validation.

A source is one of:
  shakespeare             the bundled corpus (42 works, see corpora/shakespeare/CREDIT.md)
  path/to/file.txt|.md    one document per file
  path/to/file.jsonl      one document per line, its `text_field`
  path/to/file.parquet    one document per row, its `text_field` (read in batches)
  path/to/folder          every such file below it, in sorted order
  hf:NAME[:CONFIG]        a Hugging Face dataset, streamed (NAME may be a local dataset folder)

The split is decided per document by a seeded hash of its key (file path and row), so it never
overlaps, needs no pass over the data, and works the same for streams of unknown length.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

from ..errors import UserError

BUNDLED = {"shakespeare": Path(__file__).resolve().parent.parent / "corpora" / "shakespeare"}
TEXT_SUFFIXES = {".txt", ".md"}
SUFFIXES = TEXT_SUFFIXES | {".jsonl", ".parquet"}


def is_validation(key: str, seed: int, val_fraction: float) -> bool:
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < val_fraction


def iter_documents(source: str, split: str = "train", val_fraction: float = 0.05, seed: int = 0,
                   text_field: str = "text", hf_split: str = "train") -> Iterator[str]:
    """Yield the documents of `split` ('train', 'validation' or 'all') from `source`, lazily."""
    if split not in ("train", "validation", "all"):
        raise UserError(f"unknown split {split!r}: use train, validation or all")
    for key, text in _iter_keyed(source, text_field, hf_split):
        if not text:
            continue
        if split == "all" or is_validation(key, seed, val_fraction) == (split == "validation"):
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
        with path.open(encoding="utf-8") as fh:
            for row, line in enumerate(fh):
                if line.strip():
                    yield f"{key}:{row}", _field(json.loads(line), text_field, path)
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        row = 0
        for batch in pq.ParquetFile(path).iter_batches(columns=[text_field], batch_size=1024):
            for text in batch.column(0).to_pylist():
                yield f"{key}:{row}", text or ""
                row += 1
    else:
        raise UserError(f"unsupported file type {path.suffix}: use .txt, .md, .jsonl or .parquet")


def _field(record: dict, text_field: str, path: Path) -> str:
    if text_field not in record:
        raise UserError(f"{path}: record has no field {text_field!r} (set data.text_field)")
    return record[text_field] or ""


def _iter_hf(name: str, text_field: str, hf_split: str) -> Iterator[tuple[str, str]]:
    import datasets

    path, _, config = name.partition(":")
    try:
        stream = datasets.load_dataset(path, config or None, split=hf_split, streaming=True)
    except Exception as exc:  # the datasets library raises many kinds; all mean "cannot load"
        raise UserError(f"cannot load Hugging Face dataset {name!r}: {exc}") from exc
    for row, record in enumerate(stream):
        yield f"{path}:{config}:{hf_split}:{row}", _field(record, text_field, Path(path))
