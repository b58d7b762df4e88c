"""The reply of `textdiffusion chat` as it denoises: redrawn in place on a terminal, or one line per step.

On a terminal each step rewrites the reply's lines (ANSI: cursor up, clear below), masks shown as ▒, at most
every `interval` seconds; elsewhere (a pipe, a file) each step is one line `  step | text`, newlines shown as ⏎.
"""

from __future__ import annotations

import shutil
import textwrap
import time
import unicodedata
from typing import TextIO

from ..data.tokenizers import MASK_CHAR, Tokenizer
from ..samplers.base import Frame


def printable(text: str) -> str:
    """Control characters other than newline become U+FFFD: a model's bytes never drive the terminal."""
    return "".join("\ufffd" if unicodedata.category(c) == "Cc" and c != "\n" else c for c in text)


class ReplyStream:
    """An `on_step` callback that shows the reply region (positions from `start`) of row 0 of each frame."""

    def __init__(self, tokenizer: Tokenizer, start: int, out: TextIO, live: bool, interval: float = 0.05):
        self.tokenizer, self.start, self.out, self.live, self.interval = tokenizer, start, out, live, interval
        self.drawn_lines, self.last_draw = 0, 0.0

    def text(self, frame: Frame) -> str:
        ids = frame.ids if frame.ids.dim() == 2 else frame.ids[None]
        return printable(self.tokenizer.decode(ids[0, self.start:].tolist(), mask_char=MASK_CHAR, stop_at_eos=True))

    def __call__(self, frame: Frame) -> None:
        text = self.text(frame)
        if not self.live:
            self.out.write(f"{frame.step:5d} | {text.strip().replace(chr(10), '⏎')}\n")
            self.out.flush()
            return
        now = time.monotonic()
        if now - self.last_draw >= self.interval:
            self.draw(text)
            self.last_draw = now

    def draw(self, text: str) -> None:
        width = max(20, shutil.get_terminal_size().columns - 1)
        lines = [part for line in text.strip().split("\n") for part in (textwrap.wrap(line, width) or [""])]
        if self.drawn_lines:
            self.out.write(f"\x1b[{self.drawn_lines}F\x1b[J")  # back to the reply's first line, clear below
        self.out.write("\n".join(lines) + "\n")
        self.out.flush()
        self.drawn_lines = len(lines)

    def finish(self, reply: str) -> None:
        """Replace the live view by the final reply (a terminal), or print it after the steps (elsewhere)."""
        if self.live:
            self.draw(printable(reply))
        else:
            self.out.write(f"assistant: {printable(reply)}\n")
            self.out.flush()
