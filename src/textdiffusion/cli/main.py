"""The `textdiffusion` parser and entry point: build_parser asks each group module to add its commands, in the
order `--help` lists them; main runs the chosen command.

User mistakes (a missing file, a bad gap, steps <= 0, ...) print one line and exit with 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from ..core.errors import InputWarning, UserError
from . import bench, concept, generate, serving, training

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="textdiffusion", description=DESCRIPTION,
                                     formatter_class=_HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                help="`textdiffusion COMMAND --help` describes each")

    def command(name: str, summary: str, description: str | None = None, **kwargs) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=summary, description=description or summary[0].upper() + summary[1:] + ".",
                              formatter_class=_HelpFormatter, **kwargs)

    # the order of `textdiffusion --help`: the demo first, then training, benchmarks, generation and serving
    generate.add_demo(command)
    training.add_commands(command)
    concept.add_commands(command)
    bench.add_commands(command)
    generate.add_commands(command)
    serving.add_commands(command)
    return parser


def _show_warning(show):
    """Python's warning printer, but an InputWarning is one line like an error (no file, line or source)."""

    def shown(message, category, filename, lineno, file=None, line=None):
        if not issubclass(category, InputWarning):
            return show(message, category, filename, lineno, file, line)
        print(f"textdiffusion: warning: {' '.join(str(message).split())}", file=file or sys.stderr)

    return shown


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line's arguments. Config overrides (SECTION.KEY=VALUE) may also follow options, as in
    `train --config tiny train.steps=50 --out runs/x model.d_model=64`: argparse takes a positional list only
    once, so overrides found after it join it; anything else unknown is refused as argparse refuses it."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and isinstance(getattr(args, "overrides", None), list) \
            and all("=" in item and not item.startswith("-") for item in extra):
        args.overrides += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        with warnings.catch_warnings():  # restores Python's printer when the command ends
            warnings.showwarning = _show_warning(warnings.showwarning)
            return args.func(args) or 0  # a command may return its own status (chat: 2 when a turn failed)
    except UserError as exc:
        # one line, whatever the message holds: scripts and humans read the first line
        print(f"textdiffusion: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("textdiffusion: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `textdiffusion demo | head -1`: the reader left; stop quietly, as Unix tools do
        try:  # Python would complain again when it flushes stdout at exit: point stdout at nothing
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141  # 128 + SIGPIPE, the status a shell gives a tool that SIGPIPE stopped


if __name__ == "__main__":
    sys.exit(main())
