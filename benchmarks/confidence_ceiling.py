"""What threshold decoding could ever gain on a given AR model: the tokens per pass, and the speed over AR, of a
diffusion model exactly as sure of each token as the AR model is given the text before it (eval/pass_ceiling.py).

Fast-dLLM's threshold rule is fast only where the model is sure of many tokens at once. An adaptation (block
diffusion or masked) of an AR model inherits its knowledge, and at best its confidence. So the AR model's own top
probabilities, read teacher-forced in one pass, estimate the ceiling of every adaptation of it, at any budget:

* `human`: on real continuations of held-out text (the sampled-text setting);
* `greedy`: on the AR model's own greedy continuation of the same contexts (the greedy setting, e.g. a next line);

per block size B and threshold: the share of tokens above the threshold, the passes threshold decoding would take
(`threshold_passes`), and the speed over AR at batch 1 = (tokens / pass) / cost(B), where cost(B) is a cached
forward of B new tokens over one new token, timed here on the same network. "Needed for 2x" is 2 x cost(B).

usage:  python benchmarks/confidence_ceiling.py                                  # SmolLM2-135M; Hamlet, Python
        python benchmarks/confidence_ceiling.py --model smollm2 --model /work/fast_pretrained/ar \
            --text prose=/usr/share/common-licenses/GPL-3 --write
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line, markdown_table, record  # noqa: E402

from textdiffusion.api.pipeline import Pipeline  # noqa: E402
from textdiffusion.eval.pass_ceiling import next_token_confidence, threshold_passes  # noqa: E402
from textdiffusion.interop.hf_causal import resolve_source  # noqa: E402

CORPUS = Path(__file__).resolve().parents[1] / "src" / "textdiffusion" / "corpora" / "shakespeare"


def default_texts() -> dict[str, Path]:
    """Held-out verse (Hamlet, which benchmarks/fast_pretrained_train.py keeps out) and Python source (the
    standard library's json package, on every machine that runs this)."""
    return {"hamlet": CORPUS / "hamlet_gut.txt", "python": Path(json.__file__).parent}


def read_text(path: Path) -> str:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in (".py", ".txt", ".md", ""))
        return "\n\n".join(p.read_text(errors="replace") for p in files)
    return path.read_text(errors="replace")


def load(spec: str, dtype: str) -> Pipeline:
    """A causal LM: "smollm2", a .gguf file, an HF causal-LM folder, or an AR run of ours (bf16 autocast)."""
    path = Path(spec)
    folder = path if (path / "checkpoint").is_dir() else resolve_source(spec)
    pipe = Pipeline.from_pretrained(folder, device="cpu", precision="bf16", dtype=dtype)
    if pipe.process.name != "autoregressive":
        sys.exit(f"{spec} is a {pipe.process.name} model: this benchmark reads an AR model's confidence")
    return pipe


def windows(ids: list[int], n: int, context: int, span: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    if len(ids) < context + span + 1:
        sys.exit(f"a text of {len(ids)} tokens is too short for windows of {context} + {span}")
    return [ids[s : s + context + span] for s in (rng.randrange(0, len(ids) - context - span) for _ in range(n))]


@torch.no_grad()
def confidences(pipe: Pipeline, window: list[int], context: int) -> torch.Tensor:
    """[span] the model's top probability at each position after the context, given the window before it."""
    logits = pipe.model(torch.tensor([window])).float()[0, context - 1 : -1]
    return next_token_confidence(logits, pipe.tokenizer.mask_id)


def greedy_window(pipe: Pipeline, window: list[int], context: int, seed: int) -> list[int]:
    x = torch.tensor([window])
    x[0, context:] = pipe.tokenizer.mask_id
    return pipe.denoise(x, "ar", seed, progress=False, temperature=0.0).ids[0].tolist()


def pass_cost(pipe: Pipeline, context: int, sizes: list[int], repeats: int) -> dict[int, float]:
    """Seconds of a cached forward of B new tokens (batch 1) over that of 1 new token, for each B: the calls
    take turns, `repeats` rounds after a warm-up, so a slow stretch of a shared machine hits every B alike."""
    model = pipe.model
    x = torch.randint(0, pipe.tokenizer.vocab_size - 1, (1, context + max(sizes)))
    cache = model.new_cache()
    times: dict[int, list[float]] = {b: [] for b in [1, *sizes]}
    with torch.inference_mode():
        model(x[:, :context], cache=cache)
        for round_ in range(repeats + 1):
            for b in times:
                start = time.perf_counter()
                model(x[:, context : context + b], cache=cache, commit=False,
                      positions=torch.arange(context, context + b))
                if round_:  # the first round warms up
                    times[b].append(time.perf_counter() - start)
    one = statistics.median(times[1])
    return {b: statistics.median(times[b]) / one for b in sizes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", default=None, help="smollm2 (default), a .gguf, a folder")
    parser.add_argument("--text", action="append", default=[], metavar="NAME=PATH",
                        help="more texts (a file or a folder of files); Hamlet and Python source always run")
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument("--context", type=int, default=96)
    parser.add_argument("--span", type=int, default=64, help="tokens read after each context")
    parser.add_argument("--block-sizes", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.9, 0.7, 0.5])
    parser.add_argument("--repeats", type=int, default=50, help="timing rounds of the pass costs (medians are kept)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16",
                        help="weights in memory: fp32 weights are re-cast to bf16 at every matmul, slowest for 1 token")
    parser.add_argument("--write", action="store_true", help="append the table to BENCHMARKS.md")
    args = parser.parse_args()
    texts = default_texts()
    for item in args.text:
        name, _, path = item.partition("=")
        if not path or not Path(path).exists():
            sys.exit(f"--text {item!r}: give NAME=PATH of an existing file or folder")
        texts[name] = Path(path)
    rows, results = [], []
    for spec in args.model or ["smollm2"]:
        pipe = load(spec, args.dtype)
        if args.context + args.span > pipe.seq_len:
            sys.exit(f"{spec} reads at most {pipe.seq_len} tokens: lower --context + --span "
                     f"({args.context} + {args.span})")
        cost = pass_cost(pipe, args.context, args.block_sizes, args.repeats)
        print(f"{spec}: cost of a cached pass of B tokens over 1: "
              + ", ".join(f"B={b} {c:.2f}x" for b, c in cost.items()), flush=True)
        for name, path in texts.items():
            ids = pipe.tokenizer.encode(read_text(path))
            spans = windows(ids, args.windows, args.context, args.span, args.seed)
            kinds = {"human": [confidences(pipe, w, args.context) for w in spans],
                     "greedy": [confidences(pipe, greedy_window(pipe, w, args.context, args.seed + i), args.context)
                                for i, w in enumerate(spans)]}
            for kind, confs in kinds.items():
                every = torch.cat(confs)
                for tau in args.thresholds:
                    per_pass = {b: every.numel() / sum(threshold_passes(c, b, tau) for c in confs)
                                for b in args.block_sizes}
                    result = {"model": spec, "text": name, "kind": kind, "threshold": tau,
                              "share_above": float((every > tau).double().mean()),
                              "tokens_per_pass": per_pass, "cost": cost,
                              "speedup": {b: per_pass[b] / cost[b] for b in args.block_sizes}}
                    results.append(result)
                    print(json.dumps(result), flush=True)
                    best = max(args.block_sizes, key=lambda b: result["speedup"][b])
                    rows.append([Path(spec).name, name, kind, tau, result["share_above"],
                                 *(per_pass[b] for b in args.block_sizes),
                                 f"{result['speedup'][best]:.2f}x (B={best})"])
    headers = ["model", "text", "tokens", "threshold", "share above",
               *(f"tokens/pass, B={b}" for b in args.block_sizes), "best speed over AR, batch 1"]
    costs = "; ".join(f"{Path(r['model']).name}: " + ", ".join(f"B={b} {c:.2f}x" for b, c in r["cost"].items())
                      for r in {r["model"]: r for r in results}.values())
    table = markdown_table(headers, rows)
    notes = (f"Cost of a cached pass of B new tokens over a 1-token pass (batch 1, {args.dtype} weights, after "
             f"{args.context} tokens, "
             f"medians of {args.repeats} interleaved rounds): {costs}. Needed for 2x AR: 2 x that many tokens per "
             f"pass. {args.windows} windows of {args.context} context + {args.span} tokens per text.")
    print(f"\n{machine_line('cpu')}\n\n{table}\n\n{notes}")
    if args.write:
        record("confidence-ceiling", "What threshold decoding could gain on SmolLM2: the AR model's own confidence",
               table, {"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, "cpu", notes)


if __name__ == "__main__":
    main()
