"""A causal LM adapted to block diffusion (`adapt --from FOLDER --block-size B`, the Fast-dLLM v2 recipe) serves
and chats like any other folder: the server's completion with the block sampler's threshold decoding and exact
cache, and its chat reply, are the very texts the Pipeline writes alone for the same seed, and `textdiffusion
chat` answers a turn from the run folder."""

from __future__ import annotations

import io
import json

import httpx
import pytest

from textdiffusion.api.pipeline import Pipeline
from textdiffusion.cli import main
from textdiffusion.interop.llama_like import LlamaLike
from textdiffusion.processes import BlockDiffusion

PROMPT = "To be, or not"
BLOCK = {"rule": "threshold", "threshold": 0.3, "cache": True}  # sub-block parallel decoding over the block cache
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
MESSAGES = [{"role": "user", "content": "Who is there?"}]


@pytest.fixture(scope="module")
def adapted(tmp_path_factory, write_causal_lm, tiny_overrides, write_corpus):
    root = tmp_path_factory.mktemp("adapted")
    write_causal_lm(root / "lm")
    (root / "lm" / "tokenizer_config.json").write_text(json.dumps({"chat_template": TEMPLATE}))  # an instruct LM's
    corpus = write_corpus(root / "c.jsonl", n_docs=60)
    out = root / "run"
    assert main(["adapt", "--from", str(root / "lm"), "--out", str(out), "--block-size", "4",
                 *tiny_overrides(corpus, steps=2, every=2)]) == 0
    return out


def test_the_adapted_folder_serves_and_chats_as_the_pipeline_writes(adapted, tiny_server, model_name):
    pipe = Pipeline.from_pretrained(adapted, device="cpu")
    assert isinstance(pipe.model, LlamaLike) and isinstance(pipe.process, BlockDiffusion)
    assert pipe.tokenizer.chat_template == TEMPLATE  # the source's template came with the adaptation
    prompt = pipe.tokenizer.encode(PROMPT)
    alone = pipe.generate(prompt=PROMPT, length=len(prompt) + 12, sampler="block", seed=3, **BLOCK)
    expected = pipe.tokenizer.decode(alone.ids[0, len(prompt):].tolist(), mask_char=None, stop_at_eos=True)
    reply = pipe.chat(MESSAGES, max_new_tokens=8, sampler="block", seed=5, **BLOCK).replies[0]
    with tiny_server(Pipeline.from_pretrained(adapted, device="cpu"), model_dir=adapted) as (url, _):
        models = httpx.get(f"{url}/v1/models", timeout=30).json()["data"]
        completion = httpx.post(f"{url}/v1/completions", timeout=60, json={
            "model": model_name, "prompt": PROMPT, "max_tokens": 12, "seed": 3, "sampler": "block",
            "options": BLOCK}).json()
        chat = httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
            "model": model_name, "messages": MESSAGES, "max_tokens": 8, "seed": 5, "sampler": "block",
            "options": BLOCK}).json()
    assert any(m["id"] == model_name for m in models)
    assert completion["choices"][0]["text"] == expected
    assert chat["choices"][0]["message"]["content"] == reply


def test_chat_answers_a_turn_from_the_adapted_run(adapted, monkeypatch, capsys):
    """`textdiffusion chat` on the run folder: the turn is rendered under the source's template and answered as
    the Pipeline answers it."""
    reply = Pipeline.from_pretrained(adapted, device="cpu").chat(
        MESSAGES, max_new_tokens=6, sampler="block", seed=0).replies[0]
    monkeypatch.setattr("sys.stdin", io.StringIO(MESSAGES[0]["content"] + "\n"))
    assert main(["chat", str(adapted), "--max-new-tokens", "6", "--seed", "0", "--sampler", "block",
                 "--no-stream"]) == 0
    assert reply and reply in capsys.readouterr().out
