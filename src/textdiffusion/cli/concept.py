"""The concept group: `textdiffusion concept train` and `textdiffusion concept continue`, the sentence-concept family
(Large Concept Model style: next-sentence diffusion over frozen MiniLM sentence embeddings, docs/latent.md)."""

from __future__ import annotations

import argparse
import dataclasses

from ..train.concept_config import ConceptTrainConfig  # torch-free: the parser reads its fields
from .options import Command

DESCRIPTION = """\
Sentence-level concept diffusion (Large Concept Model style): every sentence is one vector of the frozen
all-MiniLM-L6-v2 encoder; a denoiser learns the next sentence's vector from the vectors before it, and a decoder
learns to write a sentence from its vector. Token commands (sample, infill, score, serve) do not run these models.

  textdiffusion concept train runs/concept --train-sentences 4000 --decoder-steps 300 --denoiser-steps 300
  textdiffusion concept continue runs/concept "Good morrow, cousin. What news?" --samples 2"""


def add_train_options(p: argparse.ArgumentParser) -> None:
    """One option per ConceptTrainConfig field (--train-sentences, --d-model, ...), its default and help from there."""
    for f in dataclasses.fields(ConceptTrainConfig):
        kind = type(f.default)
        p.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=f.default, help=f.metadata["help"])


def add_commands(command: Command) -> None:
    """concept, with its own subcommands train and continue."""
    group = command("concept", "train and run a sentence-concept model (next-sentence diffusion, LCM style)",
                    DESCRIPTION)
    sub = group.add_subparsers(dest="concept_command", required=True, metavar="SUBCOMMAND",
                               help="`textdiffusion concept SUBCOMMAND --help` describes each")
    fmt = group.formatter_class

    p = sub.add_parser("train", help="train a concept model into a folder", formatter_class=fmt,
                       description="Train the decoder (embedding -> sentence) and then the denoiser (next sentence's "
                                   "embedding) on\nthe corpus's training sentences, and write the model folder OUT "
                                   "atomically. The sentences'\nMiniLM vectors are cached in OUT, so training OUT "
                                   "again on the same sentences skips embedding them.")
    p.add_argument("out", metavar="OUT", help="the model folder to write (replaced atomically if it exists)")
    add_train_options(p)
    p.add_argument("--device", default="auto", help="auto (a CUDA GPU if there is one, else the CPU), cpu, cuda, "
                                                    "cuda:N or mps")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("continue", help="continue a text sentence by sentence", formatter_class=fmt,
                       description="Continue PROMPT with a concept model: each new sentence's vector is denoised "
                                   "from the vectors\nbefore it, then written by the decoder. Prints one "
                                   "continuation per sample, one per line\n(whitespace runs, line breaks "
                                   "included, shown as one space).")
    p.add_argument("model", metavar="MODEL", help="a folder written by `textdiffusion concept train`")
    p.add_argument("prompt", metavar="PROMPT", help="the text to continue: one sentence or more")
    p.add_argument("--sentences", type=int, default=3, help="new sentences per continuation")
    p.add_argument("--steps", type=int, default=40, help="reverse diffusion steps per sentence")
    p.add_argument("--guidance", type=float, default=2.0,
                   help="classifier-free guidance: 0 ignores the prompt, 1 the conditional model, > 1 stronger")
    p.add_argument("--eta", type=float, default=1.0, help="1 ancestral (DDPM) steps, 0 deterministic DDIM")
    p.add_argument("--temperature", type=float, default=0.0, help="the decoder's temperature (0: greedy)")
    p.add_argument("--samples", type=int, default=2, help="continuations to write (one batch)")
    p.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same continuations")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.set_defaults(func=cmd_continue)


def cmd_train(args) -> None:
    from ..core.checks import resolve_device
    from ..train.concept import train_concept

    cfg = ConceptTrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ConceptTrainConfig)})
    run = train_concept(cfg, args.out, resolve_device(args.device))
    print(f"concept model: {run.out} (continue text with `textdiffusion concept continue {run.out} \"PROMPT\"`)")


def cmd_continue(args) -> None:
    from ..api.concept import ConceptModel

    model = ConceptModel.from_pretrained(args.model, device=args.device)
    for text in model.continue_text(args.prompt, sentences=args.sentences, steps=args.steps, guidance=args.guidance,
                                    eta=args.eta, samples=args.samples, seed=args.seed,
                                    temperature=args.temperature):
        print(" ".join(text.split()))  # one line each: a half-trained decoder may write line breaks
