"""Tables and the budget plot from a benchmarks/gpu/sweep.py results.json (runs anywhere; no GPU needed).

    python3 benchmarks/gpu/report.py RESULTS.json [--plot budget.png] [--judge RUN_DIR] [--also-judge smollm2]

- ablation: each variant's final NELBO (512 fixed validation windows x 4 draws of t, EMA weights), mean over seeds,
  the spread between seeds, and the paired difference to the base recipe (same seed: same data order and init).
- budget: each family's validation NELBO at every scored step (512 windows, 1 draw of t, the same windows and draws
  for every family) and its perplexity ratio to AR at the same tokens; --plot draws the ratio against tokens.
- --judge: the budget runs' samples scored by a judge that generated none of them (the sweep's AR judge, trained
  apart with seed 1), beside its score of held-out text; --also-judge adds a load_judge spec (e.g. smollm2).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import markdown_table  # noqa: E402

BASE = "mdlm (small recipe)"
# a variant is paired with its own family's base row (the same seed), MDLM's by default
FAMILY_BASES = {"bd3-4": "bd3-4 (small recipe)", "sedd-absorb": "sedd-absorb (small recipe)",
                "bpe4096": "bpe4096 mdlm (small recipe)"}


def base_of(variant: str) -> str:
    return next((base for prefix, base in FAMILY_BASES.items() if variant.startswith(prefix)), BASE)


def ablation_table(jobs: list[dict], plan: str = "ablation") -> str:
    by_variant: dict[str, dict[int, float]] = defaultdict(dict)
    stderr: dict[str, list[float]] = defaultdict(list)
    for j in jobs:
        if j["plan"] == plan and "final_nelbo" in j:
            by_variant[j["variant"]][j["seed"]] = j["final_nelbo"]
            stderr[j["variant"]].append(j["final_stderr"])
    rows = []
    for variant, seeds in by_variant.items():
        values = list(seeds.values())
        mean = statistics.fmean(values)
        spread = statistics.stdev(values) if len(values) > 1 else float("nan")
        base = by_variant.get(base_of(variant), {})
        paired = [seeds[s] - base[s] for s in seeds if s in base]
        if variant == base_of(variant) or not paired:
            delta = "—"
        else:
            d = statistics.fmean(paired)
            se = statistics.stdev(paired) / math.sqrt(len(paired)) if len(paired) > 1 else float("nan")
            delta = f"{d:+.3f} ± {se:.3f}" if not math.isnan(se) else f"{d:+.3f}"
        rows.append([variant, len(values), f"{mean:.3f}", "—" if math.isnan(spread) else f"{spread:.3f}",
                     f"{statistics.fmean(stderr[variant]):.3f}", delta])
    if not rows:
        return "(no ablation job finished)"
    rows.sort(key=lambda r: float(r[2]))
    return markdown_table(["variant", "seeds", "test NELBO (nats/token), mean", "sd over seeds",
                           "per-run s.e. (t draws)", "paired change vs its family's base ± s.e."], rows)


def budget_points(jobs: list[dict]) -> dict[str, dict[int, float]]:
    """family -> {tokens: validation NELBO} from the scored steps of each budget job (the judge left out)."""
    out: dict[str, dict[int, float]] = {}
    for j in jobs:
        if j["plan"] == "budget" and j["name"] != "budget-judge" and j.get("evals"):
            tokens_per_step = 32 * 128
            out[j["variant"]] = {e["step"] * tokens_per_step: e["val_nelbo"] for e in j["evals"] if "val_nelbo" in e}
    return out


def budget_table(points: dict[str, dict[int, float]]) -> str:
    ar = points.get("ar", {})
    budgets = sorted({t for p in points.values() for t in p})
    if not budgets:
        return "(no budget job was scored)"
    rows = []
    for fam, p in points.items():
        cells = []
        for t in budgets:
            if t not in p:
                cells.append("")
            elif fam == "ar" or t not in ar:
                cells.append(f"{p[t]:.3f}")
            else:
                cells.append(f"{p[t]:.3f} ({math.exp(p[t] - ar[t]):.2f}x)")
        rows.append([fam, *cells])
    return markdown_table(["family", *[f"{t / 1e6:.1f}M tokens" for t in budgets]], rows)


def plot(points: dict[str, dict[int, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    ar = points.get("ar", {})
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (fam, p) in enumerate(points.items()):
        ts, color = sorted(p), f"C{i}"  # one colour per family in both panels
        left.plot([t / 1e6 for t in ts], [p[t] for t in ts], marker="o", label=fam, color=color)
        if fam != "ar":
            both = [t for t in ts if t in ar]
            right.plot([t / 1e6 for t in both], [math.exp(p[t] - ar[t]) for t in both], marker="o", label=fam,
                       color=color)
    left.set(xscale="log", xlabel="training tokens (millions)", ylabel="validation NLL / NELBO (nats per byte)",
             title="likelihood (bound) against budget")
    right.set(xscale="log", xlabel="training tokens (millions)", ylabel="perplexity (bound) / AR perplexity",
              title="gap to AR against budget")
    right.axhline(1.0, color="grey", lw=0.8)
    for ax in (left, right):
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xticks([2.5, 5, 10, 20, 30])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def judge_table(jobs: list[dict], judges: list[str], loaded: list, reference: list[str]) -> str:
    rows = [["held-out text", len(reference), *[f"{j.score(reference).perplexity:,.2f}" for j in loaded]]]
    for job in jobs:
        if job.get("samples"):
            rows.append([job["variant"], len(job["samples"]),
                         *[f"{j.score(job['samples']).perplexity:,.2f}" for j in loaded]])
    return markdown_table(["texts", "n", *[f"judge: {Path(s).name} ppl" for s in judges]], rows)


def frontier_table(rows: list[dict], judges: list[str], loaded: list, reference: list[str]) -> str:
    """Judge perplexity and mean unigram entropy (in the first judge's tokens) of each sampler setting's texts."""
    from textdiffusion.eval.diversity import unigram_entropy

    def cells(texts: list[str]) -> list[str]:
        scores = [j.score(texts) for j in loaded]
        entropy = statistics.fmean(unigram_entropy(ids) for ids in scores[0].token_ids)
        return [*[f"{sc.perplexity:,.2f}" for sc in scores], f"{entropy:.3f}"]

    table = [["held-out text", "", "", *cells(reference)]]
    for r in rows:
        if "texts" in r:
            table.append([r["family"], r["setting"], f"{r['trained_steps'] * 32 * 128 / 1e6:.1f}M", *cells(r["texts"])])
    return markdown_table(["family", "sampler setting", "trained tokens", *[f"{Path(j).name} ppl" for j in judges],
                           "entropy"], table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", type=Path)
    ap.add_argument("--plot", type=Path, default=None)
    ap.add_argument("--judge", default=None, help="a run folder or load_judge spec that generated none of the texts")
    ap.add_argument("--also-judge", action="append", default=[])
    ap.add_argument("--frontier", type=Path, default=None, help="benchmarks/gpu/frontier.py output: judge its texts")
    args = ap.parse_args()
    data = json.loads(args.results.read_text())
    jobs = data["jobs"]
    states = defaultdict(int)
    for j in jobs:
        states[j["state"]] += 1
    print(f"{len(jobs)} jobs: " + ", ".join(f"{n} {s}" for s, n in states.items()) + f"; wall {data['wall_s']:.0f} s\n")
    print("## ablation\n\n" + ablation_table(jobs) + "\n")
    if any(j["plan"] == "ablation-bpe" for j in jobs):
        print("## ablation at 4k BPE\n\n" + ablation_table(jobs, "ablation-bpe") + "\n")
    points = budget_points(jobs)
    print("## budget (validation NELBO, nats per byte; in brackets the perplexity ratio to AR)\n\n"
          + budget_table(points) + "\n")
    if args.plot:
        plot(points, args.plot)
        print(f"wrote {args.plot}")
    if args.judge:
        from textdiffusion.eval.judge import load_judge

        judges = [args.judge, *args.also_judge]
        loaded = [load_judge(spec) for spec in judges]  # once: SmolLM2 takes seconds to load
        reference = held_out_text(n=32)
        print("## samples judged\n\n" + judge_table(jobs, judges, loaded, reference))
        if args.frontier:
            rows = json.loads(args.frontier.read_text())
            print("\n## sampler settings judged\n\n" + frontier_table(rows, judges, loaded, reference))


def held_out_text(n: int) -> list[str]:
    """n validation windows of the `small` suite's byte data, as text (what a judge should find likely)."""
    from plans import Job, job_config  # benchmarks/gpu/plans.py

    from textdiffusion.data.tokenizers import ByteTokenizer
    from textdiffusion.train.setup import plan_data_split, validation_chunks

    cfg = job_config(Job("reference", "budget", "ar", "reference"), Path("/tmp/reference-unused"), "cpu")
    tok = ByteTokenizer()
    rows = validation_chunks(cfg, tok, n, plan_data_split(cfg))
    return [tok.decode(r.tolist()) for r in rows]


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
