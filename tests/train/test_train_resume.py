"""Checkpoints resume exactly, fail loudly when damaged, and are swapped into place atomically.

"Training N steps straight and N/2 + resume + N/2 give the same parameters (CPU, within 1e-6)."
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from textdiffusion.core.errors import UserError
from textdiffusion.train import checkpoint as ckpt
from textdiffusion.train.trainer import Trainer

pytestmark = pytest.mark.slow

STEPS, HALF = 8, 4
TOL = 1e-6


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, write_corpus) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "hamlet.jsonl")


@pytest.fixture(scope="module")
def make_cfg(tiny_config):
    def make_cfg(out_dir: Path, corpus: Path, *extra: str):
        return tiny_config(out_dir, corpus, "run.sample_steps=4", *extra, steps=STEPS, every=HALF)

    return make_cfg


class Interrupted(Exception):
    """Stands for the job being killed right after a checkpoint was written."""


def run_interrupted(cfg, stop_after: int) -> Trainer:
    """Run the real loop (logs, evals, saves) of a `train.steps` run and kill it after the save at `stop_after`."""
    trainer = Trainer(cfg, resume=False)
    real_save = trainer.save

    def save_then_die():
        real_save()
        if trainer.step == stop_after:
            raise Interrupted

    trainer.save = save_then_die
    with pytest.raises(Interrupted):
        trainer.run()
    return trainer


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def optimizer_diff(a: dict, b: dict) -> float:
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    worst = 0.0
    for i in a["state"]:
        for key, va in a["state"][i].items():
            worst = max(worst, (va.double() - b["state"][i][key].double()).abs().max().item())
    return worst


def metrics(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def by_step(rows: list[dict], key: str) -> dict[int, float]:
    return {r["step"]: r[key] for r in rows if key in r}  # a later row for a step wins (a resumed run)


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_half_resume_half_equals_straight_run(tmp_path, corpus, dropout, make_cfg):
    extra = [f"model.dropout={dropout}"]
    straight = Trainer(make_cfg(tmp_path / "a", corpus, *extra)).run()

    interrupted = run_interrupted(make_cfg(tmp_path / "b", corpus, *extra), stop_after=HALF)
    assert interrupted.step == HALF
    state = ckpt.load_trainer_state(tmp_path / "b" / "checkpoint")
    assert state["step"] == HALF and state["ema"]["updates"] == HALF
    resumed = Trainer(make_cfg(tmp_path / "b", corpus, *extra), resume=True)
    assert resumed.step == HALF and resumed.tokens_seen == HALF * 8 * 32
    resumed_dir = resumed.run()

    weights = max_diff(load_file(straight / ckpt.WEIGHTS_FILE), load_file(resumed_dir / ckpt.WEIGHTS_FILE))
    ema = max_diff(load_file(straight / ckpt.EMA_FILE), load_file(resumed_dir / ckpt.EMA_FILE))
    sa, sb = ckpt.load_trainer_state(straight), ckpt.load_trainer_state(resumed_dir)
    optim = optimizer_diff(sa["optimizer"], sb["optimizer"])
    print(f"dropout={dropout}: max |diff| weights {weights:.3g}, ema {ema:.3g}, optimizer {optim:.3g}")
    assert weights <= TOL and ema <= TOL and optim <= TOL
    assert sa["step"] == sb["step"] == STEPS and sa["tokens_seen"] == sb["tokens_seen"]
    assert sa["data"] == sb["data"] and sa["ema"] == sb["ema"]
    assert torch.equal(sa["noise_gen"], sb["noise_gen"]) and torch.equal(sa["torch_rng"], sb["torch_rng"])

    # the same batches, noise (and dropout masks) after the resume: every logged loss agrees
    ma, mb = metrics(tmp_path / "a"), metrics(tmp_path / "b")
    loss_a, loss_b = by_step(ma, "loss"), by_step(mb, "loss")
    assert sorted(loss_a) == sorted(loss_b) == list(range(1, STEPS + 1))
    for step in loss_a:
        assert loss_b[step] == pytest.approx(loss_a[step], abs=TOL), step
    val_a, val_b = by_step(ma, "val_nelbo"), by_step(mb, "val_nelbo")
    assert sorted(val_a) == sorted(val_b) == [HALF, STEPS]
    assert val_b[STEPS] == pytest.approx(val_a[STEPS], abs=TOL)
    assert by_step(ma, "sample") == by_step(mb, "sample")


def test_metrics_hold_each_step_once_after_a_kill_between_saves(tmp_path, corpus, make_cfg):
    """A run killed two steps after its last save logged steps the resumed run logs again; a run started
    fresh in a folder with a stale metrics file starts a new curve."""
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "metrics.jsonl").write_text('{"step": 99, "loss": 1.0}\n{"step": 7, "lo')  # stale, cut short
    trainer = Trainer(make_cfg(tmp_path / "b", corpus))
    real_log = trainer._log

    def log_then_die(row):
        real_log(row)
        if row.get("step") == HALF + 2 and "loss" in row:
            raise Interrupted

    trainer._log = log_then_die
    with pytest.raises(Interrupted):
        trainer.run()
    assert [r["step"] for r in metrics(tmp_path / "b") if "loss" in r] == list(range(1, HALF + 3))
    Trainer(make_cfg(tmp_path / "b", corpus), resume=True).run()
    straight = Trainer(make_cfg(tmp_path / "a", corpus)).run().parent

    rows_a, rows_b = metrics(straight), metrics(tmp_path / "b")
    assert [r["step"] for r in rows_b if "loss" in r] == list(range(1, STEPS + 1))
    assert [(r["step"], sorted(r)) for r in rows_b] == [(r["step"], sorted(r)) for r in rows_a]
    assert [r["loss"] for r in rows_b if "loss" in r] == pytest.approx([r["loss"] for r in rows_a if "loss" in r],
                                                                       abs=TOL)


def test_resume_restores_every_piece_of_state(tmp_path, corpus, make_cfg):
    """Directly: the resumed trainer holds what the saving trainer held, and its next step is the same."""
    cfg = make_cfg(tmp_path, corpus, "model.dropout=0.1")
    first = Trainer(cfg)
    for _ in range(3):
        first.train_step()
    first.save()
    resumed = Trainer(cfg, resume=True)

    assert (resumed.step, resumed.tokens_seen) == (first.step, first.tokens_seen) == (3, 3 * 8 * 32)
    assert resumed.batches.state_dict() == first.batches.state_dict() == {"epoch": 0, "cursor": 3 * 8}
    assert torch.equal(resumed.noise_gen.get_state(), first.noise_gen.get_state())
    assert max_diff(resumed.model.state_dict(), first.model.state_dict()) == 0
    assert resumed.ema.updates == first.ema.updates == 3 and resumed.ema.decay == first.ema.decay
    assert max_diff(resumed.ema.shadow, first.ema.shadow) == 0
    assert optimizer_diff(resumed.optimizer.state_dict(), first.optimizer.state_dict()) == 0
    # a fresh trainer would start elsewhere: the checks above are not trivially true
    fresh = Trainer(make_cfg(tmp_path / "fresh", corpus, "model.dropout=0.1"))
    assert fresh.batches.state_dict() != first.batches.state_dict()
    assert not torch.equal(fresh.noise_gen.get_state(), first.noise_gen.get_state())

    # the global torch RNG (dropout) is restored by the resume too: both take the identical next step
    torch.set_rng_state(ckpt.load_trainer_state(tmp_path / "checkpoint")["torch_rng"])
    loss_first = first.train_step()
    resumed = Trainer(cfg, resume=True)  # re-load: the constructor re-seeds the global RNG before loading
    loss_resumed = resumed.train_step()
    assert loss_resumed == loss_first
    assert max_diff(resumed.model.state_dict(), first.model.state_dict()) <= TOL
    assert max_diff(resumed.ema.shadow, first.ema.shadow) <= TOL


# ---- failures -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def base_run(tmp_path_factory, corpus, run_with_checkpoint) -> Path:
    """A run folder whose checkpoint is at step 2, to copy and damage."""
    return run_with_checkpoint(tmp_path_factory.mktemp("base"), corpus)


def copy_run(base_run: Path, dest: Path) -> Path:
    shutil.copytree(base_run, dest)
    return dest


def test_resume_with_nothing_to_resume_is_a_user_error(tmp_path, corpus, make_cfg):
    with pytest.raises(UserError, match="checkpoint"):
        Trainer(make_cfg(tmp_path / "never_trained", corpus), resume=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="checkpoint"):
        Trainer(make_cfg(tmp_path / "empty", corpus), resume=True)


def test_resume_from_a_model_folder_without_trainer_state_is_a_user_error(tmp_path, corpus, base_run, make_cfg):
    run = copy_run(base_run, tmp_path / "run")
    (run / "checkpoint" / ckpt.STATE_FILE).unlink()
    with pytest.raises(UserError, match="not a resumable checkpoint"):
        Trainer(make_cfg(run, corpus), resume=True)


def test_resume_with_a_different_model_shape_is_a_user_error(tmp_path, corpus, base_run, make_cfg):
    run = copy_run(base_run, tmp_path / "run")
    with pytest.raises(UserError, match="model shape differs"):
        Trainer(make_cfg(run, corpus, "model.d_model=32"), resume=True)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
@pytest.mark.parametrize("name", [ckpt.WEIGHTS_FILE, ckpt.EMA_FILE, ckpt.STATE_FILE, ckpt.STATE_TENSORS_FILE,
                                  ckpt.CONFIG_FILE])
def test_corrupt_checkpoint_file_is_a_user_error_naming_it(tmp_path, corpus, base_run, name, damage, make_cfg):
    run = copy_run(base_run, tmp_path / "run")
    path = run / "checkpoint" / name
    data = path.read_bytes()
    path.write_bytes(b"\x00garbage, not a checkpoint\xff" * 64 if damage == "garbage" else data[: len(data) // 2])
    try:
        Trainer(make_cfg(run, corpus), resume=True)
    except UserError as exc:
        message = str(exc)
    else:
        pytest.fail(f"resuming from a damaged {name} did not fail")
    assert name in message and "corrupt" in message, message


# ---- atomic writes --------------------------------------------------------------------------

def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_crash_inside_atomic_folder_leaves_the_previous_checkpoint(tmp_path, corpus, base_run, make_cfg):
    run = copy_run(base_run, tmp_path / "run")
    final = run / "checkpoint"
    before = snapshot(final)

    def write_one_file_then_crash(folder: Path) -> None:
        ckpt.write_config(folder, {"model": {}, "half": "written"})
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        ckpt.atomic_folder(final, write_one_file_then_crash)
    assert snapshot(final) == before
    assert not (run / ".checkpoint.old").exists()
    assert ckpt.resolve_model_dir(run) == final
    resumed = Trainer(make_cfg(run, corpus), resume=True)  # still loadable
    assert resumed.step == 2


def test_crash_while_the_trainer_saves_leaves_the_previous_checkpoint(tmp_path, corpus, base_run, monkeypatch,
                                                                       make_cfg):
    run = copy_run(base_run, tmp_path / "run")
    final = run / "checkpoint"
    before = snapshot(final)
    trainer = Trainer(make_cfg(run, corpus), resume=True)
    trainer.train_step()
    real_save_weights = ckpt.save_weights
    calls = []

    def save_weights_then_crash(state, path):
        calls.append(path.name)
        real_save_weights(state, path)  # model.safetensors lands in the temp folder ...
        raise OSError("killed")  # ... and the process dies before ema.safetensors

    monkeypatch.setattr(ckpt, "save_weights", save_weights_then_crash)
    with pytest.raises(OSError, match="killed"):
        trainer.save()
    monkeypatch.undo()
    assert calls == [ckpt.WEIGHTS_FILE]
    assert snapshot(final) == before
    assert Trainer(make_cfg(run, corpus), resume=True).step == 2


def test_crash_between_the_two_renames_resumes_from_the_old_folder(tmp_path, corpus, base_run, monkeypatch, make_cfg):
    """The one moment `checkpoint/` does not exist: it was renamed to `.checkpoint.old`, the new one not yet in."""
    run = copy_run(base_run, tmp_path / "run")
    before = snapshot(run / "checkpoint")
    trainer = Trainer(make_cfg(run, corpus), resume=True)
    trainer.train_step()
    real_replace = os.replace
    calls = []

    def replace_once_then_crash(src, dst):
        calls.append((Path(src).name, Path(dst).name))
        if len(calls) == 2:
            raise OSError("power cut")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_once_then_crash)
    with pytest.raises(OSError, match="power cut"):
        trainer.save()
    monkeypatch.undo()
    assert calls[0] == ("checkpoint", ".checkpoint.old")
    assert not (run / "checkpoint").exists() and snapshot(run / ".checkpoint.old") == before
    assert (run / f".checkpoint.tmp-{os.getpid()}").is_dir()  # the finished new folder, never renamed in

    resumed = Trainer(make_cfg(run, corpus), resume=True)
    assert resumed.step == 2
    assert snapshot(run / "checkpoint") == before  # the old copy is back in place, the temp folder gone
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".checkpoint")) == []
    resumed.train_step()
    resumed.save()  # the next save puts a complete checkpoint/ back and drops the old copy
    assert ckpt.load_trainer_state(run / "checkpoint")["step"] == 3
    assert not (run / ".checkpoint.old").exists()
