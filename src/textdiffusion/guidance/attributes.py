"""The attribute of the learned classifier: verse or prose, labelled by a rule on the text of a window.

In the bundled plays (Project Gutenberg layout) verse keeps the poet's line breaks and every verse line starts
with a capital letter; prose is wrapped at about 70 characters, so a prose speech's later lines mostly start
with a lower-case word. The rule reads the lines of a window that continue a speech (the previous line is
speech text too: not blank, not a speaker's name, not a [stage direction]); the window's first line
only counts as the previous line, since a window usually starts mid-line:
- prose (0): some continuing line starts with a lower-case letter;
- verse (1): at least two continuing lines, all starting with a capital;
- undecided (None): otherwise (too few lines, or only speaker names and directions).
The same rule labels the classifier's training windows and judges generated text, so "success" below means
that the rule finds the asked-for attribute in the sample; a window of garbage is mostly undecided.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch

HEADING = re.compile(r"^[A-Z][A-Za-z' ]{0,30}\.$")  # a speaker's name ("HAMLET.", "King.", "First Lord.")
VERSE, PROSE = 1, 0
NAMES = {"verse": VERSE, "prose": PROSE}


def _speech_line(line: str) -> bool:
    text = line.strip()
    return (bool(text) and any(c.islower() for c in text) and not text.startswith("[")
            and not (HEADING.match(text) and len(text.split()) <= 3))


def verse_or_prose(text: str) -> int | None:
    """1 verse, 0 prose, None undecided (module notes)."""
    lines = text.split("\n")
    firsts = []
    for prev, line in zip(lines, lines[1:]):
        if _speech_line(prev) and _speech_line(line):
            first = next((c for c in line if c.isalpha()), None)
            if first is not None:
                firsts.append(first)
    if any(c.islower() for c in firsts):
        return PROSE
    return VERSE if len(firsts) >= 2 else None


def labelled_windows(texts: Iterable[str], tokenizer, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every non-overlapping window of `seq_len` tokens of each text that the rule decides: (ids [N, seq_len],
    labels [N])."""
    windows, labels = [], []
    for text in texts:
        ids = tokenizer.encode(text)
        for start in range(0, len(ids) - seq_len + 1, seq_len):
            window = ids[start : start + seq_len]
            label = verse_or_prose(tokenizer.decode(window, mask_char=None))
            if label is not None:
                windows.append(window)
                labels.append(label)
    if not windows:
        return torch.zeros(0, seq_len, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    return torch.tensor(windows, dtype=torch.long), torch.tensor(labels, dtype=torch.long)
