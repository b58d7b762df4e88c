"""How one frame's row becomes text segments for a filmstrip: masked, newly revealed and old text for the
samplers that unmask, and kept, inserted, replaced and deleted text for the edit samplers (DiffusER, Edit Flows),
whose rows change length. filmstrip.py renders the segments (terminal, HTML, GIF)."""

from __future__ import annotations

import unicodedata

from ..core.errors import UserError
from ..data.tokenizers import MASK_CHAR, Tokenizer
from ..samplers.base import Frame

# (kind, text) with kind "mask" (text is one MASK_CHAR per masked token), "new" (revealed since the
# previous frame) or "old" (already there); edit frames use "old", "ins", "rep" and "del" (edit_segments).
Segment = tuple[str, str]


def row_ids(frame: Frame, row: int) -> list[int]:
    """The token ids of sample `row` in `frame` (a 1-D `ids` is a single sample)."""
    ids = frame.ids if frame.ids.dim() == 2 else frame.ids.reshape(1, -1)
    if not 0 <= row < ids.shape[0]:
        raise UserError(f"row {row} is out of range: the frames hold {ids.shape[0]} samples")
    return ids[row].tolist()


def printable(text: str) -> str:
    """Control characters other than newline and tab become U+FFFD (no stray terminal escapes)."""
    return "".join("\ufffd" if unicodedata.category(c) == "Cc" and c not in "\n\t" else c for c in text)


def mask_segments(ids: list[int], prev: list[int] | None, tokenizer: Tokenizer) -> list[Segment]:
    """Split a row into runs of masks, newly revealed tokens and old tokens; other specials are dropped."""
    mask_id = tokenizer.mask_id
    others = tokenizer.special_ids - {mask_id}
    if prev is not None and len(prev) != len(ids):
        prev = None
    runs: list[tuple[str, list[int]]] = []
    for pos, tok in enumerate(ids):
        if tok in others:
            continue
        if tok == mask_id:
            kind = "mask"
        elif prev is not None and prev[pos] == mask_id:
            kind = "new"
        else:
            kind = "old"
        if runs and runs[-1][0] == kind:
            runs[-1][1].append(tok)
        else:
            runs.append((kind, [tok]))
    return [(kind, MASK_CHAR * len(run) if kind == "mask" else printable(tokenizer.decode(run, mask_char=None)))
            for kind, run in runs]


def is_edit(frames: list[Frame]) -> bool:
    """Frames of an edit sampler: the length changes, and each frame carries the edits that made it."""
    return any(f.edits is not None for f in frames)


def edit_row(frame: Frame, row: int, tokenizer: Tokenizer) -> list[int]:
    """An edit frame's row without its [MASK] padding (edit samplers never write [MASK])."""
    return [i for i in row_ids(frame, row) if i != tokenizer.mask_id]


def edit_segments(prev: list[int] | None, ids: list[int], edits: list | None, tokenizer: Tokenizer) -> list[Segment]:
    """A row as runs of kept ("old"), inserted ("ins"), replacing ("rep") and deleted ("del") text: deleted and
    replaced tokens of `prev` stay visible, struck out. `edits` are the frame's own edits when `prev` is the
    frame just before, else None and the minimal alignment of prev to ids is shown."""
    from ..processes.alignment import Op, align

    if prev is None:
        return [("old", printable(tokenizer.decode(ids, mask_char=None)))]
    if edits is None:
        edits = align(prev, ids)
    runs: list[tuple[str, list[int]]] = []

    def add(kind: str, tok: int) -> None:
        if runs and runs[-1][0] == kind:
            runs[-1][1].append(tok)
        else:
            runs.append((kind, [tok]))

    pos = 0
    for op, tok in edits:
        if op == Op.INSERT:
            add("ins", tok)
            continue
        if op == Op.KEEP:
            add("old", tok)
        elif op == Op.DELETE:
            add("del", prev[pos])
        else:
            add("del", prev[pos])
            add("rep", tok)
        pos += 1
    return [(kind, printable(tokenizer.decode(run, mask_char=None))) for kind, run in runs]


def edit_header(frame: Frame, total: int, segments: list[Segment]) -> str:
    """`step 3/10 · t=0.700 · +12 -3 ~4 chars · 57 chars`."""
    count = {k: sum(len(t) for kind, t in segments if kind == k) for k in ("old", "ins", "rep", "del")}
    return (f"step {frame.step}/{total} · t={frame.t:.3f} · +{count['ins']} -{count['del']} ~{count['rep']} chars"
            f" · {count['old'] + count['ins'] + count['rep']} chars")


def frame_segments(frames: list[Frame], i: int, row: int, tokenizer: Tokenizer) -> list[Segment]:
    """The segments of edit frame `i` of `frames` (sorted), against the frame shown before it."""
    ids = edit_row(frames[i], row, tokenizer)
    if i == 0:
        return edit_segments(None, ids, None, tokenizer)
    prev = edit_row(frames[i - 1], row, tokenizer)
    consecutive = frames[i].step == frames[i - 1].step + 1 and frames[i].edits is not None
    return edit_segments(prev, ids, frames[i].edits[row] if consecutive else None, tokenizer)
