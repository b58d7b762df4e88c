"""Reading a checkpoint cannot run code (issue 20.1): the trainer state is JSON plus safetensors, and an
old-format trainer_state.pt (a pickle) is refused with one line, never unpickled; one written by an
earlier version converts with torch's weights-only loader, which refuses anything but plain data."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from textdiffusion.cli import main
from textdiffusion.core.errors import UserError
from textdiffusion.train import checkpoint as ckpt
from textdiffusion.train.trainer import Trainer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, write_corpus) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "hamlet.jsonl", n_docs=120)


@pytest.fixture(scope="module")
def make_cfg(tiny_config):
    def make_cfg(out_dir: Path, corpus: Path, *extra: str):
        return tiny_config(out_dir, corpus, "model.dropout=0.1", *extra)  # dropout: the RNG state must resume too

    return make_cfg


def legacy_state(trainer: Trainer) -> dict:
    """What earlier versions pickled into trainer_state.pt."""
    return {"step": trainer.step, "tokens_seen": trainer.tokens_seen, "elapsed": trainer.elapsed,
            "optimizer": trainer.optimizer.state_dict(), "data": trainer.batches.state_dict(),
            "noise_gen": trainer.noise_gen.get_state(), "torch_rng": torch.get_rng_state(), "cuda_rng": None,
            "ema": {"decay": trainer.ema.decay, "updates": trainer.ema.updates}}


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, corpus, run_with_checkpoint) -> Path:
    """A run folder with a checkpoint at step 2, to copy and tamper with."""
    return run_with_checkpoint(tmp_path_factory.mktemp("base"), corpus, 2, "model.dropout=0.1")


class Payload:
    """Unpickling this runs code: it writes `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"import pathlib; pathlib.Path({str(self.marker)!r}).write_text('pwned')",)


def write_payload(path: Path, marker: Path) -> None:
    torch.save({"step": Payload(marker), "optimizer": {}}, path)


def as_old_format(run: Path) -> Path:
    """The run's checkpoint as earlier versions wrote it: no JSON/safetensors state."""
    folder = run / "checkpoint"
    (folder / ckpt.STATE_FILE).unlink()
    (folder / ckpt.STATE_TENSORS_FILE).unlink()
    return folder


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("textdiffusion: error:") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_the_trainer_state_holds_no_pickle(base_run):
    folder = base_run / "checkpoint"
    assert not (folder / ckpt.LEGACY_STATE_FILE).exists()
    for path in folder.iterdir():
        head = path.read_bytes()[:2]
        assert head not in (b"PK", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05"), f"{path.name} is a pickle"
    doc = json.loads((folder / ckpt.STATE_FILE).read_text())
    assert doc["format"] == ckpt.STATE_FORMAT and doc["state"]["step"] == 2
    state = ckpt.load_trainer_state(folder)
    assert state["step"] == 2 and state["data"] == {"epoch": 0, "cursor": 16}
    assert state["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.98)  # tuples and int keys survive JSON
    assert sorted(state["optimizer"]["state"]) == list(range(len(state["optimizer"]["state"])))


def test_a_malicious_old_format_state_is_not_unpickled_on_resume(tmp_path, base_run, capsys):
    run = shutil.copytree(base_run, tmp_path / "run")
    folder = as_old_format(run)
    marker, control = tmp_path / "pwned", tmp_path / "control"
    write_payload(folder / ckpt.LEGACY_STATE_FILE, marker)
    # the control: the loader earlier versions used does run the payload
    write_payload(tmp_path / "control.pt", control)
    torch.load(tmp_path / "control.pt", weights_only=False)
    assert control.read_text() == "pwned"

    assert main(["train", "--out", str(run), "--resume"]) == 2
    err = one_error_line(capsys)
    assert not marker.exists(), "resuming ran the code in trainer_state.pt"
    assert "old pickle format" in err and ckpt.CONVERT_COMMAND in err, err
    assert "train afresh" in err, err


@pytest.mark.parametrize("name", [ckpt.STATE_FILE, ckpt.STATE_TENSORS_FILE])
def test_a_pickle_in_place_of_the_new_state_files_is_corrupt_not_run(tmp_path, base_run, capsys, name):
    run = shutil.copytree(base_run, tmp_path / "run")
    marker = tmp_path / "pwned"
    write_payload(run / "checkpoint" / name, marker)
    assert main(["train", "--out", str(run), "--resume"]) == 2
    err = one_error_line(capsys)
    assert not marker.exists()
    assert name in err and "corrupt" in err, err


def test_an_old_format_state_converts_safely_and_resumes_exactly(tmp_path, corpus, base_run, make_cfg):
    run = shutil.copytree(base_run, tmp_path / "run")
    trainer = Trainer(make_cfg(run, corpus), resume=True)
    trainer.train_step()
    trainer.save()  # the reference: step 3 in the new format
    reference = ckpt.load_trainer_state(run / "checkpoint")
    torch.set_rng_state(reference["torch_rng"])
    folder = as_old_format(run)
    torch.save(legacy_state(trainer), folder / ckpt.LEGACY_STATE_FILE)

    with pytest.raises(UserError, match="old pickle format") as refused:
        ckpt.load_trainer_state(folder)
    # the command the message names, run as the user would
    command = re.search(r"`([^`]+)`", str(refused.value)).group(1)
    assert command == f"{ckpt.CONVERT_COMMAND} {folder}"
    done = subprocess.run([sys.executable, *shlex.split(command)[1:]], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "converted" in done.stdout and not done.stderr, done.stderr
    assert not (folder / ckpt.LEGACY_STATE_FILE).exists()
    converted = ckpt.load_trainer_state(folder)
    assert converted["step"] == 3 and converted["data"] == reference["data"] and converted["ema"] == reference["ema"]
    assert torch.equal(converted["noise_gen"], reference["noise_gen"])
    assert torch.equal(converted["torch_rng"], reference["torch_rng"])
    assert converted["optimizer"]["param_groups"] == reference["optimizer"]["param_groups"]
    for i, moments in reference["optimizer"]["state"].items():
        assert all(torch.equal(v, converted["optimizer"]["state"][i][k]) for k, v in moments.items())
    # and the converted run takes the same next step as the trainer that saved it
    resumed = Trainer(make_cfg(run, corpus), resume=True)
    loss_resumed = resumed.train_step()
    torch.set_rng_state(reference["torch_rng"])  # the global RNG (dropout) as the saving trainer left it
    assert loss_resumed == trainer.train_step()


def test_converting_a_malicious_old_format_state_refuses_it(tmp_path, base_run, capsys):
    run = shutil.copytree(base_run, tmp_path / "run")
    folder = as_old_format(run)
    marker = tmp_path / "pwned"
    write_payload(folder / ckpt.LEGACY_STATE_FILE, marker)
    assert main(["convert-state", str(run)]) == 2
    err = one_error_line(capsys)
    assert not marker.exists()
    assert "was not converted: it refers to" in err and "exec" in err, err
    assert (folder / ckpt.LEGACY_STATE_FILE).exists()
    with pytest.raises(UserError, match="nothing to convert"):
        ckpt.convert_legacy_state(base_run)


def test_a_state_file_of_the_wrong_shape_is_corrupt(tmp_path, base_run):
    run = shutil.copytree(base_run, tmp_path / "run")
    path = run / "checkpoint" / ckpt.STATE_FILE
    doc = json.loads(path.read_text())
    doc["state"]["noise_gen"] = {"$tensor": "not/there"}
    path.write_text(json.dumps(doc))
    with pytest.raises(UserError, match="corrupt or does not match"):
        ckpt.load_trainer_state(run / "checkpoint")
    doc["state"].pop("noise_gen")
    path.write_text(json.dumps(doc))
    with pytest.raises(UserError, match="'noise_gen' is missing"):
        ckpt.load_trainer_state(run / "checkpoint")


def test_a_streamed_data_position_resumes_exactly(tmp_path, corpus, make_cfg):
    """The stream cursor (chunks consumed) is in the JSON state; the resumed run draws the same next batch."""
    cfg = make_cfg(tmp_path, corpus, "data.streaming=true")
    first = Trainer(cfg)
    for _ in range(3):
        first.train_step()
    first.save()
    resumed = Trainer(cfg, resume=True)
    assert resumed.batches.state_dict() == first.batches.state_dict()
    assert first.batches.state_dict()["consumed"] == 3 * 8  # and the stream's position (data/packing.py)
    assert torch.equal(resumed.batches.next_global(), first.batches.next_global())
