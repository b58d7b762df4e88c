"""Command line: the parser of every `textdiffusion` command (their work is in commands.py).

User mistakes (a missing file, a bad gap, steps <= 0, ...) print one line and exit with 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import textwrap

from .commands import (
    cmd_adapt,
    cmd_bench,
    cmd_chat,
    cmd_convert_state,
    cmd_demo,
    cmd_distill,
    cmd_edit,
    cmd_infill,
    cmd_prepare,
    cmd_presets,
    cmd_sample,
    cmd_samplers,
    cmd_score,
    cmd_serve,
    cmd_sft,
    cmd_train,
)
from .core.errors import UserError
from .pretrained import DEFAULT_MODEL

DESCRIPTION = "Diffusion language models: sample, infill and score text, train models and compare them."


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows "(default: X)" after an option's help, except where the help already says it or there is no
    default to show (None, False, []); keeps the line breaks of descriptions and epilogs."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or any(action.default is d for d in (None, False, argparse.SUPPRESS)) \
                or action.default == []:
            return text
        return super()._get_help_string(action)


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=str(DEFAULT_MODEL),
                   help="model folder: one written by `train` or save_pretrained (default: the shipped "
                        "Shakespeare MDLM)")
    p.add_argument("--device", default="auto",
                   help="auto (a CUDA GPU if there is one, else the CPU), cpu, cuda, cuda:N or mps")
    p.add_argument("--dtype", default=None, choices=["bf16", "fp16", "fp32"],
                   help="the weights' dtype in memory (default: fp32 for our folders, as stored for outside "
                        "formats such as LLaDA, Dream or BERT folders; bf16 halves an fp32 model)")


def _add_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show a progress bar on stderr, or never (default: on a terminal, once a run has "
                        "taken 2 seconds)")


def _add_sampling(p: argparse.ArgumentParser) -> None:
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
    _add_progress(p)


def _add_guidance(p: argparse.ArgumentParser) -> None:
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


def _add_overrides(p: argparse.ArgumentParser, example: str) -> None:
    """The config overrides a training-like command takes after its options."""
    p.add_argument("overrides", nargs="*", metavar="SECTION.KEY=VALUE", help=f"config overrides, e.g. {example}")


def _train_epilog() -> str:
    """The config keys `train` accepts, with their defaults, read from the config dataclasses."""
    from .train.config import PRESETS_DIR, Config

    lines = ["config sections and keys, with their defaults (a preset or YAML file overrides them, and",
             "section.key=value overrides both):"]
    for section in dataclasses.fields(Config):
        keys = [f"{f.name}={f.default}" for f in dataclasses.fields(section.default_factory())
                if f.default is not dataclasses.MISSING]
        lines += textwrap.wrap(" ".join(keys), width=100, initial_indent=f"  {section.name + ':':9s}",
                               subsequent_indent=" " * 11)
    lines += ["  process also takes the options of the chosen process, e.g. process.transition=uniform for d3pm.",
              "",
              f"`textdiffusion presets` lists the presets (YAML files in {PRESETS_DIR}).",
              "example: textdiffusion train --config shakespeare --out runs/mine train.steps=500 data.source=my.txt"]
    return "\n".join(lines)


SCORE_DESCRIPTION = """\
Negative log-likelihood of texts or files under the model, per token, in three units:
nats/token (natural log), bits/token (log base 2) and perplexity (e^nats). Lower is better.
For the autoregressive baseline it is exact; for diffusion models it is the NELBO, an upper
bound on the NLL estimated by Monte Carlo over the noise level t, shown as mean ± standard
error (so "ppl <="). Texts longer than the model are scored in consecutive windows of its
length, a batch of windows at a time; files are read in pieces, so any size fits in memory."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="textdiffusion", description=DESCRIPTION,
                                     formatter_class=_HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                help="`textdiffusion COMMAND --help` describes each")

    def command(name: str, summary: str, description: str | None = None, **kwargs) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=summary, description=description or summary[0].upper() + summary[1:] + ".",
                              formatter_class=_HelpFormatter, **kwargs)

    p = command("demo", "samples, an infill and a filmstrip from the shipped model")
    _add_model(p)
    p.add_argument("--steps", type=int, default=None, help="reverse diffusion steps (default: the sampler's)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the samples and the infill")
    p.set_defaults(func=cmd_demo)

    p = command("train", "train a model from a preset or YAML config", epilog=_train_epilog())
    p.add_argument("--config", default=None,
                   help="preset name (see `presets`) or a YAML file; default tiny, or the run's own with --resume")
    p.add_argument("--out", default=None, help="run folder (overrides run.out_dir)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint")
    _add_overrides(p, "train.steps=500 data.source=my.txt (keys listed below)")
    p.set_defaults(func=cmd_train)

    p = command("adapt", "continue an autoregressive run as a masked diffusion model (AR -> diffusion adaptation)",
                "Start a masked diffusion model from a trained autoregressive run (DiffuLLaMA / Dream): the AR\n"
                "weights are loaded, each position keeps predicting the token after the one it reads (logit shift),\n"
                "and the causal attention mask is opened to full attention over --anneal-steps steps. The run's own\n"
                "config (data, tokenizer, model) is reused; override any key, e.g. train.steps=500.\n"
                "--from smollm2 (or a .gguf file, or a Hugging Face Llama / Mistral / Qwen2 folder) starts from that\n"
                "pretrained causal LM instead, with its own tokenizer plus [MASK] (--config gives data and training).\n"
                "--block-size N adapts an AR run to block diffusion (BD3-LM) instead, from its weights, unshifted.\n"
                "--from a masked-LM folder (BERT, RoBERTa, ModernBERT) starts a masked denoiser from that encoder.")
    p.add_argument("--from", dest="ar_model", required=True, metavar="AR_RUN",
                   help="the autoregressive run folder (or its checkpoint/), or smollm2, a .gguf file, an HF "
                        "causal-LM folder or an HF masked-LM folder")
    p.add_argument("--out", required=True, help="run folder of the adapted model")
    p.add_argument("--anneal-steps", type=int, default=0,
                   help="steps over which the causal mask opens to full attention (0: full from the start)")
    p.add_argument("--config", default="tiny",
                   help="preset or YAML whose data and train sections a pretrained causal-LM start uses "
                        "(its model section is the checkpoint's)")
    p.add_argument("--block-size", type=int, default=None,
                   help="adapt an AR run to block diffusion with this block size (no logit shift, no annealing)")
    p.add_argument("--resume", action="store_true", help="continue the adapted run from its checkpoint")
    _add_overrides(p, "train.steps=500")
    p.set_defaults(func=cmd_adapt)

    p = command("sft", "instruction-tune a trained model on conversations (LLaDA's SFT)",
                "Fine-tune a trained run on a JSONL file of conversations with LLaDA's recipe (data.packing=chat):\n"
                "prompts stay clean, each reply and its [EOS] padding is scored, normalised by its length. The\n"
                "run's own config (tokenizer, model, process) is reused; override any key, e.g. train.steps=500.")
    p.add_argument("--from", dest="start", required=True, metavar="RUN", help="the trained run folder to start from")
    p.add_argument("--data", required=True, help="a .jsonl file of conversations ({\"messages\": [...]} per line)")
    p.add_argument("--out", required=True, help="run folder of the fine-tuned model")
    p.add_argument("--resume", action="store_true", help="continue the fine-tuning run from its checkpoint")
    _add_overrides(p, "train.steps=500")
    p.set_defaults(func=cmd_sft)

    p = command("distill", "distil a masked diffusion model into a few-step sampler (SDTT)",
                "Self-distillation through time (Deschenaux & Gulcehre, 2024): in each round a student, started\n"
                "from its teacher, learns to match in one ancestral step the teacher's two-step output law (KL);\n"
                "round r distils --teacher-steps / 2^(r-1) steps into half as many. The model's own config (data,\n"
                "tokenizer, model, process) is reused; train.steps is per round. The last round's checkpoint is the\n"
                "student: sample it with --steps TEACHER_STEPS / 2^ROUNDS.")
    p.add_argument("--from", dest="teacher", default=str(DEFAULT_MODEL), metavar="MODEL",
                   help="the masked diffusion model (or run folder) to distil (default: the shipped model)")
    p.add_argument("--out", required=True, help="folder of the rounds: OUT/round-1, OUT/round-2, ...")
    p.add_argument("--teacher-steps", type=int, default=64,
                   help="sampling steps of the first teacher (a multiple of 2^rounds)")
    p.add_argument("--rounds", type=int, default=3, help="rounds, each halving the sampling steps")
    _add_overrides(p, "train.steps=200 train.lr=1e-4 (train.steps is per round)")
    p.set_defaults(func=cmd_distill)

    p = command("convert-state", "make a run trained by an older version resumable",
                "Rewrite a run's checkpoint/trainer_state.pt (a pickle, which this version never unpickles\n"
                "because unpickling can run code) as trainer_state.json + trainer_state.safetensors. It reads\n"
                "the pickle with PyTorch's weights-only loader, which refuses anything but plain data.")
    p.add_argument("run", metavar="RUN_OR_CHECKPOINT_FOLDER", help="the run folder (or its checkpoint/)")
    p.set_defaults(func=cmd_convert_state)

    p = command("prepare", "tokenise a config's data once into memory-mapped shards for training",
                "Tokenise the data source of a preset or YAML config (data.source, data.tokenizer, data.seq_len,\n"
                "data.packing, the validation split) into OUT: packed rows in .bin shards read by np.memmap, an\n"
                "index.json and the tokenizer. Train on it with data.source=prepared:OUT and the same data keys;\n"
                "it resumes exactly on any number of processes and tokenises nothing while training.")
    p.add_argument("--config", default="tiny", help="preset name (see `presets`) or a YAML file whose data section "
                   "to prepare (default tiny)")
    p.add_argument("--out", required=True, help="the folder to write (replaced atomically if it holds prepared data)")
    _add_overrides(p, "data.source=my_texts/ data.seq_len=1024")
    p.set_defaults(func=cmd_prepare)

    p = command("presets", "list the training presets",
                "List the training presets, each with its one-line description. Train one with\n"
                "`textdiffusion train --config NAME`; `textdiffusion train --help` lists the config keys.")
    p.set_defaults(func=cmd_presets)

    p = command("bench", "train and compare every family of a suite: one table, JSON and plots")
    p.add_argument("suite", help="quick (minutes on a CPU) or small (the real CPU comparison)")
    p.add_argument("--runs", default="runs/bench", help="where the suite's models are trained (reused if done)")
    p.add_argument("--results", default="benchmarks/results", help="folder for the JSON and PNG plots")
    p.add_argument("--markdown", default="BENCHMARKS.md", help="file whose section for this suite is rewritten")
    p.add_argument("--no-write", action="store_true", help="print the table only; write no markdown")
    p.add_argument("--judge", default=None,
                   help="ar (default: the suite's AR judge, trained apart from the AR baseline with another seed and "
                        "twice its steps; it generates nothing), smollm2, an HF folder or a .gguf file")
    p.add_argument("--also-judge", action="append", default=[], metavar="JUDGE",
                   help="score the same samples with this judge too (smollm2, an HF folder or a .gguf file; "
                        "repeatable); SmolLM2 is added where installed. A judge scores no row its model generated")
    p.add_argument("--family", action="append", default=None, help="only this family (repeatable)")
    p.add_argument("--tokenization", action="append", default=None, help="only this tokenization (repeatable)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override the suite's training config, e.g. --set train.steps=50 (repeatable)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--train-only", action="store_true",
                   help="train the missing models and stop (measure later, on a quiet machine)")
    p.set_defaults(func=cmd_bench)

    p = command("samplers", "list the samplers and their options",
                "List the samplers: what each does, which models it runs, and its options with their\n"
                "defaults. Pick one with `sample --sampler NAME` (or infill); set options with --steps,\n"
                "--temperature, --top-p, --no-cache or --option KEY=VALUE.")
    p.set_defaults(func=cmd_samplers)

    p = command("sample", "generate text")
    _add_model(p)
    _add_sampling(p)
    p.add_argument("-n", "--num-samples", type=int, default=1, help="how many samples to generate (in one batch)")
    p.add_argument("--length", type=int, default=None, help="tokens per sample (default: the model's length)")
    p.add_argument("--prompt", default=None, help="text the samples start with")
    _add_guidance(p)
    p.set_defaults(func=cmd_sample)

    p = command("infill", 'fill gaps: "The [MASK]x5 of the night"',
                "Fill the gaps of a text using the context on both sides: [MASK] is a one-token gap,\n"
                '[MASK]xN a gap of N tokens, e.g. "The [MASK]x5 of the night".')
    _add_model(p)
    _add_sampling(p)
    p.add_argument("text", help="text with [MASK] (one token) or [MASK]xN (N tokens) gaps")
    p.add_argument("-n", "--num-samples", type=int, default=1, help="how many fills to generate (in one batch)")
    p.set_defaults(func=cmd_infill)

    p = command("edit", 'revise a text with an edit model: "To be or not to bee"',
                "Revise a text with an edit model (process diffuser): each of --steps revision steps tags every\n"
                "token keep / delete / replace and every gap with insertions, then writes the new tokens, so the\n"
                "length changes. --option beam=B --option revisions=R for DiffusER's 2-D beam search.\n"
                "An Edit Flows model (process edit_flow) runs --steps Euler steps of its insert / delete /\n"
                "substitute process from the text; --option t_start=0.9 starts late for a text close to clean.")
    _add_model(p)
    _add_sampling(p)
    p.add_argument("text", help="the text to revise")
    p.add_argument("-n", "--num-samples", type=int, default=1, help="how many revisions to generate (in one batch)")
    p.set_defaults(func=cmd_edit)

    p = command("score", "negative log-likelihood of texts: exact (autoregressive) or its NELBO bound (diffusion)",
                SCORE_DESCRIPTION)
    _add_model(p)
    p.add_argument("text", nargs="*", help="texts to score")
    p.add_argument("--file", action="append",
                   help="score the contents of a file of any size; bytes that are not UTF-8 count as U+FFFD "
                        "(repeatable)")
    p.add_argument("--t-samples", type=int, default=32,
                   help="Monte Carlo draws of t per window (diffusion only): more draws, a smaller ±")
    p.add_argument("--batch-size", type=int, default=16, help="windows of the model's length scored together")
    p.add_argument("--seed", type=int, default=0, help="seed of the Monte Carlo draws (diffusion only)")
    _add_progress(p)
    p.set_defaults(func=cmd_score)

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
    p.add_argument("--no-batching", action="store_true", help="run every forward pass alone (for comparisons)")
    p.add_argument("--batch-wait-ms", type=float, default=20.0,
                   help="how long a shared forward pass waits for requests still busy between two steps")
    p.set_defaults(func=cmd_serve)

    p = command("chat", "chat with a model: messages from stdin, the reply denoising live in the terminal",
                "Chat with a model under its chat template (its folder's own, else textdiffusion's role markers).\n"
                "Each line read from stdin is a user message; the reply is generated after the conversation so\n"
                "far and ends at [EOS]. On a terminal the reply is redrawn at every step as its masks (▒) resolve;\n"
                "with --stream elsewhere each step prints one line. An empty line or Ctrl-D ends the chat.")
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as exc:
        # one line, whatever the message holds: scripts and humans read the first line
        print(f"textdiffusion: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("textdiffusion: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
