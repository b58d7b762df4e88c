"""What a training run is built from: its device, data split, tokenizer, batches, validation chunks and the
backbone's config. The trainer (trainer.py) and the tools that share its data rules (prepare, bench,
benchmarks) call these."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import torch

from ..core.errors import UserError
from ..data import prepared
from ..data.corpus import Split, iter_documents, plan_split
from ..data.packing import ChunkBatches, iter_chunks, pack_tensor
from ..data.prepared import is_prepared
from ..data.tokenizers import Tokenizer, build_tokenizer, load_tokenizer
from ..models import ModelConfig
from ..processes import DiffusionProcess
from . import sft, streams
from .config import Config
from .distributed import DistInfo, barrier

BPE_TRAIN_CHARS = 50_000_000  # a trained BPE sees at most this much text


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device=cuda but no CUDA device is visible: use train.device=cpu")
    return torch.device(name)


def plan_data_split(cfg: Config) -> Split:
    """How cfg's source splits into training and validation; counted unless it is streamed."""
    d = cfg.data
    if d.packing == "chat":  # conversations for SFT: split by conversation (train/sft.py)
        return sft.plan_chat_split(cfg)
    if is_prepared(d.source):  # pre-tokenised shards (`textdiffusion prepare`): the split they were made with
        return prepared_plan(cfg)
    streamed = d.streaming or d.source.startswith("hf:")
    return plan_split(d.source, d.val_fraction, d.split_seed, d.text_field, d.hf_split, count=not streamed)


def _docs(cfg: Config, split: str, plan: Split | None = None):
    d = cfg.data
    return iter_documents(d.source, split, d.val_fraction, d.split_seed, d.text_field, d.hf_split, plan)


def _limited_texts(cfg: Config, plan: Split | None = None):
    if cfg.data.packing == "chat":
        yield from sft.training_texts(cfg, plan)
        return
    seen = 0
    for doc in _docs(cfg, "train", plan):
        yield doc
        seen += len(doc)
        if seen >= BPE_TRAIN_CHARS:
            return


def prepare_tokenizer(cfg: Config, out_dir: Path, info: DistInfo, plan: Split | None = None) -> Tokenizer:
    """Rank 0 builds (and for bpe, trains) the tokenizer and saves it; the others load that copy once it is
    complete (after the barrier: before it, a file rank 0 is still writing may be read half-written)."""
    tok_dir = out_dir / "tokenizer"
    meta = tok_dir / "tokenizer_meta.json"
    if info.is_main:
        if is_prepared(cfg.data.source):
            install_prepared_tokenizer(cfg, tok_dir)  # the tokenizer the prepared ids come from
        if meta.is_file():
            kind = json.loads(meta.read_text())["kind"]
            wanted = cfg.data.tokenizer if cfg.data.tokenizer in ("byte", "bpe", "gpt2") else "hf"
            if kind != wanted:
                raise UserError(f"{out_dir} already holds a {kind!r} tokenizer but the config asks for "
                                f"{cfg.data.tokenizer!r}: choose another --out")
        else:
            needs_text = cfg.data.tokenizer == "bpe"
            tok = build_tokenizer(cfg.data.tokenizer, _limited_texts(cfg, plan) if needs_text else None,
                                  cfg.data.vocab_size)
            tok.save(tok_dir)
    barrier(info)
    return load_tokenizer(tok_dir)


def model_config(cfg: Config, tok: Tokenizer, process: DiffusionProcess | None = None) -> ModelConfig:
    """The backbone for `process`: causal for the autoregressive baseline, time-conditioned where the
    process needs it (uniform noise), whatever the model section says."""
    fields = asdict(cfg.model)
    if process is not None and process.needs_time_conditioning:
        fields["time_conditioning"] = True
    if process is not None:
        fields.update(process.model_fields())  # e.g. the embedding width of continuous diffusion
    causal = process is not None and process.causal
    return ModelConfig(vocab_size=tok.vocab_size, seq_len=cfg.data.seq_len, causal=causal, **fields)


def make_batches(cfg: Config, tok: Tokenizer, plan: Split | None = None, info: DistInfo | None = None):
    d, info = cfg.data, info or DistInfo()
    if d.packing == "chat":  # (ids, reply mask) batches
        return sft.make_chat_batches(cfg, tok, plan)
    if is_prepared(d.source):
        return prepared_batches(cfg)
    if d.streaming or d.source.startswith("hf:"):  # each rank reads and tokenises its own share of the stream
        return streams.stream_batches(cfg, tok, plan or plan_data_split(cfg), info)
    chunks = pack_tensor(_docs(cfg, "train", plan), tok, d.seq_len, d.packing)
    return ChunkBatches(chunks, cfg.train.batch_size, seed=cfg.train.seed)


def validation_chunks(cfg: Config, tok: Tokenizer, limit: int, plan: Split | None = None) -> torch.Tensor:
    if cfg.data.packing == "chat":  # (ids, reply mask): the bound of the replies given their prompts
        return sft.chat_validation(cfg, tok, plan, limit)
    if is_prepared(cfg.data.source):
        return prepared_validation(cfg, limit)
    rows = []
    for row in iter_chunks(_docs(cfg, "validation", plan), tok, cfg.data.seq_len, cfg.data.packing):
        rows.append(row)
        if len(rows) >= limit:
            break
    if not rows:
        d = cfg.data
        if plan is not None and plan.by_position:
            raise UserError(f"the validation text (the last {d.val_fraction * 100:g}% of each document, "
                            f"{plan.val_chars:,} characters) yields no chunk of {d.seq_len} tokens: raise "
                            "data.val_fraction or lower data.seq_len")
        raise UserError(f"the validation split yields no chunk of {d.seq_len} tokens: raise data.val_fraction, "
                        "add documents or lower data.seq_len")
    return torch.tensor(rows, dtype=torch.long)


# ---- data.source=prepared:DIR (shards written by `textdiffusion prepare`, train/prepare.py) ----

def prepared_plan(cfg: Config) -> Split:
    """The split the prepared folder was made with (for the log), after checking the run's data settings."""
    index = prepared.check_settings(prepared.folder_of(cfg.data.source), asdict(cfg.data))
    return Split(**index["split_plan"])


def install_prepared_tokenizer(cfg: Config, tok_dir: Path) -> None:
    """Copy the prepared folder's tokenizer into the run (once): its ids are the ones in the shards."""
    if not tok_dir.exists():
        shutil.copytree(prepared.folder_of(cfg.data.source) / "tokenizer", tok_dir)


def prepared_batches(cfg: Config) -> ChunkBatches:
    chunks = prepared.PreparedChunks(prepared.folder_of(cfg.data.source), "train")
    return ChunkBatches(chunks, cfg.train.batch_size, seed=cfg.train.seed)


def prepared_validation(cfg: Config, limit: int) -> torch.Tensor:
    return prepared.validation_rows(prepared.folder_of(cfg.data.source), limit)
