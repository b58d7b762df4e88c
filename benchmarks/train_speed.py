"""Training throughput, fp32 vs bf16 autocast, side by side in one run.

    python benchmarks/train_speed.py                      # shakespeare preset shape, 2 warm-up + 10 timed steps
    python benchmarks/train_speed.py --config tiny --steps 2 --warmup 1
    python benchmarks/train_speed.py train.batch_size=16 --write

Each precision gets its own Trainer in its own worker process (so each has its own peak RSS); the
workers sit idle while the other one steps, and the timed steps alternate A B B A A B ... so that slow
drift of the machine (thermal, other load) falls on both alike. Only train_step() is timed: no
evaluation, checkpointing or logging. The BPE tokenizer is trained once, before the workers start.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import shutil
import statistics
import tempfile
import time
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import torch
from common import machine_line, markdown_table, record  # benchmarks/common.py, next to this script

from textdiffusion.train.config import load_config
from textdiffusion.train.distributed import DistInfo
from textdiffusion.train.trainer import Trainer, prepare_tokenizer


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def make_config(args: argparse.Namespace, precision: str, out_dir: Path):
    return load_config(args.config, ["run.progress=false", f"run.out_dir={out_dir}", *args.overrides,
                                     f"train.precision={precision}"])


def worker(conn: Connection, args: argparse.Namespace, precision: str, out_dir: Path) -> None:
    """Build a Trainer, then answer 'step' with one timed train_step() until told to stop (None)."""
    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        start = time.perf_counter()
        trainer = Trainer(make_config(args, precision, out_dir))
        cfg, m = trainer.cfg, trainer.model_cfg
        conn.send({"device": str(trainer.device), "setup_s": time.perf_counter() - start,
                   "params": sum(p.numel() for p in trainer.model.parameters()),
                   "shape": f"{m.n_layers} layers, width {m.d_model}, {trainer.tok.kind} vocab {m.vocab_size}",
                   "tokens_per_step": cfg.train.batch_size * cfg.data.seq_len, "rss_setup_mib": rss_mib()})
        while conn.recv() is not None:
            start = time.perf_counter()
            loss = trainer.train_step()  # returns a Python float, so the step has finished on any device
            conn.send({"seconds": time.perf_counter() - start, "loss": loss})
        done: dict[str, Any] = {"peak_rss_mib": rss_mib()}
        if trainer.device.type == "cuda":
            done["peak_cuda_mib"] = torch.cuda.max_memory_allocated(trainer.device) / 2**20
        conn.send(done)
    except EOFError:  # the parent went away
        return
    except BaseException:  # report to the parent instead of dying silently
        conn.send({"error": traceback.format_exc()})


def ask(conn: Connection, precision: str, message: str | None = "step", send: bool = True) -> dict[str, Any]:
    if send:
        conn.send(message)
    reply = conn.recv()
    if "error" in reply:
        raise SystemExit(f"the {precision} worker failed:\n{reply['error']}")
    return reply


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="section.key=value config overrides, e.g. train.batch_size=16")
    ap.add_argument("--config", default="shakespeare", help="preset name or YAML file (default: shakespeare)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per precision (default 10)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per precision first (default 2)")
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument("--threads", type=int, default=0, help="torch threads per worker (default: torch's own)")
    ap.add_argument("--out-dir", default=None, help="where the throwaway run folders go (a temp dir inside it)")
    ap.add_argument("--write", action="store_true", help="append the result to BENCHMARKS.md and benchmarks/results/")
    args = ap.parse_args()
    if args.steps < 1 or args.warmup < 0:
        ap.error("--steps must be at least 1 and --warmup at least 0")
    if args.threads:
        torch.set_num_threads(args.threads)  # the workers do the same; this makes the machine line say so
    if args.out_dir:
        Path(args.out_dir).mkdir(parents=True, exist_ok=True)

    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="train_speed-", dir=args.out_dir) as tmp:
        dirs = {p: Path(tmp) / p for p in args.precisions}
        start = time.perf_counter()  # the tokenizer (a BPE is trained here) is shared by all workers
        first = dirs[args.precisions[0]]
        prepare_tokenizer(make_config(args, args.precisions[0], first), first, DistInfo())
        for d in list(dirs.values())[1:]:
            shutil.copytree(first / "tokenizer", d / "tokenizer")
        print(f"tokenizer ready in {time.perf_counter() - start:.1f} s; starting {len(dirs)} workers", flush=True)
        conns, procs = {}, []
        for p, d in dirs.items():
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker, args=(child, args, p, d), daemon=True)
            proc.start()
            conns[p], procs = parent, [*procs, proc]
        try:
            info = {p: ask(c, p, send=False) for p, c in conns.items()}
            print("setup: " + ", ".join(f"{p} {i['setup_s']:.1f} s" for p, i in info.items()), flush=True)
            times: dict[str, list[float]] = {p: [] for p in dirs}
            order = list(dirs)
            for i in range(args.warmup + args.steps):
                for p in order if i % 2 == 0 else order[::-1]:
                    reply = ask(conns[p], p)
                    if i >= args.warmup:
                        times[p].append(reply["seconds"])
                    print(f"  step {i + 1:>3} {p}: {reply['seconds']:.3f} s, loss {reply['loss']:.3f}"
                          f"{'' if i >= args.warmup else ' (warm-up)'}", flush=True)
            final = {p: ask(c, p, None) for p, c in conns.items()}
        finally:
            for conn in conns.values():
                conn.close()
            for proc in procs:
                proc.join(timeout=10)
                if proc.is_alive():
                    proc.terminate()

    base = args.precisions[0]
    tokens = info[base]["tokens_per_step"]
    results = {}
    for p in dirs:
        results[p] = {"tokens_per_s": tokens * len(times[p]) / sum(times[p]),
                      "s_per_step_mean": statistics.fmean(times[p]), "s_per_step_min": min(times[p]),
                      "step_seconds": times[p], "rss_after_setup_mib": info[p]["rss_setup_mib"], **final[p]}
    headers = ["precision", "tokens/s", "s/step (mean)", "s/step (min)", "RSS after setup (MiB)", "peak RSS (MiB)",
               f"speed vs {base}"]
    rows = [[p, r["tokens_per_s"], r["s_per_step_mean"], r["s_per_step_min"], r["rss_after_setup_mib"],
             r["peak_rss_mib"], f"{r['tokens_per_s'] / results[base]['tokens_per_s']:.2f}x"]
            for p, r in results.items()]
    table = markdown_table(headers, rows)
    device = info[base]["device"]
    shape = (f"config `{args.config}`{' with ' + ' '.join(args.overrides) if args.overrides else ''}: "
             f"{info[base]['params'] / 1e6:.1f}M parameters ({info[base]['shape']}), {tokens} tokens/step; "
             f"{args.warmup} warm-up + {args.steps} timed steps each, alternating")
    print(f"\n{machine_line(device)}\n{shape}\n\n{table}\n")
    if args.write:
        payload = {"config": args.config, "overrides": args.overrides, "warmup": args.warmup, "steps": args.steps,
                   "params": info[base]["params"], "tokens_per_step": tokens, "results": results}
        md, js = record("train_speed", "Training speed: fp32 vs bf16 autocast", table, payload, device,
                        notes=f"{shape[0].upper()}{shape[1:]}. Peak RSS is per worker process, torch import included.")
        print(f"wrote {md} and {js}")


if __name__ == "__main__":
    main()
