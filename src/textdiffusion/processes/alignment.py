"""Levenshtein alignment between token sequences, as edit operations, and their per-position tag form.

An alignment of `src` to `tgt` is a list of edits `(op, token)` read left to right:

    KEEP    token   consume one source token (== token) and write it
    DELETE  token   consume one source token (== token), write nothing
    REPLACE token   consume one source token (!= token) and write `token`
    INSERT  token   consume nothing, write `token`

`align` returns a minimal one (unit costs, KEEP free: its cost is the Levenshtein distance) chosen by a fixed
rule, so that the same pair always gives the same alignment (a tagger's training target must be a function).
`Tags` is the same information per position, the form an edit model predicts: one op in {KEEP, DELETE, REPLACE}
per source token, the new token of each REPLACE, and the tokens inserted in each of the n + 1 gaps (gap g lies
just before source token g; gap n is the end).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from ..core.errors import UserError


class Op(IntEnum):
    KEEP = 0
    DELETE = 1
    REPLACE = 2
    INSERT = 3


Edit = tuple[Op, int]


def distance_table(src: Sequence[int], tgt: Sequence[int]) -> np.ndarray:
    """D[i, j] = edit distance between src[:i] and tgt[:j], [n + 1, m + 1].

    Each row is vectorised: with E[j] = min(D[i-1, j] + 1, D[i-1, j-1] + [src_i != tgt_j]) (E[0] = i), the
    in-row recurrence D[i, j] = min(E[j], D[i, j-1] + 1) unrolls to D[i, j] = j + min_{k <= j} (E[k] - k)."""
    a, b = np.asarray(src, dtype=np.int64), np.asarray(tgt, dtype=np.int64)
    n, m = len(a), len(b)
    table = np.empty((n + 1, m + 1), dtype=np.int64)
    cols = np.arange(m + 1)
    table[0] = cols
    for i in range(1, n + 1):
        prev = table[i - 1]
        e = np.empty(m + 1, dtype=np.int64)
        e[0] = i
        e[1:] = np.minimum(prev[1:] + 1, prev[:-1] + (b != a[i - 1]))
        table[i] = cols + np.minimum.accumulate(e - cols)
    return table


def levenshtein(src: Sequence[int], tgt: Sequence[int]) -> int:
    """The edit distance (insertions, deletions and substitutions, each of cost 1)."""
    return int(distance_table(src, tgt)[-1, -1])


def align(src: Sequence[int], tgt: Sequence[int]) -> list[Edit]:
    """A minimal alignment of `src` to `tgt`. Ties are broken the same way every time: walking back from
    the end, a diagonal move (KEEP / REPLACE) first, then DELETE, then INSERT."""
    src, tgt = [int(v) for v in src], [int(v) for v in tgt]
    table = distance_table(src, tgt)
    i, j = len(src), len(tgt)
    out: list[Edit] = []
    while i > 0 or j > 0:
        here = table[i, j]
        if i > 0 and j > 0 and here == table[i - 1, j - 1] + (src[i - 1] != tgt[j - 1]):
            out.append((Op.KEEP, src[i - 1]) if src[i - 1] == tgt[j - 1] else (Op.REPLACE, tgt[j - 1]))
            i, j = i - 1, j - 1
        elif i > 0 and here == table[i - 1, j] + 1:
            out.append((Op.DELETE, src[i - 1]))
            i -= 1
        else:
            out.append((Op.INSERT, tgt[j - 1]))
            j -= 1
    return out[::-1]


def cost(edits: Sequence[Edit]) -> int:
    """The number of edits that change something (all but KEEP)."""
    return sum(op != Op.KEEP for op, _ in edits)


def apply_edits(src: Sequence[int], edits: Sequence[Edit]) -> list[int]:
    """The sequence the edits write from `src`; a UserError if they do not consume `src` exactly."""
    out: list[int] = []
    pos = 0
    for op, token in edits:
        if op == Op.INSERT:
            out.append(int(token))
            continue
        if pos >= len(src):
            raise UserError(f"the edits consume more than the {len(src)} source tokens: align them to this source")
        if op in (Op.KEEP, Op.DELETE) and int(src[pos]) != int(token):
            raise UserError(f"edit {op.name} names token {token} but source token {pos} is {src[pos]}: "
                            "align the edits to this source")
        if op == Op.KEEP:
            out.append(int(src[pos]))
        elif op == Op.REPLACE:
            out.append(int(token))
        pos += 1
    if pos != len(src):
        raise UserError(f"the edits consume {pos} of the {len(src)} source tokens: align them to this source")
    return out


@dataclass
class Tags:
    """An alignment per position: `ops[i]` in {KEEP, DELETE, REPLACE} for source token i, `replace[i]` its new
    token (None unless REPLACE), and `inserts[g]` the tokens written in gap g (before source token g; g = n is
    the end)."""

    ops: list[Op]
    replace: list[int | None]
    inserts: list[list[int]]

    @property
    def insert_counts(self) -> list[int]:
        return [len(g) for g in self.inserts]


def to_tags(src: Sequence[int], edits: Sequence[Edit]) -> Tags:
    """The per-position form of an alignment of `src`."""
    ops: list[Op] = []
    replace: list[int | None] = []
    inserts: list[list[int]] = [[]]
    for op, token in edits:
        if op == Op.INSERT:
            inserts[-1].append(int(token))
            continue
        ops.append(op)
        replace.append(int(token) if op == Op.REPLACE else None)
        inserts.append([])
    if len(ops) != len(src):
        raise UserError(f"the edits consume {len(ops)} of the {len(src)} source tokens: align them to this source")
    return Tags(ops, replace, inserts)


def from_tags(src: Sequence[int], tags: Tags) -> list[Edit]:
    """The alignment that `tags` describe, as edits (the inverse of `to_tags`)."""
    if len(tags.ops) != len(src) or len(tags.inserts) != len(src) + 1 or len(tags.replace) != len(src):
        raise UserError(f"tags for {len(tags.ops)} tokens do not fit a source of {len(src)}")
    edits: list[Edit] = [(Op.INSERT, t) for t in tags.inserts[0]]
    for i, tok in enumerate(src):
        op = Op(tags.ops[i])
        if op == Op.REPLACE:
            if tags.replace[i] is None:
                raise UserError(f"source token {i} is tagged REPLACE but has no new token")
            edits.append((op, int(tags.replace[i])))
        elif op in (Op.KEEP, Op.DELETE):
            edits.append((op, int(tok)))
        else:
            raise UserError(f"source token {i} has op {op.name}; a source token is KEEP, DELETE or REPLACE")
        edits.extend((Op.INSERT, t) for t in tags.inserts[i + 1])
    return edits
