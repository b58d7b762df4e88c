"""Generation commands: demo, samplers, sample, infill, edit and score."""

from __future__ import annotations

import dataclasses
import math
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.errors import UserError
from .options import (
    Command,
    add_guidance,
    add_model,
    add_progress,
    add_sampling,
    pipeline,
    sampling_options,
    show_frames,
)

if TYPE_CHECKING:  # torch only inside the commands that run a model: `--help` and `presets` start at once
    import torch

SCORE_DESCRIPTION = """\
Negative log-likelihood of texts or files under the model, per token, in three units:
nats/token (natural log), bits/token (log base 2) and perplexity (e^nats). Lower is better.
For the autoregressive baseline it is exact; for diffusion models it is the NELBO, an upper
bound on the NLL estimated by Monte Carlo over the noise level t, shown as mean ± standard
error (so "ppl <="). Texts longer than the model are scored in consecutive windows of its
length, a batch of windows at a time; files are read in pieces, so any size fits in memory."""

EDIT_MODELS = ("a DiffusER (process diffuser) or Edit Flows (process edit_flow) model, e.g. one trained by "
               "`textdiffusion train --config tiny process.name=diffuser --out runs/edit`")


def add_demo(command: Command) -> None:
    """demo, the first command of `textdiffusion --help`."""
    p = command("demo", "samples, an infill and a filmstrip from the shipped model")
    add_model(p)
    p.add_argument("--steps", type=int, default=None, help="reverse diffusion steps (default: the sampler's)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the samples and the infill")
    p.set_defaults(func=cmd_demo)


def add_commands(command: Command) -> None:
    """samplers, sample, infill, edit and score."""
    p = command("samplers", "list the samplers and their options",
                "List the samplers: what each does, which models it runs, and its options with their\n"
                "defaults. Pick one with `sample --sampler NAME` (or infill); set options with --steps,\n"
                "--temperature, --top-p, --no-cache or --option KEY=VALUE.")
    p.set_defaults(func=cmd_samplers)

    p = command("sample", "generate text")
    add_model(p)
    add_sampling(p)
    p.add_argument("-n", "--num-samples", type=int, default=1, help="how many samples to generate (in one batch)")
    p.add_argument("--length", type=int, default=None, help="tokens per sample (default: the model's length)")
    p.add_argument("--prompt", default=None, help="text the samples start with")
    add_guidance(p)
    p.set_defaults(func=cmd_sample)

    p = command("infill", 'fill gaps: "The [MASK]x5 of the night"',
                "Fill the gaps of a text using the context on both sides: [MASK] is a one-token gap,\n"
                '[MASK]xN a gap of N tokens, e.g. "The [MASK]x5 of the night".')
    add_model(p)
    add_sampling(p)
    p.add_argument("text", help="text with [MASK] (one token) or [MASK]xN (N tokens) gaps")
    p.add_argument("-n", "--num-samples", type=int, default=1, help="how many fills to generate (in one batch)")
    p.set_defaults(func=cmd_infill)

    p = command("edit", 'revise a text with an edit model: "To be or not to bee"',
                "Revise a text with an edit model (process diffuser): each of --steps revision steps tags every\n"
                "token keep / delete / replace and every gap with insertions, then writes the new tokens, so the\n"
                "length changes. --option beam=B --option revisions=R for DiffusER's 2-D beam search.\n"
                "An Edit Flows model (process edit_flow) runs --steps Euler steps of its insert / delete /\n"
                "substitute process from the text; --option t_start=0.9 starts late for a text close to clean.")
    add_model(p, default=None, help=f"an edit model's folder, required: {EDIT_MODELS}")
    add_sampling(p)
    p.add_argument("text", help="the text to revise")
    p.add_argument("-n", "--num-samples", type=int, default=1, help="how many revisions to generate (in one batch)")
    p.set_defaults(func=cmd_edit)

    p = command("score", "negative log-likelihood of texts: exact (autoregressive) or its NELBO bound (diffusion)",
                SCORE_DESCRIPTION)
    add_model(p)
    p.add_argument("text", nargs="*", help="texts to score")
    p.add_argument("--file", action="append",
                   help="score the contents of a file of any size; bytes that are not UTF-8 count as U+FFFD "
                        "(repeatable)")
    p.add_argument("--t-samples", type=int, default=32,
                   help="Monte Carlo draws of t per window (diffusion only): more draws, a smaller ±")
    p.add_argument("--batch-size", type=int, default=16, help="windows of the model's length scored together")
    p.add_argument("--seed", type=int, default=0, help="seed of the Monte Carlo draws (diffusion only)")
    add_progress(p)
    p.set_defaults(func=cmd_score)


def cmd_demo(args) -> None:
    from ..render.filmstrip import render_terminal

    pipe = pipeline(args)
    seed = args.seed
    print(f"== model: {args.model}")
    steps = {} if args.steps is None else {"steps": args.steps}
    out = pipe.generate(num_samples=3, seed=seed, return_frames=True, **steps)
    for i, text in enumerate(out.texts):
        print(f"\n--- sample {i + 1} ---\n{text.strip()}")
    print(f"\n[{out.ids.numel()} tokens in {out.seconds:.2f}s, {out.nfe} forward passes]")
    prompt = "KING.\nWhat say you, [MASK]x12 of the night?\n\nQUEEN.\nMy lord,"
    fill = pipe.infill(prompt, seed=seed, **steps)
    print(f"\n== infill (left and right context)\n{prompt}\n->\n{fill.texts[0]}")
    print("\n== filmstrip of sample 1 (▒ is [MASK])")
    print(render_terminal(out.frames, pipe.tokenizer, n=6))


def cmd_samplers(args) -> None:
    from ..samplers import SAMPLERS, SUMMARIES

    for name, (config_cls, _) in SAMPLERS.items():
        options = ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(config_cls))
        print(f"{name:16s} {SUMMARIES[name]}")
        print(textwrap.fill(options, width=110, initial_indent=" " * 17 + "options: ", subsequent_indent=" " * 26))


def cmd_sample(args) -> None:
    from ..api.guidance import GuidanceSettings, apply_guidance

    settings = GuidanceSettings(args.contains, args.ends_at, args.classifier, args.attribute, args.guidance_lambda,
                                args.guidance_steps, args.guidance_lr, args.guidance_scale)
    pipe, guidance = apply_guidance(pipeline(args), settings)
    out = pipe.generate(num_samples=args.num_samples, length=args.length, prompt=args.prompt, seed=args.seed,
                        return_frames=bool(args.filmstrip or args.export), progress=args.progress,
                        **sampling_options(args), **guidance)
    for i, text in enumerate(out.texts):
        print(f"--- sample {i + 1} ---\n{text}")
    prompt_tokens = len(pipe.tokenizer.encode(args.prompt)) if args.prompt is not None else 0
    n_tokens = written_tokens(out.ids, pipe.tokenizer.eos_id, prompt_tokens)
    rate = n_tokens / max(out.seconds, 1e-9)
    print(f"[{n_tokens} new tokens in {out.seconds:.2f}s, {rate:,.0f} tokens/s, {out.nfe} forward passes]")
    show_frames(args, pipe, out)


def written_tokens(ids: torch.Tensor, eos_id: int | None, prompt_tokens: int = 0) -> int:
    """The tokens a sampler wrote in a batch [B, L]: not the `prompt_tokens` each row starts with (given, not
    written), nor the [EOS] padding a sampler writes after a row's stop (block, semi_ar): each row's trailing run
    of [EOS] counts once, as the stop. Otherwise a BD3-LM run that stopped at token 358 of 1,000 would claim
    1,000 tokens, and a tokens/s to match."""
    kept = ids.new_full((ids.shape[0],), ids.shape[1]).cpu()
    if eos_id is not None:
        trailing = (ids == eos_id).flip(1).int().cumprod(1).sum(1)  # per row: how many ids at its end are [EOS]
        kept = kept - (trailing.cpu() - 1).clamp(min=0)
    return int((kept - prompt_tokens).clamp(min=0).sum())


def cmd_infill(args) -> None:
    pipe = pipeline(args)
    out = pipe.infill(args.text, num_samples=args.num_samples, seed=args.seed,
                      return_frames=bool(args.filmstrip or args.export), progress=args.progress,
                      **sampling_options(args))
    for i, (text, fills) in enumerate(zip(out.texts, out.fills)):
        print(f"--- fill {i + 1}: {' | '.join(repr(f) for f in fills)} ---\n{text}")
    show_frames(args, pipe, out)


def cmd_edit(args) -> None:
    if args.model is None:  # the shipped model is masked diffusion, which cannot edit: no default to offer
        raise UserError(f"edit needs --model, {EDIT_MODELS}")
    pipe = pipeline(args)
    options = sampling_options(args)
    options["steps"] = options.get("steps", 10)
    out = pipe.edit(args.text, num_samples=args.num_samples, seed=args.seed,
                    return_frames=bool(args.filmstrip or args.export), progress=args.progress, **options)
    for i, text in enumerate(out.texts):
        print(f"--- edit {i + 1} ---\n{text}")
    show_frames(args, pipe, out)


def cmd_score(args) -> None:
    from ..core.checks import text_error

    if not args.text and not args.file:
        raise UserError("nothing to score: give text arguments or --file")
    for i, text in enumerate(args.text, start=1):  # before the model loads: a bad argument fails at once
        error = text_error(text, f"text argument {i}")
        if error is not None:
            raise error
    for f in args.file or []:
        if not Path(f).is_file():
            raise UserError(f"file {f} not found")
    pipe = pipeline(args)
    options = {"t_samples": args.t_samples, "seed": args.seed, "batch_size": args.batch_size,
               "progress": args.progress}
    for text in args.text:
        _print_score(pipe.score(text, **options)[0], repr(text[:60].replace("\n", " ")))
    for f in args.file or []:
        _print_score(pipe.score_file(f, **options), f"file {f}")


def _print_score(res, head: str) -> None:
    if res.exact:
        print(f"{res.nats_per_token:.4f} nats/token  {res.bits_per_token:.4f} bits/token  "
              f"ppl = {res.perplexity:.2f}  ({res.n_tokens} tokens, exact)  {head}", flush=True)
        return
    error = "n/a" if math.isnan(res.stderr) else f"{res.stderr:.4f}"  # one t-sample: no spread to measure
    print(f"{res.nats_per_token:.4f} ± {error} nats/token  {res.bits_per_token:.4f} bits/token  "
          f"ppl <= {res.perplexity:.2f}  ({res.n_tokens} tokens, {res.t_samples} t-samples)  {head}", flush=True)
