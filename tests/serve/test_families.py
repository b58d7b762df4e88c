"""Other families through the server: block diffusion (its KV-cached calls share passes, its finished blocks
stream as they finish) and the autoregressive baseline; concurrent requests still match their runs alone."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import torch

from textdiffusion.api.pipeline import Pipeline
from textdiffusion.data.tokenizers import ByteTokenizer
from textdiffusion.models import ModelConfig, Transformer
from textdiffusion.processes import Autoregressive, BlockDiffusion


def family_pipe(family: str) -> Pipeline:
    tok = ByteTokenizer()
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, seq_len=32, d_model=32, n_layers=1, n_heads=2,
                                    causal=family == "ar"))
    process = (Autoregressive(tok.vocab_size, tok.mask_id) if family == "ar"
               else BlockDiffusion(tok.vocab_size, tok.mask_id, block_size=8))
    return Pipeline(model, process, tok, {})


async def stream_texts(url: str, bodies: list[dict]) -> list[tuple[str, int]]:
    """Each stream's text, and how many chunks carried text before the last one."""
    async def one(client, body):
        deltas = []
        async with client.stream("POST", f"{url}/v1/completions", json={**body, "stream": True}) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    deltas.append(json.loads(line[6:])["choices"][0]["text"])
        return "".join(deltas), sum(1 for d in deltas[:-1] if d)

    async with httpx.AsyncClient(timeout=60) as client:
        return await asyncio.gather(*(one(client, b) for b in bodies))


@pytest.mark.parametrize("family", ["block", "ar"])
def test_cached_families_stream_and_match_their_runs_alone(family, model_name, tiny_server):
    reference = family_pipe(family)
    bodies = [{"model": model_name, "prompt": "To", "max_tokens": 30 if i % 2 else 22, "seed": i,
               **({"steps": 4} if family == "block" else {})} for i in range(4)]
    expected = []
    for body in bodies:
        out = reference.generate(length=2 + body["max_tokens"], prompt="To", seed=body["seed"],
                                 **({"steps": 4} if family == "block" else {}))
        expected.append(reference.tokenizer.decode(out.ids[0, 2:].tolist(), mask_char=None, stop_at_eos=True))
    with tiny_server(family_pipe(family)) as (url, app):
        got = asyncio.run(stream_texts(url, bodies))
        stats = app.state.engine.batcher.stats
        metrics = {line.split()[0]: float(line.split()[1]) for line in httpx.get(f"{url}/metrics").text.splitlines()
                   if line.startswith("textdiffusion_forward_calls_s")}
    assert [text for text, _ in got] == expected
    assert all(early >= 2 for _, early in got)  # finished blocks / tokens arrived while the rest was written
    assert metrics["textdiffusion_forward_calls_solo"] == stats.solo  # /metrics shows the batcher's counts
    assert metrics["textdiffusion_forward_calls_shared_cached"] == stats.shared_cached
    if family == "block":  # a bidirectional model's KV-cached calls share passes (serve/merge.py)
        assert stats.shared_cached > 0 and stats.solo == 0
    else:  # a causal model's run alone, exactly as the sampler made them
        assert stats.solo > 0
