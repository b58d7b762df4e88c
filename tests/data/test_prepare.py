"""`textdiffusion prepare` (data/prepared.py, train/prepare.py): pre-tokenised rows in memory-mapped shards
train exactly as the same text packed in memory does (same rows, same shuffle, same validation), resume exactly,
and a prepared folder is written atomically and checked against the run's data settings."""

from __future__ import annotations

import json

import pytest
import torch

from textdiffusion.cli import main
from textdiffusion.core.errors import UserError
from textdiffusion.data import prepared
from textdiffusion.data.corpus import iter_documents
from textdiffusion.data.packing import pack_tensor
from textdiffusion.data.tokenizers import load_tokenizer
from textdiffusion.train.trainer import Trainer

DATA = ["data.val_fraction=0.1", "data.seq_len=32"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, write_corpus):
    return write_corpus(tmp_path_factory.mktemp("corpus") / "hamlet.jsonl")


@pytest.fixture(scope="module")
def prep(tmp_path_factory, corpus):
    out = tmp_path_factory.mktemp("prep") / "data"
    assert main(["prepare", "--out", str(out), f"data.source={corpus}", *DATA]) == 0
    return out


def test_prepared_rows_are_the_packed_rows_across_shards(prep, corpus, monkeypatch, tmp_path):
    tok = load_tokenizer(prep / "tokenizer")
    packed = pack_tensor(iter_documents(str(corpus), "train", 0.1, 0), tok, 32)
    chunks = prepared.PreparedChunks(prep, "train")
    assert len(chunks) == len(packed) and torch.equal(chunks[torch.arange(len(packed))], packed)
    # many small shard files: rows addressed across them, in any order
    monkeypatch.setattr(prepared, "SHARD_BYTES", 64 * 100)
    small = tmp_path / "small"
    assert main(["prepare", "--out", str(small), f"data.source={corpus}", *DATA]) == 0
    index = prepared.read_index(small)
    assert len(index["splits"]["train"]["shards"]) == -(-len(packed) // 100) > 2
    idx = torch.randperm(len(packed), generator=torch.Generator().manual_seed(0))[:300]
    assert torch.equal(prepared.PreparedChunks(small)[idx], packed[idx])


def test_training_on_prepared_data_equals_training_on_the_text(prep, corpus, tmp_path, tiny_config):
    raw = Trainer(tiny_config(tmp_path / "raw", corpus))
    pre = Trainer(tiny_config(tmp_path / "pre", corpus, f"data.source=prepared:{prep}"))
    assert torch.equal(raw.val, pre.val)
    for _ in range(2):
        assert raw.train_step() == pre.train_step()
    pre.save()
    resumed = Trainer(tiny_config(tmp_path / "pre", corpus, f"data.source=prepared:{prep}"), resume=True)
    assert resumed.batches.state_dict() == pre.batches.state_dict() == {"epoch": 0, "cursor": 16}
    assert torch.equal(resumed.batches.next_global(), raw.batches.next_global())


def test_a_run_must_ask_for_the_prepared_settings(prep, corpus, tmp_path, capsys, tiny_config):
    with pytest.raises(UserError, match=r"prepared with data.seq_len=32 but this run asks for 64: set data.seq_len=32"):
        Trainer(tiny_config(tmp_path / "r", corpus, f"data.source=prepared:{prep}", "data.seq_len=64"))
    assert main(["train", "--out", str(tmp_path / "r2"), "data.source=prepared:/no/such/dir"]) == 2
    assert "prepared:DIR" in capsys.readouterr().err


def test_prepare_writes_atomically_and_refuses_a_foreign_folder(corpus, tmp_path, monkeypatch, capsys):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert main(["prepare", "--out", str(foreign), f"data.source={corpus}", *DATA]) == 2
    assert "is not a prepared-data folder" in capsys.readouterr().err and (foreign / "notes.txt").is_file()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(prepared, "write_split", killed)
    out = tmp_path / "data"
    assert main(["prepare", "--out", str(out), f"data.source={corpus}", *DATA]) == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"], "a killed prepare left files behind"


def test_a_damaged_prepared_folder_is_one_clear_error(prep, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(prep, bad)
    shard = bad / "train-00000.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(UserError, match="not .* bytes long: prepare"):
        prepared.PreparedChunks(bad)
    (bad / "index.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(UserError, match="not a textdiffusion prepared-data index"):
        prepared.read_index(bad)
