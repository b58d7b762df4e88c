"""Edit-based diffusion: DiffusER (Reid, Hellendoorn & Neubig, 2023).

Forward q(x_t | x_{t-1}), t = 1..T (`corrupt_step`): walk x_{t-1} in spans; each span draws an edit type from
E_t = (keep, replace, delete, insert) and a length l ~ Poisson(E_l mean) (a zero-length span is a no-op); KEEP
copies l tokens, REPLACE overwrites l tokens with random ones, DELETE drops l tokens, INSERT writes l random
tokens (and consumes none). x_0 is a window of the training text, so x_t has a length of its own.

Reverse: the alignment of x_t to x_{t-1} (`edits.align`, minimal Levenshtein) is the target. A tagger
p(e | x_t) predicts, per token of x_t, KEEP / DELETE / REPLACE and, per gap, how many tokens to insert; a
generator p(x_{t-1} | x_t, e) reads the canvas those tags make (x_t with DELETEs removed, REPLACE tokens marked,
[MASK] slots for insertions) and predicts the tokens of the REPLACE and INSERT slots. The loss is DiffusER's:
cross-entropy of the tags plus cross-entropy of the generated tokens (not an ELBO). Both are heads of one
backbone (`Transformer` with `edit_tags`): `forward(..., tags=True)` is the tagger, the token head the generator.

Canvas layout (both passes): position 0 is a start sentinel (so the gap before the first token, and the empty
sequence, have a position to carry their insertion count); then one position per token. Tag logits per
position: 3 op classes, then `max_insert + 1` insertion counts (the gap after that position). Rows of a batch
are padded to the longest canvas; padding is excluded from attention as keys and from every loss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..core.errors import UserError
from .alignment import Op, Tags, align, to_tags
from .base import DiffusionProcess, register

N_OPS = 3  # KEEP, DELETE, REPLACE: the ops of a source token (INSERT lives in the gaps)
PLAIN, START, INSERT_SLOT, REPLACE_SLOT = 0, 1, 2, 3  # the model's position marks


def corrupt_step(seq: Sequence[int], rng: np.random.Generator, probs: Sequence[float], mean_length: float,
                 vocab_size: int, forbidden: Sequence[int], max_len: int) -> list[int]:
    """One forward step: x_{t-1} -> x_t by spans of random edits (module notes). At most `max_len` tokens come
    out (insertions past it are dropped); random tokens are uniform over the vocabulary less `forbidden`."""
    if probs[3] >= 1:
        raise UserError("p_insert must be below 1: a forward step that only inserts never ends")
    allowed = np.setdiff1d(np.arange(vocab_size), np.asarray(list(forbidden), dtype=np.int64))
    out: list[int] = []
    pos, n = 0, len(seq)
    while True:
        kind = int(rng.choice(4, p=probs))  # 0 keep, 1 replace, 2 delete, 3 insert
        length = int(rng.poisson(mean_length))
        if kind == 3:
            room = max(0, max_len - len(out) - (n - pos))
            out.extend(int(v) for v in rng.choice(allowed, size=min(length, room)))
        elif pos < n:
            span = seq[pos : pos + length]
            pos += len(span)
            if kind == 0:
                out.extend(int(v) for v in span)
            elif kind == 1:
                for v in span:  # a REPLACE writes a different token (the same one would be a KEEP)
                    new = int(rng.choice(allowed))
                    while new == v and len(allowed) > 1:
                        new = int(rng.choice(allowed))
                    out.append(new)
        if pos >= n and kind != 3:
            break  # the source is consumed; the last draw may still have been a trailing insertion
    return out[:max_len]


@dataclass
class Canvas:
    """A batch of canvases, padded: ids, marks, valid positions [B, N] and, for the tagger, the length of
    each row's source (tokens after the start sentinel)."""

    ids: torch.Tensor
    marks: torch.Tensor
    valid: torch.Tensor

    def attention_mask(self) -> torch.Tensor:
        """[B, 1, N, N] bool: every query attends to the valid keys of its row (padding is never a key)."""
        return self.valid[:, None, None, :].expand(-1, 1, self.valid.shape[1], -1)


def tag_canvas(seqs: Sequence[Sequence[int]], sentinel: int, device=None) -> Canvas:
    """The tagger's input: [start] + x_t per row."""
    rows = [[sentinel, *map(int, s)] for s in seqs]
    marks = [[START] + [PLAIN] * len(s) for s in seqs]
    return _pad(rows, marks, sentinel, device)


def generator_row(src: Sequence[int], tags: Tags, sentinel: int) -> tuple[list[int], list[int]]:
    """The generator's input for one row: ids and marks of [start] + the canvas that `tags` make of `src`
    (DELETEs gone, REPLACE tokens kept but marked, [MASK]-id slots marked INSERT)."""
    ids, marks = [sentinel], [START]
    for g in range(len(src) + 1):
        if g > 0:
            op = tags.ops[g - 1]
            if op == Op.KEEP:
                ids.append(int(src[g - 1]))
                marks.append(PLAIN)
            elif op == Op.REPLACE:
                ids.append(int(src[g - 1]))
                marks.append(REPLACE_SLOT)
        ids.extend([sentinel] * len(tags.inserts[g]))
        marks.extend([INSERT_SLOT] * len(tags.inserts[g]))
    return ids, marks


def _pad(rows: list[list[int]], marks: list[list[int]], pad: int, device) -> Canvas:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mk = torch.zeros((len(rows), width), dtype=torch.long)
    valid = torch.zeros((len(rows), width), dtype=torch.bool)
    for b, (r, m) in enumerate(zip(rows, marks)):
        ids[b, : len(r)] = torch.tensor(r, dtype=torch.long)
        mk[b, : len(m)] = torch.tensor(m, dtype=torch.long)
        valid[b, : len(r)] = True
    return Canvas(ids.to(device), mk.to(device), valid.to(device))


def generator_canvas(rows: list[list[int]], marks: list[list[int]], sentinel: int, device=None) -> Canvas:
    return _pad(rows, marks, sentinel, device)


@register
class Diffuser(DiffusionProcess):
    name = "diffuser"
    default_sampler = "edit"
    bound = False  # the loss is DiffusER's tagger + generator cross-entropy, not a likelihood bound

    def __init__(self, vocab_size: int, mask_id: int, num_steps: int = 10, p_keep: float = 0.6,
                 p_replace: float = 0.2, p_delete: float = 0.1, p_insert: float = 0.1, edit_length: float = 3.0,
                 max_insert: int = 16, crop: bool = True):
        probs = (p_keep, p_replace, p_delete, p_insert)
        if not all(isinstance(p, (int, float)) and not isinstance(p, bool) and p >= 0 for p in probs) \
                or not math.isclose(sum(probs), 1.0, abs_tol=1e-6):
            raise UserError(f"process.p_keep, p_replace, p_delete, p_insert must be numbers >= 0 summing to 1, "
                            f"got {probs}")
        if p_insert >= 1:
            raise UserError("process.p_insert must be below 1 (a step that only inserts never ends)")
        if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
            raise UserError(f"process.num_steps must be an integer >= 1, got {num_steps!r}")
        if not isinstance(max_insert, int) or isinstance(max_insert, bool) or max_insert < 1:
            raise UserError(f"process.max_insert must be an integer >= 1, got {max_insert!r}")
        if not isinstance(edit_length, (int, float)) or isinstance(edit_length, bool) or not edit_length > 0:
            raise UserError(f"process.edit_length (the Poisson mean of an edit's length) must be > 0, "
                            f"got {edit_length!r}")
        if not isinstance(crop, bool):
            raise UserError(f"process.crop must be true or false, got {crop!r}")
        self.vocab_size, self.mask_id = vocab_size, mask_id
        self.num_steps, self.max_insert, self.crop = num_steps, max_insert, crop
        self.probs = tuple(float(p) / sum(probs) for p in probs)
        self.edit_length = float(edit_length)
        self.sentinel = mask_id  # start, insertion slots and padding all read as [MASK] ids; the marks tell them apart

    def config(self) -> dict:
        keep, replace, delete, insert = self.probs
        return {"num_steps": self.num_steps, "p_keep": keep, "p_replace": replace, "p_delete": delete,
                "p_insert": insert, "edit_length": self.edit_length, "max_insert": self.max_insert,
                "crop": self.crop}

    def model_fields(self) -> dict:
        return {"edit_tags": N_OPS + self.max_insert + 1}

    # ---- forward process ------------------------------------------------------------------
    def sample_noise(self, x0, generator=None):
        b = x0.shape[0]
        return {"t": torch.randint(1, self.num_steps + 1, (b,), generator=generator),
                "seed": torch.randint(0, 2**62, (b,), generator=generator)}

    def corrupt(self, x0: Sequence[int], t: int, rng: np.random.Generator, max_len: int) -> tuple[list[int], list[int]]:
        """(x_{t-1}, x_t): t - 1 forward steps from x0, then one more."""
        prev, x = list(x0), list(x0)
        for _ in range(t):
            prev, x = x, corrupt_step(x, rng, self.probs, self.edit_length, self.vocab_size, (self.mask_id,),
                                      max_len)
        return prev, x

    def example(self, row: Sequence[int], t: int, seed: int) -> tuple[list[int], list[int], Tags]:
        """One training example from a chunk: (x_{t-1}, x_t, tags of the alignment x_t -> x_{t-1}).

        The chunk's first L - 1 tokens (room for the start sentinel), or with `crop` a random window of them
        of uniform length in [1, L - 1], so that the model sees canvases of every length."""
        rng = np.random.default_rng(int(seed))
        room = len(row) - 1
        x0 = list(map(int, row[:room]))
        if self.crop:
            n = int(rng.integers(1, room + 1))
            start = int(rng.integers(0, room - n + 1))
            x0 = x0[start : start + n]
        prev, xt = self.corrupt(x0, int(t), rng, room)
        return self.pair_example(prev, xt)

    def pair_example(self, prev: Sequence[int], xt: Sequence[int]) -> tuple[list[int], list[int], Tags]:
        """(x_{t-1}, x_t, tags of the minimal alignment x_t -> x_{t-1}), insertions cut at `max_insert` per gap."""
        prev, xt = [int(v) for v in prev], [int(v) for v in xt]
        tags = to_tags(xt, align(xt, prev))
        for ins in tags.inserts:  # rarely more than max_insert: the tagger's counts stop there
            del ins[self.max_insert :]
        return prev, xt, tags

    # ---- the model's two heads ------------------------------------------------------------
    def time(self, t: torch.Tensor | float, batch: int, device) -> torch.Tensor:
        """The noise level the model sees: step t of T as t / T."""
        return torch.as_tensor(t, dtype=torch.float32, device=device).expand(batch) / self.num_steps

    def tag_log_probs(self, model: nn.Module, canvas: Canvas, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log p(op) [B, N, 3] (KEEP, DELETE, REPLACE; the start sentinel is always KEEP) and log p(insert count)
        [B, N, max_insert + 1] of the gap after each position, float32."""
        logits = model(canvas.ids, t, attn_mask=canvas.attention_mask(), marks=canvas.marks, tags=True).float()
        op = torch.log_softmax(logits[..., :N_OPS], dim=-1)
        start = canvas.marks == START
        keep_only = torch.full_like(op, float("-inf"))
        keep_only[..., Op.KEEP] = 0.0
        op = torch.where(start[..., None], keep_only, op)
        return op, torch.log_softmax(logits[..., N_OPS:], dim=-1)

    def token_log_probs(self, model: nn.Module, canvas: Canvas, t: torch.Tensor) -> torch.Tensor:
        """The generator's log p(token) at every position [B, N, V], float32: [MASK] is never written, and a
        REPLACE slot never writes the token it replaces (that would be a KEEP)."""
        logits = model(canvas.ids, t, attn_mask=canvas.attention_mask(), marks=canvas.marks).float()
        logits[..., self.mask_id] = float("-inf")
        same = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, canvas.ids[..., None], True)
        logits = logits.masked_fill(same & (canvas.marks == REPLACE_SLOT)[..., None], float("-inf"))
        return torch.log_softmax(logits, dim=-1)

    # ---- loss -----------------------------------------------------------------------------
    def nelbo_per_sequence(self, model: nn.Module, x0: torch.Tensor, noise: dict[str, torch.Tensor],
                           loss_mask: torch.Tensor | None = None) -> torch.Tensor:
        """DiffusER's loss per sequence [B], nats: -log p(tags | x_t) - log p(x_{t-1} slots | x_t, tags) at one
        uniformly drawn step t. Not a likelihood bound (`bound = False`); `loss_mask` is not supported."""
        if loss_mask is not None:
            raise UserError("the diffuser process scores whole sequences only (no loss_mask): it has no "
                            "infilling bound")
        rows = x0.cpu().tolist()
        ts = noise["t"].cpu().tolist()
        seeds = noise["seed"].cpu().tolist()
        examples = [self.example(r, t, s) for r, t, s in zip(rows, ts, seeds)]
        return self.examples_loss(model, examples, noise["t"], x0.device)

    def examples_loss(self, model: nn.Module, examples: Sequence[tuple[list[int], list[int], Tags]],
                      t: torch.Tensor, device=None) -> torch.Tensor:
        """DiffusER's loss [B] on given examples (x_{t-1}, x_t, tags of x_t -> x_{t-1}) at steps `t` [B]: the
        training loss of any forward kernel that yields such pairs (`nelbo_per_sequence` draws them from the
        span corruption; benchmarks/edit_compare_train.py from realistic noise)."""
        tv = self.time(t.to(device).float(), len(examples), device)
        # tagger: ops of x_t's tokens and insertion counts of every gap
        tcan = tag_canvas([xt for _, xt, _ in examples], self.sentinel, device)
        op_logp, ins_logp = self.tag_log_probs(model, tcan, tv)
        op_target = torch.zeros_like(tcan.ids)
        ins_target = torch.zeros_like(tcan.ids)
        for b, (_, xt, tags) in enumerate(examples):
            op_target[b, 1 : 1 + len(xt)] = torch.tensor([int(o) for o in tags.ops], dtype=torch.long)
            ins_target[b, : len(xt) + 1] = torch.tensor(tags.insert_counts, dtype=torch.long)
        tokens = tcan.valid & (tcan.marks != START)
        op_nll = -op_logp.gather(-1, op_target[..., None]).squeeze(-1)
        ins_nll = -ins_logp.gather(-1, ins_target[..., None]).squeeze(-1)
        tag_nll = torch.where(tokens, op_nll, 0.0).sum(1) + torch.where(tcan.valid, ins_nll, 0.0).sum(1)
        # generator: the tokens of the REPLACE and INSERT slots of x_{t-1}'s canvas
        gen_rows, gen_marks, gen_targets = [], [], []
        for _, xt, tags in examples:
            ids, marks = generator_row(xt, tags, self.sentinel)
            gen_rows.append(ids)
            gen_marks.append(marks)
            gen_targets.append(_slot_targets(xt, tags))
        gcan = generator_canvas(gen_rows, gen_marks, self.sentinel, device)
        target = torch.zeros_like(gcan.ids)
        for b, tg in enumerate(gen_targets):
            target[b, : len(tg)] = torch.tensor(tg, dtype=torch.long)
        slots = gcan.valid & ((gcan.marks == INSERT_SLOT) | (gcan.marks == REPLACE_SLOT))
        tok_logp = self.token_log_probs(model, gcan, tv)
        gen_nll = -tok_logp.gather(-1, target[..., None]).squeeze(-1)
        return tag_nll + torch.where(slots, gen_nll, 0.0).sum(1)


def _slot_targets(src: Sequence[int], tags: Tags) -> list[int]:
    """The token each position of `generator_row(src, tags)` should hold (the tokens of x_{t-1} with [start])."""
    out = [0]
    for g in range(len(src) + 1):
        if g > 0:
            op = tags.ops[g - 1]
            if op == Op.KEEP:
                out.append(int(src[g - 1]))
            elif op == Op.REPLACE:
                out.append(int(tags.replace[g - 1]))
        out.extend(tags.inserts[g])
    return out
