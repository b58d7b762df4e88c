"""Does a better-trained bound give better samples? Texts of the ablation's models, judged by a model that generated
none of them (issue 17.2 / 17.5): each model named with --model LABEL=RUN_DIR (a benchmarks/gpu/sweep.py job
folder; LABEL's part before '/' groups seeds, e.g. 'recipe 2/s0'), sampled with the headline's sampler settings,
scored by --judge (the sweep's AR judge, trained apart with seed 1) and any --also-judge.

    python3 benchmarks/gpu/recipe_samples.py --judge JUDGE_RUN --model 'recipe 1/s0=DIR' --model 'recipe 2/s0=DIR' \
        [--also-judge smollm2] [--samples 64]

Prints one row per (group, sampler setting): the judge perplexity of all the group's texts together, mean unigram
entropy per text in the first judge's tokens, and the spread of the per-seed judge perplexities.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import markdown_table  # noqa: E402  (benchmarks/common.py)

# the headline's settings (BENCHMARKS.md, "Sampler settings of the budget models"): the entropy-keeping one and the
# closest point to AR's judge perplexity
SETTINGS = {"mdlm": {"ancestral(steps=128)": ("ancestral", {"steps": 128}),
                     "threshold(0.5, block 32, dual cache)": ("threshold", {"threshold": 0.5, "block_length": 32,
                                                                            "cache": "dual"})},
            # BD3-LM (block 4): the `small` suite's most and fewest denoising steps per block
            "bd3": {"block(steps=4)": ("block", {"steps": 4}), "block(steps=1)": ("block", {"steps": 1})},
            # nucleus sampling (Holtzman et al., 2020), as MDLM/ReMDM evaluate: it trades entropy for likelihood,
            # so it is read against AR's own samples at the same top_p ("ar") and entropy
            "nucleus": {f"ancestral(steps=128, top_p={p})": ("ancestral", {"steps": 128, "top_p": p})
                        for p in (0.95, 0.9)},
            "ar": {f"ar(top_p={p})": ("ar", {"top_p": p}) for p in (1.0, 0.95, 0.9)},
            # what ranks positions in confidence decoding (samplers/unmasking.py SCORES): the drawn value's
            # probability (LLaDA, Fast-dLLM) leans to the mode; the others rank by the logits alone
            "scores-mdlm": {f"threshold({th}, block 32, dual cache, score={sc})":
                            ("threshold", {"threshold": th, "block_length": 32, "cache": "dual", "score": sc})
                            for th in (0.9, 0.7) for sc in ("sampled", "top", "margin", "entropy")},
            "scores-bd3": {f"block(threshold={th}, score={sc})": ("block", {"rule": "threshold", "threshold": th,
                                                                             "score": sc})
                           for th in (0.9, 0.7) for sc in ("sampled", "top", "margin", "entropy")},
            # several tokens per pass (a fixed count, LLaDA's rule) ranked by either score, beside the fixed-order
            # ancestral sampler at the same passes: the parallel end of the frontier
            "parallel-mdlm": {"ancestral(steps=32)": ("ancestral", {"steps": 32}),
                              **{f"confidence(steps=32, block 32, score={sc})":
                                 ("confidence", {"steps": 32, "block_length": 32, "score": sc})
                                 for sc in ("sampled", "top")}},
            "parallel-bd3": {"block(steps=2)": ("block", {"steps": 2}),
                             **{f"block(low_confidence, steps=2, score={sc})":
                                ("block", {"rule": "low_confidence", "steps": 2, "score": sc})
                                for sc in ("sampled", "top")}},
            # the dilated order (samplers/unmasking.py): log2(b) + 1 passes per block of b, never two neighbours
            # in one pass, beside a random order with the same blocks and passes
            "dilated-mdlm": {f"confidence({order}, block {b}{'' if order == 'dilated' else f', steps={steps}'})":
                             ("confidence", {"remasking": order, "block_length": b, "steps": steps})
                             for b, steps in ((4, 96), (8, 64), (16, 40), (32, 24), (128, 8))
                             for order in ("dilated", "random")},
            "dilated-bd3": {"block(dilated)": ("block", {"rule": "dilated"}),
                            **{f"block(random, steps={steps})": ("block", {"rule": "random", "steps": steps})
                               for steps in (3, 5)}}}


def sample_texts(run_dir: Path, sampler: str, options: dict, n: int, seed: int) -> list[str]:
    from textdiffusion.api.pipeline import Pipeline

    pipe = Pipeline.from_pretrained(run_dir, device="cpu")
    return pipe.generate(num_samples=n, seed=seed, progress=False, sampler=sampler, **options).texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", required=True, help="LABEL=RUN_DIR (LABEL 'group/seed')")
    ap.add_argument("--judge", required=True, help="a run folder or load_judge spec that generated none of the texts")
    ap.add_argument("--also-judge", action="append", default=[])
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--settings", choices=sorted(SETTINGS), default="mdlm", help="the sampler settings (default mdlm)")
    args = ap.parse_args()

    from report import held_out_text  # benchmarks/gpu/report.py

    from textdiffusion.eval.diversity import unigram_entropy
    from textdiffusion.eval.judge import load_judge

    models = [spec.split("=", 1) for spec in args.model]
    judges = [args.judge, *args.also_judge]
    loaded = [load_judge(spec) for spec in judges]
    texts: dict[tuple[str, str], list[list[str]]] = defaultdict(list)  # (group, setting) -> per-seed texts
    for label, run_dir in models:
        group = label.split("/", 1)[0]
        for name, (sampler, options) in SETTINGS[args.settings].items():
            texts[(group, name)].append(sample_texts(Path(run_dir), sampler, options, args.samples, args.seed))
            print(f"sampled {label}: {name}", file=sys.stderr, flush=True)

    def cells(per_seed: list[list[str]]) -> list[str]:
        flat = [t for seed_texts in per_seed for t in seed_texts]
        scores = [j.score(flat) for j in loaded]
        entropy = statistics.fmean(unigram_entropy(ids) for ids in scores[0].token_ids)
        seeds = [loaded[0].score(s).perplexity for s in per_seed]
        spread = f"{min(seeds):,.2f}-{max(seeds):,.2f}" if len(seeds) > 1 else ""
        return [len(per_seed), *[f"{sc.perplexity:,.2f}" for sc in scores], spread, f"{entropy:.3f}"]

    rows = [["held-out text", "", *cells([held_out_text(n=args.samples)])]]
    rows += [[group, setting, *cells(per_seed)] for (group, setting), per_seed in texts.items()]
    print(markdown_table(["models", "sampler setting", "seeds", *[f"{Path(j).name} ppl" for j in judges],
                          "per-seed range (first judge)", "entropy"], rows))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # report.py, plans.py
    main()
