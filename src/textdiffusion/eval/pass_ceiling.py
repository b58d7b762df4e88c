"""How many tokens per forward pass threshold decoding could ever accept from a model as sure as a given AR model.

Fast-dLLM's threshold rule (samplers/unmasking.py) reveals, at every pass over a block, each [MASK] whose confidence
exceeds the threshold, and always the single most confident one. Its speed therefore rests on the model being
sure of many tokens at once. An AR model's own confidence in each token given the text before it (its top
probability, read teacher-forced in one pass) gives a ceiling estimate for any diffusion model adapted from it, or
trained to match it: if each token's confidence at its turn were the AR model's, the first pass over a block would
reveal every token above the threshold (its "most confident" token is one of them), and each later pass the most
confident of the rest, one at a time: a block takes (#tokens at or under the threshold) + 1 passes, or that many
without the 1 when none is above.

This is optimistic in one way and not in another. Optimistic: a diffusion model decodes a token while some before
it are still masked, which can only spread its distribution. Not: it may also see revealed tokens after it, which
can sharpen it. So it is an estimate, not a bound; the measured block models of BENCHMARKS.md stay under it.
"""

from __future__ import annotations

import torch


def threshold_passes(confidence: torch.Tensor, block_size: int, threshold: float) -> int:
    """Passes threshold decoding takes for tokens with these confidences ([N], in decoding order), in blocks of
    `block_size` from the first: per block, one pass for all tokens above the threshold (if any) and one for each
    of the others (module notes). This is exactly what the block sampler takes when confidence ignores context.

    "Under" matches the sampler: a token is revealed with the others when its confidence is strictly above."""
    if confidence.dim() != 1:
        raise ValueError(f"confidence must be one sequence [N], got shape {tuple(confidence.shape)}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    hard = confidence <= threshold
    passes = 0
    for lo in range(0, confidence.numel(), block_size):
        block = hard[lo : lo + block_size]
        passes += int(block.sum()) + int(not bool(block.all()))
    return passes


@torch.no_grad()
def next_token_confidence(logits: torch.Tensor, mask_id: int | None = None) -> torch.Tensor:
    """The top probability of each next-token distribution (float64 softmax; [..., V] -> [...]), never [MASK]'s:
    what the threshold rule's score reads when the drawn value is the mode (greedy, or the "top" score)."""
    logits = logits.double()
    if mask_id is not None and mask_id < logits.shape[-1]:
        logits = logits.clone()
        logits[..., mask_id] = float("-inf")
    return torch.softmax(logits, dim=-1).amax(-1)
