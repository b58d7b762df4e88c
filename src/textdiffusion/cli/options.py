"""What several command groups share: the options of a model, of sampling, of guidance and of config overrides,
and the helpers that turn them into a Pipeline, sampler options and filmstrips."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from ..core.errors import UserError
from ..pretrained import DEFAULT_MODEL

Command = Callable[..., argparse.ArgumentParser]
"""The factory build_parser hands each group module: command(name, summary, description=None, **kwargs)
adds a subcommand and returns its parser."""


def add_model(p: argparse.ArgumentParser, default: str | None = str(DEFAULT_MODEL),
              help: str = "model folder: one written by `train` or save_pretrained (default: the shipped "
                          "Shakespeare MDLM)") -> None:
    p.add_argument("--model", default=default, help=help)
    p.add_argument("--device", default="auto",
                   help="auto (a CUDA GPU if there is one, else the CPU), cpu, cuda, cuda:N or mps")
    p.add_argument("--dtype", default=None, choices=["bf16", "fp16", "fp32"],
                   help="the weights' dtype in memory (default: fp32 for our folders, as stored for outside "
                        "formats such as LLaDA, Dream or BERT folders; bf16 halves an fp32 model)")


def add_progress(p: argparse.ArgumentParser,
                 help: str = "show progress on stderr at once, or never (default: once a run has taken a few "
                             "seconds: a bar on a terminal, a line every 5 seconds in a log or pipe)") -> None:
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help=help)


def add_sampling(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sampler", default=None,
                   help="sampler name (default: the model's own; `textdiffusion samplers` lists them)")
    p.add_argument("--steps", type=int, default=None,
                   help="reverse diffusion steps: more is slower and closer to the model (default: the sampler's, "
                        "128 for ancestral)")
    p.add_argument("--temperature", type=float, default=None,
                   help="divides the logits: below 1 is safer, above 1 more varied, 0 is greedy (default 1)")
    p.add_argument("--top-p", type=float, default=None,
                   help="nucleus sampling: draw from the smallest set of tokens with this much probability, "
                        "in (0, 1] (default 1: all of them)")
    p.add_argument("--no-cache", action="store_true",
                   help="call the model even where a cache would serve (slower; the same samples for exact caches)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="any other option of the sampler's config, e.g. --option block_length=32 (repeatable; "
                        "`textdiffusion samplers` lists the options)")
    p.add_argument("--seed", type=int, default=None,
                   help="random seed: the same seed, model and options give the same output (default: a new "
                        "random seed each run)")
    p.add_argument("--filmstrip", type=int, default=0, metavar="N",
                   help="also print N frames of the first sample crystallizing from masks")
    p.add_argument("--export", default=None, metavar="FILE",
                   help="write the filmstrip of the first sample to FILE (.html, .gif or .txt)")
    add_progress(p)


def add_guidance(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("guidance (gaussian and masked models; see textdiffusion.guidance)")
    g.add_argument("--contains", action="append", default=[], metavar="TEXT",
                   help="steer the samples to contain this text, e.g. --contains ' love' (repeatable)")
    g.add_argument("--ends-at", type=int, default=None, metavar="N", help="steer [EOS] to position N (none before)")
    g.add_argument("--classifier", default=None, metavar="DIR", help="an attribute classifier's folder")
    g.add_argument("--attribute", default=None, metavar="LABEL", help="the label to steer to, e.g. prose")
    g.add_argument("--guidance-lambda", type=float, default=None,
                   help="gaussian: fluency weight lambda of log p(x_s | x_t) (default 0.01)")
    g.add_argument("--guidance-steps", type=int, default=None, help="gaussian: Adagrad steps per step (default 3)")
    g.add_argument("--guidance-lr", type=float, default=None, help="gaussian: Adagrad step size (default 0.1)")
    g.add_argument("--guidance-scale", type=float, default=None, help="masked: strength gamma of the tilt (default 2)")


def add_overrides(p: argparse.ArgumentParser, example: str) -> None:
    """The config overrides a training-like command takes after its options."""
    p.add_argument("overrides", nargs="*", metavar="SECTION.KEY=VALUE", help=f"config overrides, e.g. {example}")


def sampling_options(args) -> dict:
    """The sampler and the options the user set; the sampler's config supplies the rest."""
    if getattr(args, "export", None):  # before the model samples: a filmstrip that cannot be written fails now
        from ..render.filmstrip import check_export_path

        check_export_path(args.export)
    options = {"steps": args.steps, "temperature": args.temperature, "top_p": args.top_p,
               "cache": False if args.no_cache else None}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--option takes KEY=VALUE, got {item!r}")
        try:
            options[key.replace("-", "_")] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise UserError(f"--option {key}: cannot read the value {value!r} ({' '.join(str(exc).split())})") from exc
    return {"sampler": args.sampler, **{k: v for k, v in options.items() if v is not None}}


def pipeline(args):
    from ..api.pipeline import Pipeline

    pipe = Pipeline.from_pretrained(args.model, device=args.device, dtype=getattr(args, "dtype", None))
    if "load" in pipe.config:  # outside formats: what the streaming load took (weights, peak memory)
        from ..interop.weights import describe

        print(f"[{describe(pipe.config['load'])}]", file=sys.stderr)
    return pipe


def show_frames(args, pipe, out) -> None:
    if not (args.filmstrip or args.export):
        return
    from ..render.filmstrip import export, render_terminal

    if args.filmstrip:
        print(render_terminal(out.frames, pipe.tokenizer, n=args.filmstrip))
    if args.export:
        print(f"filmstrip written to {export(out.frames, pipe.tokenizer, Path(args.export))}")
