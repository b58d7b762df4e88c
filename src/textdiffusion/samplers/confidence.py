"""Confidence-based parallel decoding for masked diffusion models.

* `confidence` -- LLaDA's sampler (Nie et al., 2025, Alg. 4-5): every step predicts all masked tokens
  and keeps the most confident ones ("low_confidence" remasking: the rest go back to [MASK]) or a
  random subset ("random"), a fixed number per step. `block_length` splits the sequence into blocks
  decoded left to right (semi-autoregressive), `steps` split evenly among the blocks that have masks.
  Remasking "dilated" reveals each block in a fixed dyadic order instead (never two neighbours in one
  pass; samplers/unmasking.py): ceil(log2 block_length) + 1 passes per block, whatever `steps` says.
* `threshold` -- Fast-dLLM's parallel decoding (Wu et al., 2025, Sec. 3.3): each step keeps every
  token whose confidence exceeds `threshold` (at least the most confident one), so easy spans
  finish in a few passes and the number of passes adapts to the text.

Both take Fast-dLLM's approximate KV caches (`cache="prefix"` or `"dual"`, refreshed at each block
start; Sec. 3.2); `cache="none"` is exact. Infilling: fixed tokens are never changed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..core.errors import UserError
from ..processes.block import BlockDiffusion
from ..processes.masked import MaskedDiffusion
from .base import Frame, FrameRecorder, SampleResult
from .cfg import guided
from .unmasking import VIEWS, Rule, denoise_block


@dataclass
class ConfidenceConfig:
    steps: int = 64  # passes over the sequence, split evenly among its blocks
    block_length: int = 0  # 0: one block spanning the sequence; else semi-autoregressive blocks
    remasking: str = "low_confidence"  # or "random", or "dilated" (a fixed dyadic order; steps unused)
    cache: str = "none"  # "prefix" or "dual": Fast-dLLM's approximate KV caches
    temperature: float = 1.0
    top_p: float = 1.0
    cfg_scale: float = 0.0  # LLaDA's classifier-free guidance on the fixed tokens (samplers/cfg.py); 0: none
    score: str = "sampled"  # what ranks positions: sampled, top, margin or entropy (samplers/unmasking.py)


@dataclass
class ThresholdConfig:
    threshold: float = 0.9  # reveal every token more confident than this (and always the best one)
    block_length: int = 0
    cache: str = "none"
    temperature: float = 1.0
    top_p: float = 1.0
    cfg_scale: float = 0.0
    score: str = "sampled"  # what ranks positions and meets the threshold: sampled, top, margin or entropy


def blocks_with_masks(x: torch.Tensor, mask_id: int, block_length: int) -> list[tuple[int, int]]:
    """Blocks of `block_length` from the first masked column (LLaDA cuts them after the prompt)."""
    masked_columns = (x == mask_id).any(0).nonzero().flatten()
    if len(masked_columns) == 0:
        return []
    start, length = int(masked_columns[0]), x.shape[1]
    size = block_length or length - start
    spans = [(lo, min(lo + size, length)) for lo in range(start, length, size)]
    return [(lo, hi) for lo, hi in spans if bool((x[:, lo:hi] == mask_id).any())]


def parallel_decode(model: nn.Module, process: MaskedDiffusion, x: torch.Tensor, rule: Rule, block_length: int,
                    cache: str, generator: torch.Generator | None, record_frames: bool,
                    on_step: Callable[[Frame], None] | None) -> SampleResult:
    """Decode the [MASK]s of x block by block with `rule` (the loop both samplers share)."""
    if not isinstance(process, MaskedDiffusion) or isinstance(process, BlockDiffusion):
        raise UserError("confidence-based decoding needs a masked diffusion model (process 'masked'); "
                        "block diffusion models use sampler 'block'")
    if cache not in VIEWS:
        raise UserError(f"cache must be one of {', '.join(VIEWS)}, got {cache!r}")
    if not isinstance(block_length, int) or block_length < 0:
        raise UserError(f"block_length must be 0 (one block) or a positive integer, got {block_length!r}")
    rule.check()
    mask_id = process.mask_id
    x = x.clone()
    blocks = blocks_with_masks(x, mask_id, block_length)
    if rule.fixed_steps and blocks:
        if rule.steps < len(blocks):
            raise UserError(f"steps ({rule.steps}) must be at least the number of blocks to decode ({len(blocks)}): "
                            "raise steps or block_length")
        rule = dataclasses.replace(rule, steps=rule.steps // len(blocks))
    view = VIEWS[cache](model, mask_id)
    total = max(int((x == mask_id).sum()), 1)
    recorder = FrameRecorder(record_frames, on_step)
    recorder(0, 1.0, x)
    step = 0
    for lo, hi in blocks:
        step += denoise_block(x, lo, hi, view, rule, mask_id, generator=generator, recorder=recorder, step0=step,
                              progress=lambda: float((x == mask_id).sum()) / total)
    return SampleResult(ids=x, nfe=view.nfe, frames=recorder.frames)


@torch.no_grad()
def confidence_sample(model: nn.Module, process: MaskedDiffusion, x: torch.Tensor, cfg: ConfidenceConfig,
                      generator: torch.Generator | None = None, record_frames: bool = False,
                      on_step: Callable[[Frame], None] | None = None) -> SampleResult:
    """LLaDA decoding: a fixed number of tokens per step, the most confident (or random) ones."""
    if cfg.remasking not in ("low_confidence", "random", "dilated"):
        raise UserError(f"remasking must be 'low_confidence', 'random' or 'dilated', got {cfg.remasking!r}")
    rule = Rule(cfg.remasking, cfg.steps, temperature=cfg.temperature, top_p=cfg.top_p, score=cfg.score)
    model = guided(model, x, process.mask_id, cfg.cfg_scale)
    return parallel_decode(model, process, x, rule, cfg.block_length, cfg.cache, generator, record_frames, on_step)


@torch.no_grad()
def threshold_sample(model: nn.Module, process: MaskedDiffusion, x: torch.Tensor, cfg: ThresholdConfig,
                     generator: torch.Generator | None = None, record_frames: bool = False,
                     on_step: Callable[[Frame], None] | None = None) -> SampleResult:
    """Fast-dLLM decoding: every token more confident than the threshold, at least one per step."""
    rule = Rule("threshold", threshold=cfg.threshold, temperature=cfg.temperature, top_p=cfg.top_p, score=cfg.score)
    model = guided(model, x, process.mask_id, cfg.cfg_scale)
    return parallel_decode(model, process, x, rule, cfg.block_length, cfg.cache, generator, record_frames, on_step)
