"""What every sampler shares: float64 categorical draws, temperature / top-p, frames."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from numbers import Integral, Real

import torch

from ..core.errors import UserError


@dataclass
class Frame:
    """The state of the sequence after `step` of `steps` reverse steps, at noise level t."""

    step: int
    t: float
    ids: torch.Tensor  # [B, L], on the CPU
    # edit samplers (the length changes): per row, the edits (edits.Edit list) from the previous frame's row to
    # this one, and `ids` rows are padded with [MASK] ids to the longest; None for fixed-length samplers
    edits: list | None = None


class FrameRecorder:
    """Snapshots of the sequence as a sampler runs: kept for the filmstrip and/or passed to a callback."""

    def __init__(self, record: bool, on_step: Callable[[Frame], None] | None):
        self.record, self.on_step = record, on_step
        self.frames: list[Frame] = []

    def __call__(self, step: int, t: float, x: torch.Tensor) -> None:
        if not self.record and self.on_step is None:
            return
        frame = Frame(step=step, t=float(t), ids=x.detach().cpu().clone())
        if self.record:
            self.frames.append(frame)
        if self.on_step is not None:
            self.on_step(frame)


@dataclass
class SampleResult:
    ids: torch.Tensor  # [B, L]
    nfe: int  # number of denoiser forward passes
    frames: list[Frame] = field(default_factory=list)


def store_rows(store: torch.Tensor | None, rows: torch.Tensor | None, out: torch.Tensor, batch: int) -> torch.Tensor:
    """Keep each row's latest denoiser output: write `out` (the outputs of `rows`, a bool mask or an index
    over the batch; None = every row) into `store` ([batch, ...], allocated on first use) and return it.

    Samplers recompute only rows whose input changed and reuse the rest (MDLM's caching trick)."""
    if store is None:  # zeros, not empty: rows never computed must still hold finite numbers
        store = torch.zeros((batch, *out.shape[1:]), dtype=out.dtype, device=out.device)
    if rows is None:
        store.copy_(out)
    else:
        store[rows] = out
    return store


def check_sampling_args(steps: int, temperature: float, top_p: float) -> None:
    if not isinstance(steps, int) or steps <= 0:
        raise UserError(f"steps must be a positive integer, got {steps!r}")
    if not math.isfinite(temperature) or temperature < 0:  # nan passes `< 0` and would sample garbage
        raise UserError(f"temperature must be a finite number >= 0 (0 means greedy), got {temperature}")
    if not 0 < top_p <= 1:
        raise UserError(f"top_p must be in (0, 1], got {top_p}")


def _allowed(hint: object) -> tuple[type, ...]:
    """The classes a field's annotation admits: (float,) for `float`, (int, NoneType) for `int | None`."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,) if isinstance(hint, type) else ()


def check_config(cfg: object, sampler: str = "the sampler") -> None:
    """Check every field of a sampler's config dataclass against its annotation, in one place.

    Numbers must be finite (a nan temperature or an inf threshold otherwise samples garbage without a
    word), integers are not bools or floats, steps >= 1, temperature >= 0, top_p in (0, 1], other
    integers (block lengths, strides, token ids) >= 0. Checks that need the model stay in the samplers."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value, allowed = getattr(cfg, f.name), _allowed(hints.get(f.name))
        if value is None and type(None) in allowed:
            continue
        problem = None
        if bool in allowed:
            if not isinstance(value, bool):
                problem = "true or false"
        elif int in allowed:
            if not isinstance(value, Integral) or isinstance(value, bool):
                problem = "an integer"
            elif value < (1 if f.name == "steps" else 0):
                problem = "a positive integer" if f.name == "steps" else "an integer >= 0"
            else:
                setattr(cfg, f.name, int(value))  # numpy integers: samplers test isinstance(steps, int)
        elif float in allowed:
            if not isinstance(value, Real) or isinstance(value, bool) or not math.isfinite(value):
                problem = "a finite number"
            elif f.name == "temperature" and value < 0:
                problem = "a number >= 0 (0 means greedy)"
            elif f.name == "top_p" and not 0 < value <= 1:
                problem = "in (0, 1]"
        elif str in allowed and not isinstance(value, str):
            problem = "a string"
        if problem is not None:
            none = " (or null)" if type(None) in allowed else ""
            raise UserError(f"{f.name} must be {problem}{none}, got {value!r} (an option of {sampler})")


def select_from_logits(logits: torch.Tensor, temperature: float = 1.0, top_p: float = 1.0) -> torch.Tensor:
    """Logits -> float64 log-probabilities after temperature and nucleus (top-p) truncation.

    temperature 0 gives a point mass on the argmax.
    """
    logits = logits.double()
    if temperature == 0:
        return torch.where(
            torch.arange(logits.shape[-1], device=logits.device) == logits.argmax(-1, keepdim=True),
            0.0, float("-inf")).double()
    logp = torch.log_softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_logp, order = logp.sort(dim=-1, descending=True)
        mass_before = sorted_logp.exp().cumsum(-1) - sorted_logp.exp()
        drop_sorted = mass_before >= top_p  # keep the smallest prefix whose mass reaches top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logp = torch.log_softmax(logp.masked_fill(drop, float("-inf")), dim=-1)
    return logp


def sample_categorical(logp: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Gumbel-max draw from log-probabilities, with float64 noise.

    float32 Gumbel noise truncates the tail and lowers sample entropy (the MDLM sampler bug that
    ReMDM, BD3-LM and DUO later fixed).
    """
    return (logp.double() + gumbel_noise(logp.shape, logp.device, generator)).argmax(dim=-1)


def gumbel_noise(shape: torch.Size | tuple[int, ...], device: torch.device | str,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard Gumbel noise in float64, from float64 uniforms (53 bits, not float32's 24: a Gumbel tail of ~37
    instead of ~17)."""
    u = torch.rand(shape, dtype=torch.float64, device=device, generator=generator)
    return -torch.log(-torch.log(u.clamp_min(torch.finfo(torch.float64).tiny)))
