"""Sampling an Edit Flows model: Euler (first-order tau-leaping) steps of its edit CTMC from t = 0 to 1.

Over a step of length h at time t, each token is independently deleted with probability h u_del or substituted by
a with probability h u_sub[a] (at most one of these), and after each canvas position one token a is inserted with
probability h u_ins[a]; all chosen edits apply at once (the paper's sampler). Probabilities above 1 are
renormalised. The run starts from x0 ~ p0 of the model's process (`source`), or from the input row (`start=input`).
Frames carry the minimal alignment between consecutive states as their edits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..core.errors import UserError
from ..processes.alignment import align
from ..processes.edit_flow import EditFlow
from .base import Frame, FrameRecorder, SampleResult, sample_categorical
from .edit import _padded

RateFn = Callable[[list[list[int]], float], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


@dataclass
class EditFlowConfig:
    steps: int = 64
    start: str = "auto"  # auto (the process's source for a row of only [MASK], else input) | source | input
    t_start: float = 0.0  # the time the run starts at: a text to revise (start=input) that is close to data can
    # start late (e.g. 0.9); the steps then cover [t_start, 1]


def euler_step(seqs: list[list[int]], log_ins: torch.Tensor, log_del: torch.Tensor, log_sub: torch.Tensor, h: float,
               generator: torch.Generator | None = None) -> list[list[int]]:
    """One Euler step of length h given the log-rates on the canvases [start] + seq (module notes)."""
    b, n, v = log_sub.shape
    out = []
    rates_ins = (log_ins.double().exp() * h).cpu()
    rates_del = (log_del.double().exp() * h).cpu()
    rates_sub = (log_sub.double().exp() * h).cpu()
    for r, s in enumerate(seqs):
        tokens = torch.tensor(s, dtype=torch.long)
        sub = rates_sub[r, 1 : len(s) + 1].clone()
        if len(s):
            sub[torch.arange(len(s)), tokens] = 0.0  # substituting a token by itself is no edit
        change = torch.cat([rates_del[r, 1 : len(s) + 1, None], sub], dim=-1)  # [len, 1 + V]
        stay = (1.0 - change.sum(-1, keepdim=True)).clamp_min(0.0)
        probs = torch.cat([stay, change], dim=-1)
        pick = sample_categorical((probs / probs.sum(-1, keepdim=True)).log(), generator) if len(s) else []
        ins = rates_ins[r, : len(s) + 1]
        total_ins = ins.sum(-1, keepdim=True)
        fire = torch.rand(len(s) + 1, dtype=torch.float64, generator=generator) < total_ins.squeeze(-1).clamp(max=1.0)
        which = sample_categorical((ins / total_ins.clamp_min(1e-300)).log(), generator)
        new = [int(which[0])] if fire[0] else []
        for j, tok in enumerate(s):
            choice = int(pick[j])
            if choice == 0:
                new.append(tok)
            elif choice >= 2:
                new.append(choice - 2)
            if fire[j + 1]:
                new.append(int(which[j + 1]))
        out.append(new)
    return out


def model_rates(model: nn.Module, process: EditFlow) -> RateFn:
    device = next(model.parameters()).device

    def rates(seqs: list[list[int]], t: float):
        log_ins, log_del, log_sub, _ = process.log_rates(model, seqs, torch.full((len(seqs),), t, dtype=torch.float64),
                                                         device)
        return log_ins, log_del, log_sub

    return rates


def integrate(rates: RateFn, seqs: list[list[int]], steps: int, t_max: float, max_len: int,
              generator: torch.Generator | None = None,
              record: Callable[[int, float, list[list[int]]], None] | None = None,
              t_start: float = 0.0) -> list[list[int]]:
    """`steps` Euler steps over [t_start, 1] (rates read at min(t, t_max)); sequences longer than `max_len` are
    cut."""
    h = (1.0 - t_start) / steps
    for k in range(steps):
        t = t_start + k * h
        log_ins, log_del, log_sub = rates(seqs, min(t, t_max))
        seqs = [s[:max_len] for s in euler_step(seqs, log_ins, log_del, log_sub, h, generator)]
        if record is not None:
            record(k + 1, 1.0 - (k + 1) / steps, seqs)
    return seqs


@torch.no_grad()
def edit_flow_sample(model: nn.Module, process: EditFlow, x: torch.Tensor, cfg: EditFlowConfig,
                     generator: torch.Generator | None = None, record_frames: bool = False,
                     on_step: Callable[[Frame], None] | None = None) -> SampleResult:
    """Run the model's edit CTMC from x0 to t = 1 for each row of `x`; ids padded with [MASK] ids."""
    if not isinstance(process, EditFlow):
        raise UserError(f"sampler 'edit_flow' runs Edit Flows models (process 'edit_flow'), not {process.name!r}")
    if cfg.start not in ("auto", "source", "input"):
        raise UserError(f"start must be auto, source or input, got {cfg.start!r}")
    if not 0 <= cfg.t_start < 1:
        raise UserError(f"t_start must be in [0, 1), got {cfg.t_start}")
    import numpy as np

    rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
    max_len = model.cfg.seq_len - 1
    seqs = []
    for row in x.cpu().tolist():
        masked = all(v == process.mask_id for v in row)
        if cfg.start == "source" or (cfg.start == "auto" and masked):
            seqs.append(process.draw_source(row[:max_len], rng))
        else:
            seqs.append([int(v) for v in row[:max_len]])
    recorder = FrameRecorder(record_frames, on_step)
    prev = [list(s) for s in seqs]

    def record(k: int, t: float, now: list[list[int]]) -> None:
        nonlocal prev
        if recorder.record or recorder.on_step is not None:
            frame = Frame(k, t, _padded(now, process.mask_id), edits=[align(a, b) for a, b in zip(prev, now)])
            if recorder.record:
                recorder.frames.append(frame)
            if recorder.on_step is not None:
                recorder.on_step(frame)
        prev = [list(s) for s in now]

    if recorder.record or recorder.on_step is not None:
        first = Frame(0, 1.0, _padded(seqs, process.mask_id))
        if recorder.record:
            recorder.frames.append(first)
        if recorder.on_step is not None:
            recorder.on_step(first)
    out = integrate(model_rates(model, process), seqs, cfg.steps, process.t_max, max_len, generator, record,
                    cfg.t_start)
    return SampleResult(_padded(out, process.mask_id), 2 * cfg.steps, recorder.frames)
