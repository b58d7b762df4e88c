"""Edit Flows (Havasi et al., 2025): a continuous-time Markov chain over sequences whose jumps are single edits.

The model gives, at time t and for each position i of the canvas [start] + x_t, the rates
    insert token a after i:   u_ins[i, a] = lambda_ins[i] Q_ins[i, a]
    delete token i:           u_del[i]    = lambda_del[i]          (not the start)
    substitute token i by a:  u_sub[i, a] = lambda_sub[i] Q_sub[i, a], a != x_i   (not the start)
Training uses an aligned pair: x0 ~ p0 (the empty sequence, or random tokens) and x1 (data) are aligned into
z0, z1 of equal length over V + {eps} (`aligned_pair`: the minimal Levenshtein alignment, eps for the side an
INSERT or DELETE lacks). Each aligned position jumps from z0_i to z1_i independently at rate
kappa'(t) / (1 - kappa(t)), so z_t_i = z1_i with probability kappa(t) (kappa(t) = t^power); x_t is z_t without eps.
The loss is the paper's Bregman objective (their eq. for L(theta)):
    sum over all edits of x_t of u_theta  -  sum_{i: z_t_i != z1_i} kappa'/(1 - kappa) log u_theta(edit_i | x_t)
where edit_i is the edit that sets z_t_i to z1_i, read on x_t (`edit_targets`). Its minimiser is the rate of each
edit averaged over the alignments consistent with x_t; those rates generate the marginal path p_t (a test checks
the Kolmogorov forward equation by enumeration on a tiny vocabulary).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..core.errors import UserError
from .alignment import Op, align
from .base import DiffusionProcess, register
from .edit import PLAIN, START, tag_canvas

EPS = -1  # the blank of an aligned pair
INS, DEL, SUB = 0, 1, 2


def aligned_pair(x0: Sequence[int], x1: Sequence[int]) -> tuple[list[int], list[int]]:
    """z0, z1 of equal length with EPS where one side has nothing: the minimal alignment of x0 to x1."""
    z0, z1 = [], []
    for _op, tok in _align_with_sources(x0, x1):
        z0.append(tok[0])
        z1.append(tok[1])
    return z0, z1


def _align_with_sources(x0: Sequence[int], x1: Sequence[int]) -> list[tuple[Op, tuple[int, int]]]:
    out, pos = [], 0
    for op, tok in align(x0, x1):
        if op == Op.INSERT:
            out.append((op, (EPS, int(tok))))
            continue
        src = int(x0[pos])
        pos += 1
        out.append((op, (src, EPS if op == Op.DELETE else (src if op == Op.KEEP else int(tok)))))
    return out


def strip(z: Sequence[int]) -> list[int]:
    return [int(v) for v in z if v != EPS]


def edit_targets(zt: Sequence[int], z1: Sequence[int]) -> list[tuple[int, int, int]]:
    """The edits (kind, canvas position, token) that move z_t toward z1, one per differing aligned position, read
    on the canvas [start] + x_t: an insertion goes after the canvas position of the last token before it (0 is the
    start), a deletion or substitution acts on the token's own canvas position (token -1 for a deletion)."""
    out, pos = [], 0  # pos: canvas position of the last non-eps token seen (0 = start)
    for a, b in zip(zt, z1):
        if a == EPS:
            if b != EPS:
                out.append((INS, pos, int(b)))
            continue
        pos += 1
        if b == EPS:
            out.append((DEL, pos, -1))
        elif b != a:
            out.append((SUB, pos, int(b)))
    return out


def apply_edit(x: Sequence[int], kind: int, pos: int, token: int) -> list[int]:
    """x after one edit at canvas position `pos` ([start] + x: token j of x is at position j + 1)."""
    x = list(x)
    if kind == INS:
        return x[:pos] + [token] + x[pos:]
    if kind == DEL:
        return x[: pos - 1] + x[pos:]
    return x[: pos - 1] + [token] + x[pos:]


def bregman_loss(log_ins: torch.Tensor, log_del: torch.Tensor, log_sub: torch.Tensor, canvas: torch.Tensor,
                 valid: torch.Tensor, targets: Sequence[Sequence[tuple[int, int, int]]],
                 weight: torch.Tensor) -> torch.Tensor:
    """Edit Flows' loss per row [B] from log-rates: log_ins [B, N, V], log_del [B, N], log_sub [B, N, V] on canvases
    [B, N] (position 0 the start: no delete or substitute there; substituting a token by itself is no edit), and
    per row the target edits with their weight kappa'/(1 - kappa) [B]."""
    tokens = valid.clone()
    tokens[:, 0] = False
    ids = canvas.clamp(0, log_sub.shape[-1] - 1)  # the start (a [MASK] id) is no token: `tokens` leaves it out
    same = torch.zeros_like(log_sub, dtype=torch.bool).scatter_(-1, ids[..., None], True)
    total = torch.where(valid, log_ins.exp().sum(-1), 0.0).sum(1)
    total = total + torch.where(tokens, log_del.exp(), 0.0).sum(1)
    total = total + torch.where(tokens[..., None] & ~same, log_sub.exp(), 0.0).sum((1, 2))
    flat = [(b, kind, pos, max(tok, 0)) for b, row in enumerate(targets) for kind, pos, tok in row]
    hits = torch.zeros_like(total)
    if flat:
        rows, kinds, pos, tok = (torch.tensor(c, device=total.device) for c in zip(*flat))
        picked = torch.where(kinds == INS, log_ins[rows, pos, tok],
                             torch.where(kinds == DEL, log_del[rows, pos], log_sub[rows, pos, tok]))
        hits = hits.index_add(0, rows, picked)
    return total - weight * hits


@register
class EditFlow(DiffusionProcess):
    name = "edit_flow"
    default_sampler = "edit_flow"
    bound = False  # the Bregman objective is not a likelihood bound

    def __init__(self, vocab_size: int, mask_id: int, source: str = "empty", power: float = 3.0,
                 t_max: float = 0.999, crop: bool = True):
        if source not in ("empty", "random"):
            raise UserError(f"process.source must be empty or random, got {source!r}")
        if not isinstance(power, (int, float)) or isinstance(power, bool) or not power > 0:
            raise UserError(f"process.power (kappa(t) = t^power) must be > 0, got {power!r}")
        if not isinstance(t_max, (int, float)) or not 0 < t_max < 1:
            raise UserError(f"process.t_max must be in (0, 1), got {t_max!r}")
        self.vocab_size, self.mask_id = vocab_size, mask_id
        self.source, self.power, self.t_max, self.crop = source, float(power), float(t_max), bool(crop)
        self.sentinel = mask_id

    @property
    def needs_time_conditioning(self) -> bool:
        return True  # the rates scale with kappa'/(1 - kappa): the model must know t

    def config(self) -> dict:
        return {"source": self.source, "power": self.power, "t_max": self.t_max, "crop": self.crop}

    def model_fields(self) -> dict:
        return {"edit_tags": 3 + self.vocab_size}  # 3 rates, then the insertion logits; the token head substitutes

    def kappa(self, t):
        return t**self.power

    def rate_scale(self, t):
        """kappa'(t) / (1 - kappa(t))."""
        return self.power * t ** (self.power - 1) / (1 - t**self.power)

    def sample_noise(self, x0, generator=None):
        b = x0.shape[0]
        return {"t": torch.rand(b, generator=generator, dtype=torch.float64) * self.t_max,
                "seed": torch.randint(0, 2**62, (b,), generator=generator)}

    def draw_source(self, x1: Sequence[int], rng: np.random.Generator) -> list[int]:
        if self.source == "empty":
            return []
        allowed = [v for v in range(self.vocab_size) if v != self.mask_id]
        return [int(v) for v in rng.choice(allowed, size=len(x1))]

    def example(self, row: Sequence[int], t: float, seed: int) -> tuple[list[int], list[tuple[int, int, int]]]:
        """(x_t, target edits) for one chunk: x1 is its first L - 1 tokens (or a random window of them)."""
        rng = np.random.default_rng(int(seed))
        room = len(row) - 1
        x1 = [int(v) for v in row[:room]]
        if self.crop:
            n = int(rng.integers(1, room + 1))
            start = int(rng.integers(0, room - n + 1))
            x1 = x1[start : start + n]
        z0, z1 = aligned_pair(self.draw_source(x1, rng), x1)
        flip = rng.random(len(z0)) < self.kappa(t)
        zt = [b if f else a for a, b, f in zip(z0, z1, flip)]
        return strip(zt), edit_targets(zt, z1)

    def log_rates(self, model: nn.Module, seqs: Sequence[Sequence[int]], t: torch.Tensor, device=None):
        """(log u_ins [B, N, V], log u_del [B, N], log u_sub [B, N, V], canvas) for the canvases [start] + x."""
        can = tag_canvas(seqs, self.sentinel, device)
        t = t.to(device)
        raw = model(can.ids, t.float(), attn_mask=can.attention_mask(), marks=can.marks, tags=True).float()
        sub_logits = model(can.ids, t.float(), attn_mask=can.attention_mask(), marks=can.marks).float()
        scale = torch.log(self.rate_scale(t.double())).float()[:, None]
        lam = torch.nn.functional.softplus(raw[..., :3]).clamp_min(1e-12).log() + scale[..., None]
        ins_logits = raw[..., 3:].clone()
        ins_logits[..., self.mask_id] = float("-inf")
        sub_logits[..., self.mask_id] = float("-inf")
        log_ins = lam[..., INS, None] + torch.log_softmax(ins_logits, -1)
        log_sub = lam[..., SUB, None] + torch.log_softmax(sub_logits, -1)
        return log_ins, lam[..., DEL], log_sub, can

    def nelbo_per_sequence(self, model: nn.Module, x0: torch.Tensor, noise: dict[str, torch.Tensor],
                           loss_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The Bregman loss per sequence at one uniformly drawn t (not a likelihood bound)."""
        if loss_mask is not None:
            raise UserError("the edit_flow process scores whole sequences only (no loss_mask)")
        examples = [self.example(r, float(t), int(s)) for r, t, s in
                    zip(x0.cpu().tolist(), noise["t"].cpu().tolist(), noise["seed"].cpu().tolist())]
        t = noise["t"].to(x0.device)
        log_ins, log_del, log_sub, can = self.log_rates(model, [x for x, _ in examples], t, x0.device)
        weight = self.rate_scale(t.double()).float()
        return bregman_loss(log_ins, log_del, log_sub, can.ids, can.valid, [e for _, e in examples], weight)


__all__ = ["EPS", "EditFlow", "aligned_pair", "apply_edit", "bregman_loss", "edit_targets", "strip", "PLAIN", "START"]
