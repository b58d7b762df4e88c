"""A save killed half-way (kill -9) leaves `.checkpoint.tmp-<pid>` and perhaps `.checkpoint.old` behind
(issue 12.7): the next save or resume clears them, keeps a live writer's temp folder, and never deletes
`.old` while it is the only complete checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from textdiffusion.cli import main
from textdiffusion.train import checkpoint as ckpt
from textdiffusion.train.trainer import Trainer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, write_corpus) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "hamlet.jsonl", n_docs=120)


@pytest.fixture(scope="module")
def make_cfg(tiny_config):
    def make_cfg(out_dir: Path, corpus: Path, steps: int = 8):
        return tiny_config(out_dir, corpus, steps=steps)

    return make_cfg


@pytest.fixture(scope="module")
def runs(tmp_path_factory, corpus, make_cfg) -> tuple[Path, Path]:
    """Two copies of one run: its checkpoint at step 2, and at step 3."""
    at2 = tmp_path_factory.mktemp("at2")
    trainer = Trainer(make_cfg(at2, corpus))
    for _ in range(2):
        trainer.train_step()
    trainer.save()
    at3 = tmp_path_factory.mktemp("at3")
    shutil.copytree(at2, at3, dirs_exist_ok=True)
    trainer = Trainer(make_cfg(at3, corpus), resume=True)
    trainer.train_step()
    trainer.save()
    return at2, at3


@pytest.fixture(scope="module")
def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: no process has this pid now
    return proc.pid


def step_of(folder: Path) -> int:
    return json.loads((folder / ckpt.CONFIG_FILE).read_text())["trained"]["steps"]


def half_written(folder: Path) -> Path:
    """What a save killed while writing leaves: a config and no weights."""
    folder.mkdir()
    (folder / ckpt.CONFIG_FILE).write_text('{"format": "textdiffusion", "trained": {"steps": 99}}')
    return folder


def leftovers(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir() if p.name.startswith(".checkpoint"))


def test_the_next_save_clears_dead_writers_temp_folders_and_a_superseded_old_copy(tmp_path, corpus, runs,
                                                                                   dead_pid, make_cfg):
    run = shutil.copytree(runs[1], tmp_path / "run")
    trainer = Trainer(make_cfg(run, corpus), resume=True)
    half_written(run / f".checkpoint.tmp-{dead_pid}")
    shutil.copytree(runs[0] / "checkpoint", run / ".checkpoint.old")  # killed after the second rename
    live = half_written(run / f".checkpoint.tmp-{os.getppid()}")  # a live process writing: not ours to delete
    other = half_written(run / ".checkpoint.tmp-notapid")  # not a name atomic_folder makes
    trainer.train_step()
    trainer.save()
    assert leftovers(run) == sorted([live.name, other.name])
    assert step_of(run / "checkpoint") == 4
    assert ckpt.load_trainer_state(run / "checkpoint")["step"] == 4


def test_resume_clears_leftovers_and_keeps_the_newer_checkpoint(tmp_path, corpus, runs, dead_pid, make_cfg):
    run = shutil.copytree(runs[1], tmp_path / "run")
    half_written(run / f".checkpoint.tmp-{dead_pid}")
    shutil.copytree(runs[0] / "checkpoint", run / ".checkpoint.old")
    resumed = Trainer(make_cfg(run, corpus), resume=True)
    assert resumed.step == 3
    assert leftovers(run) == []


def test_resume_after_a_kill_between_the_renames_puts_the_old_copy_back(tmp_path, corpus, runs, dead_pid, capsys):
    """checkpoint/ is gone and .checkpoint.old is the only complete checkpoint: it must be used, not deleted,
    also by the CLI's `--resume` without --config (which reads the run's own config)."""
    run = shutil.copytree(runs[0], tmp_path / "run")
    os.replace(run / "checkpoint", run / ".checkpoint.old")
    half_written(run / f".checkpoint.tmp-{dead_pid}")
    assert ckpt.resolve_model_dir(run / "checkpoint") == run / ".checkpoint.old"  # readers find it meanwhile
    assert main(["train", "--out", str(run), "--resume", "train.steps=3"]) == 0, capsys.readouterr().err
    assert leftovers(run) == []
    assert step_of(run / "checkpoint") == 3  # resumed at 2 (the old copy), trained one step, saved
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [3]  # one step: from 2 to 3


def test_clean_interrupted_save_never_deletes_the_only_copy(tmp_path):
    final = tmp_path / "model"
    old = ckpt.old_copy(final)
    half_written(old)
    ckpt.clean_interrupted_save(final)
    assert not old.exists() and step_of(final) == 99
    ckpt.clean_interrupted_save(tmp_path / "missing" / "model")  # no parent folder: nothing to do


def test_a_fresh_start_refuses_a_run_whose_checkpoint_is_in_the_old_copy(tmp_path, corpus, runs, make_cfg):
    run = shutil.copytree(runs[0], tmp_path / "run")
    os.replace(run / "checkpoint", run / ".checkpoint.old")
    with pytest.raises(ValueError, match="already holds a checkpoint"):
        Trainer(make_cfg(run, corpus))
    assert (run / ".checkpoint.old" / ckpt.CONFIG_FILE).is_file()


def test_bench_resumes_a_run_killed_between_the_renames(tmp_path, corpus, runs, make_cfg):
    """bench's ensure_trained reads checkpoint/config.json itself: it must find the old copy too, and
    resume from it instead of refusing the folder (or retraining over it)."""
    from textdiffusion.bench.runs import ensure_trained

    run = shutil.copytree(runs[0], tmp_path / "run")
    os.replace(run / "checkpoint", run / ".checkpoint.old")
    logged: list[str] = []
    folder = ensure_trained(make_cfg(run, corpus), log=logged.append)
    assert "resuming" in logged[0] and "at step 2" in logged[0], logged
    assert leftovers(run) == [] and step_of(folder) == 8
