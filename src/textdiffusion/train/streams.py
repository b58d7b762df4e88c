"""The trainer's streamed data (data.streaming=true or an hf: source): each rank reads and tokenises its own
share of the documents (data/shares.py: its own files of an hf: stream where they split evenly) and resumes from
its recorded position; data.num_workers > 0 tokenises the share in DataLoader worker processes
(data/workers.py) with the very same batches and the same resumable state."""

from __future__ import annotations

from functools import partial

from ..data.corpus import Split
from ..data.packing import ShardedStreamBatches
from ..data.shares import describe_hf_share, iter_train_shard
from ..data.tokenizers import Tokenizer
from ..data.workers import Share, open_encoded
from .config import Config
from .distributed import DistInfo, all_gather_objects, all_gather_rows


def stream_batches(cfg: Config, tok: Tokenizer, plan: Split, info: DistInfo) -> ShardedStreamBatches:
    d = cfg.data
    share = Share(d.source, plan, d.text_field, d.hf_split, info.rank, info.world_size)
    if info.is_main:  # once, for the log
        line = describe_hf_share(d.source, d.hf_split, info.world_size)
        if line:
            print(line, flush=True)

    def open_docs(position: dict | None):
        return iter_train_shard(d.source, plan, d.text_field, d.hf_split, info.rank, info.world_size, position)

    open_ids = partial(open_encoded, share, tok, d.num_workers) if d.num_workers else None
    return ShardedStreamBatches(open_docs, tok, d.seq_len, d.packing, cfg.train.batch_size, info.rank,
                                info.world_size, lambda rows: all_gather_rows(rows, info),
                                lambda state: all_gather_objects(state, info), open_ids=open_ids)
