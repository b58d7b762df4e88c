"""The benchmark command: bench trains every family of a suite and compares them."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from .options import Command


def add_commands(command: Command) -> None:
    """bench."""
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
    p.add_argument("--setting", action="append", default=None, metavar="NAME",
                   help="only this sampler setting, named as in the table, e.g. 'ancestral(steps=128)' "
                        "(repeatable; every family measured must keep one)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override the suite's training config, e.g. --set train.steps=50 (repeatable)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--train-only", action="store_true",
                   help="train the missing models and stop (measure later, on a quiet machine)")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> None:
    from ..bench.run import run_suite, train_suite

    if args.train_only:
        train_suite(args.suite, Path(args.runs), args.family, args.tokenization, args.set)
        return
    # quoted as a shell would need it: setting names hold spaces and parentheses
    command = "textdiffusion bench " + shlex.join(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else f"bench {args.suite}"
    run_suite(args.suite, Path(args.runs), Path(args.results), None if args.no_write else Path(args.markdown),
              command, judge=args.judge, device=args.device, families=args.family, tokenizations=args.tokenization,
              overrides=args.set, extra_judges=tuple(args.also_judge), settings=args.setting)
