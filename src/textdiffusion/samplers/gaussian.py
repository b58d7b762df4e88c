"""Sampling continuous embedding diffusion (Diffusion-LM): Gaussian reverse steps, then rounding.

x_T ~ N(0, I) at every position to generate; then for the times T = t_0 > t_1 > ... > t_n = 0
(`steps` evenly strided, or all T levels) one network call per step gives zhat(x_t, t), optionally snapped
to the nearest token embedding (`clamp`, Diffusion-LM's clamping trick, section 4.2), and
    x_s = sqrt(abar_s) zhat + sqrt(1 - abar_s - sigma^2) epshat + sigma * noise,
    epshat = (x_t - sqrt(abar_t) zhat) / sqrt(1 - abar_t),  sigma^2 = eta^2 v(s, t)
(DDIM, Song et al. 2021, eq. 12), where v(s, t) is the variance of q(x_s | x_t, z). eta = 1 is the ancestral
sampler: the step is then exactly q(x_s | x_t, z = zhat), the model whose likelihood the process bounds when
every level is visited. eta = 0 is deterministic DDIM. At level 0, `rounding` turns x_0 into tokens: "nearest"
takes the argmax of p(w | x_0) (the nearest scaled embedding), "sample" draws from it (float64 Gumbel).

Positions that hold a token in `x` (not [MASK]) are fixed context: the network sees their embedding z
itself ("clean", the conditional model the process's bound scores with a loss mask) or z noised to the
current level ("noised", the replacement method for models trained without clean context). Frames hold
the nearest token to x_t / sqrt(abar_t) at every generated position after every step: the continuous sample
as text, noise at first.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..core.errors import UserError
from ..guidance import Guidance
from ..processes import gaussian_math
from ..processes.gaussian import GaussianDiffusion, nearest_tokens
from .base import Frame, SampleResult, sample_categorical

ROUNDINGS = ("nearest", "sample")
CONTEXTS = ("clean", "noised")


@dataclass
class GaussianConfig:
    steps: int | None = 200  # reverse steps, evenly strided over the T levels (None or more than T: all T)
    eta: float = 1.0  # 1: ancestral; 0: deterministic DDIM; in between: DDIM with less noise
    clamp: bool = True  # snap each prediction zhat to the nearest token embedding
    rounding: str = "nearest"  # "nearest" (argmax of p(w | x_0)) or "sample" (draw from it)
    context: str = "clean"  # fixed tokens as their clean embeddings, or "noised" to the current level
    guidance: Guidance | None = None  # gradient guidance on the latents after each step (textdiffusion.guidance)


def check_gaussian_config(cfg: GaussianConfig) -> None:
    if cfg.steps is not None and (not isinstance(cfg.steps, int) or cfg.steps < 1):
        raise UserError(f"steps must be a positive integer (or None for all T levels), got {cfg.steps!r}")
    if not isinstance(cfg.eta, (int, float)) or not 0 <= cfg.eta <= 1:
        raise UserError(f"eta must be in [0, 1] (1: ancestral, 0: deterministic DDIM), got {cfg.eta!r}")
    if cfg.rounding not in ROUNDINGS:
        raise UserError(f"rounding must be one of {', '.join(ROUNDINGS)}, got {cfg.rounding!r}")
    if cfg.context not in CONTEXTS:
        raise UserError(f"context must be one of {', '.join(CONTEXTS)}, got {cfg.context!r}")
    if cfg.guidance is not None and not isinstance(cfg.guidance, Guidance):
        raise UserError(f"guidance must be a textdiffusion.guidance.Guidance, got {type(cfg.guidance).__name__}")


def ddim_step(process: GaussianDiffusion, xt: torch.Tensor, zhat: torch.Tensor, t: int, s: int, eta: float,
              noise: torch.Tensor) -> torch.Tensor:
    """x_s from x_t and the prediction zhat (module notes); `noise` ~ N(0, I) like xt. eta = 1: q(x_s | x_t, zhat)."""
    return gaussian_math.ddim_step(process.abar, xt, zhat, t, s, eta, noise)


@torch.no_grad()
def gaussian_sample(model: nn.Module, process: GaussianDiffusion, x: torch.Tensor, cfg: GaussianConfig,
                    generator: torch.Generator | None = None, record_frames: bool = False,
                    on_step: Callable[[Frame], None] | None = None) -> SampleResult:
    """Generate the [MASK] positions of `x` ([B, L] ids); other positions are fixed context."""
    if not isinstance(process, GaussianDiffusion):
        raise UserError(f"the gaussian sampler needs a continuous embedding (gaussian) model, got a "
                        f"{getattr(process, 'name', type(process).__name__)!r} one")
    check_gaussian_config(cfg)
    mask_id, big_t = process.mask_id, process.num_steps
    table = process.embedding_table(model).detach().float()
    times = process.sampling_times(cfg.steps)
    todo = (x == mask_id)[..., None]
    z_ctx = table[torch.where(x == mask_id, torch.zeros_like(x), x)]  # clean context embeddings

    def randn() -> torch.Tensor:
        return torch.randn(z_ctx.shape, generator=generator, device=x.device)

    lat = randn()
    frames: list[Frame] = []

    def emit(step: int, level: int) -> None:
        if not record_frames and on_step is None:
            return
        ids = nearest_tokens(lat / math.sqrt(float(process.abar[level])), table, mask_id)
        frame = Frame(step=step, t=level / big_t, ids=torch.where(todo[..., 0], ids, x).cpu())
        if record_frames:
            frames.append(frame)
        if on_step is not None:
            on_step(frame)

    def context(level: int) -> torch.Tensor:
        if cfg.context == "clean":
            return z_ctx
        return math.sqrt(float(process.abar[level])) * z_ctx + math.sqrt(1 - float(process.abar[level])) * randn()

    emit(0, big_t)
    for k in range(len(times) - 1):
        t, s = times[k], times[k + 1]
        zhat = process.predict(model, torch.where(todo, lat, context(t)), t)
        if cfg.clamp:
            zhat = table[nearest_tokens(zhat, table, mask_id)]
        proposal = ddim_step(process, lat, zhat, t, s, cfg.eta, randn())
        if cfg.guidance is not None:  # Diffusion-LM's control: Adagrad on x_s (guidance/gradient.py)
            mean = ddim_step(process, lat, zhat, t, s, cfg.eta, torch.zeros_like(lat))
            proposal = cfg.guidance.refine(process, model, proposal, mean, float(process.posterior(s, t)[2]), s,
                                           todo, context(s), table)
        lat = proposal
        emit(k + 1, s)
    logits = process.rounding_logits(lat, table)
    ids = logits.argmax(-1) if cfg.rounding == "nearest" else sample_categorical(torch.log_softmax(
        logits.double(), -1), generator)
    out = torch.where(todo[..., 0], ids, x)
    # guidance: one more denoiser pass per update, unless every control reads the latents (a classifier) alone
    token_controls = cfg.guidance is not None and not all(c.latent for c in cfg.guidance.controls)
    passes = 1 + (cfg.guidance.steps if token_controls else 0)
    return SampleResult(ids=out, nfe=(len(times) - 1) * passes, frames=frames)
