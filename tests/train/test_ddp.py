"""A 2-process torchrun DDP run (CPU, gloo) matches a 1-process run on the same global batch.

Every rank draws the same global batch and noise and trains on its slice; DDP averages the
gradients. Up to float reduction order, the result is the 1-process run's, with or without
gradient accumulation (train.micro_batch_size).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from textdiffusion.train import checkpoint as ckpt

pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def overrides(tmp_path_factory, write_corpus, ddp) -> list[str]:
    corpus = write_corpus(tmp_path_factory.mktemp("corpus") / "hamlet.jsonl")
    return ["run.progress=false", f"data.source={corpus}", "data.val_fraction=0.1", "data.seq_len=32",
            f"train.steps={ddp.STEPS}", "train.batch_size=8", "train.warmup_steps=2", "train.precision=fp32",
            "train.device=cpu", "model.dropout=0.0", "run.log_every=1", f"run.eval_every={ddp.STEPS}",
            f"run.save_every={ddp.STEPS}", "run.sample_steps=4"]


@pytest.fixture(scope="module")
def single(tmp_path_factory, overrides, ddp_worker, dist_vars) -> Path:
    """The reference: one process, no DDP, no accumulation, run in this interpreter."""
    out = tmp_path_factory.mktemp("single")
    with pytest.MonkeyPatch.context() as mp:
        for var in dist_vars:
            mp.delenv(var, raising=False)
        assert ddp_worker.train(out, overrides) == 0
    return out


@pytest.mark.parametrize("micro", [0, 2], ids=["no_accumulation", "accumulation"])
def test_two_process_ddp_matches_one_process(tmp_path, overrides, single, micro, ddp):
    run = tmp_path / "ddp"
    ddp.torchrun(2, run, [*overrides, f"train.micro_batch_size={micro}"])
    ddp.assert_same_training(single, run, world=2, label=f"2 processes, micro_batch_size={micro}")


def test_one_process_accumulation_matches_one_batch(tmp_path, overrides, single, ddp, ddp_worker, dist_vars):
    with pytest.MonkeyPatch.context() as mp:
        for var in dist_vars:
            mp.delenv(var, raising=False)
        ddp_worker.train(tmp_path, [*overrides, "train.micro_batch_size=2"])
    ddp.assert_same_training(single, tmp_path, world=1, label="1 process, micro_batch_size=2")


def test_block_diffusion_ddp_matches_one_process(tmp_path, overrides, ddp, ddp_worker, dist_vars):
    """Block diffusion draws a noise level per block (clipped range) and feeds the backbone a 2L input
    with an explicit mask and positions: all of it must split across processes like the masked loss."""
    block = [*overrides, "process.name=block", "process.block_size=4", "process.mask_rate_min=0.2"]
    with pytest.MonkeyPatch.context() as mp:
        for var in dist_vars:
            mp.delenv(var, raising=False)
        assert ddp_worker.train(tmp_path / "single", block) == 0
    ddp.torchrun(2, tmp_path / "ddp", block)
    ddp.assert_same_training(tmp_path / "single", tmp_path / "ddp", world=2, label="block diffusion, 2 processes")


def test_two_process_resume_after_a_kill_between_the_renames(tmp_path, overrides, single, ddp, losses, max_diff):
    """Rank 0 alone clears a killed save's leftovers and puts .checkpoint.old back, the other rank waits for it,
    and the resumed 2-process run ends where the straight 1-process run does."""
    run = tmp_path / "ddp"
    ddp.torchrun(2, run, [*overrides, "run.save_every=2", "--stop-after=2"])
    assert json.loads((run / "checkpoint" / ckpt.CONFIG_FILE).read_text())["trained"]["steps"] == 2
    os.replace(run / "checkpoint", run / ".checkpoint.old")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / f".checkpoint.tmp-{dead.pid}").mkdir()
    ddp.torchrun(2, run, [*overrides, "run.save_every=2", "--resume"])
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".checkpoint")) == []
    assert json.loads((run / "checkpoint" / ckpt.CONFIG_FILE).read_text())["trained"]["steps"] == ddp.STEPS

    def diff(name: str) -> float:
        return max_diff(load_file(single / "checkpoint" / name), load_file(run / "checkpoint" / name))

    ref_loss, run_loss = losses(single), losses(run)
    weights, ema = diff(ckpt.WEIGHTS_FILE), diff(ckpt.EMA_FILE)
    loss = max(abs(ref_loss[s] - run_loss[s]) for s in ref_loss)
    print(f"2 processes, resumed at step 2: max |diff| weights {weights:.3g}, ema {ema:.3g}, losses {loss:.3g}")
    assert sorted(run_loss) == sorted(ref_loss) == list(range(1, ddp.STEPS + 1))
    assert weights <= ddp.TOL and ema <= ddp.TOL and loss <= ddp.TOL
