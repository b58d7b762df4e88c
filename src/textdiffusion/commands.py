"""What each `textdiffusion` command does, once cli.py has parsed its arguments: call the library and print.

User mistakes raise UserError, which cli.main prints as one line (exit status 2).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import textwrap
from pathlib import Path

import yaml

from .core.errors import UserError


def _sampling_options(args) -> dict:
    """The sampler and the options the user set; the sampler's config supplies the rest."""
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


def _pipeline(args):
    from .api.pipeline import Pipeline

    pipe = Pipeline.from_pretrained(args.model, device=args.device, dtype=getattr(args, "dtype", None))
    if "load" in pipe.config:  # outside formats: what the streaming load took (weights, peak memory)
        from .interop.weights import describe

        print(f"[{describe(pipe.config['load'])}]", file=sys.stderr)
    return pipe


def _show_frames(args, pipe, out) -> None:
    if not (args.filmstrip or args.export):
        return
    from .render.filmstrip import export, render_terminal

    if args.filmstrip:
        print(render_terminal(out.frames, pipe.tokenizer, n=args.filmstrip))
    if args.export:
        print(f"filmstrip written to {export(out.frames, pipe.tokenizer, Path(args.export))}")


def cmd_sample(args) -> None:
    from .api.guidance import GuidanceSettings, apply_guidance

    settings = GuidanceSettings(args.contains, args.ends_at, args.classifier, args.attribute, args.guidance_lambda,
                                args.guidance_steps, args.guidance_lr, args.guidance_scale)
    pipe, guidance = apply_guidance(_pipeline(args), settings)
    out = pipe.generate(num_samples=args.num_samples, length=args.length, prompt=args.prompt, seed=args.seed,
                        return_frames=bool(args.filmstrip or args.export), progress=args.progress,
                        **_sampling_options(args), **guidance)
    for i, text in enumerate(out.texts):
        print(f"--- sample {i + 1} ---\n{text}")
    n_tokens = out.ids.numel()
    rate = n_tokens / max(out.seconds, 1e-9)
    print(f"[{n_tokens} tokens in {out.seconds:.2f}s, {rate:,.0f} tokens/s, {out.nfe} forward passes]")
    _show_frames(args, pipe, out)


def cmd_infill(args) -> None:
    pipe = _pipeline(args)
    out = pipe.infill(args.text, num_samples=args.num_samples, seed=args.seed,
                      return_frames=bool(args.filmstrip or args.export), progress=args.progress,
                      **_sampling_options(args))
    for i, (text, fills) in enumerate(zip(out.texts, out.fills)):
        print(f"--- fill {i + 1}: {' | '.join(repr(f) for f in fills)} ---\n{text}")
    _show_frames(args, pipe, out)


def cmd_edit(args) -> None:
    pipe = _pipeline(args)
    options = _sampling_options(args)
    options["steps"] = options.get("steps", 10)
    out = pipe.edit(args.text, num_samples=args.num_samples, seed=args.seed,
                    return_frames=bool(args.filmstrip or args.export), progress=args.progress, **options)
    for i, text in enumerate(out.texts):
        print(f"--- edit {i + 1} ---\n{text}")
    _show_frames(args, pipe, out)


def cmd_score(args) -> None:
    from .core.checks import text_error

    if not args.text and not args.file:
        raise UserError("nothing to score: give text arguments or --file")
    for i, text in enumerate(args.text, start=1):  # before the model loads: a bad argument fails at once
        error = text_error(text, f"text argument {i}")
        if error is not None:
            raise error
    for f in args.file or []:
        if not Path(f).is_file():
            raise UserError(f"file {f} not found")
    pipe = _pipeline(args)
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


def cmd_train(args) -> None:
    from .train.config import load_config, load_run_config
    from .train.trainer import train

    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"run.out_dir={args.out}")
    if args.resume and args.config is None:  # continue with the run's own saved config
        if not args.out:
            raise UserError("--resume needs --out RUN_FOLDER (or --config) to know which run to continue")
        cfg = load_run_config(args.out, overrides)
    else:
        cfg = load_config(args.config or "tiny", overrides)
    folder = train(cfg, resume=args.resume)
    print(f"checkpoint: {folder}")


def cmd_prepare(args) -> None:
    from .train.config import load_config
    from .train.prepare import prepare

    index = prepare(load_config(args.config, list(args.overrides)), args.out)
    rows = {split: entry["rows"] for split, entry in index["splits"].items()}
    print(f"prepared {args.out}: {rows['train']:,} training and {rows['validation']:,} validation rows of "
          f"{index['settings']['seq_len']} tokens ({index['tokenizer_kind']} tokenizer); train with "
          f"data.source=prepared:{args.out}")


def cmd_adapt(args) -> None:
    from .train.adapt import AdaptTrainer, source_kind
    from .train.config import load_config, load_run_config
    from .train.recipes import LATEST as LATEST_RECIPE

    kind = source_kind(args.ar_model)
    ours = kind == "ours"
    process = ["process.name=masked"] + (["process.logit_shift=true"] if kind != "masked_lm" else [])
    if args.block_size is not None:
        if not ours:
            raise UserError("--block-size adapts an autoregressive run of ours: pass its run folder to --from")
        process = ["process.name=block", f"process.block_size={args.block_size}"]
    if args.resume:  # the adapted run's own saved config
        cfg = load_run_config(args.out, [*args.overrides])
    elif ours:  # the AR run's config (data, tokenizer, model shape), as a logit-shifted masked model; a new
        # process, so today's training recipe even where the AR run's config predates recipes (read as recipe 1)
        cfg = load_run_config(args.ar_model, [*process, f"process.recipe={LATEST_RECIPE}", f"run.out_dir={args.out}",
                                              *args.overrides])
    else:  # a pretrained causal LM: data and training from --config, the network and tokenizer its own
        cfg = load_config(args.config, [*process, f"run.out_dir={args.out}", *args.overrides])
    if ours:
        trainer = AdaptTrainer(cfg, args.ar_model, anneal_steps=args.anneal_steps, resume=args.resume)
    elif kind == "masked_lm":
        from .train.adapt_bert import BertStartTrainer

        if args.anneal_steps:
            raise UserError("a masked LM is bidirectional already: drop --anneal-steps")
        trainer = BertStartTrainer(cfg, args.ar_model, resume=args.resume)
    else:
        from .train.adapt_llama import LlamaAdaptTrainer

        trainer = LlamaAdaptTrainer(cfg, args.ar_model, anneal_steps=args.anneal_steps, resume=args.resume)
    folder = trainer.run()
    print(f"checkpoint: {folder}")


def cmd_sft(args) -> None:
    from .train.adapt import FinetuneTrainer
    from .train.config import load_run_config

    if args.resume:
        cfg = load_run_config(args.out, [*args.overrides])
    else:  # the pretrained run's config (tokenizer, model, process), trained on conversations
        cfg = load_run_config(args.start, ["data.packing=chat", f"data.source={args.data}", f"run.out_dir={args.out}",
                                           *args.overrides])
    folder = FinetuneTrainer(cfg, args.start, resume=args.resume).run()
    print(f"checkpoint: {folder}")


def cmd_distill(args) -> None:
    from .train.distill import distill

    folders = distill(args.teacher, args.out, teacher_steps=args.teacher_steps, rounds=args.rounds,
                      overrides=args.overrides)
    print(f"student: {folders[-1]} (sample it with --steps {args.teacher_steps // 2 ** args.rounds})")


def cmd_convert_state(args) -> None:
    from .train import checkpoint as ckpt

    folder = ckpt.convert_legacy_state(args.run)
    print(f"converted: {folder / ckpt.STATE_FILE} and {folder / ckpt.STATE_TENSORS_FILE}; "
          "continue with `textdiffusion train --out RUN --resume`")


def cmd_presets(args) -> None:
    from .train.config import PRESETS_DIR, presets

    for name in presets():
        first = (PRESETS_DIR / f"{name}.yaml").read_text().splitlines()[0].lstrip("# ")
        print(f"{name:20s} {first}")


def cmd_bench(args) -> None:
    from .bench.run import run_suite, train_suite

    if args.train_only:
        train_suite(args.suite, Path(args.runs), args.family, args.tokenization, args.set)
        return
    command = "textdiffusion bench " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else f"bench {args.suite}"
    run_suite(args.suite, Path(args.runs), Path(args.results), None if args.no_write else Path(args.markdown),
              command, judge=args.judge, device=args.device, families=args.family, tokenizations=args.tokenization,
              overrides=args.set, extra_judges=tuple(args.also_judge))


def cmd_samplers(args) -> None:
    from .samplers import SAMPLERS, SUMMARIES

    for name, (config_cls, _) in SAMPLERS.items():
        options = ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(config_cls))
        print(f"{name:16s} {SUMMARIES[name]}")
        print(textwrap.fill(options, width=110, initial_indent=" " * 17 + "options: ", subsequent_indent=" " * 26))


def cmd_serve(args) -> None:
    try:  # the serve extra: fastapi, uvicorn, sse-starlette, prometheus-client
        from .serve import Limits, run_server
        from .serve.app import create_app  # noqa: F401 - fails here, not after loading the model
    except ImportError as exc:
        raise UserError(f"serving needs the serve extra ({exc.name} is missing): pip install -e \".[serve]\"") from exc
    limits = Limits(max_length=args.max_length, max_steps=args.max_steps, max_n=args.max_n,
                    max_seconds=args.max_seconds, max_running=args.max_running, max_queue=args.max_queue,
                    max_score_chars=args.max_score_chars)
    for name, value in vars(limits).items():
        if not value > 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {value}")
    if not args.batch_wait_ms >= 0:
        raise UserError(f"--batch-wait-ms must be 0 or more, got {args.batch_wait_ms}")
    run_server(args.model_dir, host=args.host, port=args.port, device=args.device, limits=limits,
               batching=not args.no_batching, model_name=args.name, max_wait_s=args.batch_wait_ms / 1000)


def cmd_chat(args) -> None:
    from .render.chat_stream import ReplyStream

    args.model = args.model_dir
    options = _sampling_options(args)
    if args.cfg_scale is not None:
        from .samplers.cfg import check_scale

        options["cfg_scale"] = check_scale(args.cfg_scale)  # before the model loads: a bad value fails at once
    pipe = _pipeline(args)
    interactive, live = sys.stdin.isatty(), sys.stdout.isatty()
    stream = live if args.stream is None else args.stream
    messages = [{"role": "system", "content": args.system}] if args.system else []
    if interactive:
        print(f"chatting with {args.model_dir}: type a message and Enter; an empty line or Ctrl-D ends", flush=True)
    turn = 0
    while True:
        if interactive:
            print("> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line or (interactive and not line.strip()):
            break
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line.rstrip("\n")})
        seed = None if args.seed is None else args.seed + turn
        printer = None
        try:
            if stream:
                from .api.chat import encode_chat

                start = len(encode_chat(pipe.tokenizer, messages))
                printer = ReplyStream(pipe.tokenizer, start, sys.stdout, live)
            out = pipe.chat(messages, max_new_tokens=args.max_new_tokens, seed=seed, on_step=printer,
                            progress=False, **options)
        except UserError as exc:  # this turn only: the conversation goes on without it
            print(f"textdiffusion: error: {' '.join(str(exc).split())}", file=sys.stderr, flush=True)
            messages.pop()
            continue
        reply = out.replies[0]
        if printer is not None:
            printer.finish(reply)
        else:
            print(f"assistant: {reply}", flush=True)
        messages.append({"role": "assistant", "content": reply})
        if args.fresh:  # every line is a conversation of its own (after the system message)
            messages = messages[:1] if args.system else []
        turn += 1


def cmd_demo(args) -> None:
    from .render.filmstrip import render_terminal

    pipe = _pipeline(args)
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
