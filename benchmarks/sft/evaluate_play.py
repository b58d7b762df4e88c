"""Held-out accuracy on the "Which Shakespeare play is this from?" set (make_data_play.py), with and without
classifier-free guidance, plus two model-free baselines.

Each held-out prompt is answered once in `--reply` positions after its templated prompt, exactly as
`Pipeline.chat` writes a reply (the reply is the text up to the first [EOS]); prompts of the same token length are
denoised together as one batch (CFG needs the prompt in the same columns of every row), seed = the batch's
length. Columns: exact = the reply equals the title (± binomial standard error); valid = the reply is one of the
37 titles (a judge-free check that it answers in the task's format); hard = right answers on the prompts where
the speaker lookup baseline is wrong (the line, not the name, must decide); for the model-free rows, exact only.
`--check-chat N` also answers the first N prompts one at a time through `Pipeline.chat` and asserts the same
replies (greedy, so the batching changes nothing but the speed).

usage: python benchmarks/sft/evaluate_play.py MODEL TRAIN_JSONL TEST_JSONL [--only greedy] [--limit N] [--json F]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections import Counter, defaultdict
from pathlib import Path

import torch

from textdiffusion import Pipeline
from textdiffusion.api.chat import encode_chat, reply_text

SETTINGS = {  # name -> (sampler, options); steps = the reply's positions: one token revealed per step
    "greedy": ("confidence", dict(temperature=0.0)),
    "temperature 1": ("ancestral", dict(temperature=1.0)),
}


def read(path: str) -> list[list[dict]]:
    return [json.loads(line)["messages"] for line in open(path, encoding="utf-8")]


def speaker(conv: list[dict]) -> str:
    return conv[0]["content"].split("\n", 1)[1].split(":", 1)[0]


def lookup(train: list[list[dict]], test: list[list[dict]]) -> tuple[str, list[str]]:
    """(the most frequent training answer, each test prompt's speaker's most frequent play in training, or that
    answer for a speaker never seen)."""
    top = Counter(c[1]["content"] for c in train).most_common(1)[0][0]
    by_speaker: dict[str, Counter] = defaultdict(Counter)
    for c in train:
        by_speaker[speaker(c)][c[1]["content"]] += 1
    return top, [by_speaker[speaker(c)].most_common(1)[0][0] if speaker(c) in by_speaker else top for c in test]


def baselines(train: list[list[dict]], test: list[list[dict]]) -> dict[str, float]:
    """Exact-match accuracy of the most frequent training answer and of the speaker lookup (`lookup`)."""
    top, by_speaker = lookup(train, test)
    return {f"most frequent answer ({top})": sum(c[1]["content"] == top for c in test) / len(test),
            "speaker's most frequent play in training": sum(c[1]["content"] == a for c, a in zip(test, by_speaker))
            / len(test)}


def answer_all(pipe: Pipeline, test: list[list[dict]], reply: int, sampler: str, cfg_scale: float,
               **opts) -> list[str]:
    """One reply per prompt, as `Pipeline.chat` writes it, prompts of equal length batched (module notes)."""
    prompts = [encode_chat(pipe.tokenizer, conv[:1], add_generation_prompt=True) for conv in test]
    groups: dict[int, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        groups[len(p)].append(i)
    replies = [""] * len(test)
    for length, members in sorted(groups.items()):
        x = torch.full((len(members), length + reply), pipe.tokenizer.mask_id, dtype=torch.long)
        x[:, :length] = torch.tensor([prompts[i] for i in members], dtype=torch.long)
        out = pipe.denoise(x, sampler, length, progress=False, steps=reply, cfg_scale=cfg_scale, **opts)
        for i, row in zip(members, out.ids):
            replies[i] = reply_text(pipe.tokenizer, row[length:].tolist())
    return replies


def stderr(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("train")
    parser.add_argument("test")
    parser.add_argument("--label", default=None, help="the model's name in the table")
    parser.add_argument("--reply", type=int, default=8, help="reply positions (and denoising steps)")
    parser.add_argument("--cfg", default="0,1,2", help="comma-separated cfg_scale values")
    parser.add_argument("--only", choices=sorted(SETTINGS), default=None, help="one sampler setting")
    parser.add_argument("--limit", type=int, default=0, help="the first N held-out prompts only")
    parser.add_argument("--baselines", action="store_true", help="print the model-free baselines too")
    parser.add_argument("--check-chat", type=int, default=0, help="compare N greedy replies with Pipeline.chat")
    parser.add_argument("--block-length", type=int, default=0,
                        help="greedy only: semi-autoregressive blocks of this many reply positions (1: left to right)")
    parser.add_argument("--precision", default="bf16", help="inference precision (fp32 / bf16)")
    parser.add_argument("--json", default=None, help="write every reply here")
    args = parser.parse_args()
    train, test = read(args.train), read(args.test)
    if args.limit:
        test = test[:args.limit]
    titles = {c[1]["content"] for c in train}
    label = args.label or Path(args.model).name
    pipe = Pipeline.from_pretrained(args.model, device="cpu", precision=args.precision)
    fits = [len(encode_chat(pipe.tokenizer, c[:1], add_generation_prompt=True)) + args.reply <= pipe.seq_len
            for c in test]
    if not all(fits):  # as SFT drops the rows that do not fit (train/sft.py), so does the evaluation
        print(f"{len(test) - sum(fits)} of {len(test)} held-out prompts leave fewer than {args.reply} of the model's "
              f"{pipe.seq_len} positions for the reply: left out", flush=True)
        test = [c for c, f in zip(test, fits) if f]
    n = len(test)
    lookup_fails = [a != c[1]["content"] for a, c in zip(lookup(train, test)[1], test)]  # the hard prompts
    if args.baselines:
        for name, acc in baselines(train, test).items():
            print(f"| {name} | - | - | - | {100 * acc:.1f} ± {100 * stderr(acc, n):.1f}% | - | - | - |", flush=True)
    if args.check_chat:  # the batched path must write exactly what Pipeline.chat writes
        batched = answer_all(pipe, test[:args.check_chat], args.reply, "confidence", 0.0, temperature=0.0)
        for conv, mine in zip(test, batched):
            chat = pipe.chat(conv[:1], max_new_tokens=args.reply, sampler="confidence", steps=args.reply,
                             temperature=0.0, progress=False).replies[0]
            assert chat == mine, (chat, mine)
        print(f"check: {args.check_chat} batched greedy replies equal Pipeline.chat's", flush=True)
    results = {}
    for name, (sampler, opts) in SETTINGS.items():
        if args.only not in (None, name):
            continue
        if sampler == "confidence" and args.block_length:
            opts = dict(opts, block_length=args.block_length)
            name = f"{name}, blocks of {args.block_length}"
        for w in (float(v) for v in args.cfg.split(",")):
            start = time.perf_counter()
            replies = answer_all(pipe, test, args.reply, sampler, w, **opts)
            seconds = time.perf_counter() - start
            exact = sum(r == c[1]["content"] for r, c in zip(replies, test)) / n
            valid = sum(r in titles for r in replies) / n
            hard = sum(r == c[1]["content"] for r, c, h in zip(replies, test, lookup_fails) if h)
            results[f"{name} w={w:g}"] = replies
            print(f"| {label} | {name} ({sampler}) | {args.reply} | {w:g} | {100 * exact:.1f} ± "
                  f"{100 * stderr(exact, n):.1f}% | {100 * valid:.1f}% | {hard} / {sum(lookup_fails)} | "
                  f"{seconds:.0f} s |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"targets": [c[1]["content"] for c in test], **results}, indent=1))


if __name__ == "__main__":
    main()
