"""MDLM remask-and-refill baseline for the editing task: python benchmarks/edit_mdlm_baseline.py [n_lines] [threshold]
Each token of the noisy line is scored by p(x_i | the rest) (one pass per position, masked); tokens below the
threshold are masked and refilled by the ancestral sampler (greedy). The length in tokens cannot change."""
import json
import sys
import time
from collections.abc import Callable

import torch

from textdiffusion.api.pipeline import Pipeline
from textdiffusion.data.corpus import iter_documents
from textdiffusion.eval.editing import evaluate_editor, held_out_lines


def mdlm_editor(pipe: Pipeline, tau: float) -> Callable[[list[str]], list[str]]:
    """The remask-and-refill editor of a masked-diffusion pipeline at threshold `tau` (module notes)."""
    tok, mask = pipe.tokenizer, pipe.tokenizer.mask_id

    @torch.no_grad()
    def editor(noisy: list[str]) -> list[str]:
        out = []
        for k, text in enumerate(noisy):
            ids = torch.tensor(tok.encode(text)[: pipe.seq_len])
            n = len(ids)
            probe = ids.repeat(n, 1)
            probe[torch.arange(n), torch.arange(n)] = mask
            logp = pipe.process.log_probs(pipe.model, probe, torch.full((n,), 0.5))
            p_self = logp[torch.arange(n), torch.arange(n), ids].exp()
            x = ids.clone()
            x[p_self < tau] = mask
            if (x == mask).any():
                res = pipe.denoise(x[None], steps=max(1, int((x == mask).sum())), temperature=0.0, seed=k)
                out.append(res.texts[0])
            else:
                out.append(text)
        return out

    return editor


if __name__ == "__main__":
    torch.set_num_threads(1)
    n_lines = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    tau = float(sys.argv[2]) if len(sys.argv) > 2 else 0.01
    pipe = Pipeline.from_pretrained("src/textdiffusion/pretrained/shakespeare-mdlm", device="cpu")
    docs = list(iter_documents("shakespeare", "validation", 0.05, 0))
    lines = held_out_lines(docs, max_chars=63, limit=n_lines)
    start = time.time()
    scores, rows = evaluate_editor(mdlm_editor(pipe, tau), lines, seed=0, n_errors=1)
    print(json.dumps({"baseline": "mdlm-remask", "tau": tau, "seconds": round(time.time() - start, 1),
                      **scores.__dict__}))
    for ref, noisy, out in rows[:4]:
        print(f"REF  {ref}\nNOISY {noisy}\nOUT  {out}\n")
