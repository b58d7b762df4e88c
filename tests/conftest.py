import pytest
import torch

from textdiffusion.data.tokenizers import ByteTokenizer
from textdiffusion.models import ModelConfig, Transformer
from textdiffusion.pipeline import Pipeline
from textdiffusion.processes import MaskedDiffusion


@pytest.fixture
def byte_tok() -> ByteTokenizer:
    return ByteTokenizer()


@pytest.fixture
def tiny_pipeline(byte_tok) -> Pipeline:
    """An untrained byte-level masked model: enough for shapes, plumbing and errors."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=byte_tok.vocab_size, seq_len=48, d_model=32, n_layers=1, n_heads=2))
    process = MaskedDiffusion(vocab_size=byte_tok.vocab_size, mask_id=byte_tok.mask_id)
    return Pipeline(model, process, byte_tok, {})
