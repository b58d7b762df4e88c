"""The latent decoder's KV cache (models/latent_autoencoder.py): a call that continues the cached positions gives
the very logits the full teacher-forced call gives there, one position or several at a time."""

from __future__ import annotations

import torch

from textdiffusion.models.latent_autoencoder import LatentModel
from textdiffusion.models.transformer import ModelConfig


def test_cached_decoding_equals_the_full_call():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=11, seq_len=12, d_model=16, n_layers=1, n_heads=2)
    model = LatentModel(cfg, num_latents=3, latent_dim=4, encoder_layers=1, decoder_layers=2,
                        resampler_layers=1).eval()
    ids, latents = torch.randint(0, 11, (2, 12)), torch.randn(2, 3, 4)
    with torch.no_grad():
        full = model.decode_logits(ids, latents)
        cache = model.new_cache()
        for end in (3, 4, 5, 9, 12):  # the first call fills 3 positions, then 1, 1, 4 and 3 at a time
            start = cache.length
            step = model.decode_logits(ids[:, :end], latents, cache)
            assert step.shape == (2, end - start, 11) and cache.length == end
            torch.testing.assert_close(step, full[:, start:end], rtol=1e-5, atol=1e-5)
        # another passage's later tokens change no cached position: each position reads only the ones before it
        other = ids.clone()
        other[:, 6:] = (other[:, 6:] + 1) % 11
        torch.testing.assert_close(model.decode_logits(other, latents)[:, :6], full[:, :6])
