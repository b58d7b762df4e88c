"""torchrun entry point for tests/test_ddp.py: train the tiny preset and record what each rank saw.

    python -m torch.distributed.run --nproc_per_node 2 tests/ddp_worker.py OUT_DIR [section.key=value ...]

Rank 0 writes OUT_DIR/checkpoint/ and OUT_DIR/metrics.jsonl as usual. Every rank R also writes
  OUT_DIR/rank{R}.safetensors        its model after the last step (the replicas must agree),
  OUT_DIR/rank{R}.grads.safetensors  the gradient of the first step, after DDP's all-reduce and
                                     before clipping (the "same global batch" claim, before Adam),
  OUT_DIR/rank{R}.json               its world size and the pre-clipping gradient norm of every step.
test_ddp.py calls `train` in-process for the 1-process reference.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from textdiffusion.train.config import load_config
from textdiffusion.train.trainer import Trainer


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def train(out_dir: Path, overrides: list[str]) -> int:
    """Train the tiny preset with `overrides`; returns this process's rank."""
    out_dir = Path(out_dir)
    trainer = Trainer(load_config("tiny", [f"run.out_dir={out_dir}", *overrides]))
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
    train(Path(sys.argv[1]), sys.argv[2:])
