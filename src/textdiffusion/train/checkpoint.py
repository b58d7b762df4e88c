"""Training checkpoints: a model folder (interop/folder.py: config, weights, atomic writes) plus the trainer
state (optimiser, EMA, RNG and data position): its tensors in trainer_state.safetensors, everything else in
trainer_state.json. Nothing in a checkpoint is a pickle, so reading one (`--resume`, `bench`) cannot run code.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..core.errors import UserError

# the folder's own names, so that `ckpt.X` reads one module for a whole checkpoint
from ..interop.folder import (
    CONFIG_FILE as CONFIG_FILE,
    EMA_FILE as EMA_FILE,
    FORMAT as FORMAT,
    WEIGHTS_FILE as WEIGHTS_FILE,
    atomic_folder as atomic_folder,
    clean_interrupted_save as clean_interrupted_save,
    load_weights as load_weights,
    old_copy as old_copy,
    read_config as read_config,
    resolve_model_dir as resolve_model_dir,
    save_weights as save_weights,
    swap_into_place as swap_into_place,
    tmp_folder as tmp_folder,
    write_config as write_config,
)

STATE_FILE = "trainer_state.json"  # the trainer state's numbers, strings and structure
STATE_TENSORS_FILE = "trainer_state.safetensors"  # and its tensors (optimiser moments, RNG states)
LEGACY_STATE_FILE = "trainer_state.pt"  # the pickle earlier versions wrote: never unpickled implicitly
CONVERT_COMMAND = "python -m textdiffusion convert-state"  # the CLI subcommand that runs convert_legacy_state
STATE_FORMAT = "textdiffusion-trainer-state"
STATE_VERSION = 1
# the keys a trainer state holds, and what each must be once decoded
_STATE_TYPES = {"step": int, "tokens_seen": int, "elapsed": (int, float), "optimizer": dict, "data": dict,
                "noise_gen": torch.Tensor, "torch_rng": torch.Tensor, "cuda_rng": (torch.Tensor, type(None)),
                "ema": (dict, type(None))}


# ---- the trainer state: JSON for the structure, safetensors for the tensors ---------------------
# JSON cannot hold tensors, tuples, non-string keys or nan/inf, so those become one-key objects with
# a "$" tag; a plain dict whose keys are strings not starting with "$" stays a JSON object.

def _encode(value, name: str, tensors: dict[str, torch.Tensor]):
    if isinstance(value, torch.Tensor):
        if name in tensors:
            raise ValueError(f"two tensors of the trainer state would share the name {name!r}")
        tensors[name] = value.detach().cpu().contiguous()
        return {"$tensor": name}
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"$float": repr(value)}
    if isinstance(value, tuple):
        return {"$tuple": [_encode(v, f"{name}/{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, f"{name}/{i}", tensors) for i, v in enumerate(value)]
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in value):
            return {k: _encode(v, f"{name}/{k}", tensors) for k, v in value.items()}
        if not all(k is None or isinstance(k, (bool, int, float, str)) for k in value):
            raise TypeError(f"the trainer state's dict keys must be numbers or strings (at {name})")
        return {"$items": [[_encode(k, name, tensors), _encode(v, f"{name}/{k}", tensors)] for k, v in value.items()]}
    raise TypeError(f"the trainer state cannot hold a {type(value).__name__} (at {name})")


def _decode(value, tensors: dict[str, torch.Tensor]):
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        [(tag, inner)] = value.items()
        if tag == "$tensor":
            return tensors[inner]
        if tag == "$tuple":
            return tuple(_decode(v, tensors) for v in inner)
        if tag == "$items":
            return {_decode(k, tensors): _decode(v, tensors) for k, v in inner}
        if tag == "$float":
            if inner not in ("nan", "inf", "-inf"):
                raise ValueError(f"unexpected $float {inner!r}")
            return float(inner)
    return {k: _decode(v, tensors) for k, v in value.items()}


def save_trainer_state(state: dict, folder: Path) -> None:
    """Write `state` (tensors, numbers, strings, None and lists, tuples and dicts of them) to `folder`."""
    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(state, "state", tensors)
    save_file(tensors, str(folder / STATE_TENSORS_FILE))
    doc = {"format": STATE_FORMAT, "version": STATE_VERSION, "state": tree}
    (folder / STATE_FILE).write_text(json.dumps(doc, indent=1, allow_nan=False), encoding="utf-8")


def _check_state(state, path: Path) -> dict:
    if not isinstance(state, dict):
        raise UserError(f"training state {path} is corrupt (it holds no state): resume from an earlier copy")
    for key, kind in _STATE_TYPES.items():
        value = state.get(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise UserError(f"training state {path} is corrupt ({key!r} is missing or of the wrong type): "
                            "resume from an earlier copy")
    return state


def load_trainer_state(folder: Path) -> dict:
    """The state save_trainer_state wrote: read as JSON and safetensors, which cannot run code."""
    path, tensor_path, legacy = folder / STATE_FILE, folder / STATE_TENSORS_FILE, folder / LEGACY_STATE_FILE
    if not path.is_file():
        if legacy.is_file():
            raise UserError(f"{legacy} is a training state in the old pickle format, which can run code when read, "
                            f"so it is not loaded: if you wrote it yourself, convert it once with `{CONVERT_COMMAND} "
                            f"{folder}` and resume again; "
                            "otherwise train afresh in a new --out folder")
        raise UserError(f"{folder} has no {STATE_FILE}: it is a model, not a resumable checkpoint")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError covers bad JSON and bad UTF-8
        raise UserError(f"training state {path} is corrupt ({exc}): resume from an earlier copy") from exc
    if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT or doc.get("version") != STATE_VERSION:
        raise UserError(f"training state {path} is corrupt or of an unknown version: resume from an earlier copy")
    if not tensor_path.is_file():
        raise UserError(f"training state {tensor_path} is missing, so {folder} is corrupt: restore it")
    try:
        tensors = load_file(str(tensor_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"training state {tensor_path} is corrupt ({exc}): resume from an earlier copy") from exc
    try:
        state = _decode(doc.get("state"), tensors)
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"training state {path} is corrupt or does not match {tensor_path.name} ({exc!r}): "
                        "resume from an earlier copy") from exc
    return _check_state(state, path)


def convert_legacy_state(folder: str | Path) -> Path:
    """Rewrite a checkpoint's old trainer_state.pt in the safe format, reading it with torch's weights-only
    unpickler (plain containers, numbers and tensors; any other object is refused, not built)."""
    folder = resolve_model_dir(folder)
    legacy = folder / LEGACY_STATE_FILE
    if not legacy.is_file():
        raise UserError(f"{folder} holds no {LEGACY_STATE_FILE}: there is nothing to convert")
    try:
        state = torch.load(legacy, map_location="cpu", weights_only=True)
    except Exception as exc:  # an UnpicklingError for refused objects; several types for a damaged file
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))  # torch's report spans many lines; keep what it refused
        what = f"it refers to {found.group(1)}, which is not plain data" if found else \
            f"it is damaged or holds more than tensors and numbers ({type(exc).__name__})"
        raise UserError(f"{legacy} was not converted: {what}; train afresh in a new --out folder") from exc
    _check_state(state, legacy)
    save_trainer_state(state, folder)
    legacy.unlink()
    return folder
