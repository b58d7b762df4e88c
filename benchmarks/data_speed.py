"""Training-data throughput: tokenising on the fly (a stream, as data.streaming=true reads it) against
pre-tokenised memory-mapped shards (`textdiffusion prepare`, data.source=prepared:DIR), side by side.

    python benchmarks/data_speed.py                        # bundled Shakespeare, GPT-2 and byte tokenizers
    python benchmarks/data_speed.py --seq-len 1024 --batch 32 --batches 40 --tokenizers gpt2

The source is first cut into documents of --doc-chars characters (about an OpenWebText document), written as
one .jsonl: a stream tokenises 256 documents at a time, so whole plays as documents would be tokenised in the
warm-up and never timed. For each tokenizer: `prepare` writes the shards once (its one-off cost is reported
as tokens/s too); then the two feeds draw the same number of global batches of batch x seq_len tokens,
alternating A B B A so that the machine's drift falls on both. Only next_global() is timed: what the trainer
waits for before each step.

A second table (--workers, data.num_workers) times the stream tokenised in DataLoader worker processes against
the in-process stream, each feed as one block in the order in-process, workers, in-process (workers prefetch in
the background, so their feed cannot alternate batch by batch with another): back to back, and with a simulated
training step of --step-ms between batches (a sleep, as the trainer waits on an accelerator), during which
workers keep tokenising and the in-process feed cannot. Worker start-up (fork) is part of the timed cost.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import tempfile
import time
from pathlib import Path

from common import machine_line, markdown_table  # benchmarks/common.py, next to this script

from textdiffusion.data.corpus import iter_documents, plan_split
from textdiffusion.data.tokenizers import load_tokenizer
from textdiffusion.train.config import load_config
from textdiffusion.train.distributed import DistInfo
from textdiffusion.train.prepare import prepare
from textdiffusion.train.setup import prepared_batches
from textdiffusion.train.streams import stream_batches


def cut_documents(source: str, doc_chars: int, path: Path) -> Path:
    with path.open("w", encoding="utf-8") as fh:
        for text in iter_documents(source, "all"):
            for start in range(0, len(text), doc_chars):
                fh.write(json.dumps({"text": text[start:start + doc_chars]}) + "\n")
    return path


def feeds(tokenizer: str, args: argparse.Namespace, root: Path) -> tuple[dict, float, int]:
    """The two feeds for `tokenizer`, the seconds `prepare` took and the tokens it wrote."""
    data = [f"data.source={args.docs}", f"data.tokenizer={tokenizer}", f"data.seq_len={args.seq_len}",
            f"train.batch_size={args.batch}", "data.streaming=true"]
    cfg = load_config("tiny", data)
    out = root / f"prepared-{tokenizer}"
    start = time.perf_counter()
    index = prepare(cfg, out)
    prepare_s = time.perf_counter() - start
    written = sum(e["rows"] for e in index["splits"].values()) * args.seq_len
    tok = load_tokenizer(out / "tokenizer")
    plan = plan_split(cfg.data.source, cfg.data.val_fraction, cfg.data.split_seed, count=False)
    on_the_fly = stream_batches(cfg, tok, plan, DistInfo())
    from_shards = prepared_batches(load_config("tiny", [*data[2:], f"data.source=prepared:{out}",
                                                        f"data.tokenizer={tokenizer}"]))
    return {"on the fly (stream)": on_the_fly, "prepared shards (memmap)": from_shards}, prepare_s, written


def timed_block(feed, batches: int, step_s: float) -> list[float]:
    """Seconds spent in each next_global() over `batches` batches, sleeping `step_s` (a training step) after each."""
    waits = []
    for _ in range(batches):
        start = time.perf_counter()
        feed.next_global()
        waits.append(time.perf_counter() - start)
        time.sleep(step_s)
    return waits


def hf_folder(docs: Path, files: int, folder: Path) -> Path:
    """The documents of `docs` dealt into `files` .jsonl files: a local dataset, streamed as hf:FOLDER."""
    folder.mkdir()
    lines = docs.read_text(encoding="utf-8").splitlines(keepends=True)
    for f in range(files):
        (folder / f"part{f:03d}.jsonl").write_text("".join(lines[f::files]), encoding="utf-8")
    return folder


def stream_feed(tokenizer: str, tok, args: argparse.Namespace, workers: int):
    """The stream as the trainer reads it, tokenised in `workers` worker processes (0: in this one)."""
    cfg = load_config("tiny", [f"data.source={args.worker_source}", f"data.tokenizer={tokenizer}",
                               "data.streaming=true", f"data.seq_len={args.seq_len}", f"train.batch_size={args.batch}",
                               f"data.num_workers={workers}"])
    plan = plan_split(cfg.data.source, cfg.data.val_fraction, cfg.data.split_seed, count=False)
    return stream_batches(cfg, tok, plan, DistInfo())


def worker_rows(tokenizer: str, args: argparse.Namespace, tok_dir: Path) -> list[list[str]]:
    """In-process vs `n` worker processes for each n of --workers: tokens/s back to back and the wait per step."""
    tok = load_tokenizer(tok_dir)
    rows = []
    tokens = args.batch * args.seq_len
    for step_s in (0.0, args.step_ms / 1000):
        for n in args.workers:
            waits: dict[int, list[float]] = {}
            for workers in (0, n, 0):  # A W A: the machine's drift falls on both
                feed = stream_feed(tokenizer, tok, args, workers)
                waits.setdefault(workers, []).extend(timed_block(feed, args.batches, step_s))
                del feed
                gc.collect()  # the workers stop before the next block starts
            base = statistics.mean(waits[0])
            step = "back to back" if step_s == 0 else f"{args.step_ms:g} ms step"
            for workers, label in ((0, "in-process"), (n, f"{n} DataLoader workers")):
                wait = max(statistics.mean(waits[workers]), 1e-6)
                rows.append([tokenizer, step, label, f"{tokens / wait:,.0f}", f"{wait * 1000:.1f}",
                             f"{statistics.median(waits[workers]) * 1000:.1f}", f"{base / wait:.2f}x"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default="shakespeare", help="data.source to read (default: bundled Shakespeare)")
    parser.add_argument("--tokenizers", nargs="+", default=["gpt2", "byte"], help="tokenizers to compare")
    parser.add_argument("--seq-len", type=int, default=1024, help="tokens per row")
    parser.add_argument("--batch", type=int, default=32, help="rows per global batch")
    parser.add_argument("--batches", type=int, default=40, help="timed global batches per feed")
    parser.add_argument("--doc-chars", type=int, default=4000, help="characters per document the source is cut into")
    parser.add_argument("--workers", type=int, nargs="*", default=[2],
                        help="data.num_workers values for the second table (none: skip it)")
    parser.add_argument("--step-ms", type=float, default=200.0, help="simulated training step for the second table")
    parser.add_argument("--hf-files", type=int, default=0,
                        help="second table: stream the documents as a local Hugging Face dataset of this many .jsonl "
                             "files (hf:DIR, read as a Hub dataset is) instead of the one .jsonl")
    args = parser.parse_args()
    rows, worker_table = [], []
    with tempfile.TemporaryDirectory() as tmp:
        args.docs = cut_documents(args.source, args.doc_chars, Path(tmp) / "docs.jsonl")
        args.worker_source = f"hf:{hf_folder(args.docs, args.hf_files, Path(tmp) / 'hf')}" if args.hf_files else \
            args.docs
        for tokenizer in args.tokenizers:
            pair, prepare_s, written = feeds(tokenizer, args, Path(tmp))
            # no warm-up: a stream tokenises 256 documents per call, and its first call is part of its cost
            times: dict[str, list[float]] = {name: [] for name in pair}
            names = list(pair)
            for i in range(args.batches):
                order = names if i % 2 == 0 else names[::-1]
                for name in order:
                    start = time.perf_counter()
                    pair[name].next_global()
                    times[name].append(time.perf_counter() - start)
            tokens = args.batch * args.seq_len
            base = tokens / statistics.mean(times[names[0]])
            for name in names:
                rate = tokens / statistics.mean(times[name])
                rows.append([tokenizer, name, f"{rate:,.0f}", f"{rate / base:.1f}x"])
            rows.append([tokenizer, "`prepare` (one-off: tokenise + write)", f"{written / prepare_s:,.0f}", "-"])
            del pair
            if args.workers:
                worker_table += worker_rows(tokenizer, args, Path(tmp) / f"prepared-{tokenizer}" / "tokenizer")
    print(f"machine: {machine_line('cpu')}")
    print(f"source {args.source} cut into documents of {args.doc_chars:,} characters, "
          f"rows of {args.seq_len} tokens, global batch {args.batch}, {args.batches} timed "
          "batches per feed (one process)\n")
    print(markdown_table(["tokenizer", "feed", "tokens/s", "vs on the fly"], rows))
    if worker_table:
        where = f"a local hf: dataset of {args.hf_files} .jsonl files" if args.hf_files else "the one .jsonl"
        print(f"\nthe stream ({where}) tokenised in worker processes (data.num_workers): {args.batches} batches per "
              "block, blocks in-process / workers / in-process; wait = time in next_global() per batch\n")
        print(markdown_table(["tokenizer", "between batches", "feed", "tokens/s", "mean wait (ms)",
                              "median wait (ms)", "vs in-process"], worker_table))


if __name__ == "__main__":
    main()
