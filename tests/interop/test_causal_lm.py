"""A Llama-family causal LM folder loads as the AR baseline (interop/causal_lm.py): our `ar` sampler with its KV
cache, greedy, writes transformers' `generate` output token for token, and scores its exact likelihood."""

from __future__ import annotations

import pytest
import torch

from textdiffusion.api.pipeline import Pipeline
from textdiffusion.interop.llama_like import LlamaLike
from textdiffusion.processes import Autoregressive


@pytest.fixture(scope="module")
def causal_folder(tmp_path_factory, write_causal_lm):
    folder = tmp_path_factory.mktemp("causal")
    ref, ids = write_causal_lm(folder)
    return folder, ref, ids


@pytest.mark.parametrize("cache", [True, False])
def test_greedy_equals_transformers_generate(causal_folder, cache):
    folder, ref, ids = causal_folder
    pipe = Pipeline.from_pretrained(folder, device="cpu")
    assert pipe.config["format"] == "causal_lm"
    assert isinstance(pipe.model, LlamaLike) and pipe.model.cfg.causal and isinstance(pipe.process, Autoregressive)
    prompt = pipe.tokenizer.encode("To be, or not")
    new = 20
    ours = pipe.generate(prompt="To be, or not", length=len(prompt) + new, sampler="ar", temperature=0.0, seed=0,
                         cache=cache).ids[0, len(prompt):].tolist()
    start = torch.tensor([[ids["<|endoftext|>"], *prompt]])
    with torch.no_grad():
        theirs = ref.generate(start, max_new_tokens=new, do_sample=False, eos_token_id=None,
                              pad_token_id=0)[0, start.shape[1]:].tolist()
    assert ours == theirs


def test_exact_likelihood_is_transformers_next_token_loss(causal_folder):
    folder, ref, ids = causal_folder
    pipe = Pipeline.from_pretrained(folder, device="cpu")
    text = "To be, or not to be, that is the question"
    [score] = pipe.score(text, t_samples=1)
    x = torch.tensor([[ids["<|endoftext|>"], *pipe.tokenizer.encode(text)]])
    with torch.no_grad():
        nll = ref(x, labels=x).loss.item() * (x.shape[1] - 1)
    assert score.exact and score.n_tokens == x.shape[1] - 1
    assert score.nats_per_token * score.n_tokens == pytest.approx(nll, rel=1e-4)


def test_a_folder_dequantised_without_architectures_is_repaired_and_loads(causal_folder, tmp_path):
    """Folders dequantised from a GGUF before `architectures` was written lacked it, and no format matched them."""
    import json
    import shutil

    from textdiffusion.interop import causal_lm
    from textdiffusion.interop.hf_causal import name_architecture

    folder, _, _ = causal_folder
    old = tmp_path / "old"
    shutil.copytree(folder, old)
    config = json.loads((old / "config.json").read_text())
    config.pop("architectures")
    (old / "config.json").write_text(json.dumps(config))
    assert not causal_lm.matches(old, config)
    name_architecture(old / "config.json")
    repaired = json.loads((old / "config.json").read_text())
    assert repaired == {**config, "architectures": ["LlamaForCausalLM"]}
    assert Pipeline.from_pretrained(old, device="cpu").config["format"] == "causal_lm"
    before = (folder / "config.json").read_text()
    name_architecture(folder / "config.json")  # a folder that names its architecture is left as it is
    assert (folder / "config.json").read_text() == before
