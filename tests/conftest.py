import os

import pytest
import torch

from textdiffusion.api.pipeline import Pipeline
from textdiffusion.data.tokenizers import ByteTokenizer
from textdiffusion.models import ModelConfig, Transformer
from textdiffusion.processes import MaskedDiffusion

# One intra-op thread per test process (DDP workers and bench subprocesses inherit it through the
# environment). The tests run tiny tensors, where a second OpenMP thread saves little, but on a busy
# 2-core machine its spin-waits made the suite 4x slower (6 min vs 1.5; the exact-distribution tests
# 143 s vs 19 s beside two busy loops); with one thread it stays near its quiet time.
# Set OMP_NUM_THREADS to override.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


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
