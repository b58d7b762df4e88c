"""What a real checkpoint costs: a LLaDA-8B-shaped network (random weights, bf16) decoding with and without
Fast-dLLM's KV caches, so a user knows what LLaDA-8B (or Dream-7B) on their machine will cost.

The network is ours (interop/llama_like.py), at the checkpoint's full width, but with fewer layers than the real
one, since 8B bf16 weights do not fit beside everything else on a small machine: each setting's forward pass is
timed at `--layers` depths (default 2 and 4), and the time is extrapolated linearly to the checkpoint's depth
(t = head_and_embedding + depth x per_layer, both fitted). The shapes are the samplers' own calls:

* `none`: every step reads the whole prompt + generation (LLaDA's `generate`, Fast-dLLM's baseline);
* `prefix`: a refreshing full pass at each block start, then each step reads the block and what follows it
  against the cached prefix (the suffix is read too: its logits are computed, only the block's are used);
* `dual`: a refreshing full pass at each block start, then each step reads only the block;
* `ar`: one new token against a KV cache of the context (what an AR model of the same shape pays per token).

Tokens per second then follow from the passes a block takes: with k tokens accepted per pass (threshold
decoding accepts more when the model is confident), a block of B tokens costs one refresh + (B / k - 1) steps.

usage:  python benchmarks/llama_cache_cost.py                      # LLaDA-8B shape, prompt 64, generate 256
        python benchmarks/llama_cache_cost.py --shape dream-7b --layers 1 2 --write
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line, markdown_table, record, timed  # noqa: E402

from textdiffusion.interop.llama_like import LlamaLike, LlamaLikeConfig  # noqa: E402

SHAPES = {  # the public config.json of each checkpoint
    "llada-8b": dict(embed_rows=126464, hidden_size=4096, intermediate_size=12288, num_layers=32, num_heads=32,
                     num_kv_heads=32, rope_theta=500000.0, vocab_size=126464),
    "dream-7b": dict(embed_rows=152064, hidden_size=3584, intermediate_size=18944, num_layers=28, num_heads=28,
                     num_kv_heads=4, rope_theta=1000000.0, vocab_size=151667, qkv_bias=True, shift_logits=True),
}


def network(shape: dict, layers: int, length: int) -> LlamaLike:
    """The shape at `layers` depth, built on the meta device and filled in bf16 (no float32 copy ever exists)."""
    cfg = LlamaLikeConfig(**{**shape, "num_layers": layers}, rms_norm_eps=1e-5, seq_len=length)
    with torch.device("meta"):
        model = LlamaLike(cfg).to(torch.bfloat16)
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
    model.inv_freq = 1.0 / cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float32) / cfg.head_dim)
    return model.eval()


def pass_times(model: LlamaLike, prompt: int, gen: int, block: int, repeats: int) -> dict[str, float]:
    """Seconds per forward pass of each setting, averaged over the blocks of one generation where the shape
    changes with the block's place (prefix: the suffix shrinks; ar: the context grows)."""
    total = prompt + gen
    x = torch.randint(0, model.cfg.vocab_size, (1, total))
    starts = list(range(prompt, total, block))

    def full():
        return model(x)

    def prefix_step(lo):
        cache = model.new_cache()
        model(x[:, :lo], cache=cache)  # stands for the refresh pass's stored prefix (not timed below)
        return lambda: model(x[:, lo:], cache=cache, commit=False, positions=torch.arange(lo, total))

    def dual_step(lo):
        cache = model.new_cache()
        model(x, cache=cache)
        cache.keep(torch.cat([torch.arange(lo), torch.arange(lo + block, total)]))
        return lambda: model(x[:, lo : lo + block], cache=cache, commit=False,
                             positions=torch.arange(lo, lo + block))

    def ar_step(context):
        cache = model.new_cache()
        model(x[:, :context], cache=cache)
        one = x[:, context : context + 1]
        return lambda: model(one, cache=cache, commit=False, positions=torch.arange(context, context + 1))

    with torch.inference_mode():
        out = {"none": timed(full, repeats)}
        picks = starts[:: max(1, len(starts) // 3)]  # a few block places; the mean stands for all
        out["prefix"] = statistics.mean(timed(prefix_step(lo), repeats) for lo in picks)
        out["dual"] = statistics.mean(timed(dual_step(lo), repeats) for lo in picks)
        out["ar"] = statistics.mean(timed(ar_step(c), repeats) for c in (prompt, prompt + gen // 2, total - 1))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=SHAPES, default="llada-8b")
    parser.add_argument("--layers", type=int, nargs="+", default=[2, 4], help="depths timed (two or more)")
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--gen", type=int, default=256)
    parser.add_argument("--block", type=int, default=32)
    parser.add_argument("--accepted", type=float, nargs="+", default=[1.0, 2.0, 4.0],
                        help="tokens accepted per pass for the tokens/s columns")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--write", action="store_true", help="append the table to BENCHMARKS.md")
    args = parser.parse_args()
    if len(set(args.layers)) < 2:
        sys.exit("--layers needs two or more different depths to separate the per-layer cost")
    shape = SHAPES[args.shape]
    measured = {}
    for depth in args.layers:
        model = network(shape, depth, args.prompt + args.gen)
        measured[depth] = pass_times(model, args.prompt, args.gen, args.block, args.repeats)
        print(f"depth {depth}: " + ", ".join(f"{k} {v:.3f} s" for k, v in measured[depth].items()), flush=True)
        del model
    depths = sorted(measured)
    full_depth = shape["num_layers"]
    extrapolated = {}
    for setting in measured[depths[0]]:
        ys = [measured[d][setting] for d in depths]
        mean_d, mean_y = statistics.mean(depths), statistics.mean(ys)
        slope = sum((d - mean_d) * (y - mean_y) for d, y in zip(depths, ys)) / sum((d - mean_d) ** 2 for d in depths)
        extrapolated[setting] = {"per_layer_s": slope, "rest_s": mean_y - slope * mean_d,
                                 "pass_s": mean_y + slope * (full_depth - mean_d)}
    refresh = extrapolated["none"]["pass_s"]
    rows = []
    for setting in ("none", "prefix", "dual"):
        step = extrapolated[setting]["pass_s"]
        speeds = []
        for k in args.accepted:
            passes = args.block / k
            block_s = passes * step if setting == "none" else refresh + max(passes - 1, 0) * step
            speeds.append(args.block / block_s)
        rows.append([setting, step, extrapolated[setting]["per_layer_s"] * 1000, *speeds])
    ar = extrapolated["ar"]["pass_s"]
    ar_row = ["ar (1 token, KV cache)", ar, extrapolated["ar"]["per_layer_s"] * 1000]
    rows.append(ar_row + [1 / ar] * len(args.accepted))
    headers = ["cache", f"s / pass ({full_depth} layers)", "ms / layer", *(f"tok/s at {k:g} per pass"
                                                                           for k in args.accepted)]
    table = markdown_table(headers, rows)
    print(f"\n{args.shape}: prompt {args.prompt}, generate {args.gen}, blocks of {args.block}, batch 1, bf16; "
          f"timed at depths {depths}, extrapolated to {full_depth}\n{machine_line('cpu')}\n\n{table}")
    if args.write:
        notes = (f"{args.shape} shape at full width, random bf16 weights, timed at depths {depths} and extrapolated "
                 f"linearly to its {full_depth} layers; prompt {args.prompt}, generation {args.gen}, blocks of "
                 f"{args.block}, batch 1. prefix/dual pay one full refreshing pass per block (the `none` pass) "
                 "plus their cached steps; `ar` is one token against a KV cache of the context, the cost of an AR "
                 "model of the same shape.")
        record("llama-cache-cost", f"What a {args.shape} checkpoint costs per token on this CPU", table,
               {"args": vars(args), "measured": measured, "extrapolated": extrapolated}, "cpu", notes)


if __name__ == "__main__":
    main()
