"""Editing task (issue 16.5) on a Diffuser checkpoint:
python benchmarks/edit_task.py RUN [n_lines] [steps] [beam] [t_start]"""
import json
import sys
import time

import torch

from textdiffusion.api.pipeline import Pipeline
from textdiffusion.data.corpus import iter_documents
from textdiffusion.eval.editing import evaluate_editor, held_out_lines

torch.set_num_threads(1)
run, n_lines = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 100
steps, beam = (int(sys.argv[3]) if len(sys.argv) > 3 else 2), (int(sys.argv[4]) if len(sys.argv) > 4 else 1)
t_start = float(sys.argv[5]) if len(sys.argv) > 5 else 1.0
pipe = Pipeline.from_pretrained(run, device="cpu")
docs = list(iter_documents("shakespeare", "validation", 0.05, 0))
lines = held_out_lines(docs, max_chars=pipe.seq_len - 1, limit=n_lines)


def editor(noisy):
    out = []
    for k, text in enumerate(noisy):
        opts = ({"temperature": 1.0} if beam == 0 else {"temperature": 0.0} if beam == 1
                else {"beam": beam, "revisions": beam})
        out.append(pipe.edit(text, steps=steps, seed=k, t_start=t_start, **opts).texts[0])
    return out


start = time.time()
scores, rows = evaluate_editor(editor, lines, seed=0, n_errors=1)
print(json.dumps({"run": run, "steps": steps, "beam": beam, "t_start": t_start,
                  "seconds": round(time.time() - start, 1),
                  **scores.__dict__}))
for ref, noisy, out in rows[:5]:
    print(f"REF  {ref}\nNOISY {noisy}\nOUT  {out}\n")
