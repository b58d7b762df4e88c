"""The part of flash-attn's API that the reference MDLM DiT calls, on PyTorch's own kernels (see ../README.md)."""
from . import flash_attn_interface, layers  # noqa: F401
