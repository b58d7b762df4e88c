"""Fixtures shared by the whole test tree, and the settings every test process runs under.

Each section below holds one shared piece: exact references on tiny vocabularies (`analytic`, `tiny_exact`,
`d3pm_exact`, `d3pm_tiny`, `sedd_exact`, `sedd_tiny`, `masked_exact`, `gaussian_toy`; `latent_toy`, a Gaussian
latent toy: namespaces whose functions a test calls), builders of tiny models, runs and checkpoints (factory
fixtures: `tiny_transformer`, `write_corpus`, `tiny_config`, `write_llada`, ...), and the helpers of multi-process
runs (`free_port`, `max_diff`, ...). A folder's own conftest.py holds what only its tests share.
"""

from __future__ import annotations

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


# the fixtures, one module per job (tests/td_fixtures/); star-imported so that every test folder sees them
from td_fixtures.concept import *  # noqa: E402, F401, F403
from td_fixtures.distributed import *  # noqa: E402, F401, F403
from td_fixtures.exact_analytic import *  # noqa: E402, F401, F403
from td_fixtures.exact_d3pm import *  # noqa: E402, F401, F403
from td_fixtures.exact_masked import *  # noqa: E402, F401, F403
from td_fixtures.exact_sedd import *  # noqa: E402, F401, F403
from td_fixtures.gaussian import *  # noqa: E402, F401, F403
from td_fixtures.latent import *  # noqa: E402, F401, F403
from td_fixtures.outside_folders import *  # noqa: E402, F401, F403
from td_fixtures.runs import *  # noqa: E402, F401, F403
