"""The editing task (issue 16.5): restore held-out lines corrupted by realistic noise.

Noise (`corrupt_line`): `n_errors` of typos (a letter dropped, doubled, swapped with its neighbour or replaced),
a dropped word, a repeated word, two neighbouring words swapped. Metrics (`edit_metrics`): exact match and the
character edit distance to the reference, beside the same numbers for the noisy input (doing nothing), which any
editor has to beat.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..processes.alignment import levenshtein

KINDS = ("typo", "drop_word", "repeat_word", "swap_words")


def _typo(word: str, rng: random.Random) -> str:
    if len(word) < 2:
        return word + rng.choice(string.ascii_lowercase)
    i = rng.randrange(len(word) - 1)
    kind = rng.choice(("drop", "double", "swap", "replace"))
    if kind == "drop":
        return word[:i] + word[i + 1 :]
    if kind == "double":
        return word[: i + 1] + word[i] + word[i + 1 :]
    if kind == "swap":
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    return word[:i] + rng.choice(string.ascii_lowercase) + word[i + 1 :]


def corrupt_line(line: str, rng: random.Random, n_errors: int = 1) -> str:
    """`line` with `n_errors` realistic errors (module notes), words split on single spaces."""
    words = line.split(" ")
    for _ in range(n_errors):
        kind = rng.choice(KINDS if len(words) > 1 else ("typo",))
        i = rng.randrange(len(words))
        if kind == "typo":
            words[i] = _typo(words[i], rng)
        elif kind == "drop_word":
            del words[i]
        elif kind == "repeat_word":
            words.insert(i, words[i])
        else:
            j = min(i + 1, len(words) - 1) if i + 1 < len(words) else i - 1
            words[i], words[j] = words[j], words[i]
    return " ".join(words)


@dataclass
class EditScores:
    n: int
    exact: float  # fraction restored exactly
    char_distance: float  # mean character edit distance to the reference
    input_exact: float  # the same for the noisy inputs themselves (no editing)
    input_char_distance: float


def edit_metrics(outputs: Sequence[str], noisy: Sequence[str], references: Sequence[str]) -> EditScores:
    def dist(a: str, b: str) -> int:
        return levenshtein([ord(c) for c in a], [ord(c) for c in b])

    n = len(references)
    return EditScores(n, sum(o == r for o, r in zip(outputs, references)) / n,
                      sum(dist(o, r) for o, r in zip(outputs, references)) / n,
                      sum(x == r for x, r in zip(noisy, references)) / n,
                      sum(dist(x, r) for x, r in zip(noisy, references)) / n)


def held_out_lines(docs: Sequence[str], max_chars: int, min_chars: int = 20, limit: int = 200) -> list[str]:
    """Distinct stripped lines of `docs` of `min_chars` to `max_chars` characters, in order, at most `limit`."""
    seen, out = set(), []
    for doc in docs:
        for line in doc.splitlines():
            line = line.strip()
            if min_chars <= len(line) <= max_chars and line not in seen:
                seen.add(line)
                out.append(line)
                if len(out) >= limit:
                    return out
    return out


def evaluate_editor(editor: Callable[[list[str]], list[str]], lines: Sequence[str], seed: int = 0,
                    n_errors: int = 1) -> tuple[EditScores, list[tuple[str, str, str]]]:
    """Corrupt each line (seeded), run `editor` on the noisy lines, score; also returns (reference, noisy, output)."""
    rng = random.Random(seed)
    noisy = [corrupt_line(line, rng, n_errors) for line in lines]
    outputs = editor(list(noisy))
    return edit_metrics(outputs, noisy, lines), list(zip(lines, noisy, outputs))


def training_lines(train_docs: Sequence[str], held_out: Sequence[str], max_chars: int,
                   min_chars: int = 20) -> list[str]:
    """Distinct lines of the training documents in the task's length range, less any line of the test set (the
    plays repeat short lines, so a held-out line can occur in training text too)."""
    lines = held_out_lines(train_docs, max_chars, min_chars, limit=10**9)
    banned = set(held_out)
    return [line for line in lines if line not in banned]


def noisy_chain(line: str, t: int, rng: random.Random) -> list[str]:
    """x_0 = `line`, then x_k = one more realistic error on x_{k-1}, for k = 1..t: the forward chain of the
    task's own noise kernel (one `corrupt_line` error per step)."""
    chain = [line]
    for _ in range(t):
        chain.append(corrupt_line(chain[-1], rng, 1))
    return chain


def error_kind(reference: str, noisy: str) -> str:
    """Which of `KINDS` (or "none") turned `reference` into `noisy` with one `corrupt_line` error, read off the
    words: one more word is a repeat, one fewer a drop, two neighbours exchanged a swap, anything else a typo."""
    a, b = reference.split(" "), noisy.split(" ")
    if a == b:
        return "none"
    if len(b) == len(a) + 1:
        return "repeat_word"
    if len(b) == len(a) - 1:
        return "drop_word"
    diff = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
    if len(diff) == 2 and diff[1] == diff[0] + 1 and (a[diff[0]], a[diff[1]]) == (b[diff[1]], b[diff[0]]):
        return "swap_words"
    return "typo"
