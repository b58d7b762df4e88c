"""Diffusion-LM through the shared backbone, trainer and model folders: the vector input path leaves
discrete models untouched, a `process.name=gaussian` run trains (its loss and validation bound fall),
saves the embedding width, resumes, and loads into a Pipeline that samples."""

from __future__ import annotations

import json

import pytest
import torch

from textdiffusion.api.pipeline import Pipeline
from textdiffusion.models import ModelConfig, Transformer
from textdiffusion.pretrained import __file__ as pretrained_init
from textdiffusion.train.trainer import Trainer


def test_discrete_backbones_are_unchanged_by_the_vector_path():
    shipped = json.loads((__import__("pathlib").Path(pretrained_init).parent / "shakespeare-mdlm" / "config.json")
                         .read_text())["model"]
    assert ModelConfig(**shipped).to_dict() == shipped  # the field is absent from discrete configs
    cfg = ModelConfig(vocab_size=30, seq_len=8, d_model=16, n_layers=1, n_heads=2)
    torch.manual_seed(0)
    discrete = Transformer(cfg)
    assert discrete.in_proj is None and discrete.out_proj is None and discrete.head is not None
    torch.manual_seed(0)
    continuous = Transformer(ModelConfig(**{**cfg.to_dict(), "embed_dim": 4}))
    assert continuous.head is None and continuous.embed.weight.shape == (30, 4)
    assert set(discrete.state_dict()) - set(continuous.state_dict()) == {"head.weight"}
    assert {k.split(".")[0] for k in set(continuous.state_dict()) - set(discrete.state_dict())} == {"in_proj",
                                                                                                    "out_proj"}
    vectors = torch.randn(2, 8, 4)
    assert continuous(vectors).shape == (2, 8, 4)
    with pytest.raises(ValueError, match="reads vectors"):
        continuous(torch.zeros(2, 8, dtype=torch.long))
    with pytest.raises(Exception, match="embed_dim"):
        ModelConfig(vocab_size=30, embed_dim=-1)


def test_a_gaussian_run_trains_saves_resumes_and_samples(tmp_path, tiny_config, write_corpus):
    corpus = write_corpus(tmp_path / "hamlet.jsonl")
    out = tmp_path / "run"
    extra = ("process.name=gaussian", "process.num_steps=200", "process.embed_dim=8", "train.lr=3e-3",
             "train.ema_decay=0")
    trainer = Trainer(tiny_config(out, corpus, *extra, steps=40, every=20))
    first = trainer.evaluate()["val_nelbo"]
    losses = [trainer.train_step() for _ in range(40)]
    trainer.save()
    last = trainer.evaluate()["val_nelbo"]
    assert sum(losses[-5:]) < sum(losses[:5]) and last < first, (losses[:5], losses[-5:], first, last)
    saved = json.loads((out / "checkpoint" / "config.json").read_text())
    assert saved["model"]["embed_dim"] == 8 and saved["model"]["time_conditioning"] is True
    assert saved["process"] == {"name": "gaussian", "noise_schedule": "sqrt", "num_steps": 200, "embed_dim": 8,
                                "objective": "simple", "antithetic": True, "source_len": 0,
                                "prediction": "embedding"}
    resumed = Trainer(tiny_config(out, corpus, *extra, steps=42, every=20), resume=True)
    assert resumed.step == 40
    torch.testing.assert_close(resumed.model.embed.weight, trainer.model.embed.weight)
    pipe = Pipeline.from_pretrained(out)
    sample = pipe.generate(num_samples=2, length=16, steps=10, seed=0)
    assert sample.ids.shape == (2, 16) and not bool((sample.ids == pipe.tokenizer.mask_id).any())


def test_a_token_predicting_run_has_a_head_and_no_down_projection(tmp_path, tiny_config, write_corpus):
    """prediction=tokens (CDCD-style): the backbone keeps its vocabulary head (logits) and reads vectors."""
    corpus = write_corpus(tmp_path / "hamlet.jsonl")
    extra = ("process.name=gaussian", "process.num_steps=200", "process.embed_dim=8", "process.prediction=tokens",
             "process.objective=ce", "train.lr=3e-3", "train.ema_decay=0")
    trainer = Trainer(tiny_config(tmp_path / "run", corpus, *extra, steps=30, every=30))
    model = trainer.model
    assert model.head is not None and model.out_proj is None and model.in_proj is not None
    assert trainer.model_cfg.to_dict()["embed_logits"] is True
    first = trainer.evaluate()["val_nelbo"]
    losses = [trainer.train_step() for _ in range(30)]
    assert sum(losses[-5:]) < sum(losses[:5]) and trainer.evaluate()["val_nelbo"] < first
    norms = trainer.process.embedding_table(model).norm(dim=-1)
    torch.testing.assert_close(norms, torch.full_like(norms, 8 ** 0.5))  # CDCD's normalised embeddings
