"""The editing comparison (issue 16.5): restore the 100 held-out lines, each with one realistic error.

    python benchmarks/edit_compare_eval.py --diffuser DIR --ar DIR [--mdlm DIR ...] [--judge smollm2]

Rows: the noisy input left alone; DiffusER (benchmarks/edit_compare_train.py) greedy from t = 1 (one revision
step), greedy over all T steps, 2-D beam search, and greedy with at least one edit (`min_edits=1`: the input always
holds an error); the AR rewriter of the same backbone, data and budget (greedy);
MDLM remask-and-refill (benchmarks/edit_mdlm_baseline.py) for each --mdlm folder. Scores: exact match, mean
character edit distance to the original line, and the judge's perplexity of the outputs (SmolLM2-135M: it
generated none of them), with the clean lines' own judge perplexity for scale. Prints a markdown table and
writes the rows as JSON (--json).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch
from common import markdown_table  # benchmarks/common.py, next to this script
from edit_compare_train import data
from edit_mdlm_baseline import mdlm_editor

from textdiffusion.api.pipeline import Pipeline
from textdiffusion.eval.editing import KINDS, error_kind, evaluate_editor
from textdiffusion.eval.judge import load_judge
from textdiffusion.pretrained import DEFAULT_MODEL
from textdiffusion.processes.alignment import levenshtein


def diffuser_editor(pipe: Pipeline, steps: int, t_start: float, beam: int = 1,
                    min_edits: int = 0) -> Callable[[list[str]], list[str]]:
    opts = {"temperature": 0.0, "min_edits": min_edits} if beam == 1 else {"beam": beam, "revisions": beam}
    return lambda noisy: [pipe.edit(x, steps=steps, seed=k, t_start=t_start, **opts).texts[0]
                          for k, x in enumerate(noisy)]


def ar_editor(pipe: Pipeline, max_new: int = 80) -> Callable[[list[str]], list[str]]:
    """Greedy decoding of "noisy [BOS]" until [EOS], all lines at once: rows are right-padded and each row reads
    its logits at its own last position (causal attention: the padding after it is never seen)."""
    tok, model = pipe.tokenizer, pipe.model

    @torch.no_grad()
    def editor(noisy: list[str]) -> list[str]:
        rows = [tok.encode(x) + [tok.bos_id] for x in noisy]
        starts = [len(r) for r in rows]
        done = [False] * len(rows)
        for _ in range(max_new):
            width = max(len(r) for r in rows)
            if width >= model.cfg.seq_len or all(done):
                break
            ids = torch.full((len(rows), width), tok.pad_id, dtype=torch.long)
            for b, r in enumerate(rows):
                ids[b, : len(r)] = torch.tensor(r)
            logits = model(ids)
            last = logits[torch.arange(len(rows)), torch.tensor([len(r) - 1 for r in rows])]
            nxt = last.argmax(-1).tolist()
            for b, v in enumerate(nxt):
                if not done[b]:
                    rows[b].append(v)
                    done[b] = v == tok.eos_id
        return [tok.decode([v for v in r[s:] if v < 256], mask_char=None) for r, s in zip(rows, starts)]

    return editor


def by_kind(triples: list[tuple[str, str, str]]) -> dict[str, tuple[int, float]]:
    """Per kind of error: (lines, mean character edit distance of the output to the reference)."""
    out: dict[str, list[int]] = {}
    for ref, noisy, output in triples:
        out.setdefault(error_kind(ref, noisy), []).append(levenshtein([ord(c) for c in output],
                                                                      [ord(c) for c in ref]))
    return {k: (len(v), sum(v) / len(v)) for k, v in out.items()}


def edit_model_rows(args) -> list[tuple[str, Callable]]:
    """The DiffusER and AR rewriter rows."""
    diff = Pipeline.from_pretrained(args.diffuser, device="cpu")
    ar = Pipeline.from_pretrained(args.ar, device="cpu")
    big_t = diff.process.num_steps
    return [
        (f"DiffusER, 1 revision step from t = 1 of {big_t}, greedy", diffuser_editor(diff, 1, 1 / big_t)),
        (f"DiffusER, {big_t} revision steps from t = {big_t}, greedy", diffuser_editor(diff, big_t, 1.0)),
        (f"DiffusER, 1 step from t = 1, 2-D beam b = r = {args.beam}",
         diffuser_editor(diff, 1, 1 / big_t, args.beam)),
        ("DiffusER, 1 step from t = 1, greedy with at least one edit (min_edits=1)",
         diffuser_editor(diff, 1, 1 / big_t, min_edits=1)),
        ("AR rewriter (same backbone, data, budget), greedy", ar_editor(ar)),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--diffuser", help="the DiffusER folder (leave out, with --ar, for MDLM rows only)")
    ap.add_argument("--ar", help="the AR rewriter's folder")
    ap.add_argument("--mdlm", nargs="*", default=[str(DEFAULT_MODEL)])
    ap.add_argument("--tau", type=float, default=1e-4, help="MDLM remask threshold")
    ap.add_argument("--beam", type=int, default=4)
    ap.add_argument("--judge", default="smollm2", help="smollm2, a folder, or none (no judge column)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--lines", type=int, default=100, help="the first N held-out lines (a smoke test: fewer)")
    args = ap.parse_args()
    _, lines = data()
    lines = lines[: args.lines]
    editors: list[tuple[str, Callable]] = [("none (the noisy input left alone)", lambda noisy: list(noisy))]
    if args.diffuser and args.ar:
        editors += edit_model_rows(args)
    for folder in args.mdlm:
        label = "/".join(folder.rstrip("/").split("/")[-2:])
        editors.append((f"MDLM remask < {args.tau:g} + greedy refill ({label})",
                        mdlm_editor(Pipeline.from_pretrained(folder, device="cpu"), args.tau)))
    judge = None if args.judge == "none" else load_judge(args.judge)

    def perplexity(texts: list[str]) -> float:
        return float("nan") if judge is None else judge.score([t if t.strip() else "." for t in texts]).perplexity

    results = []
    for name, editor in editors:
        start = time.perf_counter()
        scores, triples = evaluate_editor(editor, lines, seed=0, n_errors=1)
        seconds = time.perf_counter() - start
        outputs = [out for _, _, out in triples]
        ppl = perplexity(outputs)
        results.append({"editor": name, "exact": scores.exact, "char_distance": scores.char_distance,
                        "judge_ppl": ppl, "seconds": round(seconds, 1), "by_kind": by_kind(triples),
                        "examples": triples[:3], "outputs": outputs})
        print(json.dumps({k: v for k, v in results[-1].items() if k not in ("examples", "outputs")}), flush=True)
    clean_ppl = perplexity(list(lines))
    rows = [[r["editor"], f"{r['exact']:.2f}", f"{r['char_distance']:.2f}", f"{r['judge_ppl']:.1f}",
             f"{r['seconds']:.1f}"] for r in results]
    rows.append(["(the clean lines themselves)", "1.00", "0.00", f"{clean_ppl:.1f}", "—"])
    print(markdown_table(["editor", "exact match", "char. edit distance", f"judge ppl ({args.judge})",
                          "seconds (100 lines)"], rows))
    print("\nmean character edit distance by the kind of error (lines of that kind):")
    counts = {k: n for k, (n, _) in results[0]["by_kind"].items()}
    print(markdown_table(["editor", *(f"{k} ({counts.get(k, 0)})" for k in KINDS)],
                         [[r["editor"], *(f"{r['by_kind'][k][1]:.2f}" if k in r["by_kind"] else "—" for k in KINDS)]
                          for r in results]))
    for r in results:
        for ref, noisy, out in r["examples"]:
            print(f"{r['editor'][:30]:30} | REF {ref!r} | NOISY {noisy!r} | OUT {out!r}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": results, "clean_judge_ppl": clean_ppl, "n_lines": len(lines)}, f, indent=1)


if __name__ == "__main__":
    main()
