"""What the training tests share: the DDP and FSDP worker scripts beside them (run by torchrun, or called in this
process for the 1-process reference), and the DDP run comparison of test_ddp.py and test_gaussian_ddp.py."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
from safetensors.torch import load_file

from textdiffusion.train import checkpoint as ckpt

HERE = Path(__file__).resolve().parent
DDP_STEPS = 4
DDP_TOL = 1e-5


def _worker(name: str) -> ModuleType:
    """A worker script of this folder as a module, loaded from its path (torchrun runs the same file)."""
    spec = importlib.util.spec_from_file_location(f"tests_train_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def ddp_worker() -> ModuleType:
    """ddp_worker.py: `ddp_worker.train(out_dir, overrides)` trains the tiny preset here; torchrun runs
    `ddp_worker.__file__`."""
    return _worker("ddp_worker")


@pytest.fixture(scope="session")
def fsdp_worker() -> ModuleType:
    """fsdp_worker.py: `fsdp_worker.train(out_dir, overrides, ...)` trains with train.parallel=fsdp here; torchrun
    runs `fsdp_worker.__file__`."""
    return _worker("fsdp_worker")


@pytest.fixture(scope="session")
def ddp(ddp_worker, dist_vars, free_port, repo_root, max_diff, losses) -> SimpleNamespace:
    """A 2-process torchrun DDP run against the 1-process run: STEPS and TOL, torchrun(nproc, out_dir, overrides)
    (ddp_worker.py under torchrun) and assert_same_training(ref, run, world, label)."""

    def torchrun(nproc: int, out_dir: Path, overrides: list[str]) -> None:
        env = {k: v for k, v in os.environ.items() if k not in dist_vars}
        env["OMP_NUM_THREADS"] = "1"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), ddp_worker.__file__, str(out_dir),
               *overrides]
        proc = subprocess.run(cmd, cwd=repo_root, env=env, capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, \
            f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"

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
        assert sorted(ref_loss) == sorted(run_loss) == list(range(1, DDP_STEPS + 1))
        assert len(ref_info["grad_norms"]) == len(info[0]["grad_norms"]) == DDP_STEPS
        assert grads <= DDP_TOL and norm <= DDP_TOL
        assert weights <= DDP_TOL and ema <= DDP_TOL
        assert loss <= DDP_TOL

    return SimpleNamespace(STEPS=DDP_STEPS, TOL=DDP_TOL, torchrun=torchrun, assert_same_training=assert_same_training)
