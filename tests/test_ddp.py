"""A 2-process torchrun DDP run (CPU, gloo) matches a 1-process run on the same global batch.

Every rank draws the same global batch and noise and trains on its slice; DDP averages the
gradients. Up to float reduction order, the result is the 1-process run's, with or without
gradient accumulation (train.micro_batch_size).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_runs import write_corpus

from textdiffusion.train import checkpoint as ckpt

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "ddp_worker.py"
STEPS = 4
TOL = 1e-5
DIST_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
             "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID")


@pytest.fixture(scope="module")
def overrides(tmp_path_factory) -> list[str]:
    corpus = write_corpus(tmp_path_factory.mktemp("corpus") / "hamlet.jsonl")
    return ["run.progress=false", f"data.source={corpus}", "data.val_fraction=0.1", "data.seq_len=32",
            f"train.steps={STEPS}", "train.batch_size=8", "train.warmup_steps=2", "train.precision=fp32",
            "train.device=cpu", "model.dropout=0.0", "run.log_every=1", f"run.eval_every={STEPS}",
            f"run.save_every={STEPS}", "run.sample_steps=4"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int, out_dir: Path, overrides: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(WORKER), str(out_dir), *overrides]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


@pytest.fixture(scope="module")
def single(tmp_path_factory, overrides) -> Path:
    """The reference: one process, no DDP, no accumulation, run in this interpreter."""
    from ddp_worker import train  # tests/ is on sys.path (pytest's rootdir-less test import)

    out = tmp_path_factory.mktemp("single")
    with pytest.MonkeyPatch.context() as mp:
        for var in DIST_VARS:
            mp.delenv(var, raising=False)
        assert train(out, overrides) == 0
    return out


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def losses(out_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def assert_same_training(ref: Path, run: Path, world: int, label: str) -> None:
    info = [json.loads((run / f"rank{r}.json").read_text()) for r in range(world)]
    assert [i["world_size"] for i in info] == [world] * world, "the run did not use the expected world size"
    assert json.loads((run / "checkpoint" / ckpt.CONFIG_FILE).read_text())["trained"]["world_size"] == world
    ref_info = json.loads((ref / "rank0.json").read_text())

    # the replicas agree exactly, and rank 0's checkpoint holds them
    replicas = [load_file(run / f"rank{r}.safetensors") for r in range(world)]
    for r in range(1, world):
        assert max_diff(replicas[0], replicas[r]) == 0, f"rank {r} drifted from rank 0"
    assert max_diff(replicas[0], load_file(run / "checkpoint" / ckpt.WEIGHTS_FILE)) == 0

    def diff(name: str) -> float:
        return max_diff(load_file(ref / name), load_file(run / name))

    grads = diff("rank0.grads.safetensors")
    weights, ema = diff(f"checkpoint/{ckpt.WEIGHTS_FILE}"), diff(f"checkpoint/{ckpt.EMA_FILE}")
    ref_loss, run_loss = losses(ref), losses(run)
    loss = max(abs(ref_loss[s] - run_loss[s]) for s in ref_loss)
    norm = max(abs(a - b) / a for a, b in zip(ref_info["grad_norms"], info[0]["grad_norms"]))
    print(f"{label}: max |diff| step-1 grads {grads:.3g}, weights {weights:.3g}, ema {ema:.3g}, "
          f"losses {loss:.3g}; grad norms rel {norm:.3g}")
    assert sorted(ref_loss) == sorted(run_loss) == list(range(1, STEPS + 1))
    assert len(ref_info["grad_norms"]) == len(info[0]["grad_norms"]) == STEPS
    assert grads <= TOL and norm <= TOL
    assert weights <= TOL and ema <= TOL
    assert loss <= TOL


@pytest.mark.parametrize("micro", [0, 2], ids=["no_accumulation", "accumulation"])
def test_two_process_ddp_matches_one_process(tmp_path, overrides, single, micro):
    run = tmp_path / "ddp"
    torchrun(2, run, [*overrides, f"train.micro_batch_size={micro}"])
    assert_same_training(single, run, world=2, label=f"2 processes, micro_batch_size={micro}")


def test_one_process_accumulation_matches_one_batch(tmp_path, overrides, single):
    from ddp_worker import train

    with pytest.MonkeyPatch.context() as mp:
        for var in DIST_VARS:
            mp.delenv(var, raising=False)
        train(tmp_path, [*overrides, "train.micro_batch_size=2"])
    assert_same_training(single, tmp_path, world=1, label="1 process, micro_batch_size=2")


def test_block_diffusion_ddp_matches_one_process(tmp_path, overrides):
    """Block diffusion draws a noise level per block (clipped range) and feeds the backbone a 2L input
    with an explicit mask and positions: all of it must split across processes like the masked loss."""
    from ddp_worker import train

    block = [*overrides, "process.name=block", "process.block_size=4", "process.mask_rate_min=0.2"]
    with pytest.MonkeyPatch.context() as mp:
        for var in DIST_VARS:
            mp.delenv(var, raising=False)
        assert train(tmp_path / "single", block) == 0
    torchrun(2, tmp_path / "ddp", block)
    assert_same_training(tmp_path / "single", tmp_path / "ddp", world=2, label="block diffusion, 2 processes")


def test_two_process_resume_after_a_kill_between_the_renames(tmp_path, overrides, single):
    """Rank 0 alone clears a killed save's leftovers and puts .checkpoint.old back, the other rank waits for it,
    and the resumed 2-process run ends where the straight 1-process run does."""
    run = tmp_path / "ddp"
    torchrun(2, run, [*overrides, "run.save_every=2", "--stop-after=2"])
    assert json.loads((run / "checkpoint" / ckpt.CONFIG_FILE).read_text())["trained"]["steps"] == 2
    os.replace(run / "checkpoint", run / ".checkpoint.old")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / f".checkpoint.tmp-{dead.pid}").mkdir()
    torchrun(2, run, [*overrides, "run.save_every=2", "--resume"])
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".checkpoint")) == []
    assert json.loads((run / "checkpoint" / ckpt.CONFIG_FILE).read_text())["trained"]["steps"] == STEPS

    def diff(name: str) -> float:
        return max_diff(load_file(single / "checkpoint" / name), load_file(run / "checkpoint" / name))

    ref_loss, run_loss = losses(single), losses(run)
    weights, ema = diff(ckpt.WEIGHTS_FILE), diff(ckpt.EMA_FILE)
    loss = max(abs(ref_loss[s] - run_loss[s]) for s in ref_loss)
    print(f"2 processes, resumed at step 2: max |diff| weights {weights:.3g}, ema {ema:.3g}, losses {loss:.3g}")
    assert sorted(run_loss) == sorted(ref_loss) == list(range(1, STEPS + 1))
    assert weights <= TOL and ema <= TOL and loss <= TOL
