"""What a training run prints while it works (train/trainer.py, core/progress.py): the validation NELBO of each
evaluation, what runs once the count of steps is full (the final evaluation, the save), and progress for runs that
start from a model trained quietly (the shipped model's run.progress is false): distill, sft and adapt show theirs.

stderr is no terminal under pytest, so the progress is the log form: plain lines, no carriage returns."""

from __future__ import annotations

import json
import math

import pytest

from textdiffusion.cli import main
from textdiffusion.train.distill import distill
from textdiffusion.train.trainer import Trainer, validation_line


def _progress_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("train: ")]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, write_corpus):
    return write_corpus(tmp_path_factory.mktemp("corpus") / "c.jsonl", n_docs=60)


@pytest.fixture(scope="module")
def quiet_run(tmp_path_factory, corpus, tiny_overrides):
    """A 2-step masked run trained with run.progress=false, as the shipped model was."""
    out = tmp_path_factory.mktemp("quiet") / "run"
    assert main(["train", "--config", "tiny", "--out", str(out), *tiny_overrides(corpus, steps=2, every=2)]) == 0
    saved = json.loads((out / "checkpoint" / "config.json").read_text())
    assert saved["train_config"]["run"]["progress"] is False
    return out


def test_a_run_prints_each_validation_nelbo_and_what_runs_after_the_last_step(tmp_path, corpus, tiny_config,
                                                                              capsys):
    Trainer(tiny_config(tmp_path / "run", corpus, "run.progress=true", steps=8, every=4)).run()
    err = capsys.readouterr().err
    assert "\r" not in err
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "val_nelbo" in r]
    assert [r["step"] for r in evals] == [4, 8]
    for row in evals:  # the line says what the metrics file holds, in the units a reader compares
        line = next(x for x in err.splitlines() if x.startswith(f"step {row['step']}: validation NELBO "))
        assert f"NELBO {row['val_nelbo']:.4f} ± {row['val_stderr']:.4f} nats/token" in line
        assert f"{row['val_nelbo'] / math.log(2):.4f} bits/token" in line
        assert f"ppl <= {row['val_ppl_bound']:.2f}" in line and f"({row['val_tokens']:,} tokens)" in line
    lines = _progress_lines(err)
    assert lines[0].startswith("train: 1/8 steps (12%)")  # asked for: a line at once, then every few seconds
    # past the last step the count is full: a log names the final evaluation and the save, then says done
    full = [x for x in lines if x.startswith("train: 8/8 steps (100%)")]
    assert any("final evaluation…" in x for x in full) and any("saving…" in x for x in full)
    assert full[-1].split(", ")[2] == "done" and "val=" in full[-1]
    order = err.index("final evaluation…"), err.index("step 8: validation NELBO"), err.rindex("saving…")
    assert list(order) == sorted(order)


def test_validation_lines_of_exact_and_edit_families():
    exact = {"step": 3, "val_nelbo": 2.0, "val_stderr": 0.01, "val_ppl_bound": math.exp(2.0), "val_tokens": 1234}
    assert validation_line(exact, exact=True) == ("step 3: validation NLL 2.0000 ± 0.0100 nats/token, 2.8854 "
                                                  "bits/token, ppl = 7.39 (1,234 tokens)")
    edit = {"step": 5, "val_loss": 1.5, "val_stderr": float("nan"), "val_tokens": 10}
    assert validation_line(edit, exact=False) == "step 5: validation loss 1.5000 (not a likelihood bound)"


def test_distill_from_a_quiet_model_shows_its_progress(tmp_path, quiet_run, capsys):
    distill(quiet_run, tmp_path / "student", teacher_steps=2, rounds=1, overrides=["train.steps=1"], log=print)
    lines = _progress_lines(capsys.readouterr().err)
    assert lines and lines[-1].startswith("train: 1/1 steps (100%)") and "done" in lines[-1]
    # asked not to: quiet, from Python (an override) and from the command line (--no-progress)
    distill(quiet_run, tmp_path / "s2", teacher_steps=2, rounds=1, overrides=["train.steps=1", "run.progress=false"],
            log=print)
    assert _progress_lines(capsys.readouterr().err) == []
    assert main(["distill", "--from", str(quiet_run), "--out", str(tmp_path / "s3"), "--teacher-steps", "2",
                 "--rounds", "1", "--no-progress", "train.steps=1"]) == 0
    assert _progress_lines(capsys.readouterr().err) == []


def test_sft_and_adapt_from_a_quiet_run_show_their_progress(tmp_path, corpus, tiny_overrides, quiet_run, capsys):
    chats = tmp_path / "chat.jsonl"
    chats.write_text("".join(json.dumps([{"role": "user", "content": f"{i}+1"},
                                         {"role": "assistant", "content": str(i + 1)}]) + "\n" for i in range(20)))
    assert main(["sft", "--from", str(quiet_run), "--data", str(chats), "--out", str(tmp_path / "sft"),
                 "train.steps=1", "data.val_fraction=0.2"]) == 0
    assert _progress_lines(capsys.readouterr().err)[-1].startswith("train: 1/1 steps (100%)")
    ar = tmp_path / "ar"
    assert main(["train", "--config", "tiny", "--out", str(ar), "process.name=autoregressive",
                 *tiny_overrides(corpus, steps=1, every=1)]) == 0
    assert _progress_lines(capsys.readouterr().err) == []  # its own run.progress=false
    assert main(["adapt", "--from", str(ar), "--out", str(tmp_path / "adapted"), "train.steps=1"]) == 0
    assert _progress_lines(capsys.readouterr().err)[-1].startswith("train: 1/1 steps (100%)")
