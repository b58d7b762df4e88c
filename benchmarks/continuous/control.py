"""Control table (issue 15.2, rule-based controls only): success and fluency, guided vs unguided.

python3 benchmarks/continuous/control.py MODEL_DIR AR_DIR [n] [steps]
"""
import json
import sys
import time

from textdiffusion import Pipeline
from textdiffusion.eval.diversity import diversity_report
from textdiffusion.eval.judge import PipelineJudge
from textdiffusion.guidance import Contains, Guidance

model_dir, ar_dir = sys.argv[1], sys.argv[2]
n = int(sys.argv[3]) if len(sys.argv) > 3 else 16
steps = int(sys.argv[4]) if len(sys.argv) > 4 else 128
pipe = Pipeline.from_pretrained(model_dir)
judge = PipelineJudge(Pipeline.from_pretrained(ar_dir), name="ar-byte")
tok = pipe.tokenizer
controls = {'contains " love"': Contains(tok.encode(" love"))}
rows = []
for name, control in controls.items():
    for label, guidance in (("unguided", None), ("guided (lambda=0.01, 3 Adagrad steps, lr 0.1)", Guidance([control]))):
        t0 = time.perf_counter()
        out = pipe.generate(num_samples=n, steps=steps, seed=0, guidance=guidance)
        ok = control.satisfied(out.ids.cpu()).float().mean().item()
        scored = judge.score(out.texts)
        row = {"control": name, "setting": label, "success": ok, "judge_ppl": scored.perplexity,
               "entropy": diversity_report(scored.token_ids)["unigram_entropy"], "nfe": out.nfe,
               "seconds": time.perf_counter() - t0, "example": out.texts[0][:120]}
        rows.append(row)
        print(json.dumps(row), flush=True)
json.dump(rows, open("/tmp/control/results.json", "w"), indent=1)
