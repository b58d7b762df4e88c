"""Model folders and training checkpoints, written atomically.

A folder holds config.json, model.safetensors, the tokenizer files and, for a training
checkpoint, ema.safetensors and trainer_state.pt (optimiser, EMA, RNG and data position).
Writes go to a temporary sibling folder that is renamed into place, so a crash leaves either the
old folder or the new one, never a half-written one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import UserError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
STATE_FILE = "trainer_state.pt"
FORMAT = "textdiffusion"


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        if path.is_file():
            with path.open("rb") as fh:
                os.fsync(fh.fileno())


def atomic_folder(final: Path, write) -> None:
    """Call write(tmp_folder), then swap tmp_folder into `final` with renames."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    old = final.parent / f".{final.name}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write(tmp)
        _fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def resolve_model_dir(path: str | Path) -> Path:
    """A model folder, a run folder (its checkpoint/), or a swap interrupted half-way (.old)."""
    path = Path(path)
    for candidate in (path, path / "checkpoint", path.parent / f".{path.name}.old"):
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


def load_trainer_state(folder: Path) -> dict:
    path = folder / STATE_FILE
    if not path.is_file():
        raise UserError(f"{folder} has no {STATE_FILE}: it is a model, not a resumable checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises several types for a damaged pickle/zip
        raise UserError(f"training state {path} is corrupt ({exc}): resume from an earlier copy") from exc
