"""From the sampler's frames to what a stream says: the text that can no longer change, and each step's canvas.

`append` mode sends only final text. A token is final once it is not [MASK] and the sampler never
changes a revealed token (MDLM's SUBS property, and the confidence, threshold, block, first-hitting,
semi-AR and AR samplers); the final text of a row is its decoded prefix up to the first [MASK]. For
samplers that do revise tokens (ReMDM, D3PM, SEDD) nothing is final before the last step.
`denoise` mode adds every step's full canvas and the positions that changed (what the filmstrip shows).
Stop sequences cut a row's text where they first appear (after them with `include_stop`), and so does [EOS] in a
completion (a model trained with [EOS] padding, as SFT does, writes its answer and then [EOS]s) and any of
`stop_ids`; once every row has stopped the work may end.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..data.tokenizers import MASK_CHAR, Tokenizer
from ..samplers import Frame

# samplers whose revealed tokens never change again
MONOTONE_SAMPLERS = frozenset({"ancestral", "first_hitting", "confidence", "threshold", "block", "semi_ar", "ar"})


@dataclass
class RowState:
    sent: str = ""  # text already sent: always a prefix of the row's final text
    stopped_text: str | None = None  # the text up to a stop sequence, once one appeared in final text
    prev: torch.Tensor | None = None

    @property
    def stopped(self) -> bool:
        return self.stopped_text is not None


@dataclass
class Update:
    """What one frame adds for one row: new final text, and in denoise mode the canvas."""

    index: int
    delta: str
    diffusion: dict = field(default_factory=dict)


class TextTracker:
    """Follows one request's frames: rows [n, L], of which positions `start:` are the text it returns."""

    def __init__(self, tokenizer: Tokenizer, start: int, n: int, sampler: str, stops: list[str],
                 mode: str = "append", stop_at_eos: bool = False, stop_ids: frozenset[int] = frozenset(),
                 include_stop: bool = False):
        self.tok, self.start, self.mode, self.stops = tokenizer, start, mode, stops
        self.stop_ids = sorted(set(stop_ids) | ({tokenizer.eos_id} if stop_at_eos else set()))
        self.include_stop = include_stop
        self.monotone = sampler in MONOTONE_SAMPLERS
        self.rows = [RowState() for _ in range(n)]
        self.hold = max((len(s) for s in stops), default=1) - 1  # a stop sequence may still be completing
        self._pieces: dict[int, str] = {}
        self.tokens: list[int] = []  # after finish: per row, the tokens of the text returned

    def piece(self, token: int) -> str:
        if token not in self._pieces:
            self._pieces[token] = MASK_CHAR if token == self.tok.mask_id else self.tok.decode([token], mask_char=None)
        return self._pieces[token]

    def _cut(self, text: str, at_eos: bool = False) -> tuple[str, bool]:
        cuts = [(i, -len(s)) for i, s in ((text.find(s), s) for s in self.stops) if i >= 0]
        if not cuts:
            return text, at_eos
        at, minus_len = min(cuts)  # the first stop sequence; of two at one place, the longer
        return text[: at - minus_len if self.include_stop else at], True

    def _eos_end(self, ids: torch.Tensor) -> int | None:
        """Where the row's first stop token is ([EOS] when it ends this request's text, or one of `stop_ids`)."""
        if not self.stop_ids:
            return None
        found = torch.isin(ids, torch.tensor(self.stop_ids, device=ids.device)).nonzero()
        return int(found[0]) if len(found) else None

    def _final_prefix(self, ids: torch.Tensor) -> tuple[str, bool]:
        """The decoded text before the first [MASK], and whether an [EOS] before it ended the text."""
        masked = (ids == self.tok.mask_id).nonzero()
        end = int(masked[0]) if len(masked) else len(ids)
        eos = self._eos_end(ids[:end])
        return self.tok.decode(ids[: end if eos is None else eos].tolist(), mask_char=None), eos is not None

    def _send(self, row: RowState, text: str, last: bool) -> str:
        """The part of `text` (final so far) not sent yet, holding back what may still change."""
        if not last:
            text = text.rstrip("\ufffd")  # a character whose bytes are split across tokens
            text = text[: max(len(text) - self.hold, 0)] if self.stops else text
        if not text.startswith(row.sent) or len(text) <= len(row.sent):
            return ""
        delta, row.sent = text[len(row.sent):], text
        return delta

    def frame(self, frame: Frame) -> list[Update]:
        updates = []
        for i, row in enumerate(self.rows):
            ids = frame.ids[i, self.start:]
            delta = ""
            if self.monotone and not row.stopped:
                text, stopped = self._cut(*self._final_prefix(ids))
                if stopped:
                    row.stopped_text = text
                delta = self._send(row, text, last=stopped)
            info = {}
            if self.mode == "denoise":
                changed = [] if row.prev is None else (ids != row.prev).nonzero().flatten().tolist()
                info = {"step": frame.step, "t": round(frame.t, 6), "tokens": [self.piece(int(x)) for x in ids],
                        "changed": changed}
            row.prev = ids.clone()
            if delta or info:
                updates.append(Update(i, delta, info))
        return updates

    @property
    def all_stopped(self) -> bool:
        return all(row.stopped for row in self.rows)

    def finish(self, ids: torch.Tensor) -> list[tuple[str, str, str]]:
        """Per row: (its final text, the rest not sent yet, finish_reason), from the last ids [n, L]."""
        out = []
        for row, row_ids in zip(self.rows, ids):
            if row.stopped:
                text, stopped = row.stopped_text, True
            else:
                ids = row_ids[self.start:]
                eos = self._eos_end(ids)
                text, stopped = self._cut(self.tok.decode(ids[:eos].tolist(), mask_char=None), eos is not None)
            rest = text[len(row.sent):] if text.startswith(row.sent) else text
            row.sent = text
            out.append((text, rest, "stop" if stopped else "length"))
            self.tokens.append(self._tokens_of(row_ids[self.start:], text))
        return out

    def _tokens_of(self, ids: torch.Tensor, text: str) -> int:
        """How many of a row's written tokens make up `text`: the fewest whose decoding begins with it
        ([MASK]s, and whatever follows an [EOS] that ended the text, are not counted)."""
        kept = [x for x in ids[: self._eos_end(ids)].tolist() if x != self.tok.mask_id]
        low, high = 0, len(kept)
        if self.tok.decode(kept, mask_char=None) == text:
            return high
        while low < high:  # decoding a longer prefix only adds text after it
            mid = (low + high) // 2
            if self.tok.decode(kept[:mid], mask_char=None).startswith(text):
                high = mid
            else:
                low = mid + 1
        return low


def merge_updates(waiting: list[Update], new: list[Update]) -> None:
    """Fold a frame's updates into updates not sent yet (in place): text deltas join, the canvas is the
    newer one, the changed positions are those that changed in either frame."""
    by_index = {u.index: u for u in waiting}
    for update in new:
        old = by_index.get(update.index)
        if old is None:
            waiting.append(update)
            by_index[update.index] = update
            continue
        old.delta += update.delta
        if update.diffusion:
            changed = sorted(set(old.diffusion.get("changed", [])) | set(update.diffusion["changed"]))
            old.diffusion = {**update.diffusion, "changed": changed}
