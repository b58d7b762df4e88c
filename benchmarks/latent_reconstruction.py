"""How well latent diffusion's autoencoder (processes/latent.py, issue 35 item 1) writes held-out text back from its
k latent vectors of width d, by k and d:

    python benchmarks/latent_reconstruction.py --write                     # shakespeare-latent, 2,000 AE steps
    python benchmarks/latent_reconstruction.py --config tiny --steps 20 --grid 4:16 --passages 8   # a smoke run

For each (k, d) of --grid one run of --config trains only the autoencoder stage for --steps steps (process.ae_steps
is set to --steps: the denoiser never trains), with the preset's latent noise and latent dropout. Then every
validation passage of the run (the corpus's held-out documents cut to data.seq_len tokens; at most --passages) is
encoded to its normalised latents (no noise) and written back greedily by the decoder, token by token
(samplers/latent.py's `decode`). Reported per (k, d):
  exact     the share of passages written back token for token;
  CER       the character error rate, Levenshtein(decoded text, original text) / len(original text), averaged;
  NLL       the decoder's teacher-forced cross-entropy from those latents, nats per token;
  NLL other the same from the latents of another passage (the batch rolled by one): NLL other - NLL is what the
            latents tell the decoder, 0 for a decoder that ignores them;
  floats    k * d, the numbers that hold a passage (against data.seq_len tokens).
The weights are the live ones, not the EMA: the denoiser trains against the live autoencoder's latents.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import markdown_table, record

from textdiffusion.processes.alignment import levenshtein
from textdiffusion.samplers.latent import decode
from textdiffusion.train.config import load_config
from textdiffusion.train.trainer import Trainer


def parse_grid(items: list[str]) -> list[tuple[int, int]]:
    try:
        return [(int(k), int(d)) for k, d in (item.split(":") for item in items)]
    except ValueError as exc:
        raise SystemExit(f"--grid takes k:d pairs such as 16:64, got {items}") from exc


def char_error_rate(output: str, reference: str) -> float:
    distance = levenshtein([ord(c) for c in output], [ord(c) for c in reference])
    return distance / len(reference) if reference else float(distance > 0)


@torch.no_grad()
def measure(trainer: Trainer, passages: int, batch: int) -> dict:
    model, process, tok = trainer.model.eval(), trainer.process, trainer.tok
    val = trainer.val[:passages].to(trainer.device)
    exact, cer, nll, other = 0, 0.0, 0.0, 0.0
    for start in range(0, val.shape[0], batch):
        x0 = val[start:start + batch]
        latents = model.encode(x0)
        logits = model.decode_logits(x0, latents).float()
        nll += float(F.cross_entropy(logits.transpose(1, 2), x0, reduction="sum"))
        shuffled = model.decode_logits(x0, latents.roll(1, dims=0)).float()
        other += float(F.cross_entropy(shuffled.transpose(1, 2), x0, reduction="sum"))
        blank = torch.full_like(x0, process.mask_id)
        out = decode(model, latents, blank, torch.zeros(x0.shape[0], dtype=torch.long, device=x0.device),
                     process.mask_id)
        for got, want in zip(out.tolist(), x0.tolist()):
            exact += got == want
            cer += char_error_rate(tok.decode(got), tok.decode(want))
    n = val.shape[0]
    return {"passages": n, "exact": exact / n, "cer": cer / n, "nll": nll / val.numel(),
            "nll_other": other / val.numel()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="section.key=value config overrides")
    ap.add_argument("--config", default="shakespeare-latent", help="preset or YAML file (a latent process)")
    ap.add_argument("--grid", nargs="+", default=["4:32", "8:32", "16:32", "16:64", "32:64"],
                    help="k:d pairs to train (default: 4:32 8:32 16:32 16:64 32:64)")
    ap.add_argument("--steps", type=int, default=2000, help="autoencoder training steps per pair (default 2000)")
    ap.add_argument("--passages", type=int, default=256, help="held-out passages to write back (default 256)")
    ap.add_argument("--batch", type=int, default=32, help="passages per decoding batch (default 32)")
    ap.add_argument("--write", action="store_true", help="append the table to BENCHMARKS.md, the numbers to results/")
    args = ap.parse_args()
    rows, results = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for k, d in parse_grid(args.grid):
            cfg = load_config(args.config, ["run.progress=false", f"run.out_dir={Path(tmp) / f'{k}x{d}'}",
                                            *args.overrides, "process.name=latent", f"process.num_latents={k}",
                                            f"process.latent_dim={d}", f"process.ae_steps={args.steps}",
                                            f"train.steps={args.steps}"])
            trainer = Trainer(cfg)
            start = time.perf_counter()
            for _ in range(args.steps):
                loss = trainer.train_step()
            seconds = time.perf_counter() - start
            res = {"k": k, "d": d, "floats": k * d, "seq_len": cfg.data.seq_len, "train_loss": loss,
                   "train_s": seconds, **measure(trainer, args.passages, args.batch)}
            print(res, flush=True)
            results.append(res)
            rows.append([k, d, k * d, f"{res['exact']:.3f}", f"{res['cer']:.4f}", f"{res['nll']:.4f}",
                         f"{res['nll_other']:.4f}", f"{loss:.4f}", res["passages"], f"{seconds:.0f}"])
    table = markdown_table(["k", "d", "floats", "exact", "CER", "NLL (nats/token)", "NLL other", "train loss",
                            "passages", "train s"], rows)
    print(table)
    if args.write:
        device = trainer.device
        record("latent_reconstruction", f"Latent autoencoder reconstruction by k and d ({args.config}, "
               f"{args.steps} steps)", table, {"results": results, "args": vars(args)}, device,
               notes="Greedy decoding of held-out passages from their noise-free latents (live weights).")


if __name__ == "__main__":
    main()
