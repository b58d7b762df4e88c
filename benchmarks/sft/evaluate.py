"""Held-out accuracy of a chat model on the Shout/Whisper set, with and without classifier-free guidance.
usage: python evaluate.py MODEL_RUN TEST_JSONL"""
import json
import sys
import time

from textdiffusion import Pipeline

pipe = Pipeline.from_pretrained(sys.argv[1], device="cpu")
tests = [json.loads(line)["messages"] for line in open(sys.argv[2])]
settings = [("confidence", dict(steps=16, temperature=0.0, block_length=4)),
            ("ancestral", dict(steps=16, temperature=1.0))]
rows = []
for sampler, opts in settings:
    for w in (0.0, 1.0, 2.0):
        exact = chars = total = 0
        start = time.perf_counter()
        for i, conv in enumerate(tests):
            reply = pipe.chat(conv[:1], sampler=sampler, seed=i, cfg_scale=w, progress=False, **opts).replies[0]
            target = conv[1]["content"]
            exact += reply == target
            chars += sum(a == b for a, b in zip(reply, target))
            total += max(len(reply), len(target))
        rows.append((sampler, opts, w, exact / len(tests), chars / total, time.perf_counter() - start))
        print(f"| {sampler} | {opts['steps']} | {opts['temperature']:g} | {w:g} | {100 * exact / len(tests):.1f}% | "
              f"{100 * chars / total:.1f}% | {time.perf_counter() - start:.0f} s |", flush=True)
