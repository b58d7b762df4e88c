"""User mistakes end in one line and exit status 2 (CLI) or a UserError (Python), never a traceback;
`--help` is enough to use every command; long runs show a progress bar."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import shutil

import pytest
import torch

from textdiffusion.cli import build_parser, main
from textdiffusion.core.errors import UserError
from textdiffusion.pretrained import DEFAULT_MODEL
from textdiffusion.samplers import SAMPLERS, SUMMARIES, check_config

NOT_UTF8 = os.fsdecode(b"a\xe9")  # what Python makes of a command-line byte that is not UTF-8


def run_fails(argv: list[str], capsys, message: str) -> None:
    assert main(argv) == 2, argv
    err = capsys.readouterr().err
    assert err.startswith("textdiffusion: error:") and err.count("\n") == 1 and "Traceback" not in err, err
    assert message in err, err


@pytest.fixture
def tiny_model(tiny_pipeline, tmp_path) -> str:
    return str(tiny_pipeline.save_pretrained(tmp_path / "tiny"))


@pytest.fixture
def shipped_copy(tmp_path):
    """A copy of the shipped model folder to damage."""
    return shutil.copytree(DEFAULT_MODEL, tmp_path / "shipped")


def _edit_config(folder, **model):
    config = json.loads((folder / "config.json").read_text())
    config["model"].update(model)
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("argv, message", [
    (["infill", NOT_UTF8 + "[MASK]"], "text is not valid UTF-8 (byte 0xe9 at character 1)"),
    (["score", NOT_UTF8], "text argument 1 is not valid UTF-8 (byte 0xe9"),
    (["sample", "--prompt", NOT_UTF8], "prompt is not valid UTF-8 (byte 0xe9"),
    (["sample", "--temperature", "nan"], "temperature must be a finite number"),
    (["sample", "--temperature", "inf"], "temperature must be a finite number"),
    (["sample", "--top-p", "nan"], "top_p must be a finite number"),
    (["sample", "--option", "steps=2.5"], "steps must be an integer"),
    (["sample", "--option", "temperature=[1"], "--option temperature: cannot read the value"),
    (["sample", "--sampler", "threshold", "--option", "threshold=.inf"], "threshold must be a finite number"),
    (["sample", "--sampler", "remdm", "--option", "t_on=.nan"], "t_on must be a finite number"),
    (["sample", "-n", "0"], "num_samples must be positive"),
    (["score", "hi", "--t-samples", "0"], "t_samples must be positive"),
])
def test_cli_bad_arguments(tiny_model, capsys, argv, message):
    run_fails([*argv[:1], "--model", tiny_model, *argv[1:]], capsys, message)


def test_cli_bad_devices(tiny_model, capsys, monkeypatch):
    run_fails(["sample", "--model", tiny_model, "--device", "nonsense"], capsys, "unknown device 'nonsense'")
    run_fails(["score", "--model", tiny_model, "--device", "meta", "hi"], capsys, "unknown device 'meta'")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    run_fails(["sample", "--model", tiny_model, "--device", "cuda"], capsys, "needs a CUDA GPU")


@pytest.mark.parametrize("damage, message", [
    (lambda f: _edit_config(f, vocab_size=5000), "tensor embed.weight is [4096, 384] in the weights but [5000, 384]"),
    (lambda f: _edit_config(f, d_model="384"), "model.d_model must be a positive integer, got '384'"),
    (lambda f: _edit_config(f, n_heads=5), "must split into model.n_heads (5) heads"),
    (lambda f: _edit_config(f, n_layers=5), "the weights hold tensor blocks.5"),
    (lambda f: _edit_config(f, colour="red"), "lacks a valid model or process section"),
    (lambda f: (f / "tokenizer.json").write_text('{"version": "1.0", "trunc'), "tokenizer.json is corrupt"),
    (lambda f: (f / "tokenizer_meta.json").write_text("[1, 2"), "tokenizer_meta.json is unreadable or corrupt"),
    (lambda f: (f / "tokenizer_meta.json").write_text('{"kind": "byte"}'), "the tokenizer in"),
])
def test_cli_damaged_model_folders(shipped_copy, capsys, damage, message):
    damage(shipped_copy)
    run_fails(["score", "--model", str(shipped_copy), "hello"], capsys, message)


def test_user_error_is_a_value_error():
    assert issubclass(UserError, ValueError)


@pytest.mark.parametrize("call, message", [
    (lambda p: p.generate(seed="abc", steps=2), "seed must be an integer or None, got 'abc'"),
    (lambda p: p.generate(seed=True, steps=2), "seed must be an integer"),
    (lambda p: p.generate(prompt=123, steps=2), "prompt must be a str, got int"),
    (lambda p: p.generate(prompt=b"To be", steps=2), "prompt must be a str, got bytes: decode"),
    (lambda p: p.generate(num_samples="2", steps=2), "num_samples must be an integer"),
    (lambda p: p.generate(length=3.5, steps=2), "length must be an integer"),
    (lambda p: p.generate(sampler=["ancestral"]), "sampler must be a sampler's name"),
    (lambda p: p.generate(steps=2, temperature=float("nan")), "temperature must be a finite number"),
    (lambda p: p.generate(steps=2, top_p=float("inf")), "top_p must be a finite number"),
    (lambda p: p.generate(steps=2.0), "steps must be an integer"),
    (lambda p: p.generate(steps=2, cache="yes"), "cache must be true or false"),
    (lambda p: p.infill(b"a [MASK] b", steps=2), "text must be a str, got bytes"),
    (lambda p: p.infill("a\ud800 [MASK]", steps=2), "lone surrogate U+D800"),
    (lambda p: p.infill("a [MASK]", seed=1.5, steps=2), "seed must be an integer"),
    (lambda p: p.denoise(torch.zeros(1, 4)), "tensor of token ids"),
    (lambda p: p.denoise(torch.full((1, 4), 999)), "outside the vocabulary"),
    (lambda p: p.score(None), "texts must be a str or a list of str, got NoneType"),
    (lambda p: p.score(b"abc"), "texts must be a str or a list of str, got bytes"),
    (lambda p: p.score(["fine", b"abc"]), "texts[1] must be a str, got bytes"),
    (lambda p: p.score("abc", seed="0"), "seed must be an integer"),
    (lambda p: p.score("abc", t_samples=2.5), "t_samples must be an integer"),
    (lambda p: p.likelihood(torch.zeros(2, 4, dtype=torch.long), t_samples=0), "t_samples must be positive"),
    (lambda p: p.likelihood([[1, 2]]), "tensor of token ids"),
])
def test_python_api_rejects_bad_types(tiny_pipeline, call, message):
    with pytest.raises(UserError, match=re.escape(message)):
        call(tiny_pipeline)


def test_every_float_option_of_every_sampler_must_be_finite():
    for name, (config_cls, _) in SAMPLERS.items():
        for f in dataclasses.fields(config_cls):
            if "float" not in str(f.type):
                continue
            for bad in (math.nan, math.inf, -math.inf):
                with pytest.raises(UserError, match=f"{f.name} must be"):
                    check_config(config_cls(**{f.name: bad}), f"sampler {name!r}")
        check_config(config_cls(), name)  # the defaults pass


def test_no_cache_works_for_samplers_whose_cache_is_a_kind(tiny_model, capsys):
    assert main(["sample", "--model", tiny_model, "--sampler", "confidence", "--no-cache", "--steps", "4",
                 "--length", "8", "--seed", "0"]) == 0
    capsys.readouterr()


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_option_has_help_and_every_command_a_description():
    parser = build_parser()
    for name, sub in {"textdiffusion": parser, **_subparsers(parser)}.items():
        assert sub.description, name
        for action in sub._actions:
            assert action.help and action.help.strip(), (name, action.dest)


@pytest.mark.parametrize("command", ["", *_subparsers(build_parser())])
def test_help_exits_0(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"] if command else ["--help"])
    assert exc.value.code == 0
    assert "usage: textdiffusion" in capsys.readouterr().out


def test_help_shows_defaults_units_and_config_keys(capsys):
    def help_of(*argv: str) -> str:
        with pytest.raises(SystemExit):
            main([*argv, "--help"])
        return " ".join(capsys.readouterr().out.split())

    sample = help_of("sample")
    assert "(default: auto)" in sample and "128 for ancestral" in sample and "(default: 1)" in sample
    score = help_of("score")
    assert all(unit in score for unit in ("nats/token", "bits/token", "perplexity", "upper bound", "exact"))
    assert "(default: 32)" in score
    train = help_of("train")
    for key in ("data: source=shakespeare", "seq_len=128", "n_heads=", "train: steps=", "run: out_dir=",
                "textdiffusion presets"):
        assert key in train


def test_samplers_prints_user_summaries_and_options(capsys):
    assert main(["samplers"]) == 0
    out = capsys.readouterr().out
    for name, summary in SUMMARIES.items():
        assert f"{name:16s} {summary}" in out
    assert "Denoise `x`" not in out  # the functions' docstrings are for developers
    assert "options: steps=128, temperature=1.0, top_p=1.0, cache=True" in out


def test_sampling_shows_a_progress_bar_when_asked(tiny_model, capsys):
    argv = ["sample", "--model", tiny_model, "--steps", "3", "--length", "8", "--seed", "0"]
    assert main([*argv, "--progress"]) == 0
    captured = capsys.readouterr()
    assert "sampling: 100%" in captured.err and "step 3" in captured.err and "--- sample 1 ---" in captured.out
    assert main(argv) == 0  # auto: stderr is not a terminal here, so no bar
    assert capsys.readouterr().err == ""
    assert main(["infill", "--model", tiny_model, "--steps", "3", "ab[MASK]x3cd", "--progress"]) == 0
    assert "sampling: 100%" in capsys.readouterr().err
