"""Decoding an edit model (DiffusER): revision steps of tag -> apply -> generate, sampled or by 2-D beam search.

Each revision step runs the tagger on the current sequence (KEEP / DELETE / REPLACE per token, an insertion
count per gap), applies the tags (`processes.edit.generator_row`) and runs the generator on the slots they
open: two forward passes per step. The sequence's length changes freely. A run starts from
  - `null`: the empty sequence (the first step can only insert),
  - `random`: random tokens, as many as the input row has positions,
  - `input`: the input row itself (a draft, a source text, an AR model's output); [MASK] ids in it are slots
    that one generator pass fills first,
  - `auto`: `random` for a row of only [MASK] (what `Pipeline.generate` passes: its length sets the random
    start's), `input` otherwise. Random tokens are the start the forward process ends near; the empty
    sequence is rarely reached by it, so a model trained with the defaults seldom writes from `null`.

2-D beam search (DiffusER sec. 3.3), used when `beam` > 1 or `revisions` > 1: within a revision step each
hypothesis proposes its `beam` best (tags, tokens) candidates by the model's log-probability
log p(tags | x) + log p(tokens | x, tags) (the exact top `beam` tag assignments, each with its exact top `beam`
fillings, the best `beam` of those kept); across steps the `revisions` best hypotheses by the trajectory's summed
log-probability go on. It is deterministic (temperature and top_p are not used) and returns the best trajectory
it kept; when `beam` and `revisions` cover every candidate it is the exact best trajectory (a test enumerates).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..core.errors import UserError
from ..processes.alignment import Op, Tags, from_tags
from ..processes.edit import (
    INSERT_SLOT,
    PLAIN,
    REPLACE_SLOT,
    START,
    Diffuser,
    generator_canvas,
    generator_row,
    tag_canvas,
)
from .base import Frame, FrameRecorder, SampleResult, sample_categorical, select_from_logits

STARTS = ("auto", "input", "null", "random")


@dataclass
class EditConfig:
    steps: int = 10  # revision steps (two forward passes each); step k of `steps` shows the model t = k / steps
    start: str = "auto"  # auto | input | null | random (module notes)
    temperature: float = 1.0  # for tags and tokens; 0 = greedy
    top_p: float = 1.0
    beam: int = 1  # b: candidates per hypothesis within a revision step (2-D beam search when b or r > 1)
    revisions: int = 1  # r: hypotheses kept across revision steps
    t_start: float = 1.0  # the noise level the run starts at, as a fraction of the process's T (below 1 for a draft
    # with little noise: step k of `steps` shows the model t = t_start * k / steps; only time-conditioned models read t)
    min_edits: int = 0  # 1: greedy tags conditioned on at least one edit per step (`at_least_one_edit`)


@dataclass
class Candidate:
    """One hypothesis: its sequence, the trajectory's summed log-probability, and the frames that led to it."""

    seq: list[int]
    score: float
    history: list[tuple[list[int], list | None]]  # (sequence, edits from the previous one) per step


def _check(process, cfg: EditConfig) -> None:
    if not isinstance(process, Diffuser):
        raise UserError(f"sampler 'edit' runs edit models (process 'diffuser'), not a {process.name!r} model")
    if cfg.start not in STARTS:
        raise UserError(f"start must be one of {', '.join(STARTS)}, got {cfg.start!r}")
    if not 0 < cfg.t_start <= 1:
        raise UserError(f"t_start must be in (0, 1], got {cfg.t_start}")
    if cfg.beam < 1 or cfg.revisions < 1:
        raise UserError(f"beam and revisions must be >= 1, got beam={cfg.beam}, revisions={cfg.revisions}")
    if cfg.min_edits not in (0, 1):
        raise UserError(f"min_edits must be 0 or 1, got {cfg.min_edits!r}")
    if cfg.min_edits and (cfg.temperature != 0 or cfg.beam > 1 or cfg.revisions > 1):
        raise UserError("min_edits=1 is a greedy rule: use it with temperature=0 and no beam")


def _initial(x: torch.Tensor, cfg: EditConfig, process: Diffuser, max_len: int,
             generator: torch.Generator | None) -> list[list[int]]:
    rows = []
    for row in x.tolist():
        start = cfg.start
        if start == "auto":
            start = "random" if all(v == process.mask_id for v in row) else "input"
        if start == "null":
            rows.append([])
        elif start == "random":
            allowed = torch.tensor([v for v in range(process.vocab_size) if v != process.mask_id])
            pick = torch.randint(0, len(allowed), (min(len(row), max_len),), generator=generator, device="cpu")
            rows.append(allowed[pick].tolist())
        else:
            if len(row) > max_len:
                raise UserError(f"the input is {len(row)} tokens; an edit model of length {max_len + 1} edits at "
                                f"most {max_len}: shorten it")
            rows.append([int(v) for v in row])
    return rows


def _padded(seqs: Sequence[Sequence[int]], pad: int) -> torch.Tensor:
    width = max(1, max(len(s) for s in seqs))
    out = torch.full((len(seqs), width), pad, dtype=torch.long)
    for b, s in enumerate(seqs):
        out[b, : len(s)] = torch.tensor(list(s), dtype=torch.long)
    return out


def _fill_masks(model, process: Diffuser, seqs: list[list[int]], t, cfg: EditConfig, device,
                generator) -> tuple[list[list[int]], int]:
    """Fill [MASK] ids of input rows with one generator pass (they are INSERT slots)."""
    if not any(process.mask_id in s for s in seqs):
        return seqs, 0
    marks = [[START] + [INSERT_SLOT if v == process.mask_id else PLAIN for v in s] for s in seqs]
    can = generator_canvas([[process.sentinel, *s] for s in seqs], marks, process.sentinel, device)
    logp = process.token_log_probs(model, can, process.time(t, len(seqs), device))
    drawn = sample_categorical(select_from_logits(logp, cfg.temperature, cfg.top_p), generator).cpu()
    return [[int(drawn[b, i + 1]) if v == process.mask_id else v for i, v in enumerate(s)]
            for b, s in enumerate(seqs)], 1


def _trim_inserts(counts: list[int], n_kept: int, max_len: int) -> list[int]:
    """Drop insertions from the right until the new sequence fits in `max_len` tokens."""
    over = n_kept + sum(counts) - max_len
    for g in range(len(counts) - 1, -1, -1):
        if over <= 0:
            break
        cut = min(over, counts[g])
        counts[g] -= cut
        over -= cut
    return counts


def _sample_step(model, process: Diffuser, seqs: list[list[int]], t: float, cfg: EditConfig, device, generator,
                 max_len: int) -> tuple[list[list[int]], list[list]]:
    b = len(seqs)
    tv = process.time(t, b, device)
    can = tag_canvas(seqs, process.sentinel, device)
    op_logp, ins_logp = process.tag_log_probs(model, can, tv)
    ops = sample_categorical(select_from_logits(op_logp, cfg.temperature, cfg.top_p), generator).cpu()
    counts = sample_categorical(select_from_logits(ins_logp, cfg.temperature, cfg.top_p), generator).cpu()
    all_tags, rows, marks = [], [], []
    for i, s in enumerate(seqs):
        if cfg.min_edits:
            at_least_one_edit(op_logp[i].cpu(), ins_logp[i].cpu(), len(s), ops[i], counts[i])
        row_ops = [Op(int(o)) for o in ops[i, 1 : len(s) + 1]]
        kept = sum(o != Op.DELETE for o in row_ops)
        row_counts = _trim_inserts([int(c) for c in counts[i, : len(s) + 1]], kept, max_len)
        tags = Tags(row_ops, [None] * len(s), [[process.sentinel] * c for c in row_counts])
        ids, mk = generator_row(s, tags, process.sentinel)
        all_tags.append(tags)
        rows.append(ids)
        marks.append(mk)
    gcan = generator_canvas(rows, marks, process.sentinel, device)
    logp = process.token_log_probs(model, gcan, tv)
    drawn = sample_categorical(select_from_logits(logp, cfg.temperature, cfg.top_p), generator).cpu()
    new, edits = [], []
    for i, (s, tags) in enumerate(zip(seqs, all_tags)):
        tokens = [int(v) for v in drawn[i, : len(rows[i])]]
        filled = _fill_tags(s, tags, marks[i], tokens)
        new.append(_apply(s, filled))
        edits.append(from_tags(s, filled))
    return new, edits


def at_least_one_edit(op_logp: torch.Tensor, ins_logp: torch.Tensor, n: int, ops: torch.Tensor,
                      counts: torch.Tensor) -> None:
    """Make the greedy tags of one row [start] + n tokens (`ops`, `counts` [N], changed in place) the most probable
    assignment with at least one edit, under the tagger's factorised log p(op) [N, 3] and log p(count) [N, C].

    A forward step always edits (DiffusER's x_t differs from x_{t-1}), but each position's own argmax can still be
    KEEP / 0 everywhere when the model is unsure WHERE the edit is. The best assignment with an edit then differs
    from the argmax at exactly one position (a second change only lowers the summed log-probability): the one
    whose best non-KEEP op, or best count above 0, loses least against its KEEP / 0."""
    if bool((ops[1 : n + 1] != Op.KEEP).any()) or bool((counts[: n + 1] != 0).any()):
        return
    best, where = float("-inf"), None
    for p in range(1, n + 1):
        for op in (Op.DELETE, Op.REPLACE):
            gain = float(op_logp[p, op] - op_logp[p, Op.KEEP])
            if gain > best:
                best, where = gain, ("op", p, int(op))
    for p in range(n + 1):
        c = int(ins_logp[p, 1:].argmax()) + 1
        gain = float(ins_logp[p, c] - ins_logp[p, 0])
        if gain > best:
            best, where = gain, ("count", p, c)
    if where is not None and best > float("-inf"):
        kind, p, value = where
        (ops if kind == "op" else counts)[p] = value


def _fill_tags(src: Sequence[int], tags: Tags, marks: list[int], tokens: list[int]) -> Tags:
    """`tags` with the generated tokens written into its REPLACE and INSERT slots (canvas order)."""
    slot_tokens = iter(tok for tok, m in zip(tokens, marks) if m in (INSERT_SLOT, REPLACE_SLOT))
    inserts: list[list[int]] = []
    replace: list[int | None] = []
    for g in range(len(src) + 1):
        if g > 0:
            replace.append(next(slot_tokens) if tags.ops[g - 1] == Op.REPLACE else None)
        inserts.append([next(slot_tokens) for _ in tags.inserts[g]])
    return Tags(list(tags.ops), replace, inserts)


def _apply(src: Sequence[int], tags: Tags) -> list[int]:
    out = list(tags.inserts[0])
    for i, tok in enumerate(src):
        if tags.ops[i] == Op.KEEP:
            out.append(int(tok))
        elif tags.ops[i] == Op.REPLACE:
            out.append(int(tags.replace[i]))
        out.extend(tags.inserts[i + 1])
    return out


def k_best(options: Sequence[Sequence[tuple[float, object]]], k: int) -> list[tuple[float, tuple]]:
    """The `k` best ways to pick one option per slot, by summed score: exact, since a prefix of a top-k
    assignment is a top-k prefix (else k better prefixes with its suffix would beat it)."""
    beam: list[tuple[float, tuple]] = [(0.0, ())]
    for opts in options:
        best = heapq.nlargest(k, opts, key=lambda o: o[0])
        beam = heapq.nlargest(k, ((s + so, ch + (o,)) for s, ch in beam for so, o in best), key=lambda z: z[0])
    return beam


def _beam_step(model, process: Diffuser, hyps: list[Candidate], t: float, cfg: EditConfig, device,
               max_len: int) -> tuple[list[Candidate], int]:
    """One revision step of the 2-D beam: every hypothesis's `beam` best candidates, then the best `revisions`."""
    tv = process.time(t, len(hyps), device)
    can = tag_canvas([h.seq for h in hyps], process.sentinel, device)
    op_logp, ins_logp = (v.double().cpu() for v in process.tag_log_probs(model, can, tv))
    finite = float("-inf")
    proposals = []  # (hypothesis, tag score, tags, canvas ids, marks)
    for i, h in enumerate(hyps):
        n = len(h.seq)
        per_position = []
        for p in range(n + 1):
            ops = [Op.KEEP] if p == 0 else [Op.KEEP, Op.DELETE, Op.REPLACE]
            opts = [(float(op_logp[i, p, o] + ins_logp[i, p, c]), (o, c)) for o in ops
                    for c in range(ins_logp.shape[-1])]
            per_position.append([o for o in opts if o[0] > finite])
        seen = set()
        for score, choice in k_best(per_position, cfg.beam):
            row_ops = [Op(o) for o, _ in choice[1:]]
            counts = _trim_inserts([c for _, c in choice], sum(o != Op.DELETE for o in row_ops), max_len)
            if counts != [c for _, c in choice]:  # past the model's length: the trimmed tags, scored as they are
                choice = tuple((o, c) for (o, _), c in zip(choice, counts))
                score = sum(float(op_logp[i, p, o] + ins_logp[i, p, c]) for p, (o, c) in enumerate(choice))
            if choice in seen:
                continue
            seen.add(choice)
            tags = Tags(row_ops, [None] * n, [[process.sentinel] * c for c in counts])
            ids, marks = generator_row(h.seq, tags, process.sentinel)
            proposals.append((i, score, tags, ids, marks))
    gcan = generator_canvas([p[3] for p in proposals], [p[4] for p in proposals], process.sentinel, device)
    gt = process.time(t, len(proposals), device)
    logp = process.token_log_probs(model, gcan, gt).double().cpu()
    per_hyp: dict[int, list[Candidate]] = {}
    for j, (i, tag_score, tags, ids, marks) in enumerate(proposals):
        slots = [q for q, m in enumerate(marks) if m in (INSERT_SLOT, REPLACE_SLOT)]
        options = []
        for q in slots:
            top = torch.topk(logp[j, q], min(cfg.beam, logp.shape[-1]))
            options.append([(float(s), int(v)) for s, v in zip(top.values, top.indices) if s > finite])
        for fill_score, fill in k_best(options, cfg.beam):
            tokens = list(ids)
            for q, v in zip(slots, fill):
                tokens[q] = v
            filled = _fill_tags(hyps[i].seq, tags, marks, tokens)
            seq = _apply(hyps[i].seq, filled)
            total = hyps[i].score + tag_score + fill_score
            per_hyp.setdefault(i, []).append(Candidate(seq, total, [*hyps[i].history,
                                                                    (seq, from_tags(hyps[i].seq, filled))]))
    pool = [c for cands in per_hyp.values() for c in heapq.nlargest(cfg.beam, cands, key=lambda c: c.score)]
    return heapq.nlargest(cfg.revisions, pool, key=lambda c: c.score), 2


def revision_times(process: Diffuser, steps: int, t_start: float = 1.0) -> list[float]:
    """The model's step for each of `steps` revision steps: T * t_start * k / steps for k = steps, ..., 1."""
    return [process.num_steps * t_start * k / steps for k in range(steps, 0, -1)]


@torch.no_grad()
def beam_search(model: nn.Module, process: Diffuser, seq: Sequence[int], cfg: EditConfig) -> list[Candidate]:
    """2-D beam search from `seq` over `cfg.steps` revision steps: the final hypotheses, best first."""
    _check(process, cfg)
    device = next(model.parameters()).device
    hyps = [Candidate(list(seq), 0.0, [(list(seq), None)])]
    for t in revision_times(process, cfg.steps, cfg.t_start):
        hyps, _ = _beam_step(model, process, hyps, t, cfg, device, model.cfg.seq_len - 1)
    return hyps


@torch.no_grad()
def edit_sample(model: nn.Module, process: Diffuser, x: torch.Tensor, cfg: EditConfig,
                generator: torch.Generator | None = None, record_frames: bool = False,
                on_step: Callable[[Frame], None] | None = None) -> SampleResult:
    """Run `cfg.steps` revision steps on each row of `x` [B, L] (module notes). The result's ids are the final
    sequences padded with [MASK] ids to the longest (decode with mask_char=None); each frame carries the
    edits that led to it from the previous frame (`Frame.edits`)."""
    _check(process, cfg)
    device = next(model.parameters()).device
    max_len = model.cfg.seq_len - 1  # the start sentinel takes one position
    record = FrameRecorder(record_frames, on_step)
    seqs = _initial(x.cpu(), cfg, process, max_len, generator)
    seqs, nfe = _fill_masks(model, process, seqs, process.num_steps * cfg.t_start, cfg, device, generator)
    times = revision_times(process, cfg.steps, cfg.t_start)
    if cfg.beam > 1 or cfg.revisions > 1:
        finals, histories = [], []
        for s in seqs:
            best = beam_search(model, process, s, cfg)[0]
            nfe += 2 * cfg.steps
            finals.append(best.seq)
            histories.append(best.history)
        for k in range(cfg.steps + 1):
            rows = [h[k] for h in histories]
            _record(record, k, cfg.steps, [r[0] for r in rows], [r[1] for r in rows], process.mask_id)
        return SampleResult(_padded(finals, process.mask_id), nfe, record.frames)
    _record(record, 0, cfg.steps, seqs, None, process.mask_id)
    for k, t in enumerate(times, start=1):
        seqs, edits = _sample_step(model, process, seqs, t, cfg, device, generator, max_len)
        nfe += 2
        _record(record, k, cfg.steps, seqs, edits, process.mask_id)
    return SampleResult(_padded(seqs, process.mask_id), nfe, record.frames)


def _record(record: FrameRecorder, k: int, steps: int, seqs, edits, pad: int) -> None:
    if not record.record and record.on_step is None:
        return
    frame = Frame(step=k, t=1.0 - k / steps, ids=_padded(seqs, pad),
                  edits=None if edits is None or all(e is None for e in edits) else edits)
    if record.record:
        record.frames.append(frame)
    if record.on_step is not None:
        record.on_step(frame)

