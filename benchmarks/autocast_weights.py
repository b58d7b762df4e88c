"""What bf16 autocast over float32 weights costs at inference on a CPU, against bf16 weights.

Our folders store float32 weights. Under `precision="bf16"` (or "auto" on a CPU with native bf16) every matmul
casts its float32 weight to bf16 again at every call: PyTorch's autocast weight cache does not hold them here, and
the profile of a 1-token SmolLM2 pass shows `aten::copy_` at about half the time. The cost is per call, not per
token, so it weighs most on passes of few tokens (AR decoding, cached blocks) and least on full-sequence passes:
a comparison of AR with diffusion under autocast over float32 weights handicaps AR.

For each model folder: the median time of a cached pass of 1 and 16 new tokens (after 64 tokens) and of a full
pass over the model's length, batch 1, with (a) float32 weights, no autocast, (b) float32 weights under bf16
autocast, (c) bf16 weights under bf16 autocast. The settings take turns, round after round.

usage:  python benchmarks/autocast_weights.py --model /work/fast_pretrained/ar --model /work/bench_runs/small/byte/ar
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line, markdown_table, record  # noqa: E402

from textdiffusion.api.pipeline import Pipeline  # noqa: E402

SETTINGS = {"fp32 weights, fp32": ("fp32", None), "fp32 weights, bf16 autocast": ("bf16", None),
            "bf16 weights, bf16 autocast": ("bf16", "bf16")}


def pass_calls(pipe: Pipeline, context: int) -> dict:
    """The timed calls of one loaded model: cached 1 and 16 new tokens, and a full pass."""
    model, length = pipe.model, pipe.seq_len
    x = torch.randint(0, pipe.tokenizer.vocab_size - 1, (1, length))
    cache = model.new_cache()
    with torch.inference_mode(), pipe._autocast():
        model(x[:, :context], cache=cache)

    def cached(b: int):
        return lambda: model(x[:, context : context + b], cache=cache, commit=False,
                             positions=torch.arange(context, context + b))

    return {"1 token, cached": cached(1), "16 tokens, cached": cached(16), f"full pass ({length})": lambda: model(x)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, help="a model folder (ours or a causal LM)")
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--write", action="store_true", help="append the table to BENCHMARKS.md")
    args = parser.parse_args()
    rows, results = [], []
    for folder in args.model:
        pipes = {name: Pipeline.from_pretrained(folder, device="cpu", precision=precision, dtype=dtype)
                 for name, (precision, dtype) in SETTINGS.items()}
        if any(p.seq_len < args.context + 16 for p in pipes.values()):
            sys.exit(f"{folder}: the model reads fewer than --context + 16 tokens")
        calls = {name: pass_calls(pipe, args.context) for name, pipe in pipes.items()}
        kinds = list(next(iter(calls.values())))
        times = {(s, k): [] for s in SETTINGS for k in kinds}
        for round_ in range(args.rounds + 1):
            for s in SETTINGS:
                with torch.inference_mode(), pipes[s]._autocast():
                    for k in kinds:
                        start = time.perf_counter()
                        calls[s][k]()
                        if round_:  # the first round warms up
                            times[(s, k)].append(time.perf_counter() - start)
        ms = {key: statistics.median(v) * 1000 for key, v in times.items()}
        for k in kinds:
            base = ms[("bf16 weights, bf16 autocast", k)]
            rows.append(["/".join(Path(folder).parts[-2:]), k, *(ms[(s, k)] for s in SETTINGS),
                         ms[("fp32 weights, bf16 autocast", k)] / base])
            results.append({"model": folder, "call": k, "ms": {s: ms[(s, k)] for s in SETTINGS}})
        print(f"{folder}: done", flush=True)
    headers = ["model", "call", *(f"ms: {s}" for s in SETTINGS), "autocast over fp32 / bf16 weights"]
    table = markdown_table(headers, rows)
    print(f"\n{machine_line('cpu')}\n\n{table}")
    if args.write:
        record("autocast-weights", "bf16 autocast over float32 weights vs bf16 weights, CPU inference", table,
               {"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, "cpu",
               f"Batch 1; medians of {args.rounds} rounds in which the settings take turns; cached calls after "
               f"{args.context} tokens.")


if __name__ == "__main__":
    main()
