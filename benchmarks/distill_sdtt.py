"""Few-step sampling by SDTT: judge perplexity, entropy and MAUVE against forward passes, teacher vs students.

    python -m textdiffusion distill --out runs/sdtt --teacher-steps 64 --rounds 3 train.steps=100   # students
    python benchmarks/distill_sdtt.py --students runs/sdtt --steps 8 16 32 64

Every model samples the same number of full windows (seeded alike) with MDLM's ancestral sampler at each step
count; the judge (--judge: SmolLM2-135M-Instruct by default, or an AR run folder trained apart, such as the
`bench` suite's judge) generated none of the texts; entropy is the mean unigram entropy per sample in the judge's
tokens (nats), and MAUVE (eval/mauve.py) compares the samples with as many held-out windows of the teacher's
validation split, in SmolLM2's last-token hidden states. Forward passes are per batch (the
sampler's cache skips the model when no token was revealed, so they can be fewer than the steps).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from common import command_line, machine_line, markdown_table  # benchmarks/common.py, next to this script

from textdiffusion.api.pipeline import Pipeline
from textdiffusion.eval.diversity import diversity_report
from textdiffusion.eval.judge import load_judge
from textdiffusion.eval.mauve import mauve_from_features
from textdiffusion.pretrained import DEFAULT_MODEL
from textdiffusion.train import checkpoint as ckpt
from textdiffusion.train.config import Config
from textdiffusion.train.trainer import validation_chunks


def held_out_texts(pipe: Pipeline, folder: Path, n: int) -> list[str]:
    cfg = Config.from_dict(ckpt.read_config(ckpt.resolve_model_dir(folder))["train_config"])
    return [pipe.tokenizer.decode(row.tolist(), mask_char=None) for row in validation_chunks(cfg, pipe.tokenizer, n)]


def generate(pipe: Pipeline, steps: int, n: int, batch: int, seed: int) -> tuple[list[str], float, float]:
    texts, seconds, nfe = [], 0.0, 0
    for first in range(0, n, batch):
        out = pipe.generate(num_samples=min(batch, n - first), steps=steps, seed=seed + first)
        texts, seconds, nfe = texts + out.texts, seconds + out.seconds, nfe + out.nfe
    return texts, n * pipe.seq_len / seconds, nfe / -(-n // batch)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default=str(DEFAULT_MODEL), help="the undistilled model")
    ap.add_argument("--students", required=True, help="the distill --out folder (round-1, round-2, ...)")
    ap.add_argument("--steps", type=int, nargs="+", default=[8, 16, 32, 64], help="sampling steps to measure")
    ap.add_argument("--num-samples", type=int, default=64, help="samples per row (and held-out texts for MAUVE)")
    ap.add_argument("--batch", type=int, default=32, help="samples per generate call")
    ap.add_argument("--seed", type=int, default=0, help="seed of the first batch")
    ap.add_argument("--rounds", type=int, nargs="+", default=None, help="only these rounds' students (default all)")
    ap.add_argument("--skip-teacher", action="store_true", help="measure the students only")
    ap.add_argument("--json", default=None, help="write the rows here as JSON")
    ap.add_argument("--judge", default="smollm2", help="smollm2, an HF folder or a run folder that generated none "
                                                       "of the texts (default smollm2)")
    args = ap.parse_args()

    rounds = sorted(Path(args.students).glob("round-*/checkpoint"), key=lambda p: int(p.parent.name.split("-")[1]))
    if not rounds:
        raise SystemExit(f"{args.students} holds no round-*/checkpoint: run `textdiffusion distill` first")
    rounds = [p for p in rounds if args.rounds is None or int(p.parent.name.split("-")[1]) in args.rounds]
    models = {} if args.skip_teacher else {"teacher": Path(args.teacher)}
    models.update({f"student {p.parent.name}": p for p in rounds})
    judge = load_judge(args.judge)
    featurizer = judge if hasattr(judge, "features") else load_judge("smollm2")  # MAUVE reads SmolLM2's features
    teacher = Pipeline.from_pretrained(args.teacher, precision="auto")
    reference = held_out_texts(teacher, Path(args.teacher), args.num_samples)
    p_features = featurizer.features(reference)

    def judged(texts: list[str]) -> dict:
        score = judge.score(texts)
        # standard error of the token-weighted mean nats/token (ratio estimator over texts): ppl's error bar
        mean, total = score.nats_per_token, sum(score.n_tokens)
        se = sum((nats - mean * k) ** 2 for nats, k in zip(score.nats, score.n_tokens)) ** 0.5 / total
        return {"judge_ppl": score.perplexity, "judge_nats_se": se,
                "entropy": diversity_report(score.token_ids)["unigram_entropy"],
                "mauve": mauve_from_features(p_features, featurizer.features(texts)).mauve}

    rows = [{"model": "held-out text", "steps": None, "forward_passes": None, "tokens_per_s": None,
             **judged(held_out_texts(teacher, Path(args.teacher), 2 * args.num_samples)[args.num_samples:])}]
    print(rows[-1], flush=True)
    for label, folder in models.items():
        pipe = Pipeline.from_pretrained(folder, precision="auto")
        pipe.generate(num_samples=1, steps=4, seed=0)  # warm-up
        for steps in args.steps:
            start = time.perf_counter()
            texts, tps, nfe = generate(pipe, steps, args.num_samples, args.batch, args.seed)
            rows.append({"model": label, "steps": steps, "forward_passes": nfe, "tokens_per_s": tps, **judged(texts),
                         "example": texts[0][:200], "wall_s": time.perf_counter() - start})
            print({k: v for k, v in rows[-1].items() if k != "example"}, flush=True)
    table = markdown_table(["model", "steps", "forward passes / batch", "tokens/s", f"{judge.name} ppl", "entropy",
                            "MAUVE"], [[r["model"], r["steps"] or "", r["forward_passes"] or "",
                                        r["tokens_per_s"] or "", r["judge_ppl"], r["entropy"], r["mauve"]]
                                       for r in rows])
    print(f"\ncommand: {command_line()}\nmachine: {machine_line('cpu')}\n\n{table}")
    if args.json:
        Path(args.json).write_text(json.dumps({"command": command_line(), "machine": machine_line("cpu"),
                                               "rows": rows}, indent=1))


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
