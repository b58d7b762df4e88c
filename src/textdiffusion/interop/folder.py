"""Our model folder on disk, written atomically: config.json, model.safetensors (and ema.safetensors), the
tokenizer files. A training checkpoint is such a folder plus the trainer state (train/checkpoint.py).

Nothing in a folder is a pickle, so reading one cannot run code. Writes go to a temporary sibling folder that is
renamed into place, so a crash leaves either the old folder or the new one, never a half-written one; the next
write (or resume) clears what a killed write left behind.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..core.checks import one_line, state_mismatch
from ..core.errors import UserError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
FORMAT = "textdiffusion"


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


def read_folder_config(folder: Path) -> dict:
    """A folder's config.json as a dict, whatever wrote it."""
    path = Path(folder) / "config.json"
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError covers bad JSON and bad UTF-8
        raise UserError(f"{path} is unreadable or corrupt ({' '.join(str(exc).split())}): restore or re-train it") \
            from exc
    if not isinstance(cfg, dict):
        raise UserError(f"{path} is not a model config (it holds no JSON object): restore it")
    return cfg


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


def load_run_weights(model: torch.nn.Module, folder: Path, use_ema: bool = True) -> None:
    """Load a run folder's weights (EMA when present and `use_ema`) into `model`, in float32, after checking
    every name and shape against the model its config.json describes."""
    config_file = folder / CONFIG_FILE
    weights = folder / (EMA_FILE if use_ema and (folder / EMA_FILE).is_file() else WEIGHTS_FILE)
    state = load_weights(weights)
    mismatch = state_mismatch(model.state_dict(), state)
    if mismatch:
        raise UserError(f"{weights} does not match the model in {config_file}: {mismatch}; "
                        "restore the config.json saved with these weights")
    try:
        model.load_state_dict({k: v.float() for k, v in state.items()})
    except RuntimeError as exc:  # torch's report spans many lines
        raise UserError(f"{weights} does not match the model in {config_file}: {one_line(exc)}") from exc
