"""Scoring throughput of `textdiffusion score`: one window at a time (the old loop) vs batched windows.

    python benchmarks/score_speed.py                           # 200 KB of Shakespeare, t-samples 4
    python benchmarks/score_speed.py --kb 400 --batch-sizes 16 64 --t-samples 8 --write

The text is the first --kb kilobytes of the bundled Shakespeare corpus, cut into windows of the
model's length. "one window at a time" is the loop `Pipeline.score` ran before windows were batched:
one `nelbo` call, on a [1, L] chunk, per window. "batched" is `Pipeline.score` now: full windows go
through `nelbo` B at a time; "file, streamed" is `Pipeline.score_file` on the same text written to a
temporary file (read in 1 MB pieces). Every row uses the same t-samples; tokens/s counts each token
once (each is evaluated t-samples times).

nats/token is a Monte Carlo estimate of the diffusion bound. The old loop seeded every window alike,
so all windows shared the same draws of t: its estimate moves with --seed far more than its ± says
(on 15 KB, seeds 0-5 gave 3.6 to 5.2 nats/token, each "± 0.1"). The batched rows give each window
its own draws (batch k uses seed + k), so their ± is honest and they may differ from the old row.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import machine_line, markdown_table, record  # benchmarks/common.py, next to this script

from textdiffusion.api.pipeline import Pipeline
from textdiffusion.pretrained import DEFAULT_MODEL
from textdiffusion.processes.likelihood import nelbo

CORPUS = Path(__file__).resolve().parent.parent / "src" / "textdiffusion" / "corpora" / "shakespeare"


def corpus_text(kb: int) -> str:
    text, size = [], 0
    for path in sorted(CORPUS.glob("*.txt")):
        text.append(path.read_text(encoding="utf-8"))
        size += len(text[-1])
        if size >= kb * 1000:
            break
    return "".join(text)[: kb * 1000]


def score_one_window_at_a_time(pipe: Pipeline, text: str, t_samples: int, seed: int) -> tuple[float, float]:
    """The old Pipeline.score loop: (nats/token, its standard error)."""
    ids = pipe.tokenizer.encode(text)
    parts = []
    for i in range(0, len(ids), pipe.seq_len):
        chunk = torch.tensor([ids[i : i + pipe.seq_len]], dtype=torch.long)
        with pipe._autocast():
            parts.append(nelbo(pipe.model, pipe.process, chunk, t_samples=t_samples, seed=seed))
    total = sum(p.nats_per_token * p.n_tokens for p in parts)
    var = sum((p.stderr * p.n_tokens) ** 2 for p in parts if p.stderr == p.stderr)
    return total / len(ids), var**0.5 / len(ids)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(DEFAULT_MODEL), help="model folder (default: the shipped model)")
    ap.add_argument("--kb", type=int, default=200, help="kilobytes of Shakespeare to score (default 200)")
    ap.add_argument("--t-samples", type=int, default=4, help="Monte Carlo draws of t per window (default 4)")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64], help="windows per batch (default 16 64)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="fp32")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own)")
    ap.add_argument("--write", action="store_true", help="append the result to BENCHMARKS.md and benchmarks/results/")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    pipe = Pipeline.from_pretrained(args.model, device=args.device, precision=args.precision)
    text = corpus_text(args.kb)
    n_tokens = len(pipe.tokenizer.encode(text))
    print(f"model {args.model}: {len(text):,} characters, {n_tokens:,} tokens, {-(-n_tokens // pipe.seq_len)} "
          f"windows of {pipe.seq_len}, t-samples {args.t_samples}; {machine_line(pipe.device)}", flush=True)
    pipe.score(text[:20_000], t_samples=1, batch_size=16)  # warm-up: first-call allocations

    runs: list[tuple[str, Any]] = [("one window at a time (old)",
                                    lambda: score_one_window_at_a_time(pipe, text, args.t_samples, args.seed))]
    for b in args.batch_sizes:
        runs.append((f"batched, {b} windows", lambda b=b: pipe.score(text, t_samples=args.t_samples, seed=args.seed,
                                                                     batch_size=b, progress=False)[0]))
    with tempfile.TemporaryDirectory(prefix="score_speed-") as tmp:
        path = Path(tmp) / "text.txt"
        path.write_text(text, encoding="utf-8")
        b = args.batch_sizes[0]
        runs.append((f"file, streamed, {b} windows",
                     lambda: pipe.score_file(path, t_samples=args.t_samples, seed=args.seed, batch_size=b,
                                             progress=False)))
        rows, results = [], []
        for name, run in runs:
            start = time.perf_counter()
            out = run()
            seconds = time.perf_counter() - start
            nats, err = out if isinstance(out, tuple) else (out.nats_per_token, out.stderr)
            results.append({"method": name, "seconds": seconds, "tokens_per_s": n_tokens / seconds,
                            "nats_per_token": nats, "stderr": err})
            print(f"  {name}: {seconds:.1f} s", flush=True)
    base = results[0]["tokens_per_s"]
    for r in results:
        rows.append([r["method"], r["seconds"], r["tokens_per_s"], f"{r['tokens_per_s'] / base:.2f}x",
                     f"{r['nats_per_token']:.4f} ± {r['stderr']:.4f}"])
    table = markdown_table(["method", "seconds", "tokens/s", "vs old", "nats/token"], rows)
    print(table)
    if args.write:
        payload = {"model": args.model, "characters": len(text), "tokens": n_tokens, "t_samples": args.t_samples,
                   "results": results}
        md, js = record("score_speed", "Scoring speed: one window at a time vs batched windows", table, payload,
                        pipe.device)
        print(f"written to {md} and {js}")


if __name__ == "__main__":
    main()
