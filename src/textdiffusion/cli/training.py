"""Training commands: train, adapt, sft, distill, convert-state, prepare and presets."""

from __future__ import annotations

import dataclasses
import textwrap

from ..core.errors import UserError
from ..pretrained import DEFAULT_MODEL
from .options import Command, add_overrides, add_progress


def _train_epilog() -> str:
    """The config keys `train` accepts, with their defaults, read from the config dataclasses."""
    from ..train.config import PRESETS_DIR, Config

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


def add_commands(command: Command) -> None:
    """train, adapt, sft, distill, convert-state, prepare and presets."""
    p = command("train", "train a model from a preset or YAML config", epilog=_train_epilog())
    p.add_argument("--config", default=None,
                   help="preset name (see `presets`) or a YAML file; default tiny, or the run's own with --resume")
    p.add_argument("--out", default=None, help="run folder (overrides run.out_dir)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint")
    add_overrides(p, "train.steps=500 data.source=my.txt (keys listed below)")
    p.set_defaults(func=cmd_train)

    p = command("adapt", "continue an autoregressive run as a masked diffusion model (AR -> diffusion adaptation)",
                "Start a masked diffusion model from a trained autoregressive run (DiffuLLaMA / Dream): the AR\n"
                "weights are loaded, each position keeps predicting the token after the one it reads (logit shift),\n"
                "and the causal attention mask is opened to full attention over --anneal-steps steps. The run's own\n"
                "config (data, tokenizer, model) is reused; override any key, e.g. train.steps=500.\n"
                "--from smollm2 (or a .gguf file, or a Hugging Face Llama / Mistral / Qwen2 folder) starts from that\n"
                "pretrained causal LM instead, with its own tokenizer plus [MASK] (--config gives data and training).\n"
                "--block-size N adapts an AR run to block diffusion (BD3-LM) instead, from its weights, unshifted;\n"
                "from a pretrained causal LM it is Fast-dLLM v2's recipe: block diffusion with the logit shift and\n"
                "complementary masks. --ar fine-tunes the pretrained causal LM left to right on the same data: the\n"
                "AR baseline of a comparison, with the same data and token budget as an adaptation.\n"
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
    p.add_argument("--ar", action="store_true",
                   help="a pretrained causal LM only: keep it autoregressive (the AR baseline on the same data)")
    p.add_argument("--resume", action="store_true", help="continue the adapted run from its checkpoint")
    add_overrides(p, "train.steps=500")
    p.set_defaults(func=cmd_adapt)

    p = command("sft", "instruction-tune a trained model on conversations (LLaDA's SFT)",
                "Fine-tune a trained run on a JSONL file of conversations with LLaDA's recipe (data.packing=chat):\n"
                "prompts stay clean, each reply and its [EOS] padding is scored, normalised by its length. The\n"
                "run's own config (tokenizer, model, process) is reused; override any key, e.g. train.steps=500.")
    p.add_argument("--from", dest="start", required=True, metavar="RUN", help="the trained run folder to start from")
    p.add_argument("--data", required=True, help="a .jsonl file of conversations ({\"messages\": [...]} per line)")
    p.add_argument("--out", required=True, help="run folder of the fine-tuned model")
    p.add_argument("--resume", action="store_true", help="continue the fine-tuning run from its checkpoint")
    add_overrides(p, "train.steps=500")
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
    add_progress(p, "show each round's training progress on stderr, or not (default: shown, whatever the "
                    "source model's own run.progress was; run.progress=false also hides it)")
    add_overrides(p, "train.steps=200 train.lr=1e-4 (train.steps is per round)")
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
    add_overrides(p, "data.source=my_texts/ data.seq_len=1024")
    p.set_defaults(func=cmd_prepare)

    p = command("presets", "list the training presets",
                "List the training presets, each with its one-line description. Train one with\n"
                "`textdiffusion train --config NAME`; `textdiffusion train --help` lists the config keys.")
    p.set_defaults(func=cmd_presets)


def cmd_train(args) -> None:
    from ..train.config import load_config, load_run_config
    from ..train.trainer import train

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


def cmd_adapt(args) -> None:
    from ..train.adapt import AdaptTrainer, source_kind
    from ..train.config import load_config, load_run_config
    from ..train.recipes import LATEST as LATEST_RECIPE

    kind = source_kind(args.ar_model)
    ours = kind == "ours"
    process = ["process.name=masked"] + (["process.logit_shift=true"] if kind != "masked_lm" else [])
    if args.ar and (kind != "causal" or args.block_size is not None):
        raise UserError("--ar keeps a pretrained causal LM (smollm2, a .gguf file, an HF causal-LM folder) "
                        "autoregressive: drop --block-size, or --ar")
    if args.block_size is not None:
        if kind == "masked_lm":
            raise UserError("--block-size adapts an autoregressive model: pass an AR run or a pretrained causal LM")
        process = ["process.name=block", f"process.block_size={args.block_size}"]
        if not ours:  # Fast-dLLM v2: the shifted frame keeps step 0 the AR model; each mask and its complement
            process += ["process.logit_shift=true", "process.complementary_masks=true"]
    if args.ar:
        process = ["process.name=autoregressive"]
    if args.resume:  # the adapted run's own saved config
        cfg = load_run_config(args.out, [*args.overrides])
    elif ours:  # the AR run's config (data, tokenizer, model shape), as a logit-shifted masked model; a new
        # process, so today's training recipe even where the AR run's config predates recipes (read as recipe 1)
        cfg = load_run_config(args.ar_model, [*process, f"process.recipe={LATEST_RECIPE}", f"run.out_dir={args.out}",
                                              "run.progress=true", *args.overrides])
    else:  # a pretrained causal LM: data and training from --config, the network and tokenizer its own
        cfg = load_config(args.config, [*process, f"run.out_dir={args.out}", *args.overrides])
    if ours:
        trainer = AdaptTrainer(cfg, args.ar_model, anneal_steps=args.anneal_steps, resume=args.resume)
    elif kind == "masked_lm":
        from ..train.adapt_bert import BertStartTrainer

        if args.anneal_steps:
            raise UserError("a masked LM is bidirectional already: drop --anneal-steps")
        trainer = BertStartTrainer(cfg, args.ar_model, resume=args.resume)
    else:
        from ..train.adapt_llama import LlamaAdaptTrainer

        trainer = LlamaAdaptTrainer(cfg, args.ar_model, anneal_steps=args.anneal_steps, resume=args.resume)
    folder = trainer.run()
    print(f"checkpoint: {folder}")


def cmd_sft(args) -> None:
    from ..train.adapt import FinetuneTrainer
    from ..train.config import load_run_config

    if args.resume:
        cfg = load_run_config(args.out, [*args.overrides])
    else:  # the pretrained run's config (tokenizer, model, process), trained on conversations
        # run.progress=true: the start run's own choice (the shipped model's is false) is not this run's
        cfg = load_run_config(args.start, ["data.packing=chat", f"data.source={args.data}", f"run.out_dir={args.out}",
                                           "run.progress=true", *args.overrides])
    folder = FinetuneTrainer(cfg, args.start, resume=args.resume).run()
    print(f"checkpoint: {folder}")


def cmd_distill(args) -> None:
    from ..train.distill import distill

    overrides = [*args.overrides] + ([] if args.progress is None else [f"run.progress={str(args.progress).lower()}"])
    folders = distill(args.teacher, args.out, teacher_steps=args.teacher_steps, rounds=args.rounds,
                      overrides=overrides)
    print(f"student: {folders[-1]} (sample it with --steps {args.teacher_steps // 2 ** args.rounds})")


def cmd_convert_state(args) -> None:
    from ..train import checkpoint as ckpt

    folder = ckpt.convert_legacy_state(args.run)
    print(f"converted: {folder / ckpt.STATE_FILE} and {folder / ckpt.STATE_TENSORS_FILE}; "
          "continue with `textdiffusion train --out RUN --resume`")


def cmd_prepare(args) -> None:
    from ..train.config import load_config
    from ..train.prepare import prepare

    index = prepare(load_config(args.config, list(args.overrides)), args.out)
    rows = {split: entry["rows"] for split, entry in index["splits"].items()}
    print(f"prepared {args.out}: {rows['train']:,} training and {rows['validation']:,} validation rows of "
          f"{index['settings']['seq_len']} tokens ({index['tokenizer_kind']} tokenizer); train with "
          f"data.source=prepared:{args.out}")


def cmd_presets(args) -> None:
    from ..train.config import PRESETS_DIR, presets

    for name in presets():
        first = (PRESETS_DIR / f"{name}.yaml").read_text().splitlines()[0].lstrip("# ")
        print(f"{name:20s} {first}")
