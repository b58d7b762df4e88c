"""What D3PM's forward chains do to real bytes: how much of x_t is recognisable noise, and what it keeps.

    python benchmarks/d3pm_corruption.py                   # Shakespeare's training split, T = 1000
    python benchmarks/d3pm_corruption.py --write

For each transition (absorbing, uniform, embedding) and a few t, with x0 drawn from the byte
unigram distribution of the corpus and x_t ~ x0 Qbar_t (exact, from the dense Qbar_t):

  kept          P(x_t = x0)
  off-support   P(x_t is a token the data never contains): [MASK], or a byte absent from the corpus.
                Such a position is recognisably noise, as a [MASK] is.
  same class    P(x_t is in x0's character class: letter, whitespace, digit, punctuation, other)
  I(x0; x_t)    mutual information in nats under this x0 law (the schedules are built to make it
                fall linearly for x0 uniform over all tokens, not over the corpus's bytes)

It explains the byte-level ordering of the D3PM rows in BENCHMARKS.md (see the reading there).
This is an exact computation, not a timing: it runs in seconds on any machine.
"""

from __future__ import annotations

import argparse
from collections import Counter

import torch
from common import markdown_table, record  # benchmarks/common.py, next to this script

from textdiffusion.data.corpus import iter_documents
from textdiffusion.data.tokenizers import ByteTokenizer
from textdiffusion.processes.d3pm import D3PM


def byte_class(b: int) -> str:
    ch = chr(b)
    if b >= 128:
        return "other"
    if ch.isalpha():
        return "letter"
    if ch.isspace():
        return "whitespace"
    if ch.isdigit():
        return "digit"
    if ch.isprintable():
        return "punctuation"
    return "other"


def corpus_unigram(source: str, vocab_size: int) -> torch.Tensor:
    counts: Counter[int] = Counter()
    for text in iter_documents(source, "train"):
        counts.update(text.encode("utf-8"))
    p = torch.zeros(vocab_size, dtype=torch.float64)
    for b, n in counts.items():
        p[b] = n
    return p / p.sum()


def chain_rows(proc: D3PM, p0: torch.Tensor, same_class: torch.Tensor, ts: list[int]) -> list[list]:
    support = p0 > 0
    rows = []
    for t in ts:
        joint = p0[:, None] * proc.kernel.dense(0, t)  # p(x0, x_t)
        marginal = joint.sum(0)
        ratio = joint / (p0[:, None] * marginal[None, :]).clamp_min(1e-300)
        mi = float((joint * torch.where(joint > 0, ratio.log(), torch.zeros_like(ratio))).sum())
        values = (joint.diagonal().sum(), marginal[~support].sum(), (joint * same_class).sum(), mi)
        rows.append([proc.transition, t, *(f"{float(v):.3f}" for v in values)])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default="shakespeare")
    ap.add_argument("--num-steps", type=int, default=1000, help="T, as in the bench's D3PM runs")
    ap.add_argument("--t", type=float, nargs="+", default=[0.1, 0.25, 0.5, 0.75, 0.9], help="t as fractions of T")
    ap.add_argument("--write", action="store_true", help="append the table to BENCHMARKS.md")
    args = ap.parse_args()

    tok = ByteTokenizer()
    p0 = corpus_unigram(args.source, tok.vocab_size)
    classes = [byte_class(b) if b < 256 else "special" for b in range(tok.vocab_size)]
    same_class = torch.tensor([[a == b for b in classes] for a in classes], dtype=torch.float64)
    ts = [max(1, round(f * args.num_steps)) for f in args.t]
    rows = []
    for transition in ("absorbing", "uniform", "embedding"):
        proc = D3PM(tok.vocab_size, tok.mask_id, transition=transition, num_steps=args.num_steps)
        rows += chain_rows(proc, p0, same_class, ts)
    headers = ["transition", "t", "kept", "off-support", "same class", "I(x0; x_t) nats"]
    table = markdown_table(headers, rows)
    used = int((p0 > 0).sum())
    note = (f"{args.source}: {used} of the 256 byte values occur in the training split "
            f"(vocabulary {tok.vocab_size} with specials); T = {args.num_steps}, "
            "each transition with its default schedule.")
    print(note + "\n\n" + table)
    if args.write:
        payload = {"source": args.source, "bytes_used": used, "headers": headers, "rows": rows}
        md, js = record("d3pm_corruption", "D3PM forward chains on Shakespeare's bytes", table, payload, "cpu", note)
        print(f"wrote {md} and {js}")


if __name__ == "__main__":
    main()
