"""Our own folders whose backbone is not our Transformer: networks started from pretrained weights and trained
here (AR -> diffusion from a LLaMA-family model, train/adapt_llama.py; BERT -> diffusion, train/adapt_bert.py).

The folder is an ordinary textdiffusion checkpoint (config.json with "format": "textdiffusion", weights, EMA,
tokenizer, trainer state; `--resume` works) whose "model" section names its network in "arch":

* "llama_like": interop/llama_like.py's LlamaLike, the section being its LlamaLikeConfig;
* "hf_masked_lm": transformers' masked-LM class for "hf_config" (a transformers config dict), wrapped by
  interop/masked_lm.py's MaskedLMDenoiser.

`interop/native.py` hands such folders here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..core.checks import one_line
from ..core.errors import UserError
from ..data.tokenizers import load_tokenizer
from .base import Loaded
from .llama_like import LlamaLike, LlamaLikeConfig
from .masked_lm import MaskedLMConfig, MaskedLMDenoiser


@dataclass
class AdaptedLlamaConfig(LlamaLikeConfig):
    arch: str = "llama_like"


@dataclass
class AdaptedMaskedLMConfig(MaskedLMConfig):
    hf_config: dict = field(default_factory=dict)
    arch: str = "hf_masked_lm"

    def to_dict(self) -> dict:
        return asdict(self)


def untie_head(net: nn.Module) -> None:
    """Give the output layer its own weight and bias (BERT ties them to the word embeddings and to the head's
    `bias`): the checkpoint then holds no shared tensor, and a rebuilt network reads every tensor back."""
    head = net.get_output_embeddings()
    if head is not None:
        head.weight = nn.Parameter(head.weight.detach().clone())
        if head.bias is not None:
            head.bias = nn.Parameter(head.bias.detach().clone())
    net.config.tie_word_embeddings = False


def masked_lm_network(cfg: AdaptedMaskedLMConfig) -> MaskedLMDenoiser:
    """An empty transformers masked LM for `cfg.hf_config`, as our denoiser."""
    import transformers

    from .masked_lm import _masked_lm_types

    hf = dict(cfg.hf_config)
    kind = hf.pop("model_type", cfg.model_type)
    types = _masked_lm_types()
    if kind not in types:
        raise UserError(f"model_type {kind!r} has no transformers masked-LM class: use BERT, RoBERTa, ModernBERT, ...")
    config = transformers.AutoConfig.for_model(kind, **hf)
    net = getattr(transformers, types[kind])(config)
    untie_head(net)
    return MaskedLMDenoiser(net, cfg)


def build_network(model: dict) -> tuple[object, nn.Module]:
    """(config, empty network) for a folder's "model" section."""
    arch = model.get("arch")
    try:
        if arch == "llama_like":  # samplers_hint: an error message's text that configs before the KV cache held
            cfg = AdaptedLlamaConfig(**{k: v for k, v in model.items() if k != "samplers_hint"})
            return cfg, LlamaLike(cfg)
        if arch == "hf_masked_lm":
            cfg = AdaptedMaskedLMConfig(**model)
            return cfg, masked_lm_network(cfg)
    except (TypeError, ValueError) as exc:
        raise UserError(f"the model section ({arch}) is invalid ({one_line(exc)}): restore the config.json") from exc
    raise UserError(f"unknown model arch {arch!r} in the config.json: this version reads llama_like and "
                    "hf_masked_lm; update textdiffusion")


def load_adapted(folder: Path, cfg: dict, device: torch.device, dtype: torch.dtype | None = None,
                 use_ema: bool = True) -> Loaded:
    from ..processes import build_process
    from . import folder as ckpt

    model_cfg, model = build_network(cfg["model"])
    ckpt.load_run_weights(model, folder, use_ema)
    tokenizer = load_tokenizer(folder)
    if tokenizer.vocab_size != model_cfg.vocab_size:
        raise UserError(f"the tokenizer in {folder} has {tokenizer.vocab_size} tokens but the model expects "
                        f"{model_cfg.vocab_size}: the tokenizer files belong to another model")
    process_cfg = dict(cfg.get("process") or {})
    try:
        process = build_process(process_cfg.pop("name"), vocab_size=tokenizer.vocab_size,
                                mask_id=tokenizer.mask_id, **process_cfg)
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{folder / ckpt.CONFIG_FILE} has an invalid process section ({one_line(exc)}): "
                        "restore it or re-train") from exc
    if dtype is not None and dtype != torch.float32:
        model = model.to(dtype)
    return Loaded(model.to(device).eval(), process, tokenizer, cfg)
