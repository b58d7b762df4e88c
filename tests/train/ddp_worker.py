"""torchrun entry point for tests/train/test_ddp.py and test_gaussian_ddp.py: train the tiny preset and record
what each rank saw.

    python -m torch.distributed.run --nproc_per_node 2 tests/train/ddp_worker.py OUT_DIR [--resume]
        [--stop-after=N] [section.key=value ...]

Rank 0 writes OUT_DIR/checkpoint/ and OUT_DIR/metrics.jsonl as usual. Every rank R also writes
  OUT_DIR/rank{R}.safetensors        its model after the last step (the replicas must agree),
  OUT_DIR/rank{R}.grads.safetensors  the gradient of the first step, after DDP's all-reduce and
                                     before clipping (the "same global batch" claim, before Adam),
  OUT_DIR/rank{R}.json               its world size and the pre-clipping gradient norm of every step.
The tests call `train` in-process for the 1-process reference (the `ddp_worker` fixture of conftest.py).
--resume continues OUT_DIR's checkpoint; --stop-after=N stops every rank right after the save at step N (a job
killed there), writing no rank files.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from textdiffusion.train.config import load_config
from textdiffusion.train.trainer import Trainer


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def train(out_dir: Path, overrides: list[str], resume: bool = False, stop_after: int | None = None) -> int:
    """Train the tiny preset with `overrides`; returns this process's rank."""
    out_dir = Path(out_dir)
    trainer = Trainer(load_config("tiny", [f"run.out_dir={out_dir}", *overrides]), resume=resume)
    if stop_after is not None:
        real_save = trainer.save

        def save_then_stop() -> None:
            real_save()  # every rank leaves it after the save's barrier: the checkpoint is complete
            if trainer.step == stop_after:
                # a kill: no teardown at all. (Raising instead let both ranks destroy the gloo group at
                # once, and one of them sometimes aborted in gloo's teardown.)
                os._exit(0)

        trainer.save = save_then_stop
    assert trainer.cfg.train.grad_clip > 0, "the gradient is recorded when the trainer clips it"
    rank, world = trainer.info.rank, trainer.info.world_size
    norms: list[float] = []
    first_grads: dict[str, torch.Tensor] = {}
    real_clip = torch.nn.utils.clip_grad_norm_

    def recording_clip(params, max_norm, *args, **kwargs):
        if not first_grads:
            first_grads.update({n: p.grad.detach().clone() for n, p in trainer.model.named_parameters()
                                if p.grad is not None})
        norm = real_clip(params, max_norm, *args, **kwargs)
        norms.append(float(norm))
        return norm

    torch.nn.utils.clip_grad_norm_ = recording_clip
    try:
        trainer.run()
    finally:
        torch.nn.utils.clip_grad_norm_ = real_clip
    save_file(_cpu(trainer.model.state_dict()), str(out_dir / f"rank{rank}.safetensors"))
    save_file(_cpu(first_grads), str(out_dir / f"rank{rank}.grads.safetensors"))
    (out_dir / f"rank{rank}.json").write_text(json.dumps({"world_size": world, "grad_norms": norms}))
    return rank


if __name__ == "__main__":
    args = sys.argv[2:]
    stop = [int(a.split("=", 1)[1]) for a in args if a.startswith("--stop-after=")]
    train(Path(sys.argv[1]), [a for a in args if not a.startswith("--")], resume="--resume" in args,
          stop_after=stop[0] if stop else None)
