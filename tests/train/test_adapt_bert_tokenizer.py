"""A BERT start keeps whole documents: sentence-embedding checkpoints (all-MiniLM-L6-v2, ...) ship a tokenizer.json
that truncates every text to 128 tokens and pads it to 128, which would shrink the training corpus to each
document's first 128 tokens and score short texts with [PAD]s. The run's tokenizer drops both settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from textdiffusion.data.tokenizers import load_tokenizer
from textdiffusion.train.adapt_bert import BertStartTrainer
from textdiffusion.train.config import load_config


@pytest.fixture
def truncating_masked_lm(tmp_path, write_masked_lm) -> Path:
    """A tiny masked-LM folder whose tokenizer.json truncates and pads to 8 tokens, as sentence-embedding ones do."""
    folder, _ = write_masked_lm(tmp_path / "bert", "bert")
    spec = json.loads((folder / "tokenizer.json").read_text())
    spec["truncation"] = {"direction": "Right", "max_length": 8, "strategy": "LongestFirst", "stride": 0}
    spec["padding"] = {"strategy": {"Fixed": 8}, "direction": "Right", "pad_to_multiple_of": None, "pad_id": 0,
                       "pad_type_id": 0, "pad_token": "[PAD]"}
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    return folder


def test_the_runs_tokenizer_neither_truncates_nor_pads(tmp_path, truncating_masked_lm, tiny_overrides, write_corpus):
    folder = truncating_masked_lm
    corpus = write_corpus(tmp_path / "c.jsonl", n_docs=60)
    out = tmp_path / "run"
    cfg = load_config("tiny", ["process.name=masked", f"run.out_dir={out}", *tiny_overrides(corpus, steps=1, every=1),
                               "data.seq_len=24"])
    trainer = BertStartTrainer(cfg, folder)
    tok = load_tokenizer(out / "tokenizer")
    text = "the king is dead and the queen will follow him into the ground before the night is over"
    assert len(tok.encode(text)) > 8 and len(tok.encode("the")) < 8  # not cut, not padded
    n_tokens = trainer.batches.chunks.numel()
    assert n_tokens > 60 * 8 * 2  # 60 documents of 400 characters, not 60 x 8 tokens


def test_a_loaded_masked_lm_folder_scores_whole_texts(truncating_masked_lm):
    """The interop loader (score or sample a masked-LM folder directly) drops the same two settings."""
    from textdiffusion.interop.tokenizer import folder_tokenizer

    folder = truncating_masked_lm
    config = json.loads((folder / "config.json").read_text())
    tok = folder_tokenizer(folder, config["vocab_size"])
    text = "the king is dead and the queen will follow him into the ground before the night is over"
    assert len(tok.encode(text)) > 8 and len(tok.encode("the")) < 8
