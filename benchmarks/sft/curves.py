"""Validation NELBO against training tokens for several runs, as a markdown table.

usage: python benchmarks/sft/curves.py TOKENS_PER_STEP "LABEL=RUN/metrics.jsonl" ...
(TOKENS_PER_STEP = batch size x sequence length, 16 x 64 in /tmp/bench_sft.md's runs)"""

import json
import sys


def curve(path: str) -> dict[int, tuple[float, float]]:
    with open(path) as f:
        rows = [json.loads(line) for line in f]
    return {r["step"]: (r["val_nelbo"], r["val_stderr"]) for r in rows if "val_nelbo" in r}


tokens_per_step = int(sys.argv[1])
runs = dict(arg.split("=", 1) for arg in sys.argv[2:])
curves = {label: curve(path) for label, path in runs.items()}
print("| step | tokens | " + " | ".join(runs) + " |")
print("|---|---|" + "---|" * len(runs))
for step in sorted(set().union(*curves.values())):
    cells = [f"{c[step][0]:.3f} ± {c[step][1]:.3f}" if step in c else "" for c in curves.values()]
    print(f"| {step} | {step * tokens_per_step:,} | " + " | ".join(cells) + " |")
