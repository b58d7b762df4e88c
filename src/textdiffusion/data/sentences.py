"""Text cut into sentences, the units a Large Concept Model embeds and generates one at a time (processes/concept.py).

A paragraph (lines between blank lines) is one stretch of prose or verse: its line breaks are only layout, so they
become spaces. A sentence ends at '.', '!' or '?' (with any closing quotes or brackets after it) followed by
whitespace, and at the end of its paragraph. In the bundled plays a speaker's name ("KING.") is a paragraph's first
line and so its own sentence, which keeps the dialogue's turns in the sequence of concepts. A sentence longer than
`max_chars` is cut at its last ';' or ':' (else ',', else space) that keeps the piece within `max_chars`, so every
unit fits the decoder (which writes at most `max_chars` bytes plus [EOS] for the byte tokenizer).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from ..core.errors import UserError

PARAGRAPH = re.compile(r"\n[ \t]*\n")
# a sentence's end: terminal punctuation and any closing quotes / brackets, before whitespace
SENTENCE_END = re.compile(r"[.!?]['\"\u2019\u201d)\]]*(?=\s)")
CUT_MARKS = (";:", ",", " ")


def split_long(sentence: str, max_chars: int) -> list[str]:
    """`sentence` in pieces of at most `max_chars` characters, cut after the last clause mark that fits."""
    pieces = []
    while len(sentence) > max_chars:
        head = sentence[: max_chars + 1]
        cut = -1
        for marks in CUT_MARKS:
            cut = max(head.rfind(m, 0, max_chars) for m in marks)
            if cut > 0:
                break
        cut = cut + 1 if cut > 0 else max_chars  # keep the mark with the first piece; no mark: a hard cut
        pieces.append(sentence[:cut].strip())
        sentence = sentence[cut:].strip()
    if sentence:
        pieces.append(sentence)
    return [p for p in pieces if p]


def split_sentences(text: str, max_chars: int | None = None) -> list[str]:
    """The sentences of `text`, in order, whitespace collapsed (module notes)."""
    if max_chars is not None and (not isinstance(max_chars, int) or max_chars < 2):
        raise UserError(f"max_chars must be an integer >= 2 (or None), got {max_chars!r}")
    out: list[str] = []
    for paragraph in PARAGRAPH.split(text.replace("\r\n", "\n")):
        flat = " ".join(paragraph.split())
        cuts = [m.end() for m in SENTENCE_END.finditer(flat)] + [len(flat)]
        start = 0
        for end in cuts:
            sentence, start = flat[start:end].strip(), end
            if sentence:
                out.extend(split_long(sentence, max_chars) if max_chars else [sentence])
    return out


def document_sentences(documents: Iterator[str], max_chars: int, max_sentences: int | None = None
                       ) -> Iterator[list[str]]:
    """Each document's sentences, until `max_sentences` in all (the last document cut short)."""
    left = max_sentences
    for doc in documents:
        sentences = split_sentences(doc, max_chars)
        if left is not None:
            sentences, left = sentences[:left], left - len(sentences[:left])
        if sentences:
            yield sentences
        if left is not None and left <= 0:
            return
