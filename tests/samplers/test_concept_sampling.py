"""Sampling sentence-concept models (samplers/concept.py): the reverse chain's law on a toy whose x0 prediction is a
known constant, and the continuation loop with a tiny stand-in encoder (no MiniLM weights in tests)."""

from __future__ import annotations

import math

import pytest
import torch

from textdiffusion.core.errors import UserError
from textdiffusion.data.tokenizers import ByteTokenizer
from textdiffusion.models.concept import ConceptDenoiser, ConceptNetConfig, DecoderConfig, SentenceDecoder
from textdiffusion.processes import gaussian_math
from textdiffusion.processes.concept import ConceptDiffusion, EmbeddingScaler
from textdiffusion.samplers.concept import ConceptSampleConfig, continue_sentences, next_embedding

WIDTH = 3000  # coordinates: independent draws of the 1-D toy


def constant_net(value: float, width: int = WIDTH) -> ConceptDenoiser:
    """A denoiser whose x0 prediction is `value` in every coordinate, whatever it reads."""
    net = ConceptDenoiser(ConceptNetConfig(embed_dim=width, d_model=8, n_layers=1, denoiser_layers=1, n_heads=2,
                                           context=3))
    with torch.no_grad():
        net.out.weight.zero_()
        net.out.bias.fill_(value)
    return net.eval()


@pytest.mark.parametrize("steps", [None, 4])
def test_ancestral_chain_with_a_known_x0_is_the_exact_bridge(steps):
    """With x0_hat = c at every step, ancestral steps draw x_s ~ q(x_s | x_t, x0 = c) (strided or not), so the level-0
    point given x_T is q(x_0 | x_T, c) = N(a c + b x_T, v), (a, b, v) = the posterior from T to 0."""
    c, proc = 0.8, ConceptDiffusion(num_steps=12, noise_schedule="linear")
    out = next_embedding(constant_net(c), proc, torch.zeros(2, 1, WIDTH), ConceptSampleConfig(steps=steps, eta=1.0),
                         torch.Generator().manual_seed(3))
    x_t = torch.randn((2, WIDTH), generator=torch.Generator().manual_seed(3))  # the chain's first draw
    a, b, v = (float(p) for p in gaussian_math.posterior(proc.abar, 0, 12))
    z = (out * math.sqrt(float(proc.abar[0])) - a * c - b * x_t) / math.sqrt(v)
    n = z.numel()
    assert abs(float(z.mean())) < 4 / math.sqrt(n)
    assert abs(float(z.var()) - 1) < 4 * math.sqrt(2 / n)


def test_ddim_chain_with_a_known_x0_keeps_the_starting_noise():
    c, proc = -0.5, ConceptDiffusion(num_steps=10)
    out = next_embedding(constant_net(c, 5), proc, torch.zeros(1, 0, 5), ConceptSampleConfig(steps=3, eta=0.0),
                         torch.Generator().manual_seed(0))
    x_t = torch.randn((1, 5), generator=torch.Generator().manual_seed(0))
    abar_t, abar_0 = float(proc.abar[10]), float(proc.abar[0])
    eps = (x_t - math.sqrt(abar_t) * c) / math.sqrt(1 - abar_t)
    want = (math.sqrt(abar_0) * c + math.sqrt(1 - abar_0) * eps) / math.sqrt(abar_0)
    assert torch.allclose(out, want, atol=1e-5)


class StandIn:
    """A tiny frozen 'encoder': letter counts a..e of each sentence (the real driver uses MiniLM)."""

    def __call__(self, sentences: list[str]) -> torch.Tensor:
        self.calls = getattr(self, "calls", 0) + 1
        return torch.tensor([[s.count(ch) for ch in "abcde"] for s in sentences], dtype=torch.float32)


def tiny_parts(seed: int = 0):
    torch.manual_seed(seed)
    den = ConceptDenoiser(ConceptNetConfig(embed_dim=5, d_model=16, n_layers=1, denoiser_layers=1, n_heads=2,
                                           context=3)).eval()
    for block in den.blocks:
        torch.nn.init.normal_(block.modulation.weight, std=0.3)
    dec = SentenceDecoder(DecoderConfig(embed_dim=5, max_tokens=6, prefix=1, d_model=16, n_layers=1,
                                        n_heads=2)).eval()
    scaler = EmbeddingScaler.fit(StandIn()(["abc", "bad", "cab", "deed", "ace"]))
    return den, dec, scaler


def test_continuation_writes_n_sentences_from_the_prompt():
    den, dec, scaler = tiny_parts()
    proc, tok, enc = ConceptDiffusion(num_steps=8), ByteTokenizer(), StandIn()
    cfg = ConceptSampleConfig(steps=4, eta=0.0, guidance=2.0)
    prompts = [["a cab.", "bad bed."], ["dead.", "ace."]]
    written, emb = continue_sentences(prompts, 3, enc, scaler, den, dec, tok, proc, cfg,
                                      torch.Generator().manual_seed(0))
    assert len(written) == 2 and all(len(w) == 3 and all(isinstance(s, str) for s in w) for w in written)
    assert emb.shape == (2, 3, 5) and enc.calls == 1  # the prompt is embedded once; generated vectors are not re-read
    # deterministic DDIM: the same start noise, so the embeddings differ only because the prompts do
    _, same = continue_sentences([prompts[0], prompts[0]], 3, enc, scaler, den, dec, tok, proc, cfg,
                                 torch.Generator().manual_seed(0))
    assert torch.allclose(same[0], emb[0], atol=1e-5) and (same[1] - emb[1]).abs().max() > 1e-4
    # a prompt longer than the context tower reads keeps its latest sentences
    e1, e2 = (continue_sentences(p, 1, enc, scaler, den, dec, tok, proc, cfg, torch.Generator().manual_seed(1))[1]
              for p in ([["a.", "b.", "c.", "d."]], [["c.", "d."]]))
    assert torch.allclose(e1, e2, atol=1e-5)


def test_bad_requests_are_user_errors():
    den, dec, scaler = tiny_parts()
    proc, tok, enc = ConceptDiffusion(num_steps=4), ByteTokenizer(), StandIn()
    with pytest.raises(UserError, match="one length"):
        continue_sentences([["a."], ["b.", "c."]], 1, enc, scaler, den, dec, tok, proc, ConceptSampleConfig())
    with pytest.raises(UserError, match=">= 1"):
        continue_sentences([["a."]], 0, enc, scaler, den, dec, tok, proc, ConceptSampleConfig())
    for bad in (ConceptSampleConfig(eta=2.0), ConceptSampleConfig(guidance=-1.0), ConceptSampleConfig(steps=0)):
        with pytest.raises(UserError):
            next_embedding(den, proc, torch.zeros(1, 1, 5), bad)


def test_each_new_sentence_reads_the_prompt_and_the_vectors_generated_before_it():
    """The loop against the chain run by hand: standardised prompt, then each generated vector appended (LCM: not
    re-encoded), the result returned in the encoder's space; guidance 0 ignores the context entirely."""
    den, dec, scaler = tiny_parts(1)
    scaler = EmbeddingScaler(scaler.mean + 5.0, scaler.std * 3.0)  # a scaler far from the identity
    proc, tok, enc = ConceptDiffusion(num_steps=6), ByteTokenizer(), StandIn()
    cfg = ConceptSampleConfig(steps=3, eta=0.0, guidance=1.5)
    prompt = [["bead.", "dab."]]
    _, emb = continue_sentences(prompt, 2, enc, scaler, den, dec, tok, proc, cfg, torch.Generator().manual_seed(4))
    gen = torch.Generator().manual_seed(4)
    context = scaler(enc(prompt[0]))[None]
    first = next_embedding(den, proc, context, cfg, gen)
    second = next_embedding(den, proc, torch.cat([context, first[:, None]], dim=1), cfg, gen)
    assert torch.allclose(emb[0, 0], scaler.inverse(first)[0], atol=1e-5)
    assert torch.allclose(emb[0, 1], scaler.inverse(second)[0], atol=1e-5)
    uncond = ConceptSampleConfig(steps=3, eta=0.0, guidance=0.0)
    a, b = (next_embedding(den, proc, scaler(enc(p))[None], uncond, torch.Generator().manual_seed(2))
            for p in (["bead."], ["cab cab."]))
    c, d = (next_embedding(den, proc, scaler(enc(p))[None], cfg, torch.Generator().manual_seed(2))
            for p in (["bead."], ["cab cab."]))
    assert torch.allclose(a, b, atol=1e-6) and (c - d).abs().max() > 1e-4
