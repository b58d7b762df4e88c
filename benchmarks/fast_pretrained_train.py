"""Train the two SmolLM2-135M models of the "fast decoding on pretrained models" comparison, on the same data, with
the same batches and the same token budget, so that the comparison measures decoding, not data:

* `block`: Fast-dLLM v2's adaptation (`adapt --from smollm2 --block-size B`): block diffusion with the logit
  shift, block-causal attention over [x_t; x0] and complementary masks;
* `ar`: SmolLM2 trained on left to right (`adapt --from smollm2 --ar`), the AR baseline;
* `masked` (with --masked): the masked adaptation `adapt --from smollm2` makes (DiffuLLaMA / Dream: logit shift,
  full attention), decoded with Fast-dLLM v1's threshold and caches.

Data: the bundled Shakespeare plays except the held-out one (default Hamlet), which the evaluation
(benchmarks/fast_pretrained.py) uses for its ground-truth task. Both runs checkpoint every --save-every steps and
resume exactly: run this again with a larger --steps to extend the budget (CPU budgets span sessions).

usage:  python benchmarks/fast_pretrained_train.py --out /work/fast_pretrained --steps 300
        python benchmarks/fast_pretrained_train.py --out /work/fast_pretrained --steps 600 --only block
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from textdiffusion.cli import main as cli

CORPUS = Path(__file__).resolve().parents[1] / "src" / "textdiffusion" / "corpora" / "shakespeare"


def split_plays(out: Path, held_out: str) -> Path:
    """out/data/train/ with every play but `held_out`; out/data/heldout/ with it. Returns the train folder."""
    train, heldout = out / "data" / "train", out / "data" / "heldout"
    if not train.is_dir():
        train.mkdir(parents=True)
        heldout.mkdir(parents=True)
        plays = sorted(CORPUS.glob("*_gut.txt"))
        if not any(p.name.startswith(held_out) for p in plays):
            sys.exit(f"no play named {held_out}* in {CORPUS}")
        for play in plays:
            shutil.copy(play, (heldout if play.name.startswith(held_out) else train) / play.name)
    return train


def overrides(args, train: Path) -> list[str]:
    return [f"data.source={train}", f"data.seq_len={args.seq_len}", f"train.batch_size={args.batch}",
            f"train.steps={args.steps}", f"train.lr={args.lr}", f"train.warmup_steps={args.warmup}",
            "train.precision=bf16", "train.device=cpu", "train.ema_decay=0", "train.seed=0", "run.log_every=5",
            f"run.eval_every={args.save_every}", "run.eval_batches=4", f"run.save_every={args.save_every}",
            "run.sample_every=0", "run.progress=false"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, required=True, help="the budget in optimiser steps (resumes past ones)")
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--save-every", type=int, default=25)
    parser.add_argument("--held-out", default="hamlet")
    parser.add_argument("--source", default="smollm2", help="smollm2, a .gguf file or an HF causal-LM folder")
    parser.add_argument("--only", choices=("block", "ar", "masked"), default=None)
    parser.add_argument("--masked", action="store_true", help="also train the masked adaptation")
    args = parser.parse_args()
    train = split_plays(args.out, args.held_out)
    runs = {"block": ["--block-size", str(args.block_size)], "ar": ["--ar"]}
    if args.masked or args.only == "masked":
        runs["masked"] = []
    for name, flags in runs.items():
        if args.only not in (None, name):
            continue
        folder = args.out / name
        resume = ["--resume"] if (folder / "checkpoint" / "config.json").is_file() else []
        print(f"== {name}: {'resuming' if resume else 'starting'} towards step {args.steps}", flush=True)
        code = cli(["adapt", "--from", args.source, "--out", str(folder), *flags, *resume, *overrides(args, train)])
        if code:
            sys.exit(code)


if __name__ == "__main__":
    main()
