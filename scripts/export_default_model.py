"""Export a training run as the shipped default model, with its model card.

    python scripts/export_default_model.py runs/shakespeare --command "textdiffusion train --config shakespeare"

Writes src/textdiffusion/pretrained/shakespeare-mdlm/ (bf16 EMA weights, config, tokenizer) and
its README.md: training command, steps, tokens, wall time, hardware, the validation NELBO bound
of the shipped weights on the fixed validation split, and 3 unedited samples (seed 0).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
from pathlib import Path

import torch

from textdiffusion.api.pipeline import Pipeline
from textdiffusion.data.corpus import iter_documents
from textdiffusion.data.packing import pack_tensor
from textdiffusion.pretrained import DEFAULT_MODEL
from textdiffusion.processes.likelihood import nelbo

TOKENIZER_TEXT = {"bpe": "byte-level BPE trained on the training split", "byte": "UTF-8 bytes"}


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", help="run folder (its checkpoint/ is exported)")
    ap.add_argument("--command", required=True, help="the exact command that trained the run")
    ap.add_argument("--out", default=str(DEFAULT_MODEL))
    ap.add_argument("--t-samples", type=int, default=4)
    args = ap.parse_args()

    run = Pipeline.from_pretrained(args.run, device="cpu")
    out = run.save_pretrained(args.out, dtype=torch.bfloat16)
    pipe = Pipeline.from_pretrained(out, device="cpu")  # measure what ships: the bf16-rounded weights
    cfg = pipe.config
    train_cfg = cfg["train_config"]
    data = train_cfg["data"]
    docs = iter_documents(data["source"], "validation", data["val_fraction"], data["split_seed"])
    val = pack_tensor(docs, pipe.tokenizer, data["seq_len"], data["packing"])
    res = nelbo(pipe.model, pipe.process, val, t_samples=args.t_samples, batch_size=32, seed=0)
    samples = pipe.generate(num_samples=3, steps=128, seed=0)
    trained = cfg["trained"]
    metrics = [json.loads(x) for x in (Path(args.run) / "metrics.jsonl").read_text().splitlines()]
    evals = [m for m in metrics if "val_nelbo" in m]
    m, t = cfg["model"], train_cfg["train"]
    today = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    rows = [
        ("training command", f"`{args.command}`"),
        ("architecture", f"bidirectional transformer, {m['n_layers']} layers, width {m['d_model']}, "
                         f"{m['n_heads']} heads, rotary positions, no time conditioning; "
                         f"{pipe.model.num_parameters():,} parameters"),
        ("tokenizer", f"{TOKENIZER_TEXT.get(pipe.tokenizer.kind, pipe.tokenizer.kind)}, "
                      f"{pipe.tokenizer.vocab_size} ids incl. [PAD] [BOS] [EOS] [MASK]"),
        ("sequence length", f"{data['seq_len']} tokens, `{data['packing']}` packing"),
        ("steps", f"{trained['steps']:,} (global batch {t['batch_size']}, lr {t['lr']}, warmup "
                  f"{t['warmup_steps']} + cosine, EMA {t['ema_decay']}, {t['precision']})"),
        ("tokens seen", f"{trained['tokens_seen']:,}"),
        ("wall time", f"{trained['train_seconds'] / 60:.1f} min of training steps "
                      f"({trained['device']}, {trained['world_size']} process)"),
        ("hardware", f"{cpu_name()}, 2 cores, no GPU"),
        ("validation NELBO", f"{res.nats_per_token:.4f} ± {res.stderr:.4f} nats/token "
                             f"({res.bits_per_token:.3f} bits/token), perplexity ≤ {res.perplexity:.2f}"),
        ("validation data", "the fixed validation split of the bundled corpus (seed 0: pericles, twelfth_night, "
                            f"two_gentlemen_of_verona, winters_tale), {res.n_tokens:,} tokens, "
                            f"{res.t_samples} t-samples per sequence"),
        ("weights", "EMA weights stored as bfloat16 (`model.safetensors`); the NELBO above is of these weights"),
        ("exported", f"{today} with `python scripts/export_default_model.py {args.run} --command \"...\"`"),
    ]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    curve = ", ".join(f"step {e['step']}: {e['val_nelbo']:.3f}" for e in evals)
    card = f"""# shakespeare-mdlm

A masked diffusion language model (MDLM: SUBS parameterisation, log-linear schedule,
continuous-time NELBO) trained from scratch on the bundled Shakespeare corpus. It is the
default model of `textdiffusion` and is small enough to sample in seconds on 2 CPU cores.

| | |
|---|---|
{table}

Validation NELBO (nats/token) during training (EMA weights, 1 t-sample per sequence, 256 sequences): {curve}.

## Three unedited samples

`textdiffusion sample -n 3 --steps 128 --seed 0` (MDLM ancestral sampler with caching, temperature 1,
float64 Gumbel sampling):

""" + "\n".join(f"### Sample {i + 1}\n\n```text\n{t}\n```\n" for i, t in enumerate(samples.texts)) + """
## Limits

Trained for minutes on a CPU with a few million tokens: it has learned the look of a play
(speaker names, verse lines, archaic words) but not sense. It is a default for trying the library,
not a language model to rely on. Corpus credit: Open Knowledge Foundation, `shakespeare` package (CC BY 2.5).
"""
    (out / "README.md").write_text(card)
    print(card)


if __name__ == "__main__":
    main()
