"""Sampling strategies. Each is a config dataclass plus one function; the registry names them."""

from .base import Frame, SampleResult, sample_categorical, select_from_logits
from .mdlm import AncestralConfig, ancestral_sample

SAMPLERS = {"ancestral": (AncestralConfig, ancestral_sample)}

__all__ = ["SAMPLERS", "AncestralConfig", "Frame", "SampleResult", "ancestral_sample",
           "sample_categorical", "select_from_logits"]
