"""Entropy-bound (EB) sampling on a uniform-state canvas: DiffusionGemma's sampler (transformers'
`EntropyBoundSampler`), after Ben-Hamu et al., 2025 (arXiv 2505.24857).

The positions to generate (the [MASK]s of x) form a canvas that starts as uniform random tokens. Each
step: the denoiser reads the sequence; its logits are divided by the temperature
t_min + (t_max - t_min) r / steps, r the steps left (DiffusionGemma's linear schedule); a value is drawn
for every canvas position from that tempered distribution; the k canvas positions of lowest (tempered)
entropy are accepted, k the largest with

    sum of their k entropies - the largest of them <= entropy_bound

(an upper bound on the mutual information among the accepted tokens, so they are nearly independent);
every other canvas position is renoised with a fresh uniform token. Accepted tokens are not frozen: the
next step re-decides every position, as DiffusionGemma's loop does. After the last step each canvas
position takes the argmax of the last logits (DiffusionGemma's final canvas). At least one token (the
lowest-entropy one) is accepted each step, since its sum minus its maximum is 0. Canvases longer than
`block_length` (DiffusionGemma: its canvas_length, 256) are generated one after another, left to right.

Early stop (DiffusionGemma's `StableAndConfidentStoppingCriteria`, on by default with its thresholds): a row's
canvas is done once its argmax has not changed for `stability_threshold` steps and the mean entropy of its
tempered logits over the canvas is below `confidence_threshold`; it then keeps that argmax and its later steps
change nothing (the batch stops when every row is done). `early_stop=False` runs every canvas `steps` steps.

It needs a denoiser that predicts clean tokens from a canvas of random ones (uniform-state models);
masked models never saw random tokens in place of [MASK] and are refused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..core.errors import UserError
from .base import Frame, FrameRecorder, SampleResult, check_sampling_args, sample_categorical, select_from_logits


@dataclass
class EntropyBoundConfig:
    steps: int = 48  # denoising steps per canvas (DiffusionGemma's max_denoising_steps)
    entropy_bound: float = 0.1  # nats; DiffusionGemma's default
    t_max: float = 0.8  # temperature at the first step, falling linearly to t_min at the last (DiffusionGemma's)
    t_min: float = 0.4
    top_p: float = 1.0
    block_length: int | None = None  # canvas size: None = the model's canvas_length, else all positions at once
    early_stop: bool = True  # DiffusionGemma's stable-and-confident stop (module notes)
    stability_threshold: int = 1  # steps the argmax canvas must not change (DiffusionGemma's default)
    confidence_threshold: float = 0.005  # nats: mean entropy of the tempered logits below this (its default)


class StableAndConfident:
    """DiffusionGemma's stopping rule, per row: the argmax canvas equals each of the previous `stability`
    ones, and the mean over the canvas of the tempered logits' entropy is below `confidence` (nats)."""

    def __init__(self, stability: int, confidence: float):
        self.stability, self.confidence = stability, confidence
        self.history: list[torch.Tensor] = []

    def __call__(self, argmax: torch.Tensor, logits: torch.Tensor, canvas: torch.Tensor | None = None) -> torch.Tensor:
        """[B] bool for `argmax` [B, L] and `logits` [B, L, V]; `canvas` [B, L] bool: the positions that count."""
        canvas = torch.ones_like(argmax, dtype=torch.bool) if canvas is None else canvas
        recent = self.history[len(self.history) - self.stability :] if self.stability else []
        stable = torch.ones(argmax.shape[0], dtype=torch.bool, device=argmax.device)
        if len(recent) < self.stability:  # not enough steps yet
            stable &= False
        for past in recent:
            stable &= ((past == argmax) | ~canvas).all(-1)
        if self.stability:
            self.history.append(argmax.clone())
        logp = torch.log_softmax(logits.double(), dim=-1)
        entropy = -(logp.exp() * logp).nan_to_num(0.0).sum(-1)
        mean = (entropy * canvas).sum(-1) / canvas.sum(-1).clamp_min(1)
        return stable & (mean < self.confidence)


def entropy_bound_accept(logits: torch.Tensor, bound: float, canvas: torch.Tensor | None = None) -> torch.Tensor:
    """[B, L] bool: per row, the lowest-entropy positions whose entropy sum minus its maximum is <= bound.

    `canvas` ([B, L] bool) limits the choice to those positions (others are never accepted and their
    entropies do not count)."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    entropy = -(logp.exp() * logp).nan_to_num(0.0).sum(-1)  # 0 * log 0 = 0 for forbidden ids
    if canvas is not None:
        entropy = entropy.masked_fill(~canvas, float("inf"))
    ordered, order = entropy.sort(dim=-1, stable=True)
    # ascending order: the current entry is the maximum of the prefix
    keep_sorted = (ordered.masked_fill(~torch.isfinite(ordered), 0.0).cumsum(-1) - ordered <= bound)
    keep_sorted &= torch.isfinite(ordered)
    return torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)


def step_temperature(cfg: EntropyBoundConfig, k: int) -> float:
    """DiffusionGemma's linear schedule: with r = steps - k steps remaining, t_min + (t_max - t_min) r / steps."""
    return cfg.t_min + (cfg.t_max - cfg.t_min) * (cfg.steps - k) / cfg.steps


def _check(cfg: EntropyBoundConfig, process) -> None:
    check_sampling_args(cfg.steps, 1.0, cfg.top_p)
    if not cfg.entropy_bound > 0:
        raise UserError(f"entropy_bound must be > 0, got {cfg.entropy_bound}")
    if not (cfg.t_min > 0 and cfg.t_max > 0):
        raise UserError(f"t_min and t_max must be > 0, got {cfg.t_min} and {cfg.t_max}")
    if cfg.block_length is not None and cfg.block_length < 1:
        raise UserError(f"block_length must be a positive integer or null, got {cfg.block_length}")
    if not isinstance(cfg.stability_threshold, int) or cfg.stability_threshold < 0:
        raise UserError(f"stability_threshold must be an integer >= 0, got {cfg.stability_threshold!r}")
    if not cfg.confidence_threshold > 0:
        raise UserError(f"confidence_threshold must be > 0 (nats), got {cfg.confidence_threshold!r}")
    if getattr(process, "name", None) in ("masked", "block", "ar"):
        raise UserError(f"sampler 'entropy_bound' needs a uniform-state model (random tokens as noise); this is a "
                        f"{process.name!r} model: use ancestral, confidence or threshold")


@torch.no_grad()
def entropy_bound_sample(model: nn.Module, process, x: torch.Tensor, cfg: EntropyBoundConfig,
                         generator: torch.Generator | None = None, record_frames: bool = False,
                         on_step: Callable[[Frame], None] | None = None) -> SampleResult:
    """Generate the [MASK] positions of `x` with the entropy-bound loop (module notes), one canvas of
    `block_length` positions at a time, left to right.

    A canvas model (`model.cfg.canvas_model`, DiffusionGemma) is called on the sequence up to the canvas's end
    with `canvas_start` (what comes before is its encoder's prompt) and `self_conditioning` (the previous step's
    tempered logits); any other denoiser reads the whole sequence."""
    _check(cfg, process)
    mask_id, vocab = process.mask_id, process.vocab_size
    model_cfg = getattr(model, "cfg", None)
    canvas_model = bool(getattr(model_cfg, "canvas_model", False))
    time_conditioned = bool(getattr(model_cfg, "time_conditioning", False))
    size = cfg.block_length or getattr(model_cfg, "canvas_length", None) or x.shape[1]
    todo = x == mask_id
    x = x.clone()

    def noise() -> torch.Tensor:  # uniform over the vocabulary without [MASK] (a model input it never sees)
        draw = torch.randint(0, vocab - 1, x.shape, device=x.device, generator=generator)
        return draw + (draw >= mask_id).long()

    x = torch.where(todo, noise(), x)
    recorder = FrameRecorder(record_frames, on_step)
    recorder(0, 1.0, x)
    first = int(todo.any(0).nonzero()[0]) if todo.any() else x.shape[1]
    windows = [(lo, min(lo + size, x.shape[1])) for lo in range(first, x.shape[1], size)]
    windows = [(lo, hi) for lo, hi in windows if todo[:, lo:hi].any()]
    nfe, step = 0, 0
    for w, (lo, hi) in enumerate(windows):
        canvas = torch.zeros_like(todo)
        canvas[:, lo:hi] = todo[:, lo:hi]
        end = hi if canvas_model else x.shape[1]
        logits = argmax = None
        stop = StableAndConfident(cfg.stability_threshold, cfg.confidence_threshold) if cfg.early_stop else None
        done = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for k in range(cfg.steps):
            kwargs = {"canvas_start": lo, "self_conditioning": logits} if canvas_model else {}
            t_rows = torch.full((x.shape[0],), 1.0 - k / cfg.steps, device=x.device) if time_conditioned else None
            out = model(x[:, :end], t_rows, **kwargs).double()
            out[..., mask_id] = float("-inf")
            # entropy, draw and self-conditioning all use the tempered logits; a finished row keeps its last ones
            fresh = out / step_temperature(cfg, k)
            logits = fresh if logits is None else torch.where(done[:, None, None], logits, fresh)
            argmax = logits.argmax(-1) if argmax is None else torch.where(done[:, None], argmax, logits.argmax(-1))
            nfe += 1
            drawn = sample_categorical(select_from_logits(logits, 1.0, cfg.top_p), generator)
            accepted = entropy_bound_accept(logits, cfg.entropy_bound, canvas[:, :end])
            renoised = torch.where(canvas, noise(), x)
            moved = torch.where(accepted, drawn, renoised[:, :end])
            x[:, :end] = torch.where(done[:, None], x[:, :end], moved)
            step += 1
            recorder(step, 1.0 - (w + (k + 1) / cfg.steps) / len(windows), x)
            if stop is not None:
                done |= stop(argmax, logits, canvas[:, :end])
                if bool(done.all()):
                    break
        x[:, :end] = torch.where(canvas[:, :end], argmax, x[:, :end])  # the canvas's final argmax
        recorder(step, 1.0 - (w + 1) / len(windows), x)
    return SampleResult(ids=x, nfe=nfe, frames=recorder.frames)
