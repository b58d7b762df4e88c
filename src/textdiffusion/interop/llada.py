"""LLaDA folders (GSAI-ML/LLaDA-8B-Base, -Instruct, LLaDA-1.5): an OLMo-style bidirectional LLaMA, read
without running the folder's modeling_llada.py.

config.json: model_type "llada", d_model, n_heads, n_kv_heads, n_layers, mlp_hidden_size, vocab_size,
embedding_size (rows of wte / ff_out, 126464 > the tokenizer's ids), mask_token_id (126336), rope_theta,
rms_norm_eps, max_sequence_length, weight_tying. Weights: model.transformer.wte, .blocks.N.{q_proj, k_proj,
v_proj, attn_out, attn_norm, ff_norm, ff_proj (the SwiGLU gate), up_proj, ff_out (down)}, .ln_f, .ff_out
(the output head). LLaDA's forward process masks each token with probability t (alpha(t) = 1 - t): our
masked process with the log-linear schedule, so every masked-diffusion sampler and the NELBO apply.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..core.errors import UserError
from .base import Loaded
from .llama_like import LlamaLikeConfig, load_llama_like
from .tokenizer import folder_tokenizer

NAME = "llada"
DEFAULT_MASK_ID = 126336
_BLOCK = {"q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj", "v_proj": "self_attn.v_proj",
          "attn_out": "self_attn.o_proj", "attn_norm": "input_layernorm", "ff_norm": "post_attention_layernorm",
          "ff_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj", "ff_out": "mlp.down_proj"}
_TOP = {"model.transformer.wte.weight": "embed_tokens.weight", "model.transformer.ln_f.weight": "norm.weight",
        "model.transformer.ff_out.weight": "lm_head.weight"}
_BLOCK_KEY = re.compile(r"model\.transformer\.blocks\.(\d+)\.(\w+)\.(weight|bias)")
# OLMo options LLaDA checkpoints leave off; a folder that turns one on is another network
_UNSUPPORTED = ("alibi", "attention_layer_norm", "input_emb_norm", "scale_logits", "include_bias", "clip_qkv")


def matches(folder: Path, config: dict) -> bool:
    return str(config.get("model_type", "")).lower() == "llada"


def rename(key: str) -> str:
    if key in _TOP:
        return _TOP[key]
    found = _BLOCK_KEY.fullmatch(key)
    if found and found.group(2) in _BLOCK:
        return f"layers.{found.group(1)}.{_BLOCK[found.group(2)]}.{found.group(3)}"
    return key  # unknown: stream_into reports it


def model_config(folder: Path, config: dict, vocab_size: int) -> LlamaLikeConfig:
    on = [k for k in _UNSUPPORTED if config.get(k)]
    if on or config.get("block_type", "llama") != "llama" or config.get("rope") is False:
        what = ", ".join(on) or f"block_type {config.get('block_type')!r} / rope {config.get('rope')!r}"
        raise UserError(f"{folder / 'config.json'} turns on {what}, which LLaDA checkpoints do not use and this "
                        "reader does not implement: use the model's own code")
    try:
        heads = int(config["n_heads"])
        return LlamaLikeConfig(
            embed_rows=int(config.get("embedding_size") or config["vocab_size"]), hidden_size=int(config["d_model"]),
            intermediate_size=int(config["mlp_hidden_size"]), num_layers=int(config["n_layers"]),
            num_heads=heads, num_kv_heads=int(config.get("n_kv_heads") or heads),
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-5)), rope_theta=float(config.get("rope_theta", 10000.0)),
            seq_len=int(config.get("max_sequence_length", 4096)), vocab_size=vocab_size,
            qkv_bias=bool(config.get("include_qkv_bias", False)), tie_embeddings=bool(config.get("weight_tying")))
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{folder / 'config.json'} is not a complete LLaDA config (missing or bad {exc}): "
                        "restore it from the model's repository") from exc


def load(folder: Path, device: torch.device, dtype: torch.dtype | None) -> Loaded:
    from .folder import read_folder_config

    config = read_folder_config(folder)
    rows = int(config.get("embedding_size") or config.get("vocab_size") or 0)
    tokenizer = folder_tokenizer(folder, rows, {"mask": config.get("mask_token_id", DEFAULT_MASK_ID),
                                                "eos": config.get("eos_token_id"),
                                                "pad": config.get("pad_token_id"),
                                                "bos": config.get("bos_token_id")})
    cfg = model_config(folder, config, tokenizer.vocab_size)
    tied = cfg.tie_embeddings  # the head is wte: an ff_out head in the files is not used

    def place(key: str) -> str | None:
        return None if tied and key == "model.transformer.ff_out.weight" else rename(key)

    return load_llama_like(folder, device, dtype, cfg, place, tokenizer, NAME)
