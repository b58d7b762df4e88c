"""Our models as a transformers model type ("textdiffusion"), so `AutoModelForMaskedLM.from_pretrained(folder)`
loads a folder written by `export_hf` without remote code.

Importing this module imports transformers (about 3 s; `import textdiffusion` alone takes under 1 s) and
registers the type with AutoConfig and AutoModelForMaskedLM, so it is not imported by `import textdiffusion`:

    import textdiffusion.interop.hf_model  # registers "textdiffusion" with transformers
    model = AutoModelForMaskedLM.from_pretrained("my-export")
    logits = model(input_ids, timesteps=t).logits   # timesteps: our t in [0, 1], for time-conditioned models

The model's modules are those of `models.Transformer` under the same names, so the weights file is the one
our own loader reads, and its forward is `Transformer.forward`: the logits are ours, bit for bit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForMaskedLM, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput

from ..models import ModelConfig, Transformer
from ..models.transformer import rotary_tables

MODEL_TYPE = "textdiffusion"


class TextDiffusionConfig(PretrainedConfig):
    """`model` and `process` are the sections of our own config.json (ModelConfig fields, process options)."""

    model_type = MODEL_TYPE

    def __init__(self, model: dict | None = None, process: dict | None = None, tokenizer: str | None = None,
                 mask_token_id: int | None = None, **kwargs):
        self.model = dict(model or {})
        self.process = dict(process or {"name": "masked"})
        self.tokenizer = tokenizer
        self.mask_token_id = mask_token_id
        kwargs.setdefault("tie_word_embeddings", False)  # our output head is its own matrix
        super().__init__(**kwargs)
        if "vocab_size" in self.model:
            self.vocab_size = self.model["vocab_size"]


class TextDiffusionForMaskedLM(PreTrainedModel):
    """A textdiffusion denoiser: logits over the vocabulary for every position of `input_ids`."""

    config_class = TextDiffusionConfig
    base_model_prefix = "model"  # files hold Transformer's keys unprefixed; transformers adds "model." on load
    _no_split_modules = ["Block"]

    def __init__(self, config: TextDiffusionConfig):
        super().__init__(config)
        with torch.device("cpu"):  # transformers builds under a meta-device context; the rotary tables need data
            self.model = Transformer(ModelConfig(**config.model))
        self._rope_ready = False
        self.post_init()

    def _init_weights(self, module) -> None:
        """Transformer's own initialisation already ran; loaded weights replace it."""

    def _fill_rope(self) -> None:
        """Recompute the rotary tables: they are non-persistent buffers, which transformers' loader leaves as
        uninitialised memory (it builds the model on the meta device and only fills what the file holds)."""
        cfg = self.model.cfg
        cos, sin = rotary_tables(cfg.seq_len, cfg.d_model // cfg.n_heads, cfg.rope_base)
        device = self.model.rope_cos.device
        self.model.rope_cos, self.model.rope_sin = cos.to(device), sin.to(device)
        self._rope_ready = True

    def forward(self, input_ids: torch.Tensor, timesteps: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                return_dict: bool | None = None, **kwargs) -> MaskedLMOutput | tuple:
        """`timesteps` [B]: our noise level t in [0, 1] (needed by time-conditioned models only).
        `attention_mask` [B, L] (1 = real token) hides padding keys; `labels` (-100 = ignored) adds the
        cross-entropy of the logits."""
        mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            length = input_ids.shape[1]
            mask = attention_mask.bool()[:, None, None, :]  # [B, 1, 1, L]: keys
            if self.model.cfg.causal:
                causal = torch.ones(length, length, dtype=torch.bool, device=input_ids.device).tril()
                mask = mask & causal
            # a padding query may see itself, so that no row is empty (left padding of a causal model)
            mask = mask | torch.eye(length, dtype=torch.bool, device=input_ids.device)
        if not self._rope_ready:
            self._fill_rope()
        logits = self.model(input_ids, timesteps, attn_mask=mask)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
        if return_dict is False:
            return (logits,) if loss is None else (loss, logits)
        return MaskedLMOutput(loss=loss, logits=logits)


def register() -> None:
    """Register the model type with transformers' Auto classes (idempotent)."""
    try:
        AutoConfig.register(MODEL_TYPE, TextDiffusionConfig)
    except ValueError:  # already registered
        pass
    try:
        AutoModelForMaskedLM.register(TextDiffusionConfig, TextDiffusionForMaskedLM)
    except ValueError:
        pass


register()
