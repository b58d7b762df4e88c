"""Sampling latent diffusion models (processes/latent.py): Gaussian reverse steps over the k x d latents, then the
autoencoder's decoder writes the text.

x_T ~ N(0, I) [B, k, d]; for T = t_0 > ... > t_n = 0 (`steps` evenly strided levels, or all T) one denoiser call
gives zhat(x_t, t) and x_s = DDIM's step (gaussian_math.ddim_step: eta = 1 ancestral, eta = 0 deterministic); the
latents are z = x_0 / sqrt(abar_0) (the mean of p(z | x_0)); then the decoder writes token after token
(`temperature` 0: greedy; otherwise drawn in float64 after temperature and `top_p`).

A prompt (the non-[MASK] ids at the start of `x`, PLANNER's prefix) is encoded by the autoencoder's encoder; the
denoiser is conditioned on its latents with classifier-free guidance of scale `guidance` (0: the unconditional
model, 1: the conditional one, above 1: pushed further from the unconditional), and the decoder is forced to
write the prompt before continuing. Only a prefix can be given: the latents encode the whole passage, so there is
no way to hold fixed tokens after a gap, and infilling is refused.

Frames: after each step, the text the decoder reads from that step's prediction zhat of the clean latents (the
filmstrip of a latent trajectory: every step revises the whole passage). To cost one decoder pass a step, not one a
position, each frame is one parallel (Jacobi) step of greedy decoding: every position takes the decoder's argmax
given the previous frame's tokens before it, so the frames settle on the greedy text as zhat settles. `nfe` counts
the denoiser and the final decoder passes, not the frames' passes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..core.errors import UserError
from ..processes import gaussian_math
from ..processes.latent import LatentDiffusion, backbone, decode_logits
from .base import Frame, SampleResult, sample_categorical, select_from_logits


@dataclass
class LatentConfig:
    steps: int | None = 100  # reverse steps, evenly strided over the T levels (None or more than T: all T)
    eta: float = 1.0  # 1: ancestral (DDPM); 0: deterministic DDIM
    guidance: float = 1.0  # classifier-free guidance on a prompt: 0 unconditional, 1 conditional, > 1 stronger
    temperature: float = 0.0  # the decoder's: 0 greedy
    top_p: float = 1.0
    self_condition: bool = True  # feed each step's zhat back (only a model trained with self_condition reads it)


def prefix_lengths(x: torch.Tensor, mask_id: int) -> torch.Tensor:
    """Each row's prompt length [B]: its fixed ids must come first, then only [MASK] ids."""
    fixed = x != mask_id
    lengths = fixed.long().cumprod(dim=1).sum(1)
    if bool((fixed.sum(1) != lengths).any()):
        raise UserError("a latent model continues a prompt but cannot fill gaps (its latents encode the whole "
                        "passage): use generate with a prompt, or a masked model for infill")
    return lengths


def decode(model: nn.Module, latents: torch.Tensor, x: torch.Tensor, lengths: torch.Tensor, mask_id: int,
           temperature: float = 0.0, top_p: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """The decoder's text for `latents` [B, k, d]: x's first `lengths` ids of each row kept, the rest written left
    to right ([MASK] never written). One decoder pass per position, each reading the earlier ones from a KV cache
    (the first computes every position up to it, the prompt's included)."""
    out = x.clone()
    keep = torch.arange(x.shape[1], device=x.device)[None] < lengths[:, None]
    cache = backbone(model).new_cache()
    for i in range(x.shape[1]):
        if bool(keep[:, i].all()):
            continue
        logits = decode_logits(model, out[:, : i + 1], latents, cache)[:, -1].float()
        logits[:, mask_id] = float("-inf")
        token = sample_categorical(select_from_logits(logits, temperature, top_p), generator)
        out[:, i] = torch.where(keep[:, i], out[:, i], token)
    return out


@torch.no_grad()
def sample_latents(model: nn.Module, process: LatentDiffusion, shape: tuple[int, ...], cfg: LatentConfig,
                   cond: torch.Tensor | None = None, has: torch.Tensor | None = None,
                   generator: torch.Generator | None = None, device: torch.device | str = "cpu",
                   on_step: Callable[[int, int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """The reverse chain alone (module notes): x_T ~ N(0, I) of `shape` [B, k, d] down to the clean latents
    z = x_0 / sqrt(abar_0), float32. `on_step(step, level s, zhat)` sees each step's prediction."""
    times = gaussian_math.sampling_times(process.num_steps, cfg.steps)
    lat = torch.randn(shape, generator=generator, device=device)
    previous = None
    for k in range(len(times) - 1):
        t, s = times[k], times[k + 1]
        zhat = process.predict(model, lat, t, cond, has, previous if cfg.self_condition else None, cfg.guidance)
        previous = zhat
        lat = gaussian_math.ddim_step(process.abar, lat, zhat, t, s, cfg.eta,
                                      torch.randn(shape, generator=generator, device=device))
        if on_step is not None:
            on_step(k + 1, s, zhat)
    return lat / math.sqrt(float(process.abar[0]))


def check_latent_config(cfg: LatentConfig) -> None:
    if cfg.steps is not None and (not isinstance(cfg.steps, int) or isinstance(cfg.steps, bool) or cfg.steps < 1):
        raise UserError(f"steps must be a positive integer (or None for all T levels), got {cfg.steps!r}")
    if not isinstance(cfg.eta, (int, float)) or not 0 <= cfg.eta <= 1:
        raise UserError(f"eta must be in [0, 1] (1: ancestral, 0: deterministic DDIM), got {cfg.eta!r}")
    if not isinstance(cfg.guidance, (int, float)) or not 0 <= cfg.guidance < math.inf:
        raise UserError(f"guidance must be a number >= 0 (0: unconditional, 1: conditional), got {cfg.guidance!r}")


@torch.no_grad()
def latent_sample(model: nn.Module, process: LatentDiffusion, x: torch.Tensor, cfg: LatentConfig,
                  generator: torch.Generator | None = None, record_frames: bool = False,
                  on_step: Callable[[Frame], None] | None = None) -> SampleResult:
    """Write the [MASK] positions of `x` ([B, L] ids), which must follow each row's prompt (module notes)."""
    if not isinstance(process, LatentDiffusion):
        raise UserError(f"the latent sampler needs a latent diffusion model, got a "
                        f"{getattr(process, 'name', type(process).__name__)!r} one")
    check_latent_config(cfg)
    mask_id, net = process.mask_id, backbone(model)
    lengths = prefix_lengths(x, mask_id)
    cond, has = (None, None) if not bool((lengths > 0).any()) else process.prefix_latents(model, x, lengths)
    frames: list[Frame] = []
    keep = torch.arange(x.shape[1], device=x.device)[None] < lengths[:, None]
    shown = x.clone()  # the last frame's tokens

    def emit(step: int, level: int, zhat: torch.Tensor) -> None:
        nonlocal shown
        logits = decode_logits(model, shown, zhat).float()  # one parallel greedy step (module notes)
        logits[..., mask_id] = float("-inf")
        shown = torch.where(keep, x, logits.argmax(-1))
        frame = Frame(step=step, t=level / process.num_steps, ids=shown.cpu())
        if record_frames:
            frames.append(frame)
        if on_step is not None:
            on_step(frame)

    shape = (x.shape[0], net.num_latents, net.latent_dim)
    latents = sample_latents(model, process, shape, cfg, cond, has, generator, x.device,
                             emit if record_frames or on_step is not None else None)
    ids = decode(model, latents, x, lengths, mask_id, cfg.temperature, cfg.top_p, generator)
    steps = len(gaussian_math.sampling_times(process.num_steps, cfg.steps)) - 1
    guided_passes = 2 if cond is not None and cfg.guidance not in (0, 1) else 1
    decoder_passes = int((lengths < x.shape[1]).any()) * (x.shape[1] - int(lengths.min()))
    return SampleResult(ids=ids, nfe=steps * guided_passes + decoder_passes, frames=frames)
