"""Test fixtures: multi-process runs: ports, environment, comparisons."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


# =====================================================================================================================
# fixtures `repo_root`, `dist_vars`, `free_port`, `max_diff`, `losses`
#
# What the DDP, FSDP and sharded-stream tests share (free_port: the serve tests too).
# =====================================================================================================================


DIST_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
             "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def _losses(out_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository's root folder (torchrun and subprocesses run there)."""
    return REPO


@pytest.fixture(scope="session")
def dist_vars() -> tuple[str, ...]:
    """The environment variables torchrun sets: cleared for a 1-process reference run and for a new torchrun."""
    return DIST_VARS


@pytest.fixture(scope="session")
def free_port() -> Callable[[], int]:
    """free_port(): a free TCP port on the loopback interface."""
    return _free_port


@pytest.fixture(scope="session")
def max_diff() -> Callable[..., float]:
    """max_diff(a, b): the largest |a[k] - b[k]| over two state dicts with the same keys."""
    return _max_diff


@pytest.fixture(scope="session")
def losses() -> Callable[[Path], dict[int, float]]:
    """losses(out_dir): {step: training loss} from a run's metrics.jsonl."""
    return _losses


@pytest.fixture(scope="session")
def write_causal_lm(bpe_tokenizer, llama_reference):
    """write_causal_lm(folder, tied=True) -> (reference, ids): a tiny LlamaForCausalLM folder as transformers writes
    it, with a BPE tokenizer (<|endoftext|> = 0)."""

    def write_causal_lm(folder, tied: bool = True):
        ids = bpe_tokenizer(folder, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], vocab_size=290)
        ref = llama_reference(ids["__size__"], kv_heads=2, tied=tied, seed=4)
        ref.config.bos_token_id, ref.config.eos_token_id = ids["<|endoftext|>"], ids["<|im_end|>"]
        ref.save_pretrained(str(folder))
        return ref, ids

    return write_causal_lm
