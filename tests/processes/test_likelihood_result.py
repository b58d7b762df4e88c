"""LikelihoodResult's perplexity and bits: e^(nats per token) and nats / ln 2, checked on known numbers."""

from __future__ import annotations

import math
import sys

import pytest
import torch

from textdiffusion.models import ModelConfig, Transformer
from textdiffusion.processes import PROCESSES, build_process
from textdiffusion.processes.likelihood import LikelihoodResult, nelbo

V = 256  # a uniform model over V tokens has perplexity V and log2 V = 8 bits per token
# exp(fl(ln V)) in float64: half an ulp of ln V (< 8, so ulp 2^-50 = 4 eps) plus half an eps from exp
F64_REL = 2.5 * sys.float_info.epsilon
# the AR path below: each token's float32 log-softmax of equal logits is within one ulp of ln V (< 8): 2^-21;
# a row's float32 sum of 8 such terms (< 64) rounds each of its 7 partial sums by at most 2^-19 / 2,
# which is 7/16 * 2^-19 per token: 2^-21 + 2^-19 bounds the per-token error
F32_ABS = 2.0**-21 + 2.0**-19


def test_perplexity_of_a_uniform_model_is_its_vocabulary_size():
    r = LikelihoodResult(nats_per_token=math.log(V), stderr=0.0, n_tokens=10, t_samples=1, exact=True)
    assert math.isclose(r.perplexity, V, rel_tol=F64_REL)  # exp(bits) would be e^8 = 2981, 2^nats 46.7
    assert math.isclose(r.bits_per_token, 8.0, rel_tol=F64_REL)


@pytest.mark.parametrize("nats", [0.0, 0.5, 2.0, 7.25])
def test_perplexity_is_e_to_the_nats_and_bits_are_nats_over_ln2(nats):
    r = LikelihoodResult(nats_per_token=nats, stderr=0.0, n_tokens=1, t_samples=1)
    assert r.perplexity == math.exp(nats)
    assert r.bits_per_token == nats / math.log(2)


@pytest.mark.skipif("autoregressive" not in PROCESSES, reason="the autoregressive process is not registered")
def test_exact_ar_likelihood_of_a_uniform_model():
    # a zero output head gives equal logits: uniform over the V ids that are not START (id V)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=V + 1, seq_len=8, d_model=16, n_layers=1, n_heads=2, causal=True))
    with torch.no_grad():
        model.head.weight.zero_()
    process = build_process("autoregressive", vocab_size=V + 1, mask_id=V)
    chunks = torch.randint(0, V, (3, 8), generator=torch.Generator().manual_seed(0))
    r = nelbo(model, process, chunks)
    assert r.exact and r.n_tokens == 24
    assert r.nats_per_token == pytest.approx(math.log(V), abs=F32_ABS)
    # |perplexity / V - 1| <= e^F32_ABS - 1, and bits within F32_ABS / ln 2 of 8
    assert r.perplexity == pytest.approx(V, rel=math.expm1(F32_ABS))
    assert r.bits_per_token == pytest.approx(8.0, abs=F32_ABS / math.log(2))
