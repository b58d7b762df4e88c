"""A pretrained causal LM trained as block diffusion (Fast-dLLM v2: logit shift, block-causal over [x_t; x0],
complementary masks) or left to right again (the AR baseline on the same data): at step 0 each is exactly the
causal LM, and the run folders load, sample (the block sampler's KV cache is exact) and score like any other."""

from __future__ import annotations

import json

import pytest
import torch

from textdiffusion.api.pipeline import Pipeline
from textdiffusion.cli import main
from textdiffusion.interop.llama_like import LlamaLike
from textdiffusion.processes import Autoregressive, BlockDiffusion
from textdiffusion.train import checkpoint as ckpt

PROMPT = "To be, or not"


@pytest.fixture(scope="module")
def causal_lm(tmp_path_factory, write_causal_lm):
    folder = tmp_path_factory.mktemp("lm")
    ref, ids = write_causal_lm(folder)
    return folder, ref, ids


def next_token_logits(ref, bos: int, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return ref(torch.tensor([[bos, *ids]])).logits[0, -1]


def adapt(tmp_path, causal_lm, tiny_overrides, write_corpus, *flags) -> Pipeline:
    folder = causal_lm[0]
    corpus = write_corpus(tmp_path / "c.jsonl", n_docs=60)
    out = tmp_path / "run"
    assert main(["adapt", "--from", str(folder), "--out", str(out), *flags, *tiny_overrides(corpus, steps=2, every=2),
                 "train.lr=1e-12", "train.ema_decay=0"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["started_from"] == str(folder) and any("val_nelbo" in r for r in rows)
    return Pipeline.from_pretrained(out, device="cpu")


def test_block_adaptation_is_the_causal_lm_at_step_0(tmp_path, causal_lm, tiny_overrides, write_corpus):
    _, ref, ids = causal_lm
    pipe = adapt(tmp_path, causal_lm, tiny_overrides, write_corpus, "--block-size", "4")
    process = pipe.process
    assert isinstance(process, BlockDiffusion) and isinstance(pipe.model, LlamaLike) and not pipe.model.cfg.causal
    assert process.logit_shift and process.complementary_masks and process.block_size == 4
    saved = ckpt.read_config(tmp_path / "run" / "checkpoint")["process"]
    assert saved["complementary_masks"] is True and saved["logit_shift"] is True
    # the shifted frame keeps the AR alignment: with causal attention inside the block (the annealing mask's step
    # 0), a block's first masked token reads [START] x0_<l, the causal LM's next-token distribution after [bos] x0_<l
    prompt = pipe.tokenizer.encode(PROMPT)
    cut = len(prompt) - len(prompt) % 4
    x = torch.tensor([prompt[:cut] + [pipe.tokenizer.mask_id] * 4])
    denoiser = process.denoiser(pipe.model)
    with torch.no_grad():
        causal = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool).tril()
        ours = denoiser(x, attn_mask=causal, positions=torch.arange(x.shape[1]))[0, cut]
    expected = next_token_logits(ref, ids["<|endoftext|>"], prompt[:cut])
    torch.testing.assert_close(ours[: ids["__size__"]], expected, atol=1e-4, rtol=1e-4)
    # the exact KV cache of finished blocks: cached and recomputed sampling write the same tokens
    cached = pipe.generate(prompt=PROMPT, length=24, sampler="block", seed=1, cache=True, steps=4)
    fresh = pipe.generate(prompt=PROMPT, length=24, sampler="block", seed=1, cache=False, steps=4)
    assert torch.equal(cached.ids, fresh.ids) and cached.texts[0].startswith(PROMPT)
    threshold = pipe.generate(prompt=PROMPT, length=24, sampler="block", seed=1, rule="threshold", threshold=0.5)
    assert not (threshold.ids == pipe.tokenizer.mask_id).any()
    assert pipe.score("To be, or not to be", t_samples=2, seed=0)[0].nats_per_token > 0


def test_the_ar_baseline_run_is_the_causal_lm(tmp_path, causal_lm, tiny_overrides, write_corpus):
    _, ref, ids = causal_lm
    pipe = adapt(tmp_path, causal_lm, tiny_overrides, write_corpus, "--ar")
    assert isinstance(pipe.process, Autoregressive) and pipe.model.cfg.causal
    prompt = pipe.tokenizer.encode(PROMPT)
    out = pipe.generate(prompt=PROMPT, length=len(prompt) + 8, sampler="ar", temperature=0.0, seed=0)
    start = torch.tensor([[ids["<|endoftext|>"], *prompt]])
    with torch.no_grad():
        theirs = ref.generate(start, max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert out.ids[0, len(prompt):].tolist() == theirs[0, start.shape[1]:].tolist()
    assert pipe.score("To be, or not to be", t_samples=1)[0].exact


def test_ar_and_block_flags_are_checked(tmp_path, causal_lm, capsys):
    folder = causal_lm[0]
    assert main(["adapt", "--from", str(folder), "--out", str(tmp_path / "x"), "--ar", "--block-size", "4"]) == 2
    assert "--ar keeps a pretrained causal LM" in capsys.readouterr().err
    assert main(["adapt", "--from", str(folder), "--out", str(tmp_path / "y"), "--ar", "--anneal-steps", "3"]) == 2
    assert "drop --anneal-steps" in capsys.readouterr().err
