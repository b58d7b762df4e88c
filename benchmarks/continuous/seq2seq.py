"""DiffuSeq vs AR seq2seq on "restore a verse line from the bag of its words" (issue 15.3), byte level.

python3 benchmarks/continuous/seq2seq.py prepare | train-dlm | train-ar | eval N   (work folder: $S2S_DIR, default
/tmp/s2s)
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
S, T_CHARS = 48, 64
COMMON = [f"data.source={ROOT}/pairs.jsonl", "data.packing=pad", f"data.seq_len={S + T_CHARS}", "data.tokenizer=byte",
          "model.d_model=128", "model.n_layers=2", "model.n_heads=4", "train.steps=400", "train.batch_size=32",
          "train.lr=2e-3", "train.warmup_steps=50", "train.ema_decay=0.995", "train.precision=fp32",
          "run.log_every=25", "run.eval_every=200", "run.save_every=100", "run.progress=false"]

def main(cmd):
    if cmd == "prepare":
        texts = [p.read_text(encoding="utf-8") for p in sorted(BUNDLED["shakespeare"].glob("*_gut.txt"))]
        n = write_pairs(ROOT / "pairs.jsonl", line_pairs(texts, S, T_CHARS), S)
        print("pairs", n)
    elif cmd in ("train-dlm", "train-ar"):
        extra = (["process.name=gaussian", f"process.source_len={S}", "process.embed_dim=32"] if cmd == "train-dlm"
                 else ["process.name=autoregressive"])
        out = ROOT / cmd[6:]
        cfg = load_config(None, [*COMMON, *extra, f"run.out_dir={out}"])
        resume = (out / "checkpoint" / "config.json").is_file()
        Trainer(cfg, resume=resume).run()
    elif cmd == "eval":
        from textdiffusion import Pipeline
        from textdiffusion.eval.seq2seq import evaluate_seq2seq
        docs = list(iter_documents(str(ROOT / "pairs.jsonl"), "validation", 0.05, 0, "text", "train"))
        pairs = [(d[: S - 1].strip(), d[S - 1 :]) for d in docs][:int(sys.argv[2]) if len(sys.argv) > 2 else 100]
        rows = []
        for name, sampler, opts in [("dlm", None, {"steps": 50}),
                                     ]:
            pipe = Pipeline.from_pretrained(ROOT / name)
            t0 = time.perf_counter()
            res = evaluate_seq2seq(pipe, pairs, S, candidates=4, seed=0, sampler=sampler, **opts)
            rows.append({"model": name, "options": opts, "bleu_mbr4": res.bleu, "bleu_single": res.bleu_first,
                         "n": res.n, "seconds": time.perf_counter() - t0,
                         "examples": list(zip(pairs[:3], res.hypotheses[:3]))})
            print(json.dumps(rows[-1]), flush=True)
        (ROOT / "results_dlm.json").write_text(json.dumps(rows, indent=1))

if __name__ == "__main__":
    main(sys.argv[1])
