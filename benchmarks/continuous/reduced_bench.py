"""Reduced measurement of the small-suite byte runs (the full `bench` eval could not finish on the loaded machine):
likelihood bound +- s.e. (128 validation windows, 8 t-samples, as the suite), generation of 16 samples per setting
at batch 16, timed (under heavy shared load), judged by the suite's AR baseline with unigram entropy.

usage: python benchmarks/continuous/reduced_bench.py RUNS_DIR OUT.json"""
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from textdiffusion import Pipeline
from textdiffusion.bench.runs import run_config
from textdiffusion.bench.suites import get_suite
from textdiffusion.eval.diversity import diversity_report
from textdiffusion.eval.judge import PipelineJudge
from textdiffusion.train.trainer import validation_chunks

suite = get_suite("small")
tok = suite.tokenizations[0]
root = Path(sys.argv[1])  # the --runs folder of `textdiffusion bench small`
dlm = Pipeline.from_pretrained(root / "small/byte/diffusion-lm")
ar = Pipeline.from_pretrained(root / "small/byte/ar")
judge = PipelineJudge(ar, name="ar-byte")
cfg = run_config(suite, tok, suite.family("diffusion-lm"), root)
val = validation_chunks(cfg, dlm.tokenizer, suite.val_chunks)
out = {}
t0 = time.perf_counter()
lik = dlm.likelihood(val, t_samples=suite.t_samples, seed=0, batch_size=16)
out["diffusion-lm likelihood"] = asdict(lik) | {"seconds": time.perf_counter() - t0}
print(json.dumps(out["diffusion-lm likelihood"]), flush=True)
settings = [("diffusion-lm", dlm, {"steps": 32}), ("diffusion-lm", dlm, {"steps": 128}),
            ("diffusion-lm", dlm, {"steps": 128, "eta": 0.0}), ("ar", ar, {})]
rows = []
for name, pipe, opts in settings:
    t0 = time.perf_counter()
    g = pipe.generate(num_samples=16, seed=0, **opts)
    secs = time.perf_counter() - t0
    scored = judge.score(g.texts)
    row = {"family": name, "options": opts, "nfe": g.nfe, "tokens_per_s": 16 * pipe.seq_len / secs,
           "judge_ppl": scored.perplexity, "entropy": diversity_report(scored.token_ids)["unigram_entropy"],
           "example": g.texts[0][:200]}
    rows.append(row)
    print(json.dumps(row), flush=True)
out["generation"] = rows
Path(sys.argv[2]).write_text(json.dumps(out, indent=1))
