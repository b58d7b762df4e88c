"""Train and measure a sentence-concept model (Large Concept Model style, issue 35 item 3):

    python benchmarks/concept_train.py OUT --train-sentences 20000 --decoder-steps 2000 --denoiser-steps 2000
    python benchmarks/concept_train.py OUT --prompt "Good morrow, cousin. What news?" --samples 4   # continue text

Training is the library's (train/concept.py, the same as `textdiffusion concept train OUT`, with the same options):
the corpus's training sentences embedded by the frozen all-MiniLM-L6-v2 (cached in OUT), the decoder (embedding ->
sentence) and then the denoiser (next sentence's embedding), written to the model folder OUT. This script measures it
on the validation split (at most --val-sentences, embedded and cached in OUT too):
- the decoder's round trip (eval/concept.py: exact, CER, re-embedded cosine);
- the denoiser's x0 MSE on validation windows;
- next sentences generated from true contexts (cosine with the true next sentence, against the previous sentence's
  cosine with it, and the round trip of the generated vector), at each --guidance;
- continuations of validation prompts (samplers/concept.py).
Everything goes to OUT/results.json. --prompt only continues a text with the model already in OUT
(`textdiffusion concept continue` does the same).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch
import torch.nn.functional as F
from common import command_line, machine_info  # benchmarks/common.py, next to this script

from textdiffusion.api.concept import ConceptModel
from textdiffusion.cli.concept import add_train_options
from textdiffusion.core.checks import resolve_device
from textdiffusion.eval.concept import round_trip_scores
from textdiffusion.samplers.concept import ConceptSampleConfig, continue_sentences, decode_sentences, next_embedding
from textdiffusion.train.concept import embed_cached, split_documents, train_concept, window_batch, windows
from textdiffusion.train.concept_config import ConceptTrainConfig


def continue_prompt(args) -> None:
    """--prompt: the model trained in OUT continues the prompt by --new-sentences, --samples times."""
    model = ConceptModel.from_pretrained(args.out, device=args.device)
    for text in model.continue_text(args.prompt, sentences=args.new_sentences, steps=args.sample_steps,
                                    guidance=args.guidance[-1], samples=args.samples, seed=args.seed):
        print(text)


def main(args) -> None:
    if args.prompt is not None:
        return continue_prompt(args)
    device = resolve_device(args.device)
    cfg = ConceptTrainConfig(**{k: getattr(args, k) for k in ConceptTrainConfig.__dataclass_fields__})
    run = train_concept(cfg, args.out, device, log=print)
    val_docs = split_documents(cfg.source, "validation", args.val_sentences, cfg.max_chars, cfg.seed)
    val_flat = [s for d in val_docs for s in d]
    val_emb = embed_cached(val_flat, args.out, "validation", device, log=print)
    results: dict = {"command": command_line(), "machine": machine_info(device), "args": vars(args),
                     "train_sentences": sum(len(d) for d in run.train_docs), "val_sentences": len(val_flat),
                     "decoder_params": run.params["decoder"], "denoiser_params": run.params["denoiser"],
                     "decoder_curve": run.curves["decoder"], "denoiser_curve": run.curves["denoiser"]}
    results.update(evaluate(args, run.model, val_docs, val_flat, val_emb, device))
    (Path(args.out) / "results.json").write_text(json.dumps(results, indent=1))
    print(json.dumps({k: v for k, v in results.items() if not k.endswith("curve") and k != "args"}, indent=1))


@torch.no_grad()
def evaluate(args, model: ConceptModel, val_docs, val_flat, val_emb, device) -> dict:
    p, encoder, tok = model.parts, model.encoder, model.tokenizer
    x_val = p.scaler(val_emb).to(device)
    res: dict = {}
    gen = torch.Generator(device=device).manual_seed(args.seed + 1)
    n = min(args.eval_sentences, len(val_flat))
    pick = random.Random(args.seed).sample(range(len(val_flat)), n)
    decoded = decode_sentences(p.decoder, tok, x_val[pick])
    refs = [val_flat[i] for i in pick]
    res["decoder_round_trip"] = round_trip_scores(decoded, p.scaler.inverse(x_val[pick]), encoder, refs).to_dict()
    res["decoder_examples"] = [{"sentence": r, "decoded": d} for r, d in zip(refs[:8], decoded[:8])]
    # the denoiser's x0 MSE on validation windows (fixed draws), and next sentences from true contexts
    val_windows = windows(val_docs, args.window)
    picks = random.Random(args.seed + 2).sample(val_windows, min(args.eval_sentences, len(val_windows)))
    batch, valid = window_batch(x_val, picks, args.window)
    res["val_x0_mse"] = float(p.process.loss(p.denoiser, batch, p.process.sample_noise(batch, gen), valid).mean)
    last = valid.sum(1) - 1  # each window's last real sentence is the one generated, from the ones before it
    for guidance in args.guidance:
        cfg = ConceptSampleConfig(steps=args.sample_steps, guidance=guidance)
        by_len: dict[int, list[int]] = {}
        for row, k in enumerate(last.tolist()):
            by_len.setdefault(k, []).append(row)
        x_gen = torch.zeros(len(picks), x_val.shape[1], device=device)
        for k, rows in by_len.items():
            x_gen[rows] = next_embedding(p.denoiser, p.process, batch[rows, :k], cfg, gen)
        rows = torch.arange(len(picks), device=device)
        truth, prev = batch[rows, last], batch[rows, (last - 1).clamp_min(0)]
        e_gen, e_true, e_prev = p.scaler.inverse(x_gen), p.scaler.inverse(truth), p.scaler.inverse(prev)
        text = decode_sentences(p.decoder, tok, x_gen)
        res[f"next_sentence_guidance_{guidance}"] = {
            "cos_generated_vs_true_next": float(F.cosine_similarity(e_gen, e_true).mean()),
            "round_trip_of_generated": round_trip_scores(text, e_gen, encoder).to_dict()}
    res["cos_previous_vs_true_next"] = float(F.cosine_similarity(e_prev, e_true).mean())
    prompts = [d[: args.prompt_sentences] for d in val_docs if len(d) > args.prompt_sentences]
    prompts = random.Random(args.seed + 3).sample(prompts, min(args.samples, len(prompts)))
    written, _ = continue_sentences(prompts, args.new_sentences, encoder, p.scaler, p.denoiser, p.decoder, tok,
                                    p.process, ConceptSampleConfig(steps=args.sample_steps, guidance=args.guidance[-1]),
                                    gen)
    res["samples"] = [{"prompt": q, "continuation": w} for q, w in zip(prompts, written)]
    return res


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out")
    add_train_options(p)  # the options of `textdiffusion concept train`, with its defaults
    p.add_argument("--val-sentences", type=int, default=2000)
    p.add_argument("--eval-sentences", type=int, default=200)
    p.add_argument("--sample-steps", type=int, default=40)
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0])
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--prompt-sentences", type=int, default=3)
    p.add_argument("--new-sentences", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--prompt", help="no training: continue this text with the model already trained in OUT")
    return p.parse_args()


if __name__ == "__main__":
    main(parse())
