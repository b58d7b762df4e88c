"""What a request to a Pipeline costs, from its sizes, checked before anything is allocated (core/budget.py):
the memory of one forward pass (its logits and activations) and the time of all of them (steps x forward cost)."""

from __future__ import annotations

from torch import nn

from ..core.budget import check_memory, check_time


def check_passes(model: nn.Module, vocab_size: int, what: str, batch: int, length: int, passes: int,
                 memory_knob: str, time_knob: str) -> None:
    """Refuse `passes` forward passes over `batch` rows of `length` tokens when one pass cannot fit in memory
    (`memory_knob` names what to lower) or all of them cannot run within the time limit (`time_knob`)."""
    cfg = getattr(model, "cfg", None)
    d_model, n_layers = getattr(cfg, "d_model", 1), getattr(cfg, "n_layers", 1)
    window = min(length, getattr(cfg, "seq_len", length))  # what one pass sees; the block samplers cache the rest
    device = next(model.parameters()).device
    # fp32 logits, a probability copy and float64 draws, the residual stream and a few of its projections,
    # and the keys and values of every layer for the whole length
    check_memory(f"{what} ({batch:,} x {length:,} tokens)",
                 batch * (window * (16 * vocab_size + 32 * d_model) + length * 8 * d_model * n_layers),
                 memory_knob, device)
    params = getattr(model, "_num_params", None)
    if params is None:
        params = model._num_params = sum(p.numel() for p in model.parameters())
    tokens = float(batch) * length * passes
    check_time(f"{what} ({passes:,} forward passes of {batch:,} x {length:,} tokens)", 2.0 * params * tokens,
               float(passes) * (20 * n_layers + 20), time_knob, device)


def sampler_passes(cfg: object) -> tuple[int, int]:
    """(rows per sample, passes) of a sampler's config, each pass over the whole length: its steps (the block
    samplers' steps per block also come to steps x length tokens in all; 1 where steps is None or absent) and,
    for a beam search, beam x revisions rows per sample."""
    steps = getattr(cfg, "steps", None)
    rows = max(1, getattr(cfg, "beam", 1) or 1) * max(1, getattr(cfg, "revisions", 1) or 1)
    return rows, max(1, int(steps)) if isinstance(steps, int) else 1
