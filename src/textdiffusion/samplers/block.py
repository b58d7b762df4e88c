"""Block diffusion sampling (BD3-LM, Arriola et al., 2025, Alg. 2): one block at a time, left to right.

Inside a block the [MASK]s are revealed by one of the shared rules (`samplers.unmasking`): MDLM's
ancestral step by default (with its caching trick), or confidence / threshold decoding. Finished
blocks are read once more, clean, into a KV cache, which later blocks attend to; since a block
only ever attends to earlier blocks (the block-causal mask it was trained with), the cache is
**exact**: `cache=False` recomputes the prefix every step and gives the same tokens.

Length is not bounded by training: `x` may be longer than the model's length. The context is then
a sliding window of whole blocks, the most a block saw in training (seq_len - block_size earlier
tokens). Generation stops after the block in which every row has produced [EOS] (with
`stop_at_eos`; by default only past the model's length, so that a text of at most the trained
length always has the length asked for), and everything after a row's first [EOS] is set to
[EOS], so decoding ends there.
Beyond the trained length the cached and uncached paths differ slightly: a cached block's keys
were computed in its own window, a recomputed one sees only the current window.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..core.errors import UserError
from ..processes.block import BlockDiffusion, block_causal_mask
from .base import Frame, FrameRecorder, SampleResult
from .unmasking import Rule, View, denoise_block


@dataclass
class BlockConfig:
    steps: int = 16  # denoising steps per block (unused by the "threshold" and "dilated" rules)
    rule: str = "ancestral"  # or "low_confidence", "random", "threshold", "dilated" (samplers/unmasking.py)
    threshold: float = 0.9  # for rule "threshold"
    cache: bool = True  # exact KV cache of finished blocks
    stop_at_eos: bool | None = None  # None: stop only when writing past the model's length
    eos_id: int | None = None  # the pipeline fills in the tokenizer's [EOS]
    temperature: float = 1.0
    top_p: float = 1.0
    score: str = "sampled"  # what ranks positions for the confidence rules: sampled, top, margin or entropy

    unbounded_length: ClassVar[bool] = True  # may generate more tokens than the model's length


def window_start(hi: int, seq_len: int, block_size: int) -> int:
    """First position of the context that a block ending at `hi` sees: whole blocks, <= seq_len tokens."""
    over = max(0, hi - seq_len)
    return -(-over // block_size) * block_size


class BlockCacheView(View):
    """The block attends to the KV cache of the finished blocks before it (exact).

    A finished block is not read on its own: its clean tokens go into the cache in the same pass as
    the next block's first step (the clean part attends to the cache and itself, the noisy block to
    everything), which saves a forward pass per block."""

    def __init__(self, model: nn.Module, block_size: int):
        self.model, self.block_size, self.cache = model, block_size, model.new_cache()
        self.pending: tuple[int, int] | None = None  # a finished block not yet in the cache

    def start(self, x, lo, hi):
        keep = lo - window_start(hi, self.model.cfg.seq_len, self.block_size)  # context tokens this block sees
        waiting = 0 if self.pending is None else self.pending[1] - self.pending[0]
        if waiting > keep:  # the finished block is already outside the window: never store it
            self.pending, waiting = None, 0
        self.cache.drop_oldest(self.cache.length + waiting - keep)  # slide the window by whole blocks

    def _flush(self, x) -> None:
        plo, phi = self.pending
        self.pending = None
        self.nfe += 1
        self.model(x[:, plo:phi], cache=self.cache, positions=torch.arange(plo, phi, device=x.device))

    def logits(self, x, lo, hi, rows):
        if self.pending is not None and rows is None:
            (plo, phi), self.pending = self.pending, None
            clean, past = phi - plo, self.cache.length
            allowed = torch.ones(clean + hi - lo, past + clean + hi - lo, dtype=torch.bool, device=x.device)
            allowed[:clean, past + clean :] = False  # the finished block does not see the noisy one
            positions = torch.cat([torch.arange(plo, phi), torch.arange(lo, hi)]).to(x.device)
            self.nfe += 1
            out = self.model(torch.cat([x[:, plo:phi], x[:, lo:hi]], dim=1), cache=self.cache, commit=clean,
                             attn_mask=allowed, positions=positions)
            return out[:, clean:]
        if self.pending is not None:
            self._flush(x)
        xs, cache = (x, self.cache) if rows is None else (x[rows], self.cache.rows(rows))
        self.nfe += 1
        return self.model(xs[:, lo:hi], cache=cache, commit=False, positions=torch.arange(lo, hi, device=x.device))

    def finish(self, x, lo, hi):
        if self.pending is not None:  # a block with nothing to generate (a prompt) follows another
            self._flush(x)
        self.pending = (lo, hi)


class BlockRecomputeView(View):
    """No cache: every step reads the window's clean blocks and the noisy block under the block-causal mask."""

    def __init__(self, model: nn.Module, block_size: int):
        self.model, self.block_size = model, block_size

    def logits(self, x, lo, hi, rows):
        start = window_start(hi, self.model.cfg.seq_len, self.block_size)
        xs = (x if rows is None else x[rows])[:, start:hi]
        mask = block_causal_mask(hi - start, self.block_size, x.device)
        self.nfe += 1
        return self.model(xs, attn_mask=mask, positions=torch.arange(start, hi, device=x.device))[:, lo - start :]


def should_stop(stop_at_eos: bool | None, eos_id: int | None, length: int, seq_len: int) -> bool:
    """Stop at [EOS] when asked to, or by default when writing past the model's length."""
    if eos_id is None:
        return False
    return length > seq_len if stop_at_eos is None else stop_at_eos


def first_eos_fill(x: torch.Tensor, generated: torch.Tensor, eos_id: int) -> None:
    """Set every generated position after a row's first generated [EOS] to [EOS] (in place)."""
    is_eos = (x == eos_id) & generated
    count = is_eos.cumsum(1)
    after_first = (count > 1) | ((count == 1) & ~is_eos)
    x[after_first & generated] = eos_id


@torch.no_grad()
def block_sample(model: nn.Module, process: BlockDiffusion, x: torch.Tensor, cfg: BlockConfig,
                 generator: torch.Generator | None = None, record_frames: bool = False,
                 on_step: Callable[[Frame], None] | None = None) -> SampleResult:
    """Generate the [MASK]s of x ([B, N], N may exceed the model's length) block by block."""
    if not isinstance(process, BlockDiffusion):
        raise UserError(f"sampler 'block' needs a block diffusion model (process 'block'), got {process.name!r}")
    rule = Rule(cfg.rule, cfg.steps, cfg.threshold, cfg.temperature, cfg.top_p, cfg.score)
    rule.check()
    mask_id, size = process.mask_id, process.block_size
    if size > model.cfg.seq_len:
        raise UserError(f"block_size {size} is longer than the model's {model.cfg.seq_len} tokens")
    stop = should_stop(cfg.stop_at_eos, cfg.eos_id, x.shape[1], model.cfg.seq_len)
    x = x.clone()
    generated = x == mask_id
    view = BlockCacheView(model, size) if cfg.cache else BlockRecomputeView(model, size)
    total = max(int(generated.sum()), 1)
    recorder = FrameRecorder(record_frames, on_step)
    recorder(0, 1.0, x)
    step = 0
    for lo in range(0, x.shape[1], size):
        hi = min(lo + size, x.shape[1])
        step += denoise_block(x, lo, hi, view, rule, mask_id, process.schedule.alpha, generator, recorder, step,
                              progress=lambda: float((x == mask_id).sum()) / total)
        if stop and hi < x.shape[1]:
            if bool(((x[:, :hi] == cfg.eos_id) & generated[:, :hi]).any(1).all()):
                x[:, hi:][generated[:, hi:]] = cfg.eos_id  # every row has ended: skip the rest
                break
    if stop:
        first_eos_fill(x, generated, cfg.eos_id)
        recorder(step + 1, 0.0, x)
    return SampleResult(ids=x, nfe=view.nfe, frames=recorder.frames)
