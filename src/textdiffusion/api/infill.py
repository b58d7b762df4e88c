"""The gap syntax of `infill`: text with [MASK] (one token) or [MASK]xN (N tokens) gaps."""

from __future__ import annotations

import re

from ..core.errors import UserError

GAP = re.compile(r"\[MASK\](?:x(\d+))?")
MAX_GAP = 100_000


def parse_gaps(text: str) -> list[str | int]:
    """Split `text` into literal segments (str) and gap lengths (int), in order.

    >>> parse_gaps("The [MASK]x5 of the night")
    ['The ', 5, ' of the night']
    """
    if not text or not text.strip():
        raise UserError("the text to infill is empty: give text with [MASK] or [MASK]xN gaps")
    parts: list[str | int] = []
    pos = 0
    for m in GAP.finditer(text):
        if m.start() > pos:
            parts.append(text[pos : m.start()])
        n = int(m.group(1)) if m.group(1) else 1
        if not 0 < n <= MAX_GAP:
            raise UserError(f"gap {m.group(0)!r} must have a length from 1 to {MAX_GAP}")
        parts.append(n)
        pos = m.end()
    if pos < len(text):
        parts.append(text[pos:])
    literal = "".join(p for p in parts if isinstance(p, str))
    if "[MASK" in literal or re.search(r"\[MASK\]x(?!\d)", text):
        raise UserError("malformed gap: write [MASK] for one token or [MASK]x5 for five")
    if not any(isinstance(p, int) for p in parts):
        raise UserError("no gap to fill: mark one with [MASK] (one token) or [MASK]xN (N tokens)")
    return parts
