"""Every command does bounded work and fails in one clear line (exit 2) that names the limit and the knob:
requests sized past this machine's memory or an hour of work are refused before anything is allocated, and
malformed inputs, busy ports and closed pipes end without a traceback.

The memory and speed of "this machine" are pinned (8 GB free, 1 TFLOP/s) so that a refusal does not depend on
the machine the tests run on; nothing here allocates more than a tiny model."""

from __future__ import annotations

import io
import json
import os
import sys

import pytest
import torch

from textdiffusion.api.pipeline import Pipeline
from textdiffusion.cli import main
from textdiffusion.core import budget
from textdiffusion.data.tokenizers import ByteTokenizer
from textdiffusion.models import ModelConfig, Transformer
from textdiffusion.processes import BlockDiffusion
from textdiffusion.processes.edit import Diffuser

NOT_UTF8 = os.fsdecode(b"a\xe9")  # what Python makes of a command-line byte that is not UTF-8


@pytest.fixture(autouse=True)
def pinned_machine(monkeypatch):
    monkeypatch.setattr(budget, "free_memory", lambda device=None: 8 * budget.GB)
    monkeypatch.setattr(budget, "flops_per_second", lambda device_type="cpu": 1e12)
    monkeypatch.delenv("TEXTDIFFUSION_MAX_HOURS", raising=False)


def fails(argv: list[str], capsys, *messages: str) -> str:
    """Run argv, expect exit 2 and one line holding every message; return the line."""
    assert main(argv) == 2, argv
    err = capsys.readouterr().err
    assert err.startswith("textdiffusion: error:") and err.count("\n") == 1 and "Traceback" not in err, err
    for message in messages:
        assert message in err, err
    return err


def _folder(tmp_path, name: str, process) -> str:
    tok = ByteTokenizer()
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, seq_len=32, d_model=32, n_layers=1, n_heads=2,
                                    **process.model_fields()))
    return str(Pipeline(model, process, tok, {}).save_pretrained(tmp_path / name))


@pytest.fixture
def tiny_model(tiny_pipeline, tmp_path) -> str:
    return str(tiny_pipeline.save_pretrained(tmp_path / "tiny"))


@pytest.fixture
def bd3_model(tmp_path) -> str:
    tok = ByteTokenizer()
    return _folder(tmp_path, "bd3", BlockDiffusion(tok.vocab_size, tok.mask_id, block_size=8))


@pytest.fixture
def edit_model(tmp_path) -> str:
    tok = ByteTokenizer()
    return _folder(tmp_path, "edit", Diffuser(tok.vocab_size, tok.mask_id, num_steps=4, max_insert=6))


@pytest.fixture
def corpus(tmp_path, write_corpus):
    return write_corpus(tmp_path / "corpus.jsonl", n_docs=20)


# ---- sampling and scoring: memory and time from the request's sizes --------------------------------------------

@pytest.mark.parametrize("argv, messages", [
    (["sample", "--steps", "1000000000"], ["1,000,000,000 forward passes", "over the 1-hour limit", "--steps",
                                           "TEXTDIFFUSION_MAX_HOURS"]),
    (["sample", "-n", "1000000"], ["1,000,000 x 48 tokens", "of memory, more than the 8.0 GB this machine has free",
                                   "lower the number of samples (-n)"]),
    (["score", "hello", "--t-samples", "100000000"], ["100,000,000 forward passes", "over the 1-hour limit",
                                                      "--t-samples"]),
])
def test_sampling_and_scoring_past_the_machine_are_refused(tiny_model, capsys, argv, messages):
    fails([*argv[:1], "--model", tiny_model, "--device", "cpu", *argv[1:]], capsys, *messages)


def test_a_long_block_sample_is_refused_before_its_canvas(bd3_model, capsys):
    fails(["sample", "--model", bd3_model, "--length", "100000000"], capsys,
          "sampler 'block' (1 x 100,000,000 tokens) needs at least", "lower the number of samples (-n) or the length")


def test_a_wide_beam_is_refused(edit_model, capsys):
    fails(["edit", "--model", edit_model, "--option", "beam=100000", "hello"], capsys,
          "sampler 'edit' (100,000 x 32 tokens)", "more than the 8.0 GB", "beam x revisions (--option beam=B")


def test_the_time_limit_is_a_knob(tiny_model, capsys, monkeypatch):
    monkeypatch.setenv("TEXTDIFFUSION_MAX_HOURS", "0.000001")
    fails(["sample", "--model", tiny_model, "--steps", "1000"], capsys, "over the 1e-06-hour limit")


# ---- model sizes: checked against memory before the model is built ---------------------------------------------

@pytest.mark.parametrize("override, message", [
    ("model.d_model=1000000", "training a model of d_model 1000000"),
    ("model.n_layers=100000", "n_layers 100000"),
])
def test_training_a_model_past_memory_is_refused(tmp_path, corpus, tiny_overrides, capsys, override, message):
    fails(["train", "--out", str(tmp_path / "run"), *tiny_overrides(corpus), override], capsys, message,
          "more than the 8.0 GB", "lower model.d_model")


def test_a_huge_bpe_vocabulary_is_refused(tmp_path, corpus, tiny_overrides, capsys):
    fails(["train", "--out", str(tmp_path / "run"), *tiny_overrides(corpus), "data.tokenizer=bpe",
           "data.vocab_size=100000000"], capsys, "data.vocab_size must be an integer in [261, 1048576]")


@pytest.mark.parametrize("key, value", [("n_layers", 10**7), ("d_model", 38400000), ("vocab_size", 10**11),
                                        ("seq_len", 10**11)])
def test_a_model_folder_too_big_to_build_is_refused(tiny_model, capsys, key, value):
    config_file = os.path.join(tiny_model, "config.json")
    config = json.loads(open(config_file).read())
    config["model"][key] = value
    with open(config_file, "w") as fh:
        json.dump(config, fh)
    fails(["sample", "--model", tiny_model], capsys, f"{key} {value}", "needs at least", "of memory",
          "lower model.d_model, model.n_layers, model.vocab_size or model.seq_len")


# ---- malformed inputs -------------------------------------------------------------------------------------------

def test_train_input_mistakes(tmp_path, corpus, tiny_overrides, capsys):
    out = str(tmp_path / "run")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "abc"}\n{"text": broken\n')
    fails(["train", "--out", out, *tiny_overrides(bad)], capsys, "bad.jsonl line 2 is not JSON",
          "one JSON object per line")
    binary = tmp_path / "config.yaml"
    binary.write_bytes(b"data:\n  source: \xd0\xff\x00\x01")
    fails(["train", "--config", str(binary), "--out", out], capsys, "config.yaml is not a YAML config: byte 0xd0")
    fails(["train", "--out", out, *tiny_overrides(corpus), f"data.source={NOT_UTF8}.txt"], capsys,
          "the value of data.source is not valid UTF-8 (byte 0xe9")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    fails(["train", "--out", str(a_file), *tiny_overrides(corpus)], capsys,
          "run.out_dir must be a folder path, not a file's (choose another --out)")


def test_prepare_refuses_an_empty_source(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    fails(["prepare", "--out", str(tmp_path / "prepared"), f"data.source={empty}"], capsys,
          "gives no training rows", "lower data.seq_len")
    assert not (tmp_path / "prepared").exists()


def test_export_to_a_missing_folder_is_refused_before_sampling(tiny_model, tmp_path, capsys):
    target = tmp_path / "no" / "such" / "f.html"
    fails(["sample", "--model", tiny_model, "--steps", "2", "--export", str(target)], capsys,
          f"the folder {target.parent} does not exist")
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize("port", ["-1", "99999"])
def test_serve_refuses_a_port_out_of_range(capsys, port):
    fails(["serve", "--port", port], capsys,
          f"--port must be a TCP port from 0 to 65535 (0: any free port), got {port}")


def test_bench_refuses_an_unknown_family_and_a_missing_gpu_at_once(tmp_path, capsys, monkeypatch):
    common = ["bench", "quick", "--runs", str(tmp_path / "runs"), "--no-write", "--results", str(tmp_path / "res")]
    fails([*common, "--family", "nosuch"], capsys, "suite 'quick' has no family 'nosuch': choose --family from ar")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    fails([*common, "--family", "ar", "--device", "cuda"], capsys, "needs a CUDA GPU")
    assert not (tmp_path / "runs").exists()  # refused before any training


def test_resume_of_a_finished_run_says_so(tmp_path, corpus, run_with_checkpoint, capsys):
    run = run_with_checkpoint(tmp_path / "run", corpus, 2)
    assert main(["train", "--out", str(run), "--resume", "train.steps=2"]) == 0
    out = capsys.readouterr().out
    assert "already finished its train.steps=2 steps: nothing to train (to train on, set train.steps above 2)" \
        in out, out
    fails(["train", "--out", str(run), "--resume", "train.steps=1"], capsys,
          "is at step 2, past train.steps=1: to train on, set train.steps above 2")


# ---- chat and pipes -----------------------------------------------------------------------------------------------

def test_chat_exits_2_when_a_turn_fails(tiny_model, capsys, monkeypatch):
    with open(os.path.join(tiny_model, "chat_template.jinja"), "w") as fh:
        fh.write("{{ 'A' * 4000000000 }}")
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\n"))
    fails(["chat", tiny_model, "--steps", "2"], capsys, "the chat template asks for a repeated text or list of "
          "4,000,000,000 items, over the limit of 1,000,000")


def test_a_closed_pipe_ends_the_command_quietly(capsys):
    read, write = os.pipe()
    os.close(read)  # `| head -1` has read its line and gone
    stdout = sys.stdout
    with os.fdopen(write, "w", buffering=1) as closed:
        sys.stdout = closed
        try:
            status = main(["demo", "--steps", "2"])
        finally:
            sys.stdout = stdout
    assert status == 141  # 128 + SIGPIPE, as a shell reports a tool that the closed pipe stopped
    assert capsys.readouterr().err == ""
