"""How well a sentence-concept model's decoder (models/concept.py) inverts the frozen sentence encoder.

Round trip: sentence -> encoder -> embedding -> decoder -> sentence'. Scored three ways:
  exact     the share of sentences written back character for character;
  cer       the character error rate, Levenshtein(sentence', sentence) / len(sentence), averaged over sentences;
  cosine    the cosine between the encoder's embedding of sentence' and the embedding it was decoded from (the
            decoder may write another sentence of the same meaning: the encoder cannot tell them apart either).
The last one also scores generated embeddings, which have no reference sentence.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ..core.errors import UserError
from ..processes.alignment import levenshtein


@dataclass
class RoundTrip:
    n: int
    exact: float | None  # None without references
    cer: float | None
    cosine: float

    def to_dict(self) -> dict:
        return asdict(self)


def char_error_rate(output: str, reference: str) -> float:
    """Levenshtein(output, reference) over the reference's characters (an empty reference: 0 if output is empty)."""
    distance = levenshtein([ord(c) for c in output], [ord(c) for c in reference])
    return distance / len(reference) if reference else float(distance > 0)


def round_trip_scores(decoded: Sequence[str], embeddings: torch.Tensor, encode: Callable[[list[str]], torch.Tensor],
                      references: Sequence[str] | None = None) -> RoundTrip:
    """Scores of `decoded` sentences written from `embeddings` [n, E] (module notes); `references` are the
    sentences the embeddings came from, when there are any."""
    if not decoded or len(decoded) != embeddings.shape[0]:
        raise UserError(f"round trip needs one decoded sentence per embedding, got {len(decoded)} and "
                        f"{embeddings.shape[0]}")
    cosine = F.cosine_similarity(encode(list(decoded)).float().cpu(), embeddings.float().cpu(), dim=-1)
    exact = cer = None
    if references is not None:
        if len(references) != len(decoded):
            raise UserError(f"{len(references)} references for {len(decoded)} decoded sentences")
        exact = sum(d == r for d, r in zip(decoded, references)) / len(decoded)
        cer = sum(char_error_rate(d, r) for d, r in zip(decoded, references)) / len(decoded)
    return RoundTrip(n=len(decoded), exact=exact, cer=cer, cosine=float(cosine.mean()))
