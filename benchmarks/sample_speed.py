"""Sampling throughput of MDLM ancestral sampling, plain (cache=False) vs cached (cache=True).

    python benchmarks/sample_speed.py                          # steps 64 128 256 1024, batch 8
    python benchmarks/sample_speed.py --steps-list 8 16 --batch 2
    python benchmarks/sample_speed.py --precision bf16 --write

The cache skips the forward pass when the previous step revealed no token (x_t unchanged), so it pays
off most when steps >> sequence length: most steps then reveal nothing. Both runs at a step count use
the same seed, so their outputs must be identical; the script checks that (torch.equal) and fails if
not. The model is --model, else the shipped default model if it exists, else an untrained model of the
--config preset's shape (speed does not depend on the weights; it does depend on the vocabulary, so
the preset's tokenizer is used: a BPE is trained, a few seconds; `data.tokenizer=byte` skips that).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from common import machine_line, markdown_table, record  # benchmarks/common.py, next to this script

from textdiffusion.api.pipeline import Pipeline
from textdiffusion.core.errors import UserError
from textdiffusion.models import Transformer
from textdiffusion.processes import build_process
from textdiffusion.train import checkpoint as ckpt
from textdiffusion.train.config import load_config
from textdiffusion.train.distributed import DistInfo
from textdiffusion.train.trainer import model_config, pick_device, prepare_tokenizer


def default_model() -> Path | None:
    try:
        from textdiffusion.pretrained import DEFAULT_MODEL
    except ImportError:
        return None
    try:
        return ckpt.resolve_model_dir(DEFAULT_MODEL)
    except UserError:
        return None


def load_pipeline(args: argparse.Namespace) -> tuple[Pipeline, str]:
    """The pipeline to time and a line saying which model it is."""
    path = Path(args.model) if args.model else default_model()
    if path is not None:
        pipe = Pipeline.from_pretrained(path, device=args.device, precision=args.precision)
        return pipe, f"trained model {path}"
    cfg = load_config(args.config, args.overrides)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sample_speed-") as tmp:
        tok = prepare_tokenizer(cfg, Path(tmp), DistInfo())
    print(f"{tok.kind} tokenizer ready in {time.perf_counter() - start:.1f} s", flush=True)
    torch.manual_seed(args.seed)
    model = Transformer(model_config(cfg, tok)).to(pick_device(args.device))
    process = build_process(cfg.process.name, vocab_size=tok.vocab_size, mask_id=tok.mask_id, **asdict(cfg.process))
    extra = f" with {' '.join(args.overrides)}" if args.overrides else ""
    return (Pipeline(model, process, tok, precision=args.precision),
            f"untrained model of the `{args.config}` preset's shape{extra} ({tok.kind} tokenizer)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="section.key=value overrides for the untrained model's config")
    ap.add_argument("--model", default=None, help="model folder (default: the shipped default model if present)")
    ap.add_argument("--config", default="shakespeare", help="preset or YAML for the untrained fallback model")
    ap.add_argument("--steps-list", type=int, nargs="+", default=[64, 128, 256, 1024], help="sampling step counts")
    ap.add_argument("--batch", type=int, default=8, help="samples per generate() call (default 8)")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per (steps, cache); the median is reported")
    ap.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="fp32")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own)")
    ap.add_argument("--write", action="store_true", help="append the result to BENCHMARKS.md and benchmarks/results/")
    args = ap.parse_args()
    if args.batch < 1 or args.repeats < 1 or min(args.steps_list) < 1:
        ap.error("--batch, --repeats and every step count must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)

    pipe, which = load_pipeline(args)
    if args.overrides and "untrained" not in which:
        ap.error(f"key=value overrides apply only to the untrained fallback model, not to the {which}")
    length, n_params = pipe.seq_len, sum(p.numel() for p in pipe.model.parameters())
    m = pipe.model.cfg
    shape = (f"{n_params / 1e6:.1f}M parameters, {m.n_layers} layers, width {m.d_model}, vocab {m.vocab_size}, "
             f"seq_len {length}")
    print(f"model: {which}\n       {shape}; device {pipe.device}, {args.precision}", flush=True)
    if m.time_conditioning:
        print("note: the model is time-conditioned, so the sampler ignores cache=True (expect no speed-up)")

    def run(steps: int, cache: bool) -> Any:
        return pipe.generate(num_samples=args.batch, steps=steps, cache=cache, seed=args.seed)

    run(min(args.steps_list), False)  # warm-up: first-call allocations, thread pool start
    results: list[dict[str, Any]] = []
    rows: list[list[Any]] = []
    all_identical = True
    for steps in args.steps_list:
        seconds: dict[bool, list[float]] = {False: [], True: []}
        outs: dict[bool, Any] = {}
        for rep in range(args.repeats):
            for cache in (False, True) if rep % 2 == 0 else (True, False):  # alternate which goes first
                out = outs[cache] = run(steps, cache)
                seconds[cache].append(out.seconds)
                print(f"  steps {steps:>5} cache={str(cache):<5}: {out.seconds:8.2f} s, NFE {out.nfe}", flush=True)
        identical = torch.equal(outs[False].ids, outs[True].ids)
        all_identical &= identical
        med = {c: statistics.median(s) for c, s in seconds.items()}
        speedup = med[False] / med[True]
        print(f"  steps {steps:>5}: cached/plain speed {speedup:.2f}x, outputs identical: {identical}", flush=True)
        for cache in (False, True):
            tok_s = args.batch * length / med[cache]
            results.append({"steps": steps, "cache": cache, "nfe": outs[cache].nfe, "seconds": med[cache],
                            "all_seconds": seconds[cache], "tokens_per_s": tok_s,
                            "seconds_per_sample": med[cache] / args.batch,
                            "speedup_vs_plain": speedup if cache else 1.0, "identical": identical})
            rows.append([steps, "cached" if cache else "plain", outs[cache].nfe, med[cache], tok_s,
                         med[cache] / args.batch, f"{speedup:.2f}x" if cache else "", "yes" if identical else "NO"])

    headers = ["steps", "sampler", "NFE", "seconds", "tokens/s", "s/sample", "cached/plain speed", "ids identical"]
    table = markdown_table(headers, rows)
    setup = (f"MDLM ancestral sampling, {which}: {shape}; batch {args.batch}, {args.precision}, seed {args.seed}, "
             f"median of {args.repeats} run(s); seconds cover the sampler only (no tokenizer decode).")
    print(f"\n{machine_line(pipe.device)}\n{setup}\n\n{table}\n")
    print(f"cache changes no output: {all_identical}")
    if not all_identical:
        raise SystemExit("FAILED: cached and plain sampling gave different ids with the same seed; nothing written")
    if args.write:
        payload = {"model": which, "shape": shape, "batch": args.batch, "precision": args.precision,
                   "seed": args.seed, "repeats": args.repeats, "results": results}
        md, js = record("sample_speed", "Sampling speed: MDLM ancestral, plain vs cached", table, payload,
                        pipe.device, notes=setup)
        print(f"wrote {md} and {js}")


if __name__ == "__main__":
    main()
