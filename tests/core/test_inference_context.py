"""The context that sampling and scoring run under (precision.inference_context): bf16 autocast where chosen, and
on CUDA no cuDNN attention, which plans every new shape (7 ms a call on an H100) while samplers change shapes at
every step. The backend flags are process-wide, so these checks run without a GPU."""
from __future__ import annotations

import torch

from textdiffusion.core.precision import inference_context


def test_cuda_leaves_cudnn_attention_out_and_restores_the_users_setting() -> None:
    before = torch.backends.cuda.cudnn_sdp_enabled()
    with inference_context("fp32", torch.device("cuda")):
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()
        assert torch.backends.cuda.math_sdp_enabled()
    assert torch.backends.cuda.cudnn_sdp_enabled() == before


def test_cpu_gets_autocast_only_and_fp32_nothing() -> None:
    before = torch.backends.cuda.cudnn_sdp_enabled()
    with inference_context("bf16", torch.device("cpu")):
        assert torch.is_autocast_enabled("cpu")
        assert torch.backends.cuda.cudnn_sdp_enabled() == before
    with inference_context("fp32", torch.device("cpu")):
        assert not torch.is_autocast_enabled("cpu")
    assert not torch.is_autocast_enabled("cpu")
