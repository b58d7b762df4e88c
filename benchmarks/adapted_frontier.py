"""Block diffusion adapted from the AR baseline vs trained from scratch, on `bench small`'s frontier (issue 17.5).

The route the field takes to AR quality at parallel speed (Dream, Fast-dLLM v2): start the diffusion model from a
trained AR model. This script measures such a model (made with `textdiffusion adapt --block-size B
process.logit_shift=true`) exactly as `textdiffusion bench small` measures its own models, beside the bench's AR
baseline and its BD3-LM trained from scratch, in one run: the bound on the bench's validation windows, then every
BD3-LM sampler setting of the suite, timed (batched and one sequence at a time) and judged by the bench's AR judge,
which was trained apart and generated none of the texts. The adapted model has seen the AR baseline's tokens and its
own: say so beside its numbers.

    python3 benchmarks/adapted_frontier.py --runs RUNS --adapted ADAPTED_RUN [--block-size 4] [--json OUT.json]

RUNS is the `--runs` folder of `textdiffusion bench small` (its byte-level ar, bd3-B and judge runs are used).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, markdown_table  # noqa: E402  (benchmarks/common.py)


def measure_rows(label: str, folder: Path, settings, suite, judge, val, workdir: Path) -> dict:
    """The bench's numbers for one model: its bound on `val` and one row per sampler setting."""
    from textdiffusion.api.pipeline import Pipeline
    from textdiffusion.bench.evaluate import judge_texts, request, timing_row
    from textdiffusion.bench.measure import measure_in_subprocess

    pipe = Pipeline.from_pretrained(folder, device="cpu", precision="auto")
    lik = pipe.likelihood(val, t_samples=suite.t_samples, seed=0, batch_size=suite.sample_batch)
    print(f"[{label}] test NLL {lik.nats_per_token:.4f} ± {lik.stderr:.4f} nats/token", file=sys.stderr, flush=True)
    samples = []
    for setting in settings:
        m = measure_in_subprocess(request(suite, folder, setting, "cpu"), workdir)
        samples.append({**timing_row(suite, setting, m), **judge_texts(judge, m.texts), "example": m.texts[0][:200]})
        print(f"[{label}] {setting.name()}: {m.tokens_per_s:.0f} tok/s, judge ppl {samples[-1]['judge_ppl']:.2f}",
              file=sys.stderr, flush=True)
    return {"folder": str(folder), "nll": lik.nats_per_token, "nll_stderr": lik.stderr, "exact": lik.exact,
            "samples": samples}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", required=True, type=Path, help="the --runs folder of `textdiffusion bench small`")
    ap.add_argument("--adapted", required=True, type=Path, help="a BD3-LM run adapted from RUNS' byte-level AR")
    ap.add_argument("--block-size", type=int, default=4, help="the adapted run's block size (default 4)")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    args = ap.parse_args()

    from textdiffusion.api.pipeline import Pipeline
    from textdiffusion.bench.report import headline
    from textdiffusion.bench.suites import get_suite
    from textdiffusion.eval.judge import load_judge
    from textdiffusion.train.config import load_run_config
    from textdiffusion.train.trainer import validation_chunks

    suite = get_suite("small")
    byte = args.runs / "small" / "byte"
    family = next(f for f in suite.families if f.name == f"bd3-{args.block_size}")
    settings = [s for s in family.settings if s.options.get("cache", True)]  # the no-cache row only checks the cache
    ar_family = next(f for f in suite.families if f.name == "ar")
    tokenizer = Pipeline.from_pretrained(byte / "ar", device="cpu").tokenizer
    val = validation_chunks(load_run_config(byte / "ar"), tokenizer, suite.val_chunks)
    judge = load_judge(byte / "judge")
    workdir = args.adapted / "measure"
    models = {"ar": measure_rows("ar", byte / "ar", ar_family.settings[:1], suite, judge, val, workdir),
              f"bd3-{args.block_size} (scratch)": measure_rows("scratch", byte / family.name, settings, suite, judge,
                                                               val, workdir),
              f"bd3-{args.block_size} (from AR)": measure_rows("adapted", args.adapted, settings, suite, judge, val,
                                                               workdir)}
    ar = models["ar"]["samples"][0]

    def vs_ar(s: dict) -> str:
        return " / ".join(f"{s[k] / ar[k]:.2f}x" for k in ("tokens_per_s", "single_tokens_per_s"))

    rows = [[name, f"{m['nll']:.3f}" + ("" if m["exact"] else f" ± {m['nll_stderr']:.3f}"), s["setting"],
             f"{s['nfe_per_batch']:.0f}", f"{s['tokens_per_s']:,.0f}", f"{s['single_tokens_per_s']:,.0f}", vs_ar(s),
             f"{s['judge_ppl']:.2f}", f"{s['unigram_entropy']:.3f}"]
            for name, m in models.items() for s in m["samples"]]
    print(markdown_table(["model", "test NLL (nats/byte)", "sampler setting", "passes / batch", "tokens/s",
                          "tokens/s, one sequence", "vs AR (batched / one)", "judge ppl", "entropy"], rows))
    for name in list(models)[1:]:
        for speed in ("tokens_per_s", "single_tokens_per_s"):
            print(f"- {name}: " + headline({"models": {"ar": {"samples": [ar]}, name: models[name]}}, speed))
    if args.json:
        args.json.write_text(json.dumps({"command": " ".join(sys.argv), "machine": machine_info("cpu"),
                                         "judge": str(byte / "judge"), "models": models}, indent=1))


if __name__ == "__main__":
    main()
