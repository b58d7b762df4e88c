"""Sequence-to-sequence evaluation: generate targets for fixed sources, MBR over seeds, BLEU via sacreBLEU.

DiffuSeq (Gong et al., 2022) decodes several samples per source and keeps the minimum-Bayes-risk one: the
candidate with the highest mean sentence BLEU against the other candidates. Works for any model of the
library whose sampler keeps fixed tokens: the source is the fixed prefix [BOS] + source bytes, the rest is
generated (the AR baseline reads the same prefix as its prompt).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..core.errors import UserError
from ..data.pairs import pair_document


def mbr_select(candidates: Sequence[str]) -> int:
    """The index of the candidate with the highest mean sentence BLEU against the others (ties: the first)."""
    from sacrebleu.metrics import BLEU

    if not candidates:
        raise UserError("mbr_select needs at least one candidate")
    if len(candidates) == 1:
        return 0
    bleu = BLEU(effective_order=True)
    scores = [sum(bleu.sentence_score(c, [o]).score for j, o in enumerate(candidates) if j != i)
              for i, c in enumerate(candidates)]
    return max(range(len(candidates)), key=lambda i: (scores[i], -i))


@dataclass
class Seq2SeqResult:
    bleu: float  # corpus BLEU of the MBR choices (sacreBLEU, default 13a tokenisation)
    bleu_first: float  # corpus BLEU of the first candidate alone (no MBR)
    n: int
    candidates: int
    hypotheses: list[str]


def generate_targets(pipe, sources: Sequence[str], source_chars: int, candidates: int = 4, seed: int = 0,
                     sampler: str | None = None, batch_sources: int = 16, **sampler_options) -> list[list[str]]:
    """`candidates` targets for each source, each decoded up to its [EOS]. Every prefix is [BOS] + the source
    padded to source_chars - 1 bytes, so `batch_sources` sources (x candidates rows) share one sampler call,
    seeded seed + the index of its first source."""
    tok = pipe.tokenizer
    if tok.kind != "byte":
        raise UserError("the paired task keeps the source in exactly source_chars tokens: use a byte-level model")
    if not isinstance(batch_sources, int) or batch_sources < 1:
        raise UserError(f"batch_sources must be a positive integer, got {batch_sources!r}")
    out = []
    for first in range(0, len(sources), batch_sources):
        chunk = sources[first : first + batch_sources]
        x = torch.full((len(chunk) * candidates, pipe.seq_len), tok.mask_id, dtype=torch.long)
        for i, source in enumerate(chunk):
            prefix = [tok.bos_id, *tok.encode(pair_document(source, "", source_chars))]
            x[i * candidates : (i + 1) * candidates, : len(prefix)] = torch.tensor(prefix)
        ids = pipe.denoise(x, sampler=sampler, seed=seed + first, **sampler_options).ids
        texts = [tok.decode(row[source_chars:].tolist(), mask_char=None, stop_at_eos=True).strip() for row in ids]
        out += [texts[i * candidates : (i + 1) * candidates] for i in range(len(chunk))]
    return out


def evaluate_seq2seq(pipe, pairs: Sequence[tuple[str, str]], source_chars: int, candidates: int = 4,
                     seed: int = 0, sampler: str | None = None, batch_sources: int = 16,
                     **sampler_options) -> Seq2SeqResult:
    """BLEU of the MBR-selected target (and of a single sample) against each pair's reference."""
    from sacrebleu.metrics import BLEU

    generated = generate_targets(pipe, [s for s, _ in pairs], source_chars, candidates, seed, sampler,
                                 batch_sources, **sampler_options)
    refs = [[t for _, t in pairs]]
    chosen = [cands[mbr_select(cands)] for cands in generated]
    bleu = BLEU()
    return Seq2SeqResult(bleu.corpus_score(chosen, refs).score, bleu.corpus_score([c[0] for c in generated],
                                                                                   refs).score,
                         len(pairs), candidates, chosen)
