"""Choosing bfloat16 or float32 for a device.

bfloat16 autocast is a large win on GPUs and on CPUs with native bf16 instructions (AVX512-BF16,
AMX), but on CPUs without them PyTorch emulates it: a bf16 matmul measured 170x slower than fp32
on an AVX2-only AMD EPYC. "auto" therefore picks bf16 only where the hardware has it.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

from .errors import UserError

PRECISIONS = ("auto", "bf16", "fp32")


@functools.cache
def cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no cheap way to tell, so stay safe
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(name: str, device: torch.device) -> str:
    """'auto' -> 'bf16' where bfloat16 is fast on `device`, else 'fp32'; other names are checked."""
    if name not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {name!r}")
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"


def inference_context(precision: str, device: torch.device) -> contextlib.ExitStack:
    """What sampling and scoring run under: bf16 autocast where `precision` says so, and on CUDA the flash,
    memory-efficient and math attention kernels but not cuDNN's. cuDNN's attention builds an execution plan for
    every new shape or mask layout (7 ms per call on an H100 with torch 2.11), and a sampler changes them at every
    step (a KV cache grows, a block mask moves): BD3-LM's sampler ran at 38 ms per denoiser call with it, 5 ms
    without it where the plan is reused (benchmarks/gpu/sampler_profile.py)."""
    stack = contextlib.ExitStack()
    if precision == "bf16":
        stack.enter_context(torch.autocast(device.type, dtype=torch.bfloat16))
    if device.type == "cuda":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        stack.enter_context(sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                                         SDPBackend.MATH]))
    return stack
