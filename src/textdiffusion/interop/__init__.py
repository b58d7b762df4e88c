"""Outside model formats: one module each, turning a local folder into our (model, process, tokenizer).

`FORMATS` lists the modules by name, tried in this order (the generic masked-LM reader last); they are
imported only when a folder is loaded, since transformers is slow to import and `import textdiffusion`
must stay fast. A module not present in this installation is skipped. See `base.py` for the contract.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from ..core.errors import UserError
from .folder import read_folder_config as read_folder_config

if TYPE_CHECKING:
    import torch

    from .base import Loaded

FORMATS: tuple[str, ...] = ("kuleshov", "llada", "dream", "diffusion_gemma", "causal_lm", "masked_lm")


def format_module(name: str) -> ModuleType | None:
    """The format module `name`, or None when this installation lacks it."""
    qualified = f"{__name__}.{name}"
    try:
        return importlib.import_module(qualified)
    except ModuleNotFoundError as exc:
        if exc.name == qualified:  # the module itself is absent; a missing dependency inside it is a real error
            return None
        raise


def find_format(folder: str | Path, config: dict | None = None) -> ModuleType:
    """The one format module whose `matches(folder, config)` is true."""
    folder = Path(folder)
    config = read_folder_config(folder) if config is None else config
    if config.get("family") == "concept":  # ours, but not a token model: say which command reads it
        from .concept_folder import refusal

        raise refusal(folder)
    present = []
    for name in FORMATS:
        module = format_module(name)
        if module is None:
            continue
        present.append(module.NAME)
        if module.matches(folder, config):
            return module
    kind = config.get("model_type") or config.get("format") or "unknown"
    raise UserError(f"{folder / 'config.json'} is not a textdiffusion model config nor one of the known formats "
                    f"({', '.join(['textdiffusion', *present])}; its model_type is {kind!r}): "
                    "pass a folder of one of these")


def load_folder(folder: Path, device: torch.device, dtype: str | torch.dtype | None = None,
                use_ema: bool = True) -> Loaded:
    """Dispatch: our own format marker first, then the first of `FORMATS` that matches. Returns a `Loaded`
    whose config holds at least {"format", "source"} and, for outside formats, "load" (memory, time)."""
    from . import native
    from .weights import resolve_dtype

    folder = Path(folder)
    config = read_folder_config(folder)
    dtype = resolve_dtype(dtype)
    if native.matches(folder, config):
        return native.load(folder, device, dtype, use_ema=use_ema)
    loaded = find_format(folder, config).load(folder, device, dtype)
    loaded.config.setdefault("source", str(folder))
    return loaded
