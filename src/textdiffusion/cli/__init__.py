"""The `textdiffusion` command line: one module per command group, each holding both the parsers of its commands
and the `cmd_*` functions that do their work (call the library and print).

- main.py: the top-level parser (build_parser, which asks each group to add its commands) and main;
- options.py: the options and helpers several groups share (model, sampling, guidance, overrides, the Pipeline);
- generate.py: demo, samplers, sample, infill, edit, score;
- training.py: train, adapt, sft, distill, convert-state, prepare, presets;
- concept.py: concept train, concept continue (the sentence-concept family);
- bench.py: bench;
- serving.py: serve, chat.

Heavy imports (the Pipeline, training, serving) happen inside the cmd_* functions, so `--help` stays fast. Nothing
else in textdiffusion imports this package.
"""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
