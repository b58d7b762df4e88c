"""Checks of what users hand the library (devices, integers, seeds, texts, weights): each failure is a
UserError with one line that says what to do."""

from __future__ import annotations

from numbers import Integral
from typing import TYPE_CHECKING

from .errors import UserError

if TYPE_CHECKING:  # torch loads in 1-2 s: only resolve_device needs it, so the light commands start at once
    import torch


def resolve_device(name: str | torch.device | None) -> torch.device:
    """auto, cpu, cuda, cuda:N or mps, checked against what this machine has."""
    import torch

    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {name!r} needs a CUDA GPU, and this machine or PyTorch build has none: "
                            "use --device cpu (or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"device {name!r} does not exist: this machine has {torch.cuda.device_count()} "
                            "CUDA device(s), cuda:0 onward")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device {name!r} needs Apple's MPS, which this machine lacks: use --device cpu (or auto)")
    return device


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def check_int(name: str, value: object, minimum: int | None = None) -> int:
    if not isinstance(value, Integral) or isinstance(value, bool):
        raise UserError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise UserError(f"{name} must be {'positive' if minimum == 1 else f'>= {minimum}'}, got {value}")
    return int(value)


def check_seed(seed: object) -> int | None:
    if seed is not None and (not isinstance(seed, Integral) or isinstance(seed, bool)):
        raise UserError(f"seed must be an integer or None, got {seed!r}")
    return None if seed is None else int(seed)


def check_text(name: str, value: object) -> str:
    error = text_error(value, name)
    if error is not None:
        raise error
    return value


def state_mismatch(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> str:
    """The first difference between a model's tensors and a weights file's, on one line ("" if none)."""
    problems = [f"tensor {k} is {list(found[k].shape)} in the weights but {list(v.shape)} in the model"
                for k, v in expected.items() if k in found and found[k].shape != v.shape]
    problems += [f"tensor {k} is missing from the weights" for k in expected if k not in found]
    problems += [f"the weights hold tensor {k}, which the model lacks" for k in found if k not in expected]
    if not problems:
        return ""
    return problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")


def text_error(text: object, name: str = "text") -> UserError | None:
    """Why `text` (the argument called `name`) cannot be tokenized, or None if it can.

    Python decodes a command line that is not UTF-8 with surrogateescape: each bad byte becomes a
    lone surrogate, which no UTF-8 encoder (ours or HF's) accepts."""
    if not isinstance(text, str):
        hint = ": decode the bytes first, e.g. data.decode('utf-8', errors='replace')" if isinstance(
            text, (bytes, bytearray)) else ""
        return UserError(f"{name} must be a str, got {type(text).__name__}{hint}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(text[exc.start])
        what = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"lone surrogate U+{code:04X}"
        return UserError(f"{name} is not valid UTF-8 ({what} at character {exc.start}): "
                         "pass UTF-8 text, e.g. convert it with iconv -t UTF-8")
    return None
