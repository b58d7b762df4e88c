"""Sentence features for MAUVE (eval/mauve.py): all-MiniLM-L6-v2, a model that generated nothing and is unrelated to
SmolLM2, so no model's own representation scores its text. The encoder itself lives in models/sentence_encoder.py,
where the sentence-concept family (which sits below eval/) reads it too."""

from __future__ import annotations

from ..models.sentence_encoder import (
    MAX_TOKENS as MAX_TOKENS,
    MINILM_INSTALL as MINILM_INSTALL,
    MINILM_PACKAGE as MINILM_PACKAGE,
    MiniLMFeatures as MiniLMFeatures,
    minilm_dir as minilm_dir,
)
