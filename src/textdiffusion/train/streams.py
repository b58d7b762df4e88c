"""The trainer's streamed data (data.streaming=true or an hf: source): each rank reads and tokenises its own
share of the documents (data/corpus.iter_train_shard) and resumes from its recorded position."""

from __future__ import annotations

from ..data.corpus import Split, iter_train_shard
from ..data.packing import ShardedStreamBatches
from ..data.tokenizers import Tokenizer
from .config import Config
from .distributed import DistInfo, all_gather_objects, all_gather_rows


def stream_batches(cfg: Config, tok: Tokenizer, plan: Split, info: DistInfo) -> ShardedStreamBatches:
    d = cfg.data

    def open_docs(position: dict | None):
        return iter_train_shard(d.source, plan, d.text_field, d.hf_split, info.rank, info.world_size, position)

    return ShardedStreamBatches(open_docs, tok, d.seq_len, d.packing, cfg.train.batch_size, info.rank,
                                info.world_size, lambda rows: all_gather_rows(rows, info),
                                lambda state: all_gather_objects(state, info))
