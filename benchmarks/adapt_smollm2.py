"""SmolLM2-135M -> masked diffusion (train/adapt_llama.py) against the same network trained from scratch.

Both runs: the same LlamaLike (SmolLM2's 30 layers, 576 wide), the same tokenizer (SmolLM2's + [MASK]), the same
logit-shifted masked process, data (bundled Shakespeare), batches, noise and optimiser; only the start differs.
Validation NELBO (nats/token, one t-sample per sequence, ± its standard error) is logged at step 0 and every
--eval-every steps; the table gives it against training tokens. Samples of the adapted model are judged by an AR
model that generated none of them (--judge, default our byte-level Shakespeare AR: it reads any text).

usage:  python benchmarks/adapt_smollm2.py --probe                 # seconds per step, nothing kept
        python benchmarks/adapt_smollm2.py --out /tmp/adapt --budget-s 600 --eval-every 10
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from textdiffusion.train.adapt_llama import LlamaAdaptTrainer
from textdiffusion.train.config import load_config


def config(out: Path, args, steps: int, lr: float):
    return load_config("tiny", [
        "process.name=masked", "process.logit_shift=true", f"run.out_dir={out}", "run.progress=false",
        f"data.source={args.data}", f"data.seq_len={args.seq_len}", f"train.batch_size={args.batch}",
        f"train.steps={steps}", f"train.lr={lr}", f"train.warmup_steps={max(1, steps // 10)}",
        "train.ema_decay=0", "train.precision=bf16", "train.device=cpu", "run.log_every=1",
        f"run.eval_every={args.eval_every}", f"run.eval_batches={args.eval_batches}", f"run.save_every={steps}",
        "run.sample_every=0", "run.sample_steps=8"])


def run(out: Path, args, steps: int, scratch: bool) -> list[dict]:
    lr = args.scratch_lr if scratch else args.lr
    trainer = LlamaAdaptTrainer(config(out, args, steps, lr), args.source, anneal_steps=args.anneal, scratch=scratch)
    trainer.log_sample = lambda: None  # samples are drawn (and judged) below, not in the log
    trainer.evaluate()  # step 0
    trainer.run()
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def probe(args) -> tuple[float, float]:
    """(seconds per training step, seconds per evaluation) of the adapted network: 1 step to warm up, 2 timed."""
    out = Path(args.out) / "probe"
    shutil.rmtree(out, ignore_errors=True)
    trainer = LlamaAdaptTrainer(config(out, args, 3, args.lr), args.source, anneal_steps=args.anneal)
    trainer.train_step()
    start = time.perf_counter()
    trainer.train_step()
    trainer.train_step()
    step_s = (time.perf_counter() - start) / 2
    start = time.perf_counter()
    trainer.evaluate()
    eval_s = time.perf_counter() - start
    print(f"probe: {step_s:.2f} s per training step ({args.batch} x {args.seq_len} tokens), {eval_s:.2f} s per "
          f"evaluation ({args.eval_batches} x {args.batch} sequences)", flush=True)
    shutil.rmtree(out, ignore_errors=True)
    return step_s, eval_s


def judge_samples(folder: Path, args) -> dict:
    from textdiffusion.api.pipeline import Pipeline
    from textdiffusion.eval.judge import load_judge

    pipe = Pipeline.from_pretrained(folder, device="cpu")
    out = pipe.generate(num_samples=args.samples, length=args.seq_len, steps=args.sample_steps, seed=0)
    texts = [t.strip() for t in out.texts]
    judge = load_judge(args.judge)
    score = judge.score(texts)
    return {"judge": score.judge, "judge_ppl": score.perplexity,
            "judge_nats_per_token": score.nats_per_token, "texts": texts}


def table(curves: dict[str, list[dict]], tokens_per_step: int) -> str:
    points = {label: {r["step"]: (r["val_nelbo"], r["val_stderr"]) for r in rows if "val_nelbo" in r}
              for label, rows in curves.items()}
    lines = ["| step | training tokens | " + " | ".join(f"{k} NELBO" for k in points) + " |",
             "|---|---|" + "---|" * len(points)]
    for step in sorted(set().union(*points.values())):
        cells = [f"{p[step][0]:.3f} ± {p[step][1]:.3f}" if step in p else "" for p in points.values()]
        lines.append(f"| {step} | {step * tokens_per_step:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="/tmp/adapt_smollm2", help="folder for the two runs")
    parser.add_argument("--source", default="smollm2", help="smollm2, a .gguf file or an HF Llama-family folder")
    parser.add_argument("--data", default="shakespeare", help="training text (data.source)")
    parser.add_argument("--probe", action="store_true", help="time 3 steps and stop")
    parser.add_argument("--budget-s", type=float, default=0, help="choose --steps to fit this many seconds")
    parser.add_argument("--steps", type=int, default=40, help="training steps of each run")
    parser.add_argument("--anneal", type=int, default=10, help="annealing steps (causal -> full attention)")
    parser.add_argument("--seq-len", type=int, default=64, help="tokens per sequence")
    parser.add_argument("--batch", type=int, default=4, help="sequences per step")
    parser.add_argument("--lr", type=float, default=1e-4, help="peak learning rate of the adapted run")
    parser.add_argument("--scratch-lr", type=float, default=1e-3, help="peak learning rate of the scratch run")
    parser.add_argument("--eval-every", type=int, default=10, help="steps between validation NELBOs")
    parser.add_argument("--eval-batches", type=int, default=4, help="validation batches per evaluation")
    parser.add_argument("--samples", type=int, default=8, help="samples of the adapted model to judge (0: none)")
    parser.add_argument("--sample-steps", type=int, default=64, help="denoising steps per sample")
    parser.add_argument("--judge", default="/tmp/bench_runs/small/byte/ar",
                        help="an AR model folder, an HF causal LM or smollm2 (it must not have generated them)")
    parser.add_argument("--only", choices=("adapted", "scratch"), default=None, help="train only this run")
    args = parser.parse_args()
    step_s, eval_s = probe(args)
    if args.probe:
        return
    steps = args.steps
    if args.budget_s:  # as many steps as fit: two runs, each with its evaluations, in the budget
        per_run = args.budget_s / 2
        steps = int(per_run / (step_s + eval_s / args.eval_every)) // args.eval_every * args.eval_every
        if steps < args.eval_every:
            raise SystemExit(f"--budget-s {args.budget_s} fits fewer than {args.eval_every} steps per run")
        print(f"budget {args.budget_s:.0f} s: {steps} steps per run", flush=True)
    curves = {}
    for label in ("adapted", "scratch"):
        if args.only not in (None, label):
            continue
        out = Path(args.out) / label
        start = time.perf_counter()
        curves[label] = run(out, args, steps, scratch=label == "scratch")
        print(f"{label}: {steps} steps in {time.perf_counter() - start:.0f} s", flush=True)
    print(table(curves, args.batch * args.seq_len))
    result = {"args": vars(args), "curves": curves}
    if args.samples and "adapted" in curves:
        for label in curves:
            judged = judge_samples(Path(args.out) / label / "checkpoint", args)
            result[f"judged_{label}"] = judged
            print(f"{label}: judge perplexity {judged['judge_ppl']:.2f} ({judged['judge_nats_per_token']:.3f} "
                  f"nats/token of the judge) over {args.samples} samples of {args.seq_len} tokens")
            for text in judged["texts"][:2]:
                print("  " + repr(text[:160]))
    (Path(args.out) / "result.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
