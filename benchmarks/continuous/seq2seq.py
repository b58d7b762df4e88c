"""DiffuSeq vs AR seq2seq on one paired task from the bundled text (issue 15.3), byte level, same backbone and budget.

python3 benchmarks/continuous/seq2seq.py prepare | train-dlm | train-ar | eval N
Environment: S2S_DIR (work folder, default /tmp/s2s), S2S_TASK (restore | bag, see data/pairs.py; default restore),
S2S_STEPS (training steps, default 400), S2S_LAYERS / S2S_D (backbone, default 4 x 256), S2S_BATCH (default 32),
S2S_DLM_STEPS (DiffuSeq's denoising steps in eval, default 100; ancestral with clamping).
`eval N` scores the first N validation pairs: both models with MBR over 4 seeds and one sample, plus the rule
baselines that need no model (copy the source; copy it with its first letter capitalised).
"""
import json
import os
import sys
import time
from pathlib import Path

from textdiffusion.data.corpus import BUNDLED, iter_documents
from textdiffusion.data.pairs import line_pairs, write_pairs
from textdiffusion.train.config import load_config
from textdiffusion.train.trainer import Trainer

ROOT = Path(os.environ.get("S2S_DIR", "/tmp/s2s"))
TASK = os.environ.get("S2S_TASK", "restore")
S, T_CHARS = 64, 64
D, LAYERS = int(os.environ.get("S2S_D", 256)), int(os.environ.get("S2S_LAYERS", 4))
STEPS, BATCH = int(os.environ.get("S2S_STEPS", 400)), int(os.environ.get("S2S_BATCH", 32))
COMMON = [f"data.source={ROOT}/pairs.jsonl", "data.packing=pad", f"data.seq_len={S + T_CHARS}", "data.tokenizer=byte",
          f"model.d_model={D}", f"model.n_layers={LAYERS}", "model.n_heads=4", f"train.steps={STEPS}",
          f"train.batch_size={BATCH}", "train.lr=1e-3", "train.warmup_steps=50", "train.ema_decay=0.995",
          "run.log_every=25", f"run.eval_every={STEPS}", "run.save_every=100", "run.progress=false"]


def main(cmd: str) -> None:
    if cmd == "prepare":
        texts = [p.read_text(encoding="utf-8") for p in sorted(BUNDLED["shakespeare"].glob("*_gut.txt"))]
        ROOT.mkdir(parents=True, exist_ok=True)
        n = write_pairs(ROOT / "pairs.jsonl", line_pairs(texts, S, T_CHARS, task=TASK), S)
        print("pairs", n, "task", TASK)
    elif cmd in ("train-dlm", "train-ar"):
        extra = (["process.name=gaussian", f"process.source_len={S}", "process.embed_dim=16"] if cmd == "train-dlm"
                 else ["process.name=autoregressive"])
        out = ROOT / cmd[6:]
        cfg = load_config(None, [*COMMON, *extra, f"run.out_dir={out}"])
        resume = (out / "checkpoint" / "config.json").is_file()
        Trainer(cfg, resume=resume).run()
    elif cmd == "eval":
        from sacrebleu.metrics import BLEU

        from textdiffusion import Pipeline
        from textdiffusion.eval.seq2seq import evaluate_seq2seq

        docs = list(iter_documents(str(ROOT / "pairs.jsonl"), "validation", 0.05, 0, "text", "train"))
        n = int(sys.argv[2]) if len(sys.argv) > 2 else 100
        pairs = [(d[: S - 1].strip(), d[S - 1 :]) for d in docs][:n]
        refs = [[t for _, t in pairs]]
        rows = [{"model": "rule: copy the source", "bleu_mbr4": BLEU().corpus_score([s for s, _ in pairs], refs).score},
                {"model": "rule: copy, first letter upper-cased",
                 "bleu_mbr4": BLEU().corpus_score([s[:1].upper() + s[1:] for s, _ in pairs], refs).score}]
        for row in rows:
            print(json.dumps(row), flush=True)
        for name, opts in [("ar", {}), ("dlm", {"steps": int(os.environ.get("S2S_DLM_STEPS", 100))})]:
            pipe = Pipeline.from_pretrained(ROOT / name)
            t0 = time.perf_counter()
            res = evaluate_seq2seq(pipe, pairs, S, candidates=4, seed=0, batch_sources=25, **opts)
            rows.append({"model": name, "options": opts, "bleu_mbr4": res.bleu, "bleu_single": res.bleu_first,
                         "n": res.n, "seconds": time.perf_counter() - t0,
                         "examples": list(zip(pairs[:4], res.hypotheses[:4], strict=True))})
            print(json.dumps(rows[-1]), flush=True)
        (ROOT / "results.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
