"""Semi-autoregressive generation for masked diffusion models (MDLM, Sahoo et al., 2024, Sec. 4.2).

A masked model generates at most its training length L at once. To write more, generate a window
of L tokens, slide the window by `stride` tokens so that its first L - stride tokens are text
already written, and generate the `stride` new ones conditioned on them; repeat. Each window is
an ordinary ancestral run (fixed tokens are context, never changed), so prompts and gaps inside
the first window work as in `ancestral`. With `stop_at_eos` (by default: when writing past the
model's length), generation ends after the window in which every row has written [EOS], and what
follows a row's first [EOS] becomes [EOS].
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..core.errors import UserError
from ..processes.block import BlockDiffusion
from ..processes.masked import MaskedDiffusion
from .base import Frame, FrameRecorder, SampleResult
from .block import first_eos_fill, should_stop
from .mdlm import AncestralConfig, ancestral_sample


@dataclass
class SemiARConfig:
    steps: int = 128  # ancestral steps per window
    stride: int = 0  # new tokens per window after the first; 0: half the model's length
    stop_at_eos: bool | None = None  # None: stop only when writing past the model's length
    eos_id: int | None = None  # the pipeline fills in the tokenizer's [EOS]
    temperature: float = 1.0
    top_p: float = 1.0
    cache: bool = True
    cfg_scale: float = 0.0  # classifier-free guidance in each window, on the text fixed before it (samplers/cfg.py)

    unbounded_length: ClassVar[bool] = True


def windows(length: int, seq_len: int, stride: int) -> list[tuple[int, int]]:
    """[start, end) of each window: the first at 0, then every `stride`, the last ending at `length`."""
    if length <= seq_len:
        return [(0, length)]
    starts = list(range(0, length - seq_len, stride)) + [length - seq_len]
    return [(s, s + seq_len) for s in starts]


@torch.no_grad()
def semi_ar_sample(model: nn.Module, process: MaskedDiffusion, x: torch.Tensor, cfg: SemiARConfig,
                   generator: torch.Generator | None = None, record_frames: bool = False,
                   on_step: Callable[[Frame], None] | None = None) -> SampleResult:
    """Write past the model's length: overlapping windows of ancestral sampling, each on the text before it."""
    if not isinstance(process, MaskedDiffusion) or isinstance(process, BlockDiffusion):
        raise UserError("sampler 'semi_ar' needs a masked diffusion model (process 'masked')")
    seq_len = model.cfg.seq_len
    stride = cfg.stride or seq_len // 2
    if not isinstance(stride, int) or not 0 < stride < seq_len:
        raise UserError(f"stride must be from 1 to {seq_len - 1} (windows must overlap to share context), "
                        f"got {cfg.stride!r}")
    stop = should_stop(cfg.stop_at_eos, cfg.eos_id, x.shape[1], seq_len)
    inner = AncestralConfig(steps=cfg.steps, temperature=cfg.temperature, top_p=cfg.top_p, cache=cfg.cache,
                            cfg_scale=cfg.cfg_scale)
    x = x.clone()
    generated = x == process.mask_id
    recorder = FrameRecorder(record_frames, on_step)
    recorder(0, 1.0, x)
    total = max(int(generated.sum()), 1)
    nfe = step = 0
    for start, end in windows(x.shape[1], seq_len, stride):

        def relay(frame: Frame, start: int = start, end: int = end, step0: int = step) -> None:
            full = x.clone()
            full[:, start:end] = frame.ids.to(x.device)
            recorder(step0 + frame.step, float((full == process.mask_id).sum()) / total, full)

        watching = record_frames or on_step is not None
        out = ancestral_sample(model, process, x[:, start:end], inner, generator, on_step=relay if watching else None)
        x[:, start:end] = out.ids
        nfe += out.nfe
        step += cfg.steps
        if stop and end < x.shape[1]:
            if bool(((x[:, :end] == cfg.eos_id) & generated[:, :end]).any(1).all()):
                x[:, end:][generated[:, end:]] = cfg.eos_id
                break
    if stop:
        first_eos_fill(x, generated, cfg.eos_id)
    return SampleResult(ids=x, nfe=nfe, frames=recorder.frames)
