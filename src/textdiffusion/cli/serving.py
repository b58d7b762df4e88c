"""Serving commands: serve (HTTP) and chat (the terminal)."""

from __future__ import annotations

import argparse
import sys

from ..core.errors import UserError
from ..pretrained import DEFAULT_MODEL
from .options import Command, pipeline, sampling_options


def add_commands(command: Command) -> None:
    """serve and chat."""
    p = command("serve", "serve a model over HTTP: an OpenAI-compatible API, streamed denoising, a playground",
                "Serve a model over HTTP until interrupted: /v1/completions, /v1/chat/completions (models with\n"
                "a chat template), /v1/models, /v1/infill, /v1/score, /health, /metrics, the schema at /openapi.json\n"
                "and a playground at /. Concurrent requests share forward passes step by step.")
    p.add_argument("model_dir", nargs="?", default=str(DEFAULT_MODEL), metavar="MODEL_DIR",
                   help="model folder (default: the shipped Shakespeare MDLM)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--name", default=None, help="the model's id in the API (default: the folder's name)")
    p.add_argument("--max-running", type=int, default=64, help="requests sampling at once (they share passes)")
    p.add_argument("--max-queue", type=int, default=64, help="requests waiting for a slot; more get HTTP 429")
    p.add_argument("--max-steps", type=int, default=1024, help="most sampler steps a request may ask for")
    p.add_argument("--max-n", type=int, default=8, help="most samples per request")
    p.add_argument("--max-length", type=int, default=1024,
                   help="most tokens per sample for samplers that write past the model's length")
    p.add_argument("--max-seconds", type=float, default=120.0, help="wall-time limit of one request")
    p.add_argument("--max-score-chars", type=int, default=200_000, help="most characters of text per /v1/score request")
    p.add_argument("--max-score-work", type=int, default=2_000_000,
                   help="most tokens x t_samples of one /v1/score request (each draw is a forward pass)")
    p.add_argument("--max-input-chars", type=int, default=100_000,
                   help="most characters of text a completion, chat or infill request brings (messages together)")
    p.add_argument("--no-batching", action="store_true", help="run every forward pass alone (for comparisons)")
    p.add_argument("--batch-wait-ms", type=float, default=20.0,
                   help="how long a shared forward pass waits for requests still busy between two steps")
    p.add_argument("--batch-max-padding", type=float, default=0.5, metavar="FRACTION",
                   help="padded work a merged pass may add, as a fraction of its real work: calls of other lengths "
                        "or cache lengths share a pass only within it (0: only calls of one shape share; on a GPU, "
                        "where padding is cheap, a larger value merges more)")
    p.add_argument("--allowed-hosts", default=None, metavar="HOSTS",
                   help="comma-separated Host header names answered, * for any (default: the bound address and "
                        "localhost, against DNS rebinding; any host when bound to 0.0.0.0)")
    p.set_defaults(func=cmd_serve)

    p = command("chat", "chat with a model: messages from stdin, the reply denoising live in the terminal",
                "Chat with a model under its chat template (its folder's own, else textdiffusion's role markers).\n"
                "Each line read from stdin is a user message; the reply is generated after the conversation so\n"
                "far and ends at [EOS]. On a terminal the reply is redrawn at every step as its masks (▒) resolve;\n"
                "with --stream elsewhere each step prints one line. An empty line or Ctrl-D ends the chat. A turn\n"
                "that fails prints its error and the chat goes on without it; the exit status is then 2.")
    p.add_argument("model_dir", metavar="MODEL_DIR", help="model folder (e.g. one trained with data.packing=chat)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--dtype", default=None, choices=["bf16", "fp16", "fp32"], help="the weights' dtype in memory")
    p.add_argument("--system", default=None, help="a system message that opens the conversation")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="positions the reply is written in (default: the rest of the model's length)")
    p.add_argument("--cfg-scale", type=float, default=None,
                   help="classifier-free guidance on the conversation (LLaDA): 0 is none (default 0)")
    p.add_argument("--sampler", default=None, help="sampler name (default: the model's own)")
    p.add_argument("--steps", type=int, default=None, help="reverse diffusion steps (default: the sampler's)")
    p.add_argument("--temperature", type=float, default=None, help="0 is greedy (default 1)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling, in (0, 1] (default 1)")
    p.add_argument("--no-cache", action="store_true", help="call the model even where a cache would serve")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="any other sampler option, e.g. --option block_length=32 (repeatable)")
    p.add_argument("--seed", type=int, default=None, help="random seed of the first reply (then seed + turn)")
    p.add_argument("--stream", action=argparse.BooleanOptionalAction, default=None,
                   help="show every denoising step (default: on a terminal only)")
    p.add_argument("--fresh", action="store_true",
                   help="answer each line on its own, without the conversation so far (small models' short windows)")
    p.set_defaults(func=cmd_chat)


def cmd_serve(args) -> None:
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be a TCP port from 0 to 65535 (0: any free port), got {args.port}")
    try:  # the serve extra: fastapi, uvicorn, sse-starlette, prometheus-client
        from ..serve import Limits, run_server
        from ..serve.app import create_app  # noqa: F401 - fails here, not after loading the model
    except ImportError as exc:
        raise UserError(f"serving needs the serve extra ({exc.name} is missing): pip install -e \".[serve]\"") from exc
    limits = Limits(max_length=args.max_length, max_steps=args.max_steps, max_n=args.max_n,
                    max_seconds=args.max_seconds, max_running=args.max_running, max_queue=args.max_queue,
                    max_score_chars=args.max_score_chars, max_score_work=args.max_score_work,
                    max_input_chars=args.max_input_chars)
    for name, value in vars(limits).items():
        if not value > 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {value}")
    if not args.batch_wait_ms >= 0:
        raise UserError(f"--batch-wait-ms must be 0 or more, got {args.batch_wait_ms}")
    if not args.batch_max_padding >= 0:
        raise UserError(f"--batch-max-padding must be 0 or more, got {args.batch_max_padding}")
    run_server(args.model_dir, host=args.host, port=args.port, device=args.device, limits=limits,
               batching=not args.no_batching, model_name=args.name, max_wait_s=args.batch_wait_ms / 1000,
               allowed_hosts=args.allowed_hosts, max_padding=args.batch_max_padding)


def cmd_chat(args) -> int:
    from ..render.chat_stream import ReplyStream

    args.model = args.model_dir
    options = sampling_options(args)
    if args.cfg_scale is not None:
        from ..samplers.cfg import check_scale

        options["cfg_scale"] = check_scale(args.cfg_scale)  # before the model loads: a bad value fails at once
    pipe = pipeline(args)
    interactive, live = sys.stdin.isatty(), sys.stdout.isatty()
    stream = live if args.stream is None else args.stream
    messages = [{"role": "system", "content": args.system}] if args.system else []
    if interactive:
        print(f"chatting with {args.model_dir}: type a message and Enter; an empty line or Ctrl-D ends", flush=True)
    turn = failed = 0
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
                from ..api.chat import encode_chat

                start = len(encode_chat(pipe.tokenizer, messages))
                printer = ReplyStream(pipe.tokenizer, start, sys.stdout, live)
            out = pipe.chat(messages, max_new_tokens=args.max_new_tokens, seed=seed, on_step=printer,
                            progress=False, **options)
        except UserError as exc:  # this turn only: the conversation goes on without it
            print(f"textdiffusion: error: {' '.join(str(exc).split())}", file=sys.stderr, flush=True)
            messages.pop()
            failed += 1
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
    return 2 if failed else 0  # a turn that failed on a user error (its line is above) fails the command
