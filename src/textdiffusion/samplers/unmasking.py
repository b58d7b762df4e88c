"""The loop that every block-wise masked sampler shares: reveal the [MASK]s of one block at a time.

A sampler is two choices:

* a **rule** that decides, each step, which masked positions of the block to reveal:
  - "ancestral": MDLM's reverse step on a per-block time grid -- each masked token is revealed with
    probability (alpha_s - alpha_t)/(1 - alpha_t) (MDLM eq. 7), the last step reveals the rest;
  - "low_confidence" / "random": LLaDA (Nie et al., 2025, Alg. 4-5) -- a fixed number of tokens per
    step (n // steps, the remainder in the first steps): those the model is most sure of, or random;
  - "threshold": Fast-dLLM (Wu et al., 2025, Sec. 3.3) -- every token whose confidence exceeds the
    threshold, and always the most confident one, so threshold 1.0 reveals one token per step.
  - "dilated": a fixed dyadic order in the spirit of DUS (Luxembourg et al., 2025, "Plan for Speed:
    Dilated Scheduling for Masked Diffusion LMs"): position 0 of the block, then its middle, then the
    middles of the halves, ..., then every odd position -- ceil(log2 n) + 1 passes for a block of n. The
    tokens revealed together are never adjacent: a revealed token lies between any two of them, so the
    parallel draw is exact whenever tokens depend on each other only through their neighbours (a
    first-order Markov chain), and only long-range dependence is cut.
* a **view** that computes the block's logits: the whole sequence (`FullView`), or Fast-dLLM's
  approximate prefix / dual KV caches refreshed at each block start (`PrefixCacheView`,
  `DualCacheView`), or, for block diffusion, the exact cache of finished blocks (in `samplers.block`).

Values are drawn from the float64 categorical (`select_from_logits` + `sample_categorical`). The
confidence that ranks positions (and meets the threshold) is one of `SCORES`, all on the untempered softmax:
  - "sampled": the model's probability of the drawn value (LLaDA, Fast-dLLM);
  - "top": the probability of the most likely value (MaskGIT; Dream's "maskgit_plus");
  - "margin": the top probability minus the second (Dream's "topk_margin");
  - "entropy": exp(-H) of the position's distribution, in (0, 1] (Dream's "entropy", made a probability-like
    number so that one threshold scale serves every score).
"sampled" ranks by the drawn value itself, so a position is kept more often when its draw was a likely
value: the revealed tokens lean to the mode and the text loses entropy. The other three depend only on
the logits, so each revealed value is an unbiased draw from the model's (tempered) distribution; with
exact conditionals and one token per step they sample the data law exactly, in whatever order they pick.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..core.errors import UserError
from .base import FrameRecorder, sample_categorical, select_from_logits, store_rows

RULES = ("ancestral", "low_confidence", "random", "threshold", "dilated")
SCORES = ("sampled", "top", "margin", "entropy")


@dataclass
class Rule:
    kind: str = "low_confidence"
    steps: int = 16  # steps per block (unused by "threshold", which runs until the block is full, and "dilated")
    threshold: float = 0.9
    temperature: float = 1.0
    top_p: float = 1.0
    score: str = "sampled"  # what ranks positions: one of SCORES

    @property
    def fixed_steps(self) -> bool:
        """Whether `steps` sets the passes per block ("threshold" runs until the block is full, "dilated" takes
        ceil(log2 n) + 1)."""
        return self.kind not in ("threshold", "dilated")

    def check(self) -> None:
        if self.kind not in RULES:
            raise UserError(f"unknown unmasking rule {self.kind!r}: choose one of {', '.join(RULES)}")
        if self.score not in SCORES:
            raise UserError(f"unknown confidence score {self.score!r}: choose one of {', '.join(SCORES)}")
        if not isinstance(self.steps, int) or self.steps <= 0:
            raise UserError(f"steps must be a positive integer, got {self.steps!r}")
        if not 0.0 <= self.threshold <= 1.0:
            raise UserError(f"threshold must be in [0, 1], got {self.threshold}")
        if self.temperature < 0:
            raise UserError(f"temperature must be >= 0 (0 means greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"top_p must be in (0, 1], got {self.top_p}")


def reveal_counts(n_masked: torch.Tensor, steps: int) -> torch.Tensor:
    """LLaDA's schedule, [B, steps]: n // steps tokens per step, one more in the first n % steps."""
    base, rest = n_masked // steps, n_masked % steps
    extra = torch.arange(steps, device=n_masked.device)[None, :] < rest[:, None]
    return base[:, None] + extra.long()


def dilation_levels(n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """[n] the pass (0 .. ceil(log2 n)) at which the "dilated" rule reveals each position of a block.

    Position j > 0 is an odd multiple of 2**z (z trailing zeros) and goes at pass m - z, m = ceil(log2 n):
    between two positions of one pass lies an even multiple, which an earlier pass revealed."""
    m = max(n - 1, 0).bit_length()
    j = torch.arange(n, device=device)
    trailing = torch.zeros(n, dtype=torch.long, device=device)
    for z in range(1, m + 1):
        trailing += (j % (1 << z) == 0).long()
    return torch.where(j == 0, 0, m - trailing)


def top_k_mask(score: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """[B, N] bool: the k[b] highest finite scores of each row (ties broken by position)."""
    order = score.argsort(dim=1, descending=True, stable=True)
    positions = torch.arange(score.shape[1], device=score.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, positions)
    return (rank < k[:, None]) & torch.isfinite(score)


def draw_with_confidence(logits: torch.Tensor, mask_id: int, rule: Rule,
                         generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """A value for every position ([..., V] -> [...]) and its confidence under `rule.score` (float64)."""
    if bool(torch.isnan(logits).any()) or bool(torch.isposinf(logits).any()):
        raise UserError("the model returned NaN or +inf logits: check the checkpoint (a diverged run?) "
                        "and the precision (try fp32)")
    logits = logits.double().clone()
    logits[..., mask_id] = float("-inf")
    values = sample_categorical(select_from_logits(logits, rule.temperature, rule.top_p), generator)
    return values, confidence_score(logits, values, rule.score)


def confidence_score(logits: torch.Tensor, values: torch.Tensor, score: str) -> torch.Tensor:
    """[..., V] float64 logits and drawn values [...] -> each position's confidence (see SCORES)."""
    probs = torch.softmax(logits, dim=-1)
    if score == "sampled":
        return probs.gather(-1, values[..., None]).squeeze(-1)
    if score == "top":
        return probs.amax(-1)
    if score == "margin":
        best = probs.topk(2, dim=-1).values
        return best[..., 0] - best[..., 1]
    log_probs = torch.log_softmax(logits, dim=-1)
    return torch.exp(torch.where(probs > 0, probs * log_probs, 0.0).sum(-1))  # exp(-H)


class View:
    """How a block's logits are computed. `start` is called when a block begins, `logits` at every
    step, `finish` when the block is complete; each forward pass adds one to `nfe`."""

    nfe = 0

    def start(self, x: torch.Tensor, lo: int, hi: int) -> None:
        pass

    def logits(self, x: torch.Tensor, lo: int, hi: int, rows: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def finish(self, x: torch.Tensor, lo: int, hi: int) -> None:
        pass


def _time(model: nn.Module, xs: torch.Tensor, mask_id: int) -> torch.Tensor | None:
    """These samplers are time-agnostic; a time-conditioned denoiser gets the masked fraction, which
    is t under the log-linear schedule."""
    if getattr(getattr(model, "cfg", None), "time_conditioning", False):
        return (xs == mask_id).float().mean(1)
    return None


class FullView(View):
    """Every step reads the whole sequence: exact for a bidirectional masked model."""

    def __init__(self, model: nn.Module, mask_id: int):
        self.model, self.mask_id = model, mask_id

    def logits(self, x, lo, hi, rows):
        xs = x if rows is None else x[rows]
        self.nfe += 1
        return self.model(xs, _time(self.model, xs, self.mask_id))[:, lo:hi]


class PrefixCacheView(View):
    """Fast-dLLM prefix cache: at a block start one full pass stores every key/value; the steps of the
    block then recompute only the block and what follows, reusing the prefix's (approximate: the
    prefix's keys were computed while the block was still masked)."""

    def __init__(self, model: nn.Module, mask_id: int):
        self.model, self.mask_id, self.cache, self.fresh = model, mask_id, None, None

    def start(self, x, lo, hi):
        self.cache = self.model.new_cache()
        self.fresh = self.model(x, _time(self.model, x, self.mask_id), cache=self.cache)[:, lo:hi]
        self.nfe += 1
        self.keep(x, lo, hi)

    def keep(self, x, lo, hi):
        self.cache.keep(torch.arange(lo, device=x.device))

    def logits(self, x, lo, hi, rows):
        if self.fresh is not None:  # the block's first step reuses the refreshing pass
            out, self.fresh = self.fresh, None
            return out if rows is None else out[rows]
        self.nfe += 1
        cache = self.cache if rows is None else self.cache.rows(rows)
        xs = x if rows is None else x[rows]
        return self.model(xs[:, lo:], _time(self.model, xs, self.mask_id), cache=cache, commit=False,
                          positions=torch.arange(lo, x.shape[1], device=x.device))[:, : hi - lo]


class DualCacheView(PrefixCacheView):
    """Fast-dLLM dual cache: keep the keys/values of the prefix *and* the suffix; each step recomputes
    only the block (attention without a mask does not care where the cached keys sit)."""

    def keep(self, x, lo, hi):
        idx = torch.cat([torch.arange(lo), torch.arange(hi, x.shape[1])]).to(x.device)
        self.cache.keep(idx)

    def logits(self, x, lo, hi, rows):
        if self.fresh is not None:
            out, self.fresh = self.fresh, None
            return out if rows is None else out[rows]
        self.nfe += 1
        cache = self.cache if rows is None else self.cache.rows(rows)
        xs = x if rows is None else x[rows]
        return self.model(xs[:, lo:hi], _time(self.model, xs, self.mask_id), cache=cache, commit=False,
                          positions=torch.arange(lo, hi, device=x.device))


VIEWS = {"none": FullView, "prefix": PrefixCacheView, "dual": DualCacheView}


def denoise_block(x: torch.Tensor, lo: int, hi: int, view: View, rule: Rule, mask_id: int,
                  alpha=None, generator: torch.Generator | None = None,
                  recorder: FrameRecorder | None = None, step0: int = 0, progress=None) -> int:
    """Reveal every [MASK] of x[:, lo:hi] in place; returns the number of steps taken.

    `alpha` (a schedule's alpha(t) on float64 tensors) is needed by the ancestral rule; `progress()`
    gives the t reported in frames (the fraction of the sampler's work left)."""
    view.start(x, lo, hi)
    block = x[:, lo:hi]  # a view: writes go to x
    batch = x.shape[0]
    stale = torch.ones(batch, dtype=torch.bool, device=x.device)  # rows changed since their last pass
    logits: torch.Tensor | None = None
    schedule = alphas = None
    if rule.kind == "ancestral":
        alphas = alpha(torch.linspace(1.0, 0.0, rule.steps + 1, dtype=torch.float64))
        alphas[-1] = 1.0  # the last step reveals every remaining token
    elif rule.kind == "dilated":
        levels = dilation_levels(hi - lo, x.device)
    elif rule.kind != "threshold":
        schedule = reveal_counts((block == mask_id).sum(1), rule.steps)
    max_steps = rule.steps if rule.fixed_steps else hi - lo
    step = level = 0
    while (block == mask_id).any():
        masked = block == mask_id
        if step >= max_steps:  # each rule reveals >= 1 per step
            raise RuntimeError("the block still has masks after its last step")
        if rule.kind == "dilated":  # skip passes with nothing to reveal (fixed tokens of a prompt)
            while not bool((masked & (levels == level)).any()):
                level += 1
        # The ancestral rule reuses a row's logits while it is unchanged (MDLM's caching trick); the
        # others reveal at least one token per row per step, so every row with masks is recomputed.
        need = masked.any(1) & (stale if rule.kind == "ancestral" else torch.ones_like(stale))
        if need.any():
            rows = None if bool(need.all()) else need.nonzero().flatten()
            logits = store_rows(logits, rows, view.logits(x, lo, hi, rows).float(), batch)
            stale &= ~need
        values, confidence = draw_with_confidence(logits, mask_id, rule, generator)
        if rule.kind == "ancestral":
            p = float((alphas[step + 1] - alphas[step]) / (1 - alphas[step]))
            u = torch.rand(masked.shape, dtype=torch.float64, device=x.device, generator=generator)
            reveal = masked & (u < p)
        elif rule.kind == "dilated":
            reveal = masked & (levels == level)
            level += 1
        elif rule.kind == "threshold":
            score = torch.where(masked, confidence, float("-inf"))
            reveal = (masked & (confidence > rule.threshold)) | top_k_mask(score, masked.any(1).long())
        else:
            if rule.kind == "random":
                score = torch.rand(masked.shape, dtype=torch.float64, device=x.device, generator=generator)
            else:
                score = confidence
            reveal = top_k_mask(torch.where(masked, score, float("-inf")), schedule[:, step])
        block[reveal] = values[reveal]
        stale |= reveal.any(1)
        step += 1
        if recorder is not None:
            recorder(step0 + step, progress() if progress is not None else 0.0, x)
    view.finish(x, lo, hi)
    return step
