"""Supervised fine-tuning on conversations: LLaDA's recipe (Nie et al., 2025, Sec. 2.3 and App. B.1).

`data.packing=chat` with `data.source` a JSONL file of conversations (see `api/chat.py`) turns every assistant
message into one row of `data.seq_len` tokens:

    [prompt: the conversation before it + the generation prompt] [reply] [EOS] [EOS] ... [EOS]

* the prompt is never noised: it is the clean context (`loss_mask` = the reply and its [EOS] padding);
* the [EOS] padding is part of the reply, scored like it, so the model learns where to stop;
* the loss is normalised by the reply length (with its padding) per row, then averaged over rows:

      L_SFT = (1/B) sum_b (1/A_b) E_t [ w(t) sum_{l masked, l >= P_b} -log p_theta(x0_l | prompt_b, x_t) ]

  (LLaDA eq. 5; w(t) = 1/t for the log-linear schedule, here the process's own NELBO weight and t_min term).

A row needs the prompt, the reply and at least one [EOS] to fit; longer examples are dropped and counted.
The split is by conversation, by the seeded hash of the corpus (`data.val_fraction`, `data.split_seed`); a
file too small for that gets its last conversations as validation.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..api.chat import DEFAULT_TEMPLATE, TEMPLATE_FILE, find_chat_template, read_conversations, render, turns
from ..core.errors import UserError
from ..data.corpus import is_validation
from ..data.packing import ChunkBatches
from ..data.tokenizers import Tokenizer
from ..processes.base import DiffusionProcess, LossOutput

CHAT_PROCESSES = ("masked", "block", "autoregressive")  # processes whose bound takes a loss_mask as clean context


@dataclass(frozen=True)
class ChatSplit:
    """Which conversations of the file are validation (indices), and how that was decided."""

    conversations: int
    validation: tuple[int, ...]
    by_hash: bool
    val_fraction: float
    seed: int

    @property
    def by_position(self) -> bool:  # read by the trainer's messages about an empty validation split
        return False

    def describe(self, source: str) -> str:
        how = (f"by a seeded hash (data.val_fraction={self.val_fraction:g}, data.split_seed={self.seed})"
               if self.by_hash else "its last ones, as the hash put every conversation on one side")
        return f"validation: {len(self.validation):,} of {self.conversations:,} conversations of {source}, {how}"


def check_chat_config(cfg) -> None:
    d = cfg.data
    if cfg.process.name not in CHAT_PROCESSES:
        raise UserError(f"data.packing=chat trains {', '.join(CHAT_PROCESSES)} models, not process "
                        f"{cfg.process.name!r}: set process.name=masked")
    if d.source.startswith("hf:") or Path(d.source).suffix != ".jsonl" or not Path(d.source).is_file():
        raise UserError(f"data.packing=chat reads a .jsonl file of conversations, got data.source={d.source!r}: "
                        "write one {\"messages\": [...]} per line")


def plan_chat_split(cfg) -> ChatSplit:
    check_chat_config(cfg)
    d = cfg.data
    n = len(read_conversations(d.source))
    val = tuple(i for i in range(n) if is_validation(f"{d.source}:{i}", d.split_seed, d.val_fraction))
    if 0 < len(val) < n:
        return ChatSplit(n, val, True, d.val_fraction, d.split_seed)
    if n < 2:
        raise UserError(f"{d.source} holds {n} conversation: training and validation need at least 2")
    k = min(n - 1, max(1, math.ceil(n * d.val_fraction)))
    return ChatSplit(n, tuple(range(n - k, n)), False, d.val_fraction, d.split_seed)


def conversations(cfg, split: ChatSplit, part: str) -> list[list[dict]]:
    val = set(split.validation)
    return [c for i, c in enumerate(read_conversations(cfg.data.source)) if (i in val) == (part == "validation")]


def training_texts(cfg, split: ChatSplit) -> Iterator[str]:
    """The training conversations as text (our default template), for training a BPE on them."""
    for conversation in conversations(cfg, split, "train"):
        yield render(DEFAULT_TEMPLATE, conversation, False)


def template_for(cfg) -> str | None:
    """The chat template of the tokenizer folder a config trains with (None: our default)."""
    return None if cfg.data.tokenizer in ("byte", "bpe", "gpt2") else find_chat_template(cfg.data.tokenizer)


def chat_rows(convs: list[list[dict]], tokenizer: Tokenizer, seq_len: int, template: str | None = None) \
        -> tuple[torch.Tensor, torch.Tensor, int]:
    """(ids [N, seq_len], reply mask [N, seq_len] bool, examples dropped as too long): one row per assistant
    message, prompt + reply + [EOS] padding to seq_len (at least one [EOS])."""
    rows, masks, dropped = [], [], 0
    for conversation in convs:
        for prompt, reply in turns(tokenizer, conversation, template):
            if len(prompt) + len(reply) + 1 > seq_len:
                dropped += 1
                continue
            rows.append(prompt + reply + [tokenizer.eos_id] * (seq_len - len(prompt) - len(reply)))
            masks.append([False] * len(prompt) + [True] * (seq_len - len(prompt)))
    ids = torch.tensor(rows, dtype=torch.long).view(-1, seq_len)
    return ids, torch.tensor(masks, dtype=torch.bool).view(-1, seq_len), dropped


def _rows_or_error(cfg, tokenizer: Tokenizer, split: ChatSplit, part: str) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask, dropped = chat_rows(conversations(cfg, split, part), tokenizer, cfg.data.seq_len, template_for(cfg))
    if len(ids) == 0:
        raise UserError(f"no {part} example of {cfg.data.source} fits in data.seq_len={cfg.data.seq_len} tokens "
                        f"with its prompt and one [EOS] ({dropped} too long): raise data.seq_len")
    if dropped:
        print(f"data: {dropped} {part} replies dropped: prompt + reply + [EOS] exceed {cfg.data.seq_len} tokens",
              flush=True)
    return ids, mask


class ChatBatches:
    """Global batches of (ids, reply mask), reshuffled each epoch; resumable like `ChunkBatches`."""

    def __init__(self, ids: torch.Tensor, mask: torch.Tensor, global_batch: int, seed: int = 0):
        self.inner = ChunkBatches(torch.stack([ids, mask.long()], dim=1), global_batch, seed=seed)

    def next_global(self) -> tuple[torch.Tensor, torch.Tensor]:
        both = self.inner.next_global()
        return both[:, 0], both[:, 1].bool()

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state)


def make_chat_batches(cfg, tokenizer: Tokenizer, split: ChatSplit) -> ChatBatches:
    ids, mask = _rows_or_error(cfg, tokenizer, split, "train")
    if cfg.train.batch_size > len(ids):
        raise UserError(f"train.batch_size {cfg.train.batch_size} is larger than the {len(ids)} training replies: "
                        "lower train.batch_size or add conversations")
    return ChatBatches(ids, mask, cfg.train.batch_size, seed=cfg.train.seed)


def chat_validation(cfg, tokenizer: Tokenizer, split: ChatSplit, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask = _rows_or_error(cfg, tokenizer, split, "validation")
    return ids[:limit], mask[:limit]


def sft_loss(process: DiffusionProcess, model: nn.Module, x0: torch.Tensor, noise: dict[str, torch.Tensor],
             reply: torch.Tensor) -> LossOutput:
    """LLaDA's SFT loss summed over rows: each row's NELBO of its reply given its clean prompt, divided by the
    reply length; `n_tokens` is the number of rows, so `.mean` is L_SFT (module notes)."""
    per_row = process.nelbo_per_sequence(model, x0, noise, reply)
    return LossOutput(total=(per_row / reply.sum(1).clamp_min(1)).sum(), n_tokens=x0.shape[0])


def save_chat_template(cfg, folder: Path) -> None:
    """Keep the tokenizer folder's chat template beside a model trained with it (our default needs no file)."""
    template = template_for(cfg)
    if template is not None:
        (Path(folder) / TEMPLATE_FILE).write_text(template, encoding="utf-8")
