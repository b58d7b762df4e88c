"""Tables and plots of a suite's results: markdown for BENCHMARKS.md, JSON, and PNG figures."""

from __future__ import annotations

import math
import platform
import re
from pathlib import Path

import torch


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda})"
    return f"{cpu_model()}, {torch.get_num_threads()} threads, CPU"


def _f(x: float, digits: int = 2) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:,.{digits}f}"


def _likelihood_cells(lik: dict) -> list[str]:
    """NLL, perplexity, bits: exact for AR (=), upper bounds for diffusion (≤, with the standard error)."""
    if lik is None:  # an edit model: its loss bounds no likelihood
        return ["n/a (no bound)", "n/a", "n/a"]
    nats = lik["nats_per_token"]
    bits = nats / math.log(2)
    if lik["exact"]:
        return [_f(nats, 3), f"= {_f(math.exp(nats))}", _f(bits, 3)]
    return [f"{_f(nats, 3)} ± {_f(lik['stderr'], 3)}", f"≤ {_f(math.exp(nats))}", f"≤ {_f(bits, 3)}"]


def tokenization_markdown(tok: dict) -> str:
    per = "bits/byte" if tok["tokenization"] == "byte" else "bits/token"
    models = tok["models"]
    spans = sorted({r["span"] for m in models.values() for r in m["infill"]})
    lines = [f"#### {tok['tokenization']}: {tok['note']} (vocabulary {tok['vocab_size']}, windows of "
             f"{tok['seq_len']} tokens, {tok['val_chunks']} validation windows)", ""]
    head = "| family | params | trained tokens | train time | test NLL (nats/token) | perplexity | " + per + " |"
    head += "".join(f" infill {s}: NLL / acc |" for s in spans)
    lines += [head, "|" + "---|" * (7 + len(spans))]
    for name, m in models.items():
        trained = m["trained"]
        cells = [name, f"{m['params'] / 1e6:.2f}M", f"{trained.get('tokens_seen', 0) / 1e6:.2f}M",
                 f"{trained.get('train_seconds', 0) / 60:.1f} min", *_likelihood_cells(m["likelihood"])]
        for s in spans:
            r = next((r for r in m["infill"] if r["span"] == s), None)
            bound = "" if r is None or r["exact"] else "≤ "
            cells.append("n/a" if r is None else f"{bound}{_f(r['nll'], 3)} / {_f(r['accuracy'], 3)}")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    ref = tok["reference"]
    others = list(ref.get("other_judges", {}))
    extra_head = "".join(f" {j} ppl | {j} entropy |" for j in others)
    info = tok.get("judge")
    features = tok.get("mauve_features")
    mauve_note = (f"MAUVE against {ref['num_samples']:.0f} held-out texts, {features} features (the reference row: "
                  "other held-out text, the ceiling at this sample size)" if features else "MAUVE not measured")
    lines += [f"Generation ({ref['judge']} judge; {ref['num_samples']:.0f} samples per setting; entropy = mean "
              f"unigram entropy per sample in the judge's tokens, nats; {mauve_note}):", ""]
    if info:
        lines += [f"Judge: {info['name']}, {info['kind']}.", ""]
    lines += ["| family | sampler setting | forward passes / batch | tokens/s | tokens/s, one sequence | s / sample | "
              "peak memory (MB) | judge ppl | entropy | MAUVE | distinct-4 | repetition-4 |" + extra_head,
              "|" + "---|" * (12 + 2 * len(others))]

    def extra_cells(s: dict) -> list[str]:
        return [c for j in others for c in (_f(judged(s, j)["judge_ppl"]), _f(judged(s, j)["unigram_entropy"], 3))]

    lines.append("| " + " | ".join(["validation text", "(reference)", "", "", "", "", "", _f(ref["judge_ppl"]),
                                    _f(ref["unigram_entropy"], 3), _f(ref.get("mauve"), 3), _f(ref["distinct_4"], 3),
                                    _f(ref["repetition_4"], 3), *extra_cells(ref)]) + " |")
    for name, m in models.items():
        for s in m["samples"]:
            cells = [name, s["setting"], _f(s["nfe_per_batch"], 0), _f(s["tokens_per_s"], 0),
                     _f(s.get("single_tokens_per_s"), 0), _f(s["seconds_per_sample"], 3), _f(s["peak_memory_mb"], 0),
                     _f(s["judge_ppl"]), _f(s["unigram_entropy"], 3), _f(s.get("mauve"), 3), _f(s["distinct_4"], 3),
                     _f(s["repetition_4"], 3), *extra_cells(s)]
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    tops = [headline(tok, speed, judge) for judge in (None, *others)
            for speed in ("tokens_per_s", "single_tokens_per_s")]
    drift = timing_drift(tok)
    lines += [f"- {line}" for line in [t for t in tops if t] + ([drift] if drift else []) + ratios(tok)] + [""]
    return "\n".join(lines)


def judged(sample: dict, judge: str | None = None) -> dict:
    """A sample row's (or the reference's) quality numbers: the main judge's, or the extra judge `judge`'s."""
    if judge is None:
        return sample
    missing = {"judge_ppl": math.nan, "unigram_entropy": math.nan}
    return sample.get("other_judges", {}).get(judge, missing)


def ratios(tok: dict) -> list[str]:
    """The comparisons worth a sentence: each family's perplexity and speed against the AR baseline."""
    models = tok["models"]
    if "ar" not in models:
        return []
    ar_ppl = math.exp(models["ar"]["likelihood"]["nats_per_token"])
    kv = ar_kv_cache(tok)
    ar_speed = kv["tokens_per_s"] if kv else None
    out = []
    for name, m in models.items():
        if name == "ar":
            continue
        if m["likelihood"] is not None:  # None: an edit model, no bound to compare
            ppl = math.exp(m["likelihood"]["nats_per_token"])
            out.append(f"{name} / AR test perplexity: {ppl:.2f} / {ar_ppl:.2f} = {ppl / ar_ppl:.2f} "
                       f"({name}'s is an upper bound)")
        if ar_speed:
            best = max(m["samples"], key=lambda s: s["tokens_per_s"])
            out.append(f"fastest {name} setting ({best['setting']}) vs AR with KV cache: "
                       f"{best['tokens_per_s'] / ar_speed:.2f}x the tokens/s, judge ppl {best['judge_ppl']:.2f} vs "
                       f"{kv['judge_ppl']:.2f}")
    return out


def ar_kv_cache(tok: dict) -> dict | None:
    """The AR baseline's KV-cache row: what every speed ratio is taken against."""
    return next((s for s in tok["models"].get("ar", {}).get("samples", []) if s["options"].get("cache", True)), None)


def timing_drift(tok: dict) -> str | None:
    """How much AR's speed moved between its timing (first) and a second one after the last family."""
    end, ar = tok["models"].get("ar", {}).get("timing_end"), ar_kv_cache(tok)
    if not end or ar is None:
        return None
    moves = [f"{_f(ar[key], 0)} -> {_f(end[key], 0)} tok/s {regime} ({end[key] / ar[key] - 1:+.0%})"
             for key, regime in (("tokens_per_s", "batched"), ("single_tokens_per_s", "one sequence at a time"))
             if ar.get(key) and end.get(key)]
    return ("timing drift: AR with its KV cache, timed first and again after the last family: " + "; ".join(moves)
            + ". A ratio between rows timed far apart in the run carries about that much error.")


def headline(tok: dict, speed: str = "tokens_per_s", judge: str | None = None, ppl_tolerance: float = 0.10,
             entropy_tolerance: float = 0.02) -> str | None:
    """The speed-up at matched quality: tokens/s (`speed`: batched, or one sequence at a time) of the
    fastest diffusion setting whose judge perplexity is within 10% of the AR baseline's (KV cache)
    and whose entropy is within 2% of it, over AR's. `judge` names an extra judge (default: the main one)."""
    models = tok["models"]
    ar = ar_kv_cache(tok)
    if ar is None or not ar.get(speed):
        return None
    rows = [(name, s) for name, m in models.items() if name != "ar" for s in m["samples"] if s.get(speed)]
    if not rows:
        return None
    q_ar = judged(ar, judge)

    def ppl(s: dict) -> float:
        return judged(s, judge)["judge_ppl"]

    def entropy_ok(s: dict) -> bool:
        h = judged(s, judge)["unigram_entropy"]
        return abs(h - q_ar["unigram_entropy"]) <= entropy_tolerance * q_ar["unigram_entropy"]

    matched = [(name, s) for name, s in rows if ppl(s) <= (1 + ppl_tolerance) * q_ar["judge_ppl"] and entropy_ok(s)]
    regime = "one sequence at a time" if speed == "single_tokens_per_s" else "batched"
    by = "" if judge is None else f", judged by {judge}"
    base = (f"AR with KV cache: {_f(ar[speed], 0)} tok/s, judge ppl {_f(q_ar['judge_ppl'])}, "
            f"entropy {_f(q_ar['unigram_entropy'], 3)}")
    if matched:
        name, s = max(matched, key=lambda r: r[1][speed])
        return (f"**headline ({regime}{by}): {s[speed] / ar[speed]:.2f}x AR's tokens/s at matched quality** — "
                f"{name} {s['setting']}: {_f(s[speed], 0)} tok/s, judge ppl {_f(ppl(s))}, entropy "
                f"{_f(judged(s, judge)['unigram_entropy'], 3)} ({base})")
    diverse = [(name, s) for name, s in rows if entropy_ok(s)]
    fast_name, fast = max(rows, key=lambda r: r[1][speed])
    text = (f"**headline ({regime}{by}): no diffusion setting matches AR's quality** (judge ppl within "
            f"{ppl_tolerance:.0%} and entropy within {entropy_tolerance:.0%}; {base}). ")
    if diverse:
        name, s = min(diverse, key=lambda r: ppl(r[1]))
        text += (f"Closest at AR's entropy: {name} {s['setting']}, judge ppl {_f(ppl(s))} "
                 f"({ppl(s) / q_ar['judge_ppl']:.2f}x AR's) at {s[speed] / ar[speed]:.2f}x "
                 "AR's tokens/s; ")
        for speedup in (1, 2):  # the frontier at AR's entropy where diffusion is at least as fast as AR
            fast_enough = [(n, r) for n, r in diverse if r[speed] >= speedup * ar[speed]]
            if fast_enough:
                name, s = min(fast_enough, key=lambda r: ppl(r[1]))
                text += (f"at AR's entropy and >= {speedup}x its tokens/s: {name} {s['setting']}, judge ppl "
                         f"{_f(ppl(s))} ({ppl(s) / q_ar['judge_ppl']:.2f}x AR's); ")
            else:
                text += f"none at AR's entropy and >= {speedup}x its tokens/s; "
    else:
        text += "No setting is within the entropy tolerance; "
    near_name, near = min(rows, key=lambda r: ppl(r[1]))
    if not entropy_ok(near):  # the likeliest text at another entropy: what the perplexity alone would pick
        change = judged(near, judge)["unigram_entropy"] / q_ar["unigram_entropy"] - 1
        text += (f"closest in judge ppl: {near_name} {near['setting']}, {_f(ppl(near))} "
                 f"({ppl(near) / q_ar['judge_ppl']:.2f}x AR's) at {change:+.0%} entropy and "
                 f"{near[speed] / ar[speed]:.2f}x AR's tokens/s; ")
    return text + (f"fastest: {fast_name} {fast['setting']}, {fast[speed] / ar[speed]:.2f}x "
                   f"AR's tokens/s at judge ppl {_f(ppl(fast))}")


def suite_markdown(results: dict) -> str:
    lines = [f"### `textdiffusion bench {results['suite']}` — {results['date']}", "",
             f"{results['description']}.", "",
             f"- command: `{results['command']}`",
             f"- machine: {results['machine']}; torch {results['torch']}; wall time {results['wall_minutes']:.1f} min",
             f"- results: `{results['json']}`; plots: " + ", ".join(f"`{p}`" for p in results.get("plots", []))]
    lines += [f"- rows updated by a partial rerun on {r['date']}: `{r['command']}` ({r['wall_minutes']:.1f} min"
              + (f"; {r['machine']}" if r.get("machine", results["machine"]) != results["machine"] else "") + ")"
              for r in results.get("partial_runs", [])] + [""]
    for tok in results["tokenizations"]:
        lines.append(tokenization_markdown(tok))
    return "\n".join(lines)


def write_markdown_section(path: Path, suite: str, body: str) -> None:
    """Replace this suite's section of BENCHMARKS.md (between markers), or append it."""
    start, end = f"<!-- bench:{suite}:start -->", f"<!-- bench:{suite}:end -->"
    text = path.read_text(encoding="utf-8") if path.is_file() else "# Benchmarks\n"
    block = f"{start}\n{body}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text, encoding="utf-8")


def plot(results: dict, folder: Path) -> list[Path]:
    """Per tokenization: training loss curves per family, and judge ppl (with entropy) against tokens/s."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plots skipped: matplotlib is not installed (pip install 'textdiffusion[bench]')")
        return []
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for tok in results["tokenizations"]:
        stem = f"bench-{results['suite']}-{tok['tokenization']}"
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, m in tok["models"].items():
            train = [r for r in m["curve"] if "loss" in r]
            val = [r for r in m["curve"] if "val_nelbo" in r]
            tokens = {r["step"]: r.get("tokens") for r in train}
            line, = ax.plot([r["tokens"] / 1e6 for r in train], [r["loss"] for r in train], alpha=0.6,
                            label=f"{name} train")
            ax.plot([(tokens.get(r["step"]) or 0) / 1e6 for r in val], [r["val_nelbo"] for r in val], "o--",
                    color=line.get_color(), label=f"{name} validation")
        ax.set(xlabel="training tokens (M)", ylabel="loss (nats/token; diffusion: NELBO)",
               title=f"{results['suite']} / {tok['tokenization']}: training curves")
        ax.legend()
        ax.grid(alpha=0.3)
        paths.append(folder / f"{stem}-loss.png")
        fig.tight_layout()
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)

        ref = tok["reference"]
        for judge in (None, *ref.get("other_judges", {})):
            suffix = "" if judge is None else "-" + re.sub(r"[^A-Za-z0-9.]+", "-", judge)
            paths.append(folder / f"{stem}-frontier{suffix}.png")
            _frontier(plt, results, tok, judge, paths[-1])
    return paths


def _frontier(plt, results: dict, tok: dict, judge: str | None, path: Path) -> None:
    """Judge perplexity (main judge, or the extra judge `judge`) against tokens/s, entropy on each point."""
    fig, ax = plt.subplots(figsize=(10, 7))
    colors, markers = plt.get_cmap("tab20").colors, "osD^v<>ph*X"
    series = [(name, sampler) for name, m in tok["models"].items()
              for sampler in dict.fromkeys(s["sampler"] for s in m["samples"])]  # one per family and sampler
    for i, (name, sampler) in enumerate(series):
        points = [s for s in tok["models"][name]["samples"] if s["sampler"] == sampler]
        label = name if sampler in ("ancestral", "ar", name) else f"{name} {sampler}"
        family = list(tok["models"]).index(name)
        ax.plot([s["tokens_per_s"] for s in points], [judged(s, judge)["judge_ppl"] for s in points], ls="none",
                ms=7, marker=markers[family % len(markers)], color=colors[i % len(colors)], label=label)
        for s in points:
            q = judged(s, judge)
            ax.annotate(f"{s['setting']}\nH={q['unigram_entropy']:.2f}", (s["tokens_per_s"], q["judge_ppl"]),
                        fontsize=6, textcoords="offset points", xytext=(4, 4))
    q = judged(tok["reference"], judge)
    ax.axhline(q["judge_ppl"], color="gray", ls=":", label=f"validation text (H={q['unigram_entropy']:.2f})")
    ax.set(xscale="log", yscale="log", xlabel="tokens/s (log)",
           ylabel=f"judge perplexity ({judge or tok['reference']['judge']}, log)",
           title=f"{results['suite']} / {tok['tokenization']}: speed vs quality")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
