"""What a generation returns: the texts, their ids, the cost in forward passes and seconds, and the frames."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..samplers.base import Frame


@dataclass
class GenerationOutput:
    texts: list[str]
    ids: torch.Tensor  # [B, L]
    nfe: int  # denoiser forward passes
    seconds: float
    frames: list[Frame] = field(default_factory=list)
    fills: list[list[str]] = field(default_factory=list)  # infill only: the text of each gap
