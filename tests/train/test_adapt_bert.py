"""BERT -> diffusion (train/adapt_bert.py): the denoiser starts as exactly the pretrained masked LM (or, from a
bare encoder, as that encoder with the word embeddings as its output layer), and `textdiffusion adapt --from
BERT_FOLDER` trains it as masked diffusion into a folder Pipeline.from_pretrained loads."""

from __future__ import annotations

import json

import torch
import transformers

from textdiffusion.api.pipeline import Pipeline
from textdiffusion.cli import main
from textdiffusion.interop.masked_lm import MaskedLMDenoiser
from textdiffusion.train import checkpoint as ckpt
from textdiffusion.train.adapt_bert import BertStartTrainer
from textdiffusion.train.config import load_config


def test_the_start_is_the_pretrained_masked_lm_and_training_keeps_it_loadable(tmp_path, write_masked_lm,
                                                                              tiny_overrides, write_corpus):
    folder, ids = write_masked_lm(tmp_path / "bert", "bert")
    reference = transformers.BertForMaskedLM.from_pretrained(str(folder)).eval()
    corpus = write_corpus(tmp_path / "c.jsonl", n_docs=60)
    out = tmp_path / "run"
    assert main(["adapt", "--from", str(folder), "--out", str(out), *tiny_overrides(corpus, steps=2, every=2),
                 "train.lr=1e-12", "train.ema_decay=0", "data.seq_len=24"]) == 0
    saved = ckpt.read_config(out / "checkpoint")
    assert saved["model"]["arch"] == "hf_masked_lm" and "logit_shift" not in saved["process"]
    pipe = Pipeline.from_pretrained(out, device="cpu")
    assert isinstance(pipe.model, MaskedLMDenoiser) and pipe.tokenizer.mask_id == ids["[MASK]"]
    x = torch.randint(5, ids["__size__"], (2, 24), generator=torch.Generator().manual_seed(0))
    x[:, ::3] = ids["[MASK]"]
    with torch.no_grad():  # lr ~ 0: still the pretrained network, now read back from our checkpoint
        assert torch.allclose(pipe.model(x), reference(input_ids=x).logits[..., : pipe.tokenizer.vocab_size],
                              atol=1e-5)
    text = pipe.generate(length=16, steps=4, seed=0)
    assert not (text.ids == pipe.tokenizer.mask_id).any()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["started_from"] == str(folder) and any("val_nelbo" in r for r in rows)


def test_a_bare_encoder_gets_its_embeddings_as_output_layer(tmp_path, tiny_overrides, write_corpus, write_masked_lm):
    folder, ids = write_masked_lm(tmp_path / "bert", "bert")
    encoder_dir = tmp_path / "encoder"
    full = transformers.BertForMaskedLM.from_pretrained(str(folder)).eval()
    full.bert.save_pretrained(str(encoder_dir))  # a BertModel folder, like a sentence-transformers checkpoint
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (encoder_dir / name).write_text((folder / name).read_text())
    corpus = write_corpus(tmp_path / "c.jsonl", n_docs=60)
    cfg = load_config("tiny", ["process.name=masked", f"run.out_dir={tmp_path / 'run'}",
                               *tiny_overrides(corpus, steps=1, every=1), "data.seq_len=24"])
    trainer = BertStartTrainer(cfg, encoder_dir)
    net = trainer.model.net.eval()
    assert torch.equal(net.cls.predictions.decoder.weight, full.bert.embeddings.word_embeddings.weight)
    assert net.cls.predictions.decoder.weight is not net.bert.embeddings.word_embeddings.weight  # untied copy
    x = torch.randint(5, ids["__size__"], (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(net.bert(input_ids=x).last_hidden_state, full.bert(input_ids=x).last_hidden_state,
                              atol=1e-6)
    scratch = BertStartTrainer(load_config("tiny", ["process.name=masked", f"run.out_dir={tmp_path / 'scratch'}",
                                                    *tiny_overrides(corpus, steps=1, every=1), "data.seq_len=24"]),
                               encoder_dir, scratch=True)
    assert not torch.allclose(scratch.model.net.bert.embeddings.word_embeddings.weight,
                              full.bert.embeddings.word_embeddings.weight)
