"""Training throughput and MFU at MDLM's OpenWebText small shape (12 layers x 768, L = 1024, GPT-2 vocabulary), one GPU.

    python3 benchmarks/gpu/owt_throughput.py --data DIR [--reference MDLM_CHECKOUT] [--micro 32] [--steps 10]

DIR is `textdiffusion prepare --config owt-small --out DIR data.source=<text>` output (GPT-2 ids in memory-mapped
shards, so no tokenising is timed). Rows, in one process, one after the other:
  - textdiffusion eager: `Trainer.train_step()` of the owt-small preset (bf16 autocast, AdamW, grad clip, EMA 0.9999,
    dropout 0.1), batch 2 x micro (two accumulated micro-batches per optimiser step);
  - textdiffusion torch.compile: the same with train.compile=true;
  - reference MDLM DiT (--reference: a checkout of github.com/kuleshov-group/mdlm that you fetched; nothing of it is
    kept here): its `models/dit.py` at the same shape, driven by the same kind of step -- MDLM's continuous-time SUBS
    loss with the log-linear schedule and antithetic t, bf16 autocast, AdamW (0.9, 0.999), grad clip 1, EMA 0.9999 --
    on the same batches. flash-attn is replaced by PyTorch's SDPA (benchmarks/gpu/reference_shims): say so with the
    number.
MFU counts the model's matmul FLOPs per token, 6 (12 n d^2 + d V) + 12 n d L (fwd + bwd, bidirectional attention), the
same for every row (the same shape), against the card's dense bf16 peak (H100/H200 SXM: 989.4 TFLOP/s).
"""

from __future__ import annotations

import argparse
import copy
import gc
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks/common.py
from common import machine_line, markdown_table  # noqa: E402

from textdiffusion.train.config import load_config  # noqa: E402
from textdiffusion.train.trainer import Trainer  # noqa: E402

PEAK_BF16 = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}  # dense bf16 tensor-core peaks (datasheets)
SHIMS = Path(__file__).resolve().parent / "reference_shims"


def flops_per_token(n_layers: int, d: int, vocab: int, seq_len: int) -> float:
    return 6 * (12 * n_layers * d * d + d * vocab) + 12 * n_layers * d * seq_len


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def time_steps(step: Callable[[], float], warmup: int, steps: int, device: torch.device) -> list[float]:
    """Seconds per call of `step` (each returns a Python float, so it has finished), after `warmup` calls."""
    for _ in range(warmup):
        step()
    seconds = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    return seconds


def ours(args: argparse.Namespace, compile_: bool, out_dir: Path) -> tuple[Callable[[], float], dict]:
    cfg = load_config(args.config, [f"data.source=prepared:{args.data}", f"run.out_dir={out_dir}", "run.progress=false",
                                    f"train.batch_size={2 * args.micro}", f"train.micro_batch_size={args.micro}",
                                    f"train.device={args.device}", f"train.compile={str(compile_).lower()}",
                                    *args.overrides])
    trainer = Trainer(cfg)
    m = trainer.model_cfg
    shape = {"n_layers": m.n_layers, "d": m.d_model, "vocab": m.vocab_size, "seq_len": cfg.data.seq_len,
             "params": sum(p.numel() for p in trainer.model.parameters())}
    return trainer.train_step, shape


def load_reference_dit(checkout: Path):
    """The DIT class of the reference's models/dit.py, imported as a file (its models/__init__ pulls in Mamba)."""
    sys.path.insert(0, str(SHIMS))
    path = checkout / "models" / "dit.py"
    if not path.is_file():
        raise SystemExit(f"--reference {checkout}: no models/dit.py there (a kuleshov-group/mdlm checkout)")
    spec = importlib.util.spec_from_file_location("reference_mdlm_dit", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.DIT


def reference(args: argparse.Namespace, shape: dict, rows: np.ndarray) -> tuple[Callable[[], float], dict]:
    """The reference DiT and an MDLM training step written after its diffusion.py (SUBS, log-linear, continuous t)."""
    device = torch.device(args.device)
    dit_cls = load_reference_dit(Path(args.reference))
    mask_id = shape["vocab"] - 1
    config = {"model": {"hidden_size": shape["d"], "cond_dim": 128, "length": shape["seq_len"],
                        "n_blocks": shape["n_layers"], "n_heads": shape["d"] // 64, "scale_by_sigma": True,
                        "dropout": 0.1, "tie_word_embeddings": False}}
    model = dit_cls(config, vocab_size=shape["vocab"]).to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=3e-4, betas=(0.9, 0.999), weight_decay=0.0)
    shadow = [p.detach().clone() for p in params]
    eps, state = 1e-3, {"row": 0}

    def batch() -> torch.Tensor:
        i = state["row"] % (len(rows) - args.micro)
        state["row"] += args.micro
        return torch.from_numpy(rows[i:i + args.micro].astype(np.int64)).to(device)

    def micro_loss(x0: torch.Tensor) -> torch.Tensor:
        n = x0.shape[0]
        u = (torch.rand(n, device=device) / n + torch.arange(n, device=device) / n) % 1  # antithetic
        t = (1 - eps) * u + eps
        sigma = -torch.log1p(-(1 - eps) * t)  # log-linear noise
        dsigma = (1 - eps) / (1 - (1 - eps) * t)
        move = 1 - torch.exp(-sigma[:, None])
        xt = torch.where(torch.rand(x0.shape, device=device) < move, mask_id, x0)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits = model(xt, torch.zeros(n, device=device))  # MDLM trains without time conditioning
        logits[:, :, mask_id] += -1e6  # SUBS: [MASK] is never predicted, unmasked tokens are carried over
        logits = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
        logp = torch.gather(logits, -1, x0[:, :, None]).squeeze(-1)
        logp = torch.where(xt == mask_id, logp, torch.zeros_like(logp))
        return (-logp * (dsigma / torch.expm1(sigma))[:, None]).mean()

    def step() -> float:
        total = 0.0
        for _ in range(2):  # two accumulated micro-batches, as in the textdiffusion rows
            loss = micro_loss(batch()) / 2
            loss.backward()
            total += loss.detach()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            for s, p in zip(shadow, params):
                s.sub_((1 - 0.9999) * (s - p))
        return float(total)

    return step, {**shape, "params": sum(p.numel() for p in model.parameters())}


def prepared_rows(data: Path, seq_len: int) -> np.ndarray:
    index = json.loads((data / "index.json").read_text())
    dtype = np.dtype(index.get("dtype", "uint16"))
    shard = next(iter(sorted(data.glob("train-*.bin"))))
    return np.memmap(shard, dtype=dtype, mode="r").reshape(-1, seq_len)


def measure(name: str, make: Callable[[], tuple[Callable[[], float], dict]], args: argparse.Namespace,
            results: list[dict]) -> dict | None:
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    try:
        step, shape = make()
        seconds = time_steps(step, args.warmup, args.steps, device)
    except Exception as exc:  # one failed row must not lose the others
        print(f"{name}: FAILED: {type(exc).__name__}: {exc}", flush=True)
        results.append({"row": name, "error": f"{type(exc).__name__}: {exc}"})
        return None
    tokens = 2 * args.micro * shape["seq_len"]
    per_step = statistics.median(seconds)
    row = {"row": name, **shape, "tokens_per_step": tokens, "step_seconds": seconds,
           "tokens_per_s": tokens / per_step, "setup_and_warmup_s": time.perf_counter() - start - sum(seconds),
           "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}
    peak = peak_flops(device)
    fpt = flops_per_token(shape["n_layers"], shape["d"], shape["vocab"], shape["seq_len"])
    row["model_tflops"] = fpt * row["tokens_per_s"] / 1e12
    row["mfu"] = fpt * row["tokens_per_s"] / peak if peak else None
    print(f"{name}: {row['tokens_per_s']:,.0f} tokens/s, median step {per_step * 1e3:.1f} ms", flush=True)
    results.append(row)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="config overrides for the textdiffusion rows")
    ap.add_argument("--data", required=True, type=Path, help="a prepared folder (textdiffusion prepare)")
    ap.add_argument("--config", default="owt-small")
    ap.add_argument("--reference", default=None, help="a kuleshov-group/mdlm checkout: adds the reference row")
    ap.add_argument("--micro", type=int, default=32, help="sequences per micro-batch (default 32)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile row")
    ap.add_argument("--json", type=Path, default=None, help="write the rows here")
    args = ap.parse_args()
    device = torch.device(args.device)
    results: list[dict] = []
    shape: dict = {}
    with tempfile.TemporaryDirectory(prefix="owt_throughput-") as tmp:
        def make_eager():
            step, s = ours(args, False, Path(tmp) / "eager")
            shape.update(s)
            return step, s

        measure("textdiffusion (eager)", make_eager, args, results)
        gc.collect()
        if not args.no_compile:
            measure("textdiffusion (torch.compile)", lambda: ours(args, True, Path(tmp) / "compiled"), args, results)
            gc.collect()
    if args.reference and shape:
        rows = prepared_rows(args.data, shape["seq_len"])
        measure("reference MDLM DiT (flash-attn -> SDPA)", lambda: reference(args, copy.copy(shape), rows), args,
                results)
    ok = [r for r in results if "error" not in r]
    table = markdown_table(
        ["row", "params", "tokens/step", "tokens/s", "median step (ms)", "model TFLOP/s", "MFU", "peak memory (GiB)",
         "speed vs first row"],
        [[r["row"], f"{r['params'] / 1e6:.1f}M", r["tokens_per_step"], f"{r['tokens_per_s']:,.0f}",
          f"{statistics.median(r['step_seconds']) * 1e3:.1f}", f"{r['model_tflops']:.1f}",
          f"{r['mfu'] * 100:.1f}%" if r["mfu"] else "n/a",
          f"{r['peak_mem_gib']:.1f}" if r["peak_mem_gib"] is not None else "n/a",
          f"{r['tokens_per_s'] / ok[0]['tokens_per_s']:.2f}x"] for r in ok]) if ok else "(no row finished)"
    print(f"\n{machine_line(device)}; torch {torch.__version__}\n"
          f"micro-batch {args.micro} x 2 accumulated, {args.warmup} warm-up + {args.steps} timed steps per row\n\n"
          f"{table}\n", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine_line(device), "torch": torch.__version__,
                                         "micro": args.micro, "rows": results}, indent=1))


if __name__ == "__main__":
    main()
