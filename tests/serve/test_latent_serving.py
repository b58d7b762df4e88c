"""A latent diffusion model (processes/latent.py) serves: its encoder, decoder and denoiser calls go through the
model's forward, so the server's batcher runs them in its forward thread, and the served completion is the text the
Pipeline writes alone for the same seed."""

from __future__ import annotations

import httpx
import torch

from textdiffusion.api.pipeline import Pipeline
from textdiffusion.data.tokenizers import ByteTokenizer
from textdiffusion.models import ModelConfig
from textdiffusion.processes import build_process

PROMPT = "To be"


def latent_pipe() -> Pipeline:
    torch.manual_seed(0)
    tok = ByteTokenizer()
    process = build_process("latent", vocab_size=tok.vocab_size, mask_id=tok.mask_id, num_latents=4, latent_dim=8,
                            encoder_layers=1, decoder_layers=1, resampler_layers=1, num_steps=20)
    net = process.build_network(ModelConfig(vocab_size=tok.vocab_size, seq_len=24, d_model=32, n_layers=1,
                                            n_heads=2))
    with torch.no_grad():  # wake the adaLN-zero denoiser, so that the prompt's condition reaches the text
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return Pipeline(net, process, tok)


def test_a_latent_model_serves_the_text_the_pipeline_writes(tiny_server, model_name):
    pipe = latent_pipe()
    options = {"guidance": 2.0}
    alone = pipe.generate(prompt=PROMPT, length=len(PROMPT) + 10, seed=3, steps=4, **options)
    expected = pipe.tokenizer.decode(alone.ids[0, len(PROMPT):].tolist(), mask_char=None, stop_at_eos=True)
    with tiny_server(latent_pipe()) as (url, app):
        completion = httpx.post(f"{url}/v1/completions", timeout=60, json={
            "model": model_name, "prompt": PROMPT, "max_tokens": 10, "seed": 3, "steps": 4,
            "options": options}).json()
        calls = app.state.engine.batcher.stats.calls
    assert completion["diffusion"]["sampler"] == "latent", completion
    assert completion["choices"][0]["text"] == expected
    # every call ran in the batcher's forward thread: the prompt's encoding, 4 guided steps of 2, 10 decoder passes,
    # and the one decoder pass of each of the 4 frames the server streams
    assert calls == 1 + alone.nfe + 4 == 1 + 4 * 2 + 10 + 4
