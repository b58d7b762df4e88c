"""The contract between `Pipeline.from_pretrained` and the modules that read outside formats.

Each format module (one per outside family: Kuleshov-group DiT checkpoints, LLaDA, Dream,
DiffusionGemma, Hugging Face masked LMs) exposes

    NAME: str                                             # e.g. "llada"
    def matches(folder: Path, config: dict) -> bool      # config: the folder's config.json
    def load(folder: Path, device: torch.device, dtype: torch.dtype) -> Loaded

and is listed in `interop.FORMATS`. `Pipeline.from_pretrained` only dispatches on `matches`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ..data.tokenizers import Tokenizer
from ..processes import DiffusionProcess


@dataclass
class Loaded:
    """What a format module turns a folder into: our (model, process, tokenizer) triple.

    `model` is called like `models.Transformer`: `model(ids [B, L], t [B] | None) -> logits [B, L, V]`
    over the tokenizer's vocabulary, and has a `cfg` with at least `seq_len`, `causal`,
    `time_conditioning` and `vocab_size`. Samplers that need a KV cache call `model.new_cache()`;
    an adapter without one raises a UserError there, naming the samplers it does run.
    """

    model: nn.Module
    process: DiffusionProcess
    tokenizer: Tokenizer
    config: dict = field(default_factory=dict)  # becomes Pipeline.config: at least {"format": NAME, "source": folder}
