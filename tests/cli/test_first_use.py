"""A first user's view of the command line: long runs in a log say how far they are, counts mean what they say,
`--help` names no default that the command refuses, and the light commands start without loading torch."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from textdiffusion.api.pipeline import Pipeline
from textdiffusion.cli import main
from textdiffusion.cli.generate import written_tokens
from textdiffusion.core import progress
from textdiffusion.models import ModelConfig, Transformer
from textdiffusion.pretrained import DEFAULT_MODEL
from textdiffusion.processes import BlockDiffusion, MaskedDiffusion
from textdiffusion.train.config import PRESETS_DIR


def _folder(tmp_path, byte_tok, process, seq_len: int = 48) -> str:
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=byte_tok.vocab_size, seq_len=seq_len, d_model=32, n_layers=1,
                                    n_heads=2))
    return str(Pipeline(model, process, byte_tok, {}).save_pretrained(tmp_path / process.name))


def test_score_of_a_file_into_a_log_prints_a_line_per_monte_carlo_draw(tmp_path, byte_tok, monkeypatch, capsys):
    """A log is no terminal: no bar, lines instead. With LOG_INTERVAL at 0 every update is a line, and one batch
    of windows moves the count once per Monte Carlo draw, not once when its minutes of work are over."""
    model = _folder(tmp_path, byte_tok, MaskedDiffusion(vocab_size=byte_tok.vocab_size, mask_id=byte_tok.mask_id))
    path = tmp_path / "t.txt"
    path.write_text("to be or not to be " * 30)  # 570 tokens: 11 windows of 48 and one of 42
    monkeypatch.setattr(progress, "LOG_INTERVAL", 0.0)
    assert main(["score", "--model", model, "--file", str(path), "--t-samples", "3", "--batch-size", "4"]) == 0
    captured = capsys.readouterr()
    assert "570 tokens, 3 t-samples" in captured.out
    lines = captured.err.splitlines()
    assert all(line.startswith("scoring: ") and "\r" not in line for line in lines), lines
    # batches of 4, 4 and 3 full windows and the last one alone: 4 batches x 3 draws, then the closing line
    assert len(lines) == 4 * 3 + 1, lines
    counts = [int(line.split()[1].split("/")[0]) for line in lines[:-1]]
    assert counts == sorted(counts) and len(set(counts)) == len(counts) and counts[-1] == 570
    assert counts[0] == 64  # a third of the first batch's 4 x 48 tokens
    assert lines[-1].startswith("scoring: 570/570 tok (100%), ") and ", done, " in lines[-1]
    assert lines[-1].endswith("nats/token")


def test_a_block_sample_counts_no_eos_padding(tmp_path, byte_tok, capsys):
    """BD3-LM stops at [EOS] and pads the rest of the canvas with [EOS]: those ids were not written."""
    folder = _folder(tmp_path, byte_tok, BlockDiffusion(byte_tok.vocab_size, byte_tok.mask_id, block_size=4),
                     seq_len=16)
    pipe = Pipeline.from_pretrained(folder, device="cpu")
    with torch.no_grad():  # every position predicts [EOS]: the first block stops each row at once
        pipe.model.norm.weight.zero_()
        pipe.model.norm.bias.copy_(torch.nn.functional.one_hot(torch.tensor(0), 32).float())
        pipe.model.head.weight.zero_()
        pipe.model.head.weight[byte_tok.eos_id, 0] = 50.0
    folder = str(pipe.save_pretrained(tmp_path / "eos"))
    assert main(["sample", "--model", folder, "--prompt", "ab", "--length", "40", "-n", "2", "--steps", "2",
                 "--seed", "0"]) == 0
    out = capsys.readouterr().out
    assert out.count("--- sample") == 2
    assert "[2 new tokens in " in out  # per row the [EOS] that stopped it: not the prompt's 2 tokens, not 2 x 40


def test_written_tokens_keeps_what_precedes_the_stop():
    eos = 9
    ids = torch.tensor([[1, 2, eos, eos, eos], [1, eos, 2, 3, 4], [eos] * 5, [1, 2, 3, 4, eos]])
    assert written_tokens(ids, eos) == 3 + 5 + 1 + 5
    assert written_tokens(ids, None) == ids.numel()
    assert written_tokens(ids, eos, prompt_tokens=2) == 1 + 3 + 0 + 3  # the row that stopped at once wrote none


def test_edit_needs_a_model_and_its_help_offers_none(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["edit", "--help"])
    assert exc.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert str(DEFAULT_MODEL) not in help_text and "shipped" not in help_text
    assert "required" in help_text and "process diffuser" in help_text
    assert main(["edit", "a text to revise"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("textdiffusion: error: edit needs --model") and err.count("\n") == 1, err


def test_light_commands_start_without_torch():
    """`presets` and every command's `--help` import no torch (1-2 s): the commands that run a model load it."""
    code = ("import sys, contextlib, io\n"
            "from textdiffusion.cli import build_parser, main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    assert main(['presets']) == 0\n"
            "parser = build_parser()\n"
            "parser.format_help()\n"
            "for sub in parser._subparsers._group_actions[0].choices.values():\n"
            "    sub.format_help()\n"
            "heavy = sorted(m for m in ('torch', 'numpy', 'transformers', 'fastapi') if m in sys.modules)\n"
            "print(heavy)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout


def test_every_readme_run_folder_is_made_where_it_first_appears():
    """A reader copies the README's commands in order: the first line that names a folder under runs/ must be
    the command that makes it (`--out runs/X`, a preset whose run.out_dir it is, a benchmark script writing it)
    or point to the commands that do."""
    readme = Path(__file__).resolve().parents[2] / "README.md"
    preset_out = {}
    for path in PRESETS_DIR.glob("*.yaml"):
        preset_out[path.stem] = (yaml.safe_load(path.read_text()).get("run") or {}).get("out_dir")
    seen: set[str] = set()
    for line in readme.read_text(encoding="utf-8").splitlines():
        for folder in re.findall(r"runs/[\w.-]+", line):
            if folder in seen:
                continue
            seen.add(folder)
            makers = [f"--out {folder}", f"concept train {folder}", "commands that make it"]
            makers += [f"train --config {name} " for name, out in preset_out.items() if out == folder]
            makes = any(m in line for m in makers) or re.search(rf"benchmarks/\S+\.py (\S+ )?{folder}\b", line)
            assert makes, f"README names {folder} before any command that makes it: {line.strip()}"
    assert {"runs/dlm", "runs/cls", "runs/edit-diffuser", "runs/shakespeare-ar"} <= seen
