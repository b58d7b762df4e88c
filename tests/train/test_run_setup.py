"""A run's ingredients under torchrun (train/setup.py): only rank 0 writes the tokenizer, and the other ranks read
it only after the barrier, never while rank 0 is still writing it."""

from __future__ import annotations

from textdiffusion.data.tokenizers import ByteTokenizer
from textdiffusion.train import setup
from textdiffusion.train.config import load_config
from textdiffusion.train.distributed import DistInfo


def test_a_non_main_rank_reads_the_tokenizer_only_after_the_barrier(tmp_path, monkeypatch):
    tok_dir = tmp_path / "tokenizer"
    tok_dir.mkdir()
    (tok_dir / "tokenizer_meta.json").write_text("")  # rank 0 is half-way through writing it
    waited = []

    def barrier(info: DistInfo) -> None:  # rank 0 finishes its save before the barrier lets rank 1 go
        waited.append(info.rank)
        ByteTokenizer().save(tok_dir)

    monkeypatch.setattr(setup, "barrier", barrier)
    cfg = load_config("tiny", [f"run.out_dir={tmp_path}", "data.tokenizer=byte"])
    tok = setup.prepare_tokenizer(cfg, tmp_path, DistInfo(rank=1, world_size=2))
    assert waited == [1] and tok.vocab_size == ByteTokenizer().vocab_size
