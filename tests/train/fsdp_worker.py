"""One process of an FSDP test run (started by torchrun from tests/train/test_fsdp.py, or called in-process for the
1-process reference): trains the tiny preset with train.parallel=fsdp and OVERRIDES into OUT_DIR.

usage: fsdp_worker.py OUT_DIR [OVERRIDES...] [--resume] [--snapshot-at=N ...] [--stop-after=N]

--snapshot-at=N: right after the save at step N, rank 0 copies OUT_DIR to OUT_DIR_stepN (a run folder to resume
from, with another number of processes). --stop-after=N: every rank exits right after the save at step N (a job
killed there). Before training, rank r writes rankR.json: its world size, how many parameter elements it holds
locally (a shard under FSDP) and in all.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from textdiffusion.train.config import load_config
from textdiffusion.train.distributed import barrier
from textdiffusion.train.trainer import Trainer


def snapshot_path(out_dir: Path, step: int) -> Path:
    return out_dir.parent / f"{out_dir.name}_step{step}"


def train(out_dir: Path, overrides: list[str], resume: bool = False, snapshot_at: tuple[int, ...] = (),
          stop_after: int | None = None) -> int:
    """Train with `overrides`; returns this process's rank."""
    out_dir = Path(out_dir)
    trainer = Trainer(load_config("tiny", [f"run.out_dir={out_dir}", "train.parallel=fsdp", *overrides]),
                      resume=resume)
    real_save = trainer.save

    def save_copy_stop() -> None:
        real_save()
        if trainer.step in snapshot_at:
            if trainer.info.is_main:
                shutil.copytree(out_dir, snapshot_path(out_dir, trainer.step))
            barrier(trainer.info)
        if trainer.step == stop_after:
            os._exit(0)  # a kill after a complete save: no teardown (see tests/train/ddp_worker.py)

    trainer.save = save_copy_stop
    rank, world = trainer.info.rank, trainer.info.world_size
    local = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in trainer.model.parameters())
    total = sum(p.numel() for p in trainer.model.parameters())
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"rank{rank}.json").write_text(json.dumps({"world_size": world, "local": local, "total": total}))
    trainer.run()
    return rank


if __name__ == "__main__":
    args = sys.argv[2:]
    snaps = tuple(int(a.split("=", 1)[1]) for a in args if a.startswith("--snapshot-at="))
    stop = [int(a.split("=", 1)[1]) for a in args if a.startswith("--stop-after=")]
    train(Path(sys.argv[1]), [a for a in args if not a.startswith("--")], resume="--resume" in args,
          snapshot_at=snaps, stop_after=stop[0] if stop else None)
