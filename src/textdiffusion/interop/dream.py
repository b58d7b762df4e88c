"""Dream folders (Dream-org/Dream-v0-Base-7B, -Instruct-7B): a bidirectional Qwen2 with shifted logits,
read without running the folder's modeling_dream.py.

config.json: model_type "Dream", Qwen2's fields (hidden_size, intermediate_size, num_hidden_layers,
num_attention_heads, num_key_value_heads, rms_norm_eps, rope_theta, vocab_size 152064 > the tokenizer's
ids, tie_word_embeddings), mask_token_id 151666. Weights: Qwen2's names (model.embed_tokens,
model.layers.N.self_attn.{q,k,v}_proj with biases, o_proj, mlp.{gate,up,down}_proj, input_layernorm,
post_attention_layernorm, model.norm, lm_head). Dream was adapted from an autoregressive model and keeps
its alignment: the prediction for position i is read from the output at i - 1 (position 0 keeps its
own), as Dream's own sampler does. Its forward process is masked diffusion (our masked process).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..core.errors import UserError
from .base import Loaded
from .llama_like import LlamaLikeConfig, load_llama_like
from .tokenizer import folder_tokenizer

NAME = "dream"
DEFAULT_MASK_ID = 151666
MAX_LEN = 2048  # Dream's training length; max_position_embeddings (131072) is RoPE's reach, not a canvas size


def matches(folder: Path, config: dict) -> bool:
    return str(config.get("model_type", "")).lower() == "dream"


def rename(key: str) -> str | None:
    return key[len("model."):] if key.startswith("model.") else key


def model_config(folder: Path, config: dict, vocab_size: int) -> LlamaLikeConfig:
    try:
        heads = int(config["num_attention_heads"])
        return LlamaLikeConfig(
            embed_rows=int(config["vocab_size"]), hidden_size=int(config["hidden_size"]),
            intermediate_size=int(config["intermediate_size"]), num_layers=int(config["num_hidden_layers"]),
            num_heads=heads, num_kv_heads=int(config.get("num_key_value_heads") or heads),
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)), rope_theta=float(config.get("rope_theta", 10000.0)),
            seq_len=min(int(config.get("max_position_embeddings", MAX_LEN)), MAX_LEN), vocab_size=vocab_size,
            qkv_bias=True, tie_embeddings=bool(config.get("tie_word_embeddings", False)), shift_logits=True)
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{folder / 'config.json'} is not a complete Dream config (missing or bad {exc}): "
                        "restore it from the model's repository") from exc


def load(folder: Path, device: torch.device, dtype: torch.dtype | None) -> Loaded:
    from .folder import read_folder_config

    config = read_folder_config(folder)
    if config.get("rope_scaling"):
        raise UserError(f"{folder / 'config.json'} sets rope_scaling, which Dream checkpoints do not use and this "
                        "reader does not implement")
    tokenizer = folder_tokenizer(folder, int(config.get("vocab_size") or 0),
                                 {"mask": config.get("mask_token_id", DEFAULT_MASK_ID),
                                  "eos": config.get("eos_token_id"), "pad": config.get("pad_token_id"),
                                  "bos": config.get("bos_token_id")})
    cfg = model_config(folder, config, tokenizer.vocab_size)
    tied = cfg.tie_embeddings
    return load_llama_like(folder, device, dtype, cfg, (lambda k: None if tied and k == "lm_head.weight"
                                                        else rename(k)), tokenizer, NAME)
