"""AR -> diffusion from a pretrained LLaMA-family causal LM (train/adapt_llama.py): at annealing step 0 the
logit-shifted LlamaLike is exactly transformers' causal LM, and `textdiffusion adapt --from HF_FOLDER` trains,
saves, resumes and loads as a logit-shifted masked model."""

from __future__ import annotations

import json

import torch

from textdiffusion.api.pipeline import Pipeline
from textdiffusion.cli import main
from textdiffusion.interop.adapted import AdaptedLlamaConfig
from textdiffusion.interop.hf_causal import llama_config
from textdiffusion.interop.llama_like import LlamaLike
from textdiffusion.models.shifted import ShiftedDenoiser
from textdiffusion.processes import MaskedDiffusion
from textdiffusion.train import checkpoint as ckpt
from textdiffusion.train.adapt import annealed_mask
from textdiffusion.train.adapt_llama import adapted_tokenizer, pretrained_llama, start_token_id


def test_at_annealing_step_0_the_shifted_model_is_the_causal_lm(tmp_path, write_causal_lm):
    ref, ids = write_causal_lm(tmp_path / "lm")
    config = json.loads((tmp_path / "lm" / "config.json").read_text())
    tok = adapted_tokenizer(tmp_path / "lm", config)
    assert tok.mask_id == ids["__size__"] and tok.vocab_size == ids["__size__"] + 1  # [MASK] added last
    assert tok.bos_id == start_token_id(config) == ids["<|endoftext|>"] and tok.eos_id == ids["<|im_end|>"]
    cfg = AdaptedLlamaConfig(**llama_config(tmp_path / "lm", config, 16, tok.vocab_size, tok.vocab_size).to_dict())
    model = pretrained_llama(tmp_path / "lm", cfg, tok.bos_id, tok.mask_id).eval()
    x0 = torch.randint(3, ids["__size__"], (3, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        # transformers' causal forward on [bos] x0: output l is the next-token distribution after [bos] x0_<l
        expected = ref(torch.cat([torch.full_like(x0[:, :1], tok.bos_id), x0], 1)).logits[:, :-1]
        causal = ShiftedDenoiser(model, tok.mask_id, annealed_mask(13, 0.0))(x0)
        full = ShiftedDenoiser(model, tok.mask_id)(x0)
    assert torch.allclose(causal[..., : ids["__size__"]], expected, atol=1e-5, rtol=1e-4)
    assert torch.allclose(causal[..., tok.mask_id], expected[..., tok.bos_id], atol=1e-5)  # tied head: the copy
    assert not torch.allclose(full[:, 0], causal[:, 0], atol=1e-3)  # opened: position 0 sees the whole sequence


def test_untied_heads_grow_the_mask_row_too(tmp_path, write_causal_lm):
    ref, ids = write_causal_lm(tmp_path / "lm", tied=False)
    config = json.loads((tmp_path / "lm" / "config.json").read_text())
    tok = adapted_tokenizer(tmp_path / "lm", config)
    cfg = AdaptedLlamaConfig(**llama_config(tmp_path / "lm", config, 16, tok.vocab_size, tok.vocab_size).to_dict())
    model = pretrained_llama(tmp_path / "lm", cfg, tok.bos_id, tok.mask_id)
    assert torch.equal(model.lm_head.weight[: ids["__size__"]], ref.lm_head.weight)
    assert torch.equal(model.lm_head.weight[tok.mask_id], ref.lm_head.weight[tok.bos_id])


def test_adapt_command_from_a_causal_lm_folder(tmp_path, capsys, tiny_overrides, write_corpus, write_causal_lm):
    write_causal_lm(tmp_path / "lm")
    corpus = write_corpus(tmp_path / "c.jsonl", n_docs=60)
    out = tmp_path / "adapted"
    args = ["adapt", "--from", str(tmp_path / "lm"), "--out", str(out), "--anneal-steps", "2",
            *tiny_overrides(corpus, steps=2, every=2), "train.lr=1e-12", "train.ema_decay=0"]
    assert main(args) == 0
    saved = ckpt.read_config(out / "checkpoint")
    assert saved["model"]["arch"] == "llama_like" and saved["process"]["logit_shift"] is True
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["started_from"] == str(tmp_path / "lm") and any("val_nelbo" in r for r in rows)
    pipe = Pipeline.from_pretrained(out, device="cpu")
    assert isinstance(pipe.model, LlamaLike) and isinstance(pipe.process, MaskedDiffusion)
    assert pipe.process.logit_shift and pipe.tokenizer.mask_id == pipe.model.cfg.vocab_size - 1
    text = pipe.generate(length=12, steps=4, seed=0, prompt="To be")
    assert text.texts[0].startswith("To be") and not (text.ids == pipe.tokenizer.mask_id).any()
    assert pipe.score("To be, or not to be", t_samples=2, seed=0)[0].nats_per_token > 0
    assert main([*args[:4], str(out), "--resume", "train.steps=3"]) == 0  # continues its own run
    assert ckpt.read_config(out / "checkpoint")["trained"]["steps"] == 3
    capsys.readouterr()
    assert main(["adapt", "--from", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2
    assert "is not 'smollm2', a .gguf file or a model folder" in capsys.readouterr().err
    # Fast-dLLM's caches on the logit-shifted view (models/shifted.py): one block over the whole sequence caches
    # nothing, so it writes the same tokens as no cache
    cached, plain = (pipe.generate(length=12, sampler="confidence", steps=4, cache=c, seed=0) for c in ("dual", "none"))
    assert torch.equal(cached.ids, plain.ids)
    # SFT of the adapted network (LLaDA's recipe, train/sft.py) keeps its LlamaLike and weights
    chats = tmp_path / "chat.jsonl"
    chats.write_text("".join(json.dumps([{"role": "user", "content": f"{i}+1"},
                                         {"role": "assistant", "content": str(i + 1)}]) + "\n" for i in range(20)))
    assert main(["sft", "--from", str(out), "--data", str(chats), "--out", str(tmp_path / "sft"), "train.steps=1",
                 "train.lr=1e-12", "data.val_fraction=0.2"]) == 0
    tuned = ckpt.read_config(tmp_path / "sft" / "checkpoint")
    assert tuned["model"]["arch"] == "llama_like" and tuned["process"]["logit_shift"] is True
    before = ckpt.load_weights(out / "checkpoint" / ckpt.WEIGHTS_FILE)
    after = ckpt.load_weights(tmp_path / "sft" / "checkpoint" / ckpt.WEIGHTS_FILE)
    assert all(torch.allclose(after[k], before[k], atol=1e-6) for k in before)
    assert Pipeline.from_pretrained(tmp_path / "sft", device="cpu").chat([{"role": "user", "content": "3+1"}],
                                                                         steps=2).replies
