"""Where a sampler's time goes, per denoiser call, on any device: an untrained model of the `small` suite's byte shape
(4 x 256, 128 positions; speed does not depend on the weights), one batched generate() per setting timed, then one
under torch.profiler with the top operators by self CPU and self device time.

    python3 benchmarks/gpu/sampler_profile.py [--device cuda] [--batch 32] [--top 12]
"""

from __future__ import annotations

import argparse
import time

import torch

from textdiffusion.api.pipeline import Pipeline
from textdiffusion.data.tokenizers import ByteTokenizer
from textdiffusion.models import ModelConfig, Transformer
from textdiffusion.processes import build_process

SETTINGS = [  # (process, process options, causal model, sampler, sampler options)
    ("autoregressive", {}, True, "ar", {"cache": True}),
    ("autoregressive", {}, True, "ar", {"cache": False}),
    ("masked", {}, False, "ancestral", {"steps": 128}),
    ("block", {"block_size": 4}, False, "block", {"steps": 4}),
    ("block", {"block_size": 4}, False, "block", {"steps": 1}),
    ("block", {"block_size": 16}, False, "block", {"rule": "dilated"}),  # 5 passes per block of 16
    ("masked", {}, False, "confidence", {"remasking": "dilated"}),  # 8 passes over 128 positions
]


def pipeline(process_name: str, options: dict, causal: bool, device: str, precision: str) -> Pipeline:
    tok = ByteTokenizer()
    process = build_process(process_name, vocab_size=tok.vocab_size, mask_id=tok.mask_id, **options)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, seq_len=128, d_model=256, n_layers=4, n_heads=4,
                                    causal=causal, **process.model_fields()))
    return Pipeline(model.to(device), process, tok, {}, precision=precision)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args()
    cuda = args.device.startswith("cuda")
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    for name, options, causal, sampler, sampler_options in SETTINGS:
        pipe = pipeline(name, options, causal, args.device, args.precision)
        pipe.generate(num_samples=args.batch, sampler=sampler, seed=0, **sampler_options)  # warm-up
        start = time.perf_counter()
        out = pipe.generate(num_samples=args.batch, sampler=sampler, seed=1, **sampler_options)
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        per_call = seconds / max(out.nfe, 1) * 1e3
        print(f"\n== {name} {sampler} {sampler_options}: {out.nfe} calls, {seconds * 1e3:.0f} ms, "
              f"{per_call:.2f} ms per call, {out.ids.numel() / seconds:,.0f} tokens/s", flush=True)
        activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
        with torch.profiler.profile(activities=activities) as prof:
            pipe.generate(num_samples=args.batch, sampler=sampler, seed=2, **sampler_options)
            if cuda:
                torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top, max_name_column_width=40),
              flush=True)
        if cuda:
            print(prof.key_averages().table(sort_by=sort, row_limit=6, max_name_column_width=40), flush=True)


if __name__ == "__main__":
    main()
