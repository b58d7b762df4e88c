"""LLaDA and Dream folders: logits equal transformers' Llama / Qwen2 run bidirectionally, and the pipeline runs."""

from __future__ import annotations

import pytest
import torch

from textdiffusion.api.pipeline import Pipeline


@pytest.fixture(scope="module")
def llada(tmp_path_factory, write_llada):
    return write_llada(tmp_path_factory.mktemp("llada"))


@pytest.fixture(scope="module")
def dream(tmp_path_factory, write_dream):
    return write_dream(tmp_path_factory.mktemp("dream"))


def test_llada_logits_match_bidirectional_llama(llada, bidirectional_logits):
    folder, ref, ids = llada
    pipe = Pipeline.from_pretrained(folder, device="cpu")
    assert pipe.config["format"] == "llada"
    tok = pipe.tokenizer
    assert tok.mask_id == ids["<|mdm_mask|>"] and tok.eos_id == ids["<|endoftext|>"]
    assert tok.vocab_size == ids["__size__"]  # the padded embedding rows are not part of the vocabulary
    x = torch.randint(0, tok.vocab_size, (2, 11), generator=torch.Generator().manual_seed(0))
    x[0, 3:6] = tok.mask_id
    with torch.no_grad():
        ours = pipe.model(x, None)
    expected = bidirectional_logits(ref, x)[..., : tok.vocab_size]
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours, expected, atol=2e-5, rtol=1e-4)
    # the reference itself is bidirectional: the first position's logits depend on the last token
    y = x.clone()
    y[:, -1] = (y[:, -1] + 1) % tok.vocab_size
    assert not torch.allclose(bidirectional_logits(ref, y)[:, 0, : tok.vocab_size], expected[:, 0])


def test_llada_with_weight_tying_uses_wte_as_head(tmp_path, bidirectional_logits, write_llada):
    folder, ref, _ = write_llada(tmp_path / "tied", tied=True)
    pipe = Pipeline.from_pretrained(folder, device="cpu")
    assert not hasattr(pipe.model, "lm_head")
    x = torch.randint(0, pipe.tokenizer.vocab_size, (1, 7), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = pipe.model(x, None)
    torch.testing.assert_close(ours, bidirectional_logits(ref, x)[..., : pipe.tokenizer.vocab_size],
                               atol=2e-5, rtol=1e-4)


def test_dream_logits_are_shifted_qwen2(dream, bidirectional_logits):
    folder, ref, ids = dream
    pipe = Pipeline.from_pretrained(folder, device="cpu")
    assert pipe.config["format"] == "dream" and pipe.tokenizer.mask_id == ids["<|mask|>"]
    v = pipe.tokenizer.vocab_size
    x = torch.randint(0, v, (2, 9), generator=torch.Generator().manual_seed(1))
    x[1, 2:7] = pipe.tokenizer.mask_id
    with torch.no_grad():
        ours = pipe.model(x, None)
    full = bidirectional_logits(ref, x)[..., :v]
    torch.testing.assert_close(ours[:, 1:], full[:, :-1], atol=2e-5, rtol=1e-4)  # position i reads i - 1
    torch.testing.assert_close(ours[:, 0], full[:, 0], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("which", ["llada", "dream"])
def test_generate_infill_score_run(which, llada, dream):
    folder = (llada if which == "llada" else dream)[0]
    pipe = Pipeline.from_pretrained(folder, device="cpu")
    v = pipe.tokenizer.vocab_size
    for sampler in ("ancestral", "confidence", "threshold", "remdm", "first_hitting"):
        steps = 4 if sampler in ("ancestral", "confidence", "remdm") else None
        out = pipe.generate(num_samples=2, length=12, sampler=sampler, steps=steps, seed=0, return_frames=True)
        assert out.ids.shape == (2, 12) and int(out.ids.max()) < v
        assert not (out.ids == pipe.tokenizer.mask_id).any() and out.frames
    long = pipe.generate(length=30, sampler="semi_ar", steps=2, seed=0)  # past the model's 24 / more tokens
    assert long.ids.shape == (1, 30)
    gapped, spans = pipe.encode_gapped("To be, or[MASK]x3 the question.")
    fill = pipe.infill("To be, or[MASK]x3 the question.", seed=0, steps=3)
    assert len(fill.fills[0]) == 1 and not (fill.ids == pipe.tokenizer.mask_id).any()
    keep = gapped != pipe.tokenizer.mask_id
    assert torch.equal(fill.ids[0][keep], gapped[keep]) and spans[0][1] - spans[0][0] == 3
    [score] = pipe.score("To be, or not to be", t_samples=2)
    assert score.n_tokens > 0 and score.nats_per_token > 0 and not score.exact
    for cache in ("prefix", "dual"):  # Fast-dLLM's caches on the folder's own network (test_llama_cache.py)
        cached = pipe.generate(num_samples=2, length=8, sampler="threshold", cache=cache, block_length=4, seed=0)
        assert not (cached.ids == pipe.tokenizer.mask_id).any()


def test_bf16_load_gives_bf16_weights(llada):
    pipe = Pipeline.from_pretrained(llada[0], device="cpu", dtype="bf16")
    assert {p.dtype for p in pipe.model.parameters()} == {torch.bfloat16}
    assert pipe.config["load"]["dtype"] == "bfloat16"
    out = pipe.generate(length=6, steps=2, seed=0)
    assert out.ids.shape == (1, 6)
