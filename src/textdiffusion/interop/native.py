"""Our own folders (config.json with "format": "textdiffusion"): written by `train` or `save_pretrained`.

Moved out of `Pipeline.from_pretrained`, which now only dispatches; behaviour and messages are unchanged.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..checks import one_line, state_mismatch
from ..data.tokenizers import load_tokenizer
from ..errors import UserError
from ..models import ModelConfig, Transformer
from ..processes import build_process
from ..train import checkpoint as ckpt
from .base import Loaded

NAME = "textdiffusion"


def matches(folder: Path, config: dict) -> bool:
    return config.get("format") == ckpt.FORMAT


def load_run_weights(model: torch.nn.Module, folder: Path, use_ema: bool = True) -> None:
    """Load a run folder's weights (EMA when present and `use_ema`) into `model`, in float32, after checking
    every name and shape against the model its config.json describes."""
    config_file = folder / ckpt.CONFIG_FILE
    weights = folder / (ckpt.EMA_FILE if use_ema and (folder / ckpt.EMA_FILE).is_file() else ckpt.WEIGHTS_FILE)
    state = ckpt.load_weights(weights)
    mismatch = state_mismatch(model.state_dict(), state)
    if mismatch:
        raise UserError(f"{weights} does not match the model in {config_file}: {mismatch}; "
                        "restore the config.json saved with these weights")
    try:
        model.load_state_dict({k: v.float() for k, v in state.items()})
    except RuntimeError as exc:  # torch's report spans many lines
        raise UserError(f"{weights} does not match the model in {config_file}: {one_line(exc)}") from exc


def load(folder: Path, device: torch.device, dtype: torch.dtype | None = None, use_ema: bool = True) -> Loaded:
    """The (model, process, tokenizer) of a textdiffusion folder; EMA weights when present and `use_ema`.
    `dtype`: the weights' dtype (None: float32, whatever the file holds)."""
    cfg = ckpt.read_config(folder)
    if isinstance(cfg.get("model"), dict) and "arch" in cfg["model"]:  # trained here from a pretrained network
        from .adapted import load_adapted

        return load_adapted(folder, cfg, device, dtype, use_ema)
    config_file = folder / ckpt.CONFIG_FILE
    tokenizer = load_tokenizer(folder)
    try:
        model_cfg = ModelConfig(**cfg["model"])
        process_cfg = dict(cfg["process"])
        process_name = process_cfg.pop("name")
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{config_file} lacks a valid model or process section ({one_line(exc)}): "
                        "restore it or re-train") from exc
    model = Transformer(model_cfg)
    load_run_weights(model, folder, use_ema)
    if tokenizer.vocab_size != model_cfg.vocab_size:
        raise UserError(f"the tokenizer in {folder} has {tokenizer.vocab_size} tokens but model.vocab_size in "
                        f"{config_file} is {model_cfg.vocab_size}: the tokenizer files belong to another model")
    try:
        process = build_process(process_name, vocab_size=tokenizer.vocab_size, mask_id=tokenizer.mask_id,
                                **process_cfg)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{config_file} has an invalid process section ({one_line(exc)}): "
                        "restore it or re-train") from exc
    if dtype is not None and dtype != torch.float32:
        model = model.to(dtype)
    return Loaded(model.to(device), process, tokenizer, cfg)
