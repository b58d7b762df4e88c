"""Train the editors of the editing comparison (issue 16.5) on the same data and budget:

    python benchmarks/edit_compare_train.py diffuser OUT --steps 900 --batch 32
    python benchmarks/edit_compare_train.py ar OUT --steps 900 --batch 32

Both read the same training lines (the bundled Shakespeare's training split, 20 to 63 characters, less the 100
held-out test lines) and the same noise: example k of step s draws a line, a level t in 1..T and the chain
x_0 -> x_1 -> ... -> x_t of one realistic error per step (`eval/editing.py`, `noisy_chain`), from a generator seeded
by (seed, s, k), so both models see the same (x_t, x_0) pairs in the same order.
  - diffuser: DiffusER with this task-like forward kernel, time-conditioned: learns x_t -> x_{t-1} (tagger +
    generator cross-entropy, `Diffuser.examples_loss`), decoded with `Pipeline.edit`.
  - ar: a causal LM of the same width and depth on "x_t [BOS] x_0 [EOS]", loss on x_0 and [EOS] only: an AR
    rewriter that reads the noisy line and writes the clean one (the standard seq2seq editing baseline).
Per example DiffusER runs two passes of about |x| positions (tagger, generator), the AR model one of about 2|x|:
the same examples give both about the same positions of compute. Byte tokenizer; AdamW, warmup then cosine.
"""

from __future__ import annotations

import argparse
import json
import random
import time

import torch
import torch.nn.functional as F

from textdiffusion.api.pipeline import Pipeline
from textdiffusion.data.corpus import iter_documents
from textdiffusion.data.tokenizers import ByteTokenizer
from textdiffusion.eval.editing import held_out_lines, noisy_chain, training_lines
from textdiffusion.models.transformer import ModelConfig, Transformer
from textdiffusion.processes.autoregressive import Autoregressive
from textdiffusion.processes.edit import N_OPS, Diffuser
from textdiffusion.train.optim import build_optimizer, lr_at

MAX_CHARS = 63  # the task's lines


def data(n_test: int = 100) -> tuple[list[str], list[str]]:
    """(training lines, held-out test lines): the test lines are what benchmarks/edit_compare_eval.py restores."""
    test = held_out_lines(list(iter_documents("shakespeare", "validation", 0.05, 0)), MAX_CHARS, limit=n_test)
    train = training_lines(list(iter_documents("shakespeare", "train", 0.05, 0)), test, MAX_CHARS)
    return train, test


def draw(lines: list[str], seed: int, step: int, k: int, levels: int) -> tuple[int, list[str]]:
    """Example k of step `step`: (t, [x_0, ..., x_t])."""
    rng = random.Random(f"{seed}-{step}-{k}")
    line = lines[rng.randrange(len(lines))]
    t = rng.randint(1, levels)
    return t, noisy_chain(line, t, rng)


def diffuser_loss(model, process: Diffuser, tok, batch: list[tuple[int, list[str]]], max_len: int) -> torch.Tensor:
    examples, ts = [], []
    for t, chain in batch:
        prev, xt = tok.encode(chain[t - 1])[:max_len], tok.encode(chain[t])[:max_len]
        examples.append(process.pair_example(prev, xt))
        ts.append(t)
    loss = process.examples_loss(model, examples, torch.tensor(ts))
    return loss.sum() / sum(len(p) + 1 for p, _, _ in examples)  # nats per target token (x_{t-1} and its end)


def ar_rows(tok, batch: list[tuple[int, list[str]]], seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ids [B, L] of "x_t [BOS] x_0 [EOS]" padded with [PAD] to the longest row (at most `seq_len`), and the
    mask of the positions whose NEXT token is scored (the last token of the prompt onwards: x_0 and [EOS])."""
    rows, starts = [], []
    for t, chain in batch:
        prompt = tok.encode(chain[t]) + [tok.bos_id]
        rows.append((prompt + tok.encode(chain[0]) + [tok.eos_id])[:seq_len])
        starts.append(len(prompt) - 1)
    width = max(len(r) for r in rows)
    ids = torch.full((len(batch), width), tok.pad_id, dtype=torch.long)
    scored = torch.zeros((len(batch), width), dtype=torch.bool)
    for b, (row, first) in enumerate(zip(rows, starts)):
        ids[b, : len(row)] = torch.tensor(row)
        scored[b, first : len(row) - 1] = True
    return ids, scored


def ar_loss(model, tok, batch, seq_len: int) -> torch.Tensor:
    ids, scored = ar_rows(tok, batch, seq_len)
    logits = model(ids).float()[:, :-1]
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
    return (nll.view(ids.shape[0], -1) * scored[:, :-1]).sum() / scored.sum()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kind", choices=("diffuser", "ar"))
    ap.add_argument("out")
    ap.add_argument("--steps", type=int, default=900)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--levels", type=int, default=3, help="T: errors in x_T (DiffusER's steps)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log-every", type=int, default=25)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    lines, _ = data()
    tok = ByteTokenizer()
    # canvas: start + up to MAX_CHARS + T * (a repeated word) bytes; AR: noisy + [BOS] + clean + [EOS]
    canvas = MAX_CHARS + 1 + 16 * args.levels
    if args.kind == "diffuser":
        process = Diffuser(tok.vocab_size, tok.mask_id, num_steps=args.levels, max_insert=16)
        cfg = ModelConfig(vocab_size=tok.vocab_size, seq_len=canvas, d_model=args.d_model, n_layers=args.layers,
                          n_heads=args.heads, time_conditioning=True, edit_tags=N_OPS + process.max_insert + 1)
    else:
        process = Autoregressive(tok.vocab_size, tok.mask_id)
        cfg = ModelConfig(vocab_size=tok.vocab_size, seq_len=canvas + MAX_CHARS + 2, d_model=args.d_model,
                          n_layers=args.layers, n_heads=args.heads, causal=True)
    model = Transformer(cfg)
    opt = build_optimizer(model, args.lr, 0.01, (0.9, 0.98))
    n_params = sum(p.numel() for p in model.parameters())
    print(json.dumps({"kind": args.kind, "params": n_params, "train_lines": len(lines), **vars(args)}), flush=True)
    start, positions = time.perf_counter(), 0
    model.train()
    for step in range(args.steps):
        batch = [draw(lines, args.seed, step, k, args.levels) for k in range(args.batch)]
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.lr, args.warmup, args.steps, 0.1)
        if args.kind == "diffuser":
            loss = diffuser_loss(model, process, tok, batch, canvas - 1)
            positions += sum(2 * (len(c[t].encode()) + 1) for t, c in batch)  # tagger + generator canvases
        else:
            loss = ar_loss(model, tok, batch, cfg.seq_len)
            positions += sum(len(c[t].encode()) + len(c[0].encode()) + 2 for t, c in batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            secs = time.perf_counter() - start
            print(json.dumps({"step": step + 1, "loss": round(float(loss.detach()), 4), "seconds": round(secs, 1),
                              "positions_per_s": round(positions / secs)}), flush=True)
    model.eval()
    note = {"edit_compare": {"kind": args.kind, "examples": args.steps * args.batch, "positions": positions,
                             "seconds": round(time.perf_counter() - start, 1), "noise": "realistic (noisy_chain)",
                             **vars(args)}}
    Pipeline(model, process, tok, note).save_pretrained(args.out)
    print(json.dumps(note), flush=True)


if __name__ == "__main__":
    main()
