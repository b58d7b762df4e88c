"""Model folders and training checkpoints, written atomically.

A folder holds config.json, model.safetensors, the tokenizer files and, for a training checkpoint,
ema.safetensors and the trainer state (optimiser, EMA, RNG and data position): its tensors in
trainer_state.safetensors, everything else in trainer_state.json. Nothing in a checkpoint is a
pickle, so reading one (`--resume`, `bench`) cannot run code. Writes go to a temporary sibling
folder that is renamed into place, so a crash leaves either the old folder or the new one, never a
half-written one; the next write (or resume) clears what a killed write left behind.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import UserError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
STATE_FILE = "trainer_state.json"  # the trainer state's numbers, strings and structure
STATE_TENSORS_FILE = "trainer_state.safetensors"  # and its tensors (optimiser moments, RNG states)
LEGACY_STATE_FILE = "trainer_state.pt"  # the pickle earlier versions wrote: never unpickled implicitly
CONVERT_COMMAND = "python -m textdiffusion convert-state"  # the CLI subcommand that runs convert_legacy_state
FORMAT = "textdiffusion"
STATE_FORMAT = "textdiffusion-trainer-state"
STATE_VERSION = 1
# the keys a trainer state holds, and what each must be once decoded
_STATE_TYPES = {"step": int, "tokens_seen": int, "elapsed": (int, float), "optimizer": dict, "data": dict,
                "noise_gen": torch.Tensor, "torch_rng": torch.Tensor, "cuda_rng": (torch.Tensor, type(None)),
                "ema": (dict, type(None))}


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        if path.is_file():
            with path.open("rb") as fh:
                os.fsync(fh.fileno())


def _tmp_prefix(final: Path) -> str:
    return f".{final.name}.tmp-"


def old_copy(final: Path) -> Path:
    """Where a swap keeps the previous folder between its two renames."""
    return final.parent / f".{final.name}.old"


def _writer_is_gone(pid_text: str) -> bool:
    """Whether the process that named a temp folder `.NAME.tmp-<pid>` can no longer be writing it."""
    try:
        pid = int(pid_text)
    except ValueError:
        return False  # not a name this module makes: leave it alone
    if pid == os.getpid():
        return True  # an earlier write of this very process, which failed
    if pid <= 0 or os.name != "posix":
        return False  # os.kill(pid, 0) only probes on POSIX (on Windows it terminates the process)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # PermissionError: alive, another user's
        return False
    return False  # alive: perhaps a second writer of the same folder; its folder is its own business


def clean_interrupted_save(final: str | Path) -> None:
    """Clear what a killed write of `final` left next to it. Only the process that writes `final` may
    call this (rank 0 under DDP): it may rename `.NAME.old` back to `final`.

    - `.NAME.tmp-<pid>` of a process that no longer runs: a half-written folder, deleted;
    - `.NAME.old` beside a complete `final`: the kill came after the second rename, so it is superseded;
    - `.NAME.old` without `final`: the kill came between the two renames, so it is the last complete
      folder, renamed back into place (never deleted: it may be the only copy)."""
    final = Path(final)
    if not final.parent.is_dir():
        return
    prefix = _tmp_prefix(final)
    for path in final.parent.iterdir():
        if path.name.startswith(prefix) and _writer_is_gone(path.name[len(prefix):]):
            shutil.rmtree(path, ignore_errors=True)
    old = old_copy(final)
    if old.is_dir():
        if final.exists():  # `final` only ever appears by a rename of a complete folder
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, final)


def atomic_folder(final: Path, write) -> None:
    """Call write(tmp_folder), then swap tmp_folder into `final` with renames."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_interrupted_save(final)
    tmp = final.parent / f"{_tmp_prefix(final)}{os.getpid()}"
    old = old_copy(final)
    tmp.mkdir()
    try:
        write(tmp)
        _fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def tmp_folder(final: Path, pid: int) -> Path:
    """The temporary sibling that process `pid` writes `final` into (clean_interrupted_save clears it once
    that process is gone). A sharded save names it after rank 0's pid, and every rank writes its shard there."""
    return Path(final).parent / f"{_tmp_prefix(Path(final))}{pid}"


def swap_into_place(tmp: Path, final: Path) -> None:
    """Make the complete folder `tmp` the new `final`, as atomic_folder does after its write (fsync first)."""
    for folder in (tmp, *(p for p in tmp.rglob("*") if p.is_dir())):
        _fsync_tree(folder)
    old = old_copy(final)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def resolve_model_dir(path: str | Path) -> Path:
    """A model folder, a run folder (its checkpoint/), or a swap interrupted half-way (.old)."""
    path = Path(path)
    for candidate in (path, path / "checkpoint", old_copy(path)):
        if (candidate / CONFIG_FILE).is_file():
            return candidate
    if not path.exists():
        raise UserError(f"model folder {path} does not exist: train one with `textdiffusion train` "
                        "or pass the folder of a saved model")
    raise UserError(f"{path} holds no {CONFIG_FILE}: pass a folder written by save_pretrained or train")


def read_config(folder: Path) -> dict:
    try:
        cfg = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError covers bad JSON and bad UTF-8
        raise UserError(f"{folder / CONFIG_FILE} is unreadable or corrupt ({exc}): restore or re-train it") from exc
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise UserError(f"{folder / CONFIG_FILE} is not a textdiffusion model config")
    return cfg


def write_config(folder: Path, cfg: dict) -> None:
    (folder / CONFIG_FILE).write_text(json.dumps({"format": FORMAT, **cfg}, indent=2))


def save_weights(state: dict[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(path))


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise UserError(f"missing weights file {path}: the folder is incomplete; restore or re-train it")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"weights file {path} is corrupt ({exc}): restore it or re-train") from exc


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
