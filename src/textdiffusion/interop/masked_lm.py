"""Any Hugging Face masked language model folder (BERT, RoBERTa, ModernBERT, ...) as a masked denoiser.

The folder's config.json is read by transformers' AutoConfig (no remote code) and its model_type must have
an AutoModelForMaskedLM class; the network is transformers' own, built empty and filled by streaming the
safetensors weights. A masked LM predicts the original token at every [MASK] from both sides, which is
exactly the x0 prediction of masked (absorbing) diffusion, so it runs with our masked process (log-linear
schedule) and every masked-diffusion sampler; the NELBO is a valid bound for it, though the network was
trained at one mask rate (BERT: 15%) and is poor at high noise. Not time-conditioned.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..core.errors import UserError
from .base import Loaded

NAME = "masked_lm"
# models whose positions start after the padding index: two fewer usable positions than the table holds
_OFFSET_POSITIONS = {"roberta", "xlm-roberta", "camembert", "roberta-prelayernorm", "data2vec-text", "xlm-roberta-xl"}
SAMPLERS_HINT = "ancestral, confidence, threshold (cache=none), remdm, first_hitting, semi_ar"


@dataclass
class MaskedLMConfig:
    seq_len: int
    vocab_size: int  # the tokenizer's ids: the logits returned
    model_type: str
    causal: bool = False
    time_conditioning: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


class MaskedLMDenoiser(nn.Module):
    """model(ids, t) -> the masked LM's logits over the tokenizer's ids (t is ignored)."""

    def __init__(self, net: nn.Module, cfg: MaskedLMConfig):
        super().__init__()
        self.net, self.cfg = net, cfg

    def new_cache(self):
        raise UserError("this model has no KV cache: use samplers " + SAMPLERS_HINT)

    def forward(self, ids: torch.Tensor, t: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        if kwargs:
            raise UserError("this model has no KV cache: use samplers " + SAMPLERS_HINT)
        return self.net(input_ids=ids).logits[..., : self.cfg.vocab_size]


def _masked_lm_types() -> dict:
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return MODEL_FOR_MASKED_LM_MAPPING_NAMES


def matches(folder: Path, config: dict) -> bool:
    return isinstance(config.get("model_type"), str) and config["model_type"] in _masked_lm_types()


def _rename(prefix: str, known: set[str]):
    def rename(key: str) -> str | None:
        for old, new in ((".gamma", ".weight"), (".beta", ".bias")):  # older BERT checkpoints' LayerNorm names
            if key.endswith(old):
                key = key[: -len(old)] + new
        for candidate in (key, f"{prefix}.{key}"):  # a checkpoint of the bare encoder lacks the prefix
            if f"net.{candidate}" in known:
                return f"net.{candidate}"
        return None  # e.g. a pooler or next-sentence head the masked LM does not use

    return rename


def load(folder: Path, device: torch.device, dtype: torch.dtype | None) -> Loaded:
    import transformers

    from ..processes import MaskedDiffusion
    from .tokenizer import folder_tokenizer
    from .weights import load_weights

    try:
        config = transformers.AutoConfig.from_pretrained(str(folder), trust_remote_code=False,
                                                         local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"transformers cannot read {folder / 'config.json'} ({' '.join(str(exc).split())[:200]}): "
                        "restore it") from exc
    cls = getattr(transformers, _masked_lm_types()[config.model_type])
    tokenizer = folder_tokenizer(folder, int(config.vocab_size), {
        "mask": None, "pad": getattr(config, "pad_token_id", None)})
    positions = int(getattr(config, "max_position_embeddings", 512))
    seq_len = positions - 2 if config.model_type in _OFFSET_POSITIONS else positions
    cfg = MaskedLMConfig(seq_len=seq_len, vocab_size=tokenizer.vocab_size, model_type=config.model_type)
    empty = {}

    def build() -> nn.Module:
        empty["model"] = MaskedLMDenoiser(cls(config), cfg)
        return empty["model"]

    def rename(key: str) -> str | None:  # built on first use, once the empty model exists
        if "fn" not in empty:
            known = {k for k, _ in [*empty["model"].named_parameters(), *empty["model"].named_buffers()]}
            empty["fn"] = _rename(cls.base_model_prefix, known)
        return empty["fn"](key)

    def tie(model: nn.Module) -> None:
        model.net.tie_weights()  # the output embedding is the input embedding when the config says so

    model, stats = load_weights(build, folder, device, dtype, rename, after=tie, skip_unknown=True)
    process = MaskedDiffusion(vocab_size=tokenizer.vocab_size, mask_id=tokenizer.mask_id, schedule="loglinear")
    out_config = {"format": NAME, "source": str(folder), "model": cfg.to_dict(),
                  "process": {"name": process.name, **process.config()}, "load": {"format": NAME, **stats}}
    return Loaded(model, process, tokenizer, out_config)
