"""`textdiffusion prepare`: tokenise a config's data source once into memory-mapped shards (data/prepared.py).
The trainer's side of data.source=prepared:DIR (split, tokenizer, batches, validation rows) is in setup.py."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..core.errors import UserError
from ..data import prepared
from ..data.corpus import iter_documents
from ..data.packing import iter_chunks
from . import checkpoint as ckpt
from .config import Config
from .distributed import DistInfo
from .setup import plan_data_split, prepare_tokenizer  # the trainer's own split and tokenizer rules


def prepare(cfg: Config, out: str | Path) -> dict:
    """Tokenise cfg.data's source (train and validation splits, packed as training packs them) into `out`;
    returns the index. `out` is replaced atomically when it already holds prepared data."""
    cfg.validate()
    d, out = cfg.data, Path(out)
    if prepared.is_prepared(d.source):
        raise UserError(f"data.source {d.source} is already prepared: give the original text source")
    if d.packing not in ("wrap", "pad"):
        raise UserError(f"data.packing={d.packing} cannot be prepared: use wrap or pad")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / prepared.INDEX_FILE).is_file())):
        raise UserError(f"{out} exists and is not a prepared-data folder: choose another --out")
    plan = plan_data_split(cfg)
    index: dict = {}

    def write(tmp: Path) -> None:
        tok = prepare_tokenizer(cfg, tmp, DistInfo(), plan)  # trains a BPE on the text when data.tokenizer=bpe
        splits = {}
        for split in ("train", "validation"):
            docs = iter_documents(d.source, split, d.val_fraction, d.split_seed, d.text_field, d.hf_split, plan)
            splits[split] = prepared.write_split(tmp, split, iter_chunks(docs, tok, d.seq_len, d.packing),
                                                 d.seq_len, tok.vocab_size)
            if split == "train" and splits[split]["rows"] == 0:  # nothing to train on: say so, write nothing
                raise UserError(f"data.source {d.source} gives no training rows of data.seq_len={d.seq_len} "
                                "tokens: give more text (is the file empty?) or lower data.seq_len")
        settings = {key: getattr(d, key) for key in (*prepared.FIXED, "source", "val_fraction", "split_seed",
                                                     "text_field", "hf_split")}
        prepared.write_index(tmp, settings, splits, tok.kind, tok.vocab_size, dataclasses.asdict(plan))
        index.update(prepared.read_index(tmp))

    ckpt.atomic_folder(out, write)
    return index
