"""One process of the sharded-streaming test (started by torchrun from tests/data/test_sharded_stream.py).

usage: stream_worker.py OUT_DIR [OVERRIDES...]

Trains the tiny preset with data.streaming=true into OUT_DIR/straight, saving at every save_every steps and
copying the checkpoint of step 2 to OUT_DIR/resumed; then, in the same process group, resumes OUT_DIR/resumed
from it to the end. Rank r writes rankR.json: the world size and the stream's state (every rank's position) at
the end of the resumed run.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from textdiffusion.train import trainer as trainer_module
from textdiffusion.train.config import load_config
from textdiffusion.train.distributed import barrier, cleanup
from textdiffusion.train.trainer import Trainer


def main(out: Path, overrides: list[str]) -> None:
    trainer_module.cleanup = lambda info: None  # keep the process group for the second run
    straight = Trainer(load_config("tiny", [f"run.out_dir={out / 'straight'}", "data.streaming=true", *overrides]))
    real_save = straight.save

    def save_and_copy() -> None:
        real_save()
        if straight.step == 2:
            if straight.info.is_main:
                shutil.copytree(out / "straight", out / "resumed")
            barrier(straight.info)

    straight.save = save_and_copy
    straight.run()
    resumed = Trainer(load_config("tiny", [f"run.out_dir={out / 'resumed'}", "data.streaming=true", *overrides]),
                      resume=True)
    resumed.run()
    state = resumed.batches.state_dict()
    (out / f"rank{resumed.info.rank}.json").write_text(json.dumps({"world_size": resumed.info.world_size,
                                                                   "state": state}))
    cleanup(resumed.info)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
