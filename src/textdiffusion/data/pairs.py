"""Paired text for sequence-to-sequence diffusion (DiffuSeq), built from lines of the bundled Shakespeare.

Two tasks, each with one nearly determined answer, so that BLEU against the one reference measures skill, not taste
(the next line given the previous one has many right answers and BLEU near zero for every model):
- "bag": restore a line from the bag of its words (lower-cased, sorted): word order, case and punctuation;
- "restore": restore a line's case and punctuation from its words in order, lower-cased, without punctuation
  (truecasing and punctuation restoration, a real editing task; copying the source is the floor to beat).

Each pair becomes one document `source.ljust(S - 1) + target`: with byte tokens and `data.packing=pad`, a row is
[BOS] + S - 1 source bytes (positions 0..S-1: the clean source of `process.source_len = S`) + target + [EOS] +
[PAD]s. Byte level only: a BPE would not keep the source in exactly S tokens.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..core.errors import UserError

WORD = re.compile(r"[A-Za-z']+")


def bag_of_words(line: str) -> str:
    """The line's words, lower-cased and sorted: the source of the task."""
    return " ".join(sorted(w.lower() for w in WORD.findall(line)))


def plain_words(line: str) -> str:
    """The line's words in order, lower-cased, without punctuation: the source of the "restore" task."""
    return " ".join(w.lower() for w in WORD.findall(line))


TASKS = {"bag": bag_of_words, "restore": plain_words}


def line_pairs(texts: Iterable[str], source_chars: int, target_chars: int, min_words: int = 4,
               max_words: int = 12, task: str = "bag") -> Iterator[tuple[str, str]]:
    """(source, target) for every line of `texts` with min_words..max_words words whose source (`task`, see the
    module notes) fits in source_chars - 1 characters and which fits, with its [EOS], in target_chars tokens.
    Speaker names in capitals and stage directions (lines without lower-case words) are skipped."""
    if source_chars < 2 or target_chars < 2:
        raise UserError("source_chars and target_chars must be at least 2")
    if task not in TASKS:
        raise UserError(f"unknown paired task {task!r}: choose one of {', '.join(TASKS)}")
    for text in texts:
        for raw in text.splitlines():
            line = raw.strip()
            words = WORD.findall(line)
            if not min_words <= len(words) <= max_words or line.isupper() or line.startswith(("[", "Enter", "Exit")):
                continue
            source = TASKS[task](line)
            if len(source) <= source_chars - 1 and len(line.encode()) <= target_chars - 1 and line.isascii():
                yield source, line


def pair_document(source: str, target: str, source_chars: int) -> str:
    """The training text of one pair: the source padded with spaces to source_chars - 1, then the target."""
    if len(source) > source_chars - 1:
        raise UserError(f"the source {source!r} is longer than {source_chars - 1} characters")
    return source.ljust(source_chars - 1) + target


def write_pairs(path: str | Path, pairs: Iterable[tuple[str, str]], source_chars: int) -> int:
    """A .jsonl corpus of pair documents (field `text`), with `source` and `target` kept beside; returns the count."""
    n = 0
    with Path(path).open("w", encoding="utf-8") as fh:
        for source, target in pairs:
            fh.write(json.dumps({"text": pair_document(source, target, source_chars), "source": source,
                                 "target": target}) + "\n")
            n += 1
    return n
