"""Our own folders (config.json with "format": "textdiffusion"): written by `train` or `save_pretrained`.

Moved out of `Pipeline.from_pretrained`, which now only dispatches; behaviour and messages are unchanged.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..core.checks import one_line
from ..core.errors import UserError
from ..data.tokenizers import load_tokenizer
from ..models import ModelConfig, Transformer
from ..processes import build_process
from . import folder as ckpt
from .base import Loaded

NAME = "textdiffusion"


def matches(folder: Path, config: dict) -> bool:
    return config.get("format") == ckpt.FORMAT


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
    try:
        process = build_process(process_name, vocab_size=tokenizer.vocab_size, mask_id=tokenizer.mask_id,
                                **process_cfg)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{config_file} has an invalid process section ({one_line(exc)}): "
                        "restore it or re-train") from exc
    build = getattr(process, "build_network", None)  # a family with its own network (processes/latent.py)
    model = Transformer(model_cfg) if build is None else build(model_cfg)
    ckpt.load_run_weights(model, folder, use_ema)
    # after the weights: a config.json that no longer fits them is named by the tensor that shows it
    if tokenizer.vocab_size != model_cfg.vocab_size:
        raise UserError(f"the tokenizer in {folder} has {tokenizer.vocab_size} tokens but model.vocab_size in "
                        f"{config_file} is {model_cfg.vocab_size}: the tokenizer files belong to another model")
    if dtype is not None and dtype != torch.float32:
        model = model.to(dtype)
    return Loaded(model.to(device), process, tokenizer, cfg)
