"""The latent decoder's KV cache against recomputing every earlier position, side by side in one run:

    python benchmarks/latent_decode_speed.py --model /work/bench_runs/small/byte/latent/checkpoint
    python benchmarks/latent_decode_speed.py --model runs/shakespeare-latent/checkpoint --batch 1 8 --write

For each batch size, random latents are written back greedily by samplers/latent.py's `decode` (one cached pass per
position) and by the same loop without a cache (each pass reads the whole prefix again, as before the cache). Both
write the same tokens (checked); the table gives the fastest of --repeats timings and their ratio.
"""

from __future__ import annotations

import argparse
from functools import partial

import torch
from common import markdown_table, record, timed

from textdiffusion.api.pipeline import Pipeline
from textdiffusion.processes.latent import decode_logits
from textdiffusion.samplers.latent import decode


def decode_uncached(model, latents: torch.Tensor, length: int, batch: int, mask_id: int) -> torch.Tensor:
    """Greedy decoding that recomputes every earlier position at each step (the reference)."""
    out = torch.full((batch, length), mask_id, dtype=torch.long)
    for i in range(length):
        logits = decode_logits(model, out[:, : i + 1], latents)[:, i].float()
        logits[:, mask_id] = float("-inf")
        out[:, i] = logits.argmax(-1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a latent model's folder")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--write", action="store_true", help="append the table to BENCHMARKS.md")
    args = ap.parse_args()
    pipe = Pipeline.from_pretrained(args.model, device="cpu")
    model, mask_id, length = pipe.model.eval(), pipe.tokenizer.mask_id, pipe.seq_len
    rows = []
    for batch in args.batch:
        latents = torch.randn(batch, model.num_latents, model.latent_dim, generator=torch.Generator().manual_seed(0))
        blank = torch.full((batch, length), mask_id, dtype=torch.long)
        zeros = torch.zeros(batch, dtype=torch.long)
        with torch.no_grad():
            cached = decode(model, latents, blank, zeros, mask_id)
            assert torch.equal(cached, decode_uncached(model, latents, length, batch, mask_id)), "different tokens"
            fast = timed(partial(decode, model, latents, blank, zeros, mask_id), args.repeats)
            slow = timed(partial(decode_uncached, model, latents, length, batch, mask_id), args.repeats)
        rows.append([batch, length, f"{slow:.3f}", f"{fast:.3f}", f"{slow / fast:.1f}x"])
        print(rows[-1], flush=True)
    table = markdown_table(["batch", "tokens", "no cache (s)", "KV cache (s)", "speed-up"], rows)
    print(table)
    if args.write:
        record("latent_decode_speed", "Latent decoder: KV cache vs recomputation", table, {"rows": rows,
               "model": args.model}, "cpu", notes="Greedy decoding of random latents; the same tokens both ways.")


if __name__ == "__main__":
    main()
