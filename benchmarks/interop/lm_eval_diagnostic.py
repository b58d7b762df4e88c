"""The shipped model on the next-line task through the lm-eval model class, with or without the context.

usage: python benchmarks/interop/lm_eval_diagnostic.py TASK_DIR T_SAMPLES N_ITEMS ctx|ctx_tail|noctx
(TASK_DIR: written by benchmarks/lm_eval_shakespeare.py)"""
import json
import sys
import time
from pathlib import Path

import torch

from textdiffusion.eval.lm_eval import TextDiffusionLM

torch.set_num_threads(1)
task, k, n, ctxmode = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
lm = TextDiffusionLM(path="src/textdiffusion/pretrained/shakespeare-mdlm", t_samples=k, device="cpu",
                     mask_tail=ctxmode.endswith("tail"))
with open(task / "shakespeare_next_line.jsonl") as f:
    items = [json.loads(line) for line in f][:n]
hits = hits_norm = 0
t0 = time.time()
for it in items:
    ctx = it["context"] if ctxmode.startswith("ctx") else ""
    scores = []
    for c in it["choices"]:
        a, b = lm._encode_pair(ctx, "\n" + c)
        scores.append(lm.score_ids(a, b, lm._seed_for(ctx))[0])
    hits += max(range(4), key=scores.__getitem__) == it["label"]
    norm = [s / len(c) for s, c in zip(scores, it["choices"])]
    hits_norm += max(range(4), key=norm.__getitem__) == it["label"]
print(f"k={k} n={n} ctx={ctxmode} acc={hits/n:.3f} acc_norm={hits_norm/n:.3f} {time.time()-t0:.0f}s")
