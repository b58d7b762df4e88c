"""Forward processes and their losses. Each family is one module plus one registry entry."""

from .base import PROCESSES, DiffusionProcess, build_process, register
from .masked import MaskedDiffusion

__all__ = ["PROCESSES", "DiffusionProcess", "MaskedDiffusion", "build_process", "register"]
