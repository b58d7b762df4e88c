"""Bounded work: a request's memory and time, estimated from its sizes before anything is allocated, checked
against what this machine has. Each check raises a UserError that names the limit and the knob to turn.

The estimates are lower bounds (the weights and the largest activations; matrix-multiply FLOPs at the speed
this machine's matrix multiply reaches), so a refusal means the request cannot fit, not that it might not.
TEXTDIFFUSION_MAX_HOURS (default 1) is the longest estimated batch of sampling or scoring a command starts."""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path

try:
    import resource
except ImportError:  # Windows
    resource = None

import torch

from .errors import UserError

GB = 1024**3


def _size(nbytes: float) -> str:
    return f"{nbytes / GB:,.1f} GB" if nbytes >= GB / 10 else f"{nbytes / 1024**2:,.0f} MB"


def free_memory(device: torch.device | str | None = None) -> int:
    """Bytes a new allocation can take: free GPU memory on CUDA, else the host's available memory."""
    device = torch.device(device or "cpu")
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    limits = [1 << 62]  # unknown: do not refuse
    try:
        with open("/proc/meminfo") as f:
            limits += [int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")]
    except (OSError, ValueError):
        pass
    try:  # a container's cgroup (v2) limit
        high = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if high != "max":
            limits.append(int(high) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    except (OSError, ValueError):
        pass
    try:  # ulimit -v
        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft != resource.RLIM_INFINITY:
            with open("/proc/self/statm") as f:
                limits.append(soft - int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, AttributeError):
        pass
    return max(0, min(limits))


def check_memory(what: str, nbytes: float, knob: str, device: torch.device | str | None = None) -> None:
    """Refuse `what` when its estimated `nbytes` exceed the free memory of `device`; `knob` says what to lower."""
    free = free_memory(device)
    if nbytes > free:
        where = "GPU" if torch.device(device or "cpu").type == "cuda" else "machine"
        raise UserError(f"{what} needs at least {_size(nbytes)} of memory, more than the {_size(free)} this {where} "
                        f"has free: {knob}")


@functools.cache
def flops_per_second(device_type: str = "cpu") -> float:
    """The fp32 matrix-multiply speed of this machine (a few milliseconds to measure, once per process)."""
    n = 256
    a = torch.randn(n, n, device=device_type)
    best = float("inf")
    for _ in range(3):
        if device_type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(4):
            a @ a
        if device_type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    # never below 1 GFLOP/s nor above a fast GPU's 1 PFLOP/s: the estimate must stay a lower bound of the time
    return min(max(4 * 2 * n**3 / max(best, 1e-9), 1e9), 1e15)


def max_hours() -> float:
    try:
        hours = float(os.environ.get("TEXTDIFFUSION_MAX_HOURS", 1))
    except ValueError:
        raise UserError("TEXTDIFFUSION_MAX_HOURS must be a number of hours, e.g. 48") from None
    return hours if hours > 0 else float("inf")


OP_SECONDS = 5e-6  # the least time PyTorch takes to launch one operation, however small its tensors


def check_time(what: str, flops: float, ops: float, knob: str, device: torch.device | str | None = None) -> None:
    """Refuse `what` when `flops` of matrix multiplies in `ops` operations take more than TEXTDIFFUSION_MAX_HOURS
    on `device`."""
    limit = max_hours()
    if (flops / 1e9 + ops * OP_SECONDS) / 3600 < limit:  # would fit even at 1 GFLOP/s: no need to measure
        return
    speed = flops_per_second(torch.device(device or "cpu").type)
    hours = (flops / speed + ops * OP_SECONDS) / 3600
    if hours > limit:
        raise UserError(f"{what} would take at least {hours:,.0f} hours here ({flops:.1e} FLOPs at "
                        f"{speed / 1e9:,.0f} GFLOP/s, {ops:.1e} operations), over the {limit:g}-hour limit: {knob} "
                        "(or raise TEXTDIFFUSION_MAX_HOURS)")
