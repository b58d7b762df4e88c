"""ReMDM: remasking sampling for masked diffusion (Wang, Schiff, Sahoo & Kuleshov, 2025, arXiv 2503.00307).

MDLM never revisits a decoded token. ReMDM replaces MDLM's posterior by a family q_sigma(z_s | z_t, x)
that may send a decoded token back to [MASK]. Per token, from t to s < t, with x the denoiser's x0
prediction:

    z_t = x (decoded):   z_s = x with probability 1 - sigma_t,  [MASK] with probability sigma_t;
    z_t = [MASK]:        z_s = x with probability (alpha_s - (1 - sigma_t) alpha_t) / (1 - alpha_t),
                         [MASK] otherwise.

Both probabilities lie in [0, 1] iff 0 <= sigma_t <= sigma_t^max = min(1, (1 - alpha_s) / alpha_t), and
then the marginal is MDLM's, q(z_s = x | x) = alpha_t (1 - sigma_t) + (1 - alpha_t) p_unmask = alpha_s,
so the NELBO of a model trained as MDLM still applies (the paper samples from pretrained MDLMs).
sigma_t = 0 is MDLM's ancestral sampler exactly (with the same generator, the same samples).

Schedules of sigma_t (`schedule`, with `eta`; eta=None takes the paper's value, in PAPER_ETA):
  "cap"      sigma_t = min(eta, sigma_t^max)                          (ReMDM-cap)
  "rescale"  sigma_t = eta * sigma_t^max                              (ReMDM-rescale)
  "conf"     sigma_t^(l) = eta_conf^(l) * eta * sigma_t^max, with eta_conf = softmax_l(-psi^(l)) over
             the decoded generated tokens, psi^(l) the probability the sampling distribution gave token
             l when it was last decoded (its confidence): unsure tokens are remasked first
             (ReMDM-conf). A masked token has psi = inf, hence sigma^(l) = 0, and is revealed with
             MDLM's probability, as in the authors' code. The eta_conf sum to one over a row, so about
             one token's worth of remasking happens per step and the per-token marginal is *not*
             kept exactly (the masked fraction after a step is 1 - alpha_s + sigma_t P(a decoded
             token) / L); the value-dependent remasking also tilts the output towards confident
             tokens, so even with the true posterior this schedule does not sample p_data.
  "loop"     three phases (ReMDM-loop): MDLM (sigma = 0) from all-masked down to alpha_on; then a loop
             that holds alpha at alpha_on and remasks with sigma = min(eta, sigma^max) =
             min(eta, (1 - alpha_on) / alpha_on), revealing masks with probability
             sigma alpha_on / (1 - alpha_on) so the marginal stays alpha_on; then MDLM from alpha_on to
             clean data. As in the paper, whose steps are spread uniformly over a clock t in [1, 0],
             the phases get (1 - t_on), (t_on - t_off) and t_off of the steps (at least one each).
             The defaults t_on = 0.55, t_off = 0.05, alpha_on = 0.9, eta = 0.02 are the authors'
             OpenWebText setting. The denoiser is given the time t* with alpha(t*) = alpha_on during
             the loop (phase 1 runs from t = 1 to t*, phase 3 from t* to 0); alpha_on=None holds
             alpha(t_on) instead (t* = t_on), which leaves many tokens to phase 3's few steps.

Only generated positions ([MASK] in the input x) are ever unmasked or remasked; fixed tokens stay.
The last step has alpha_s = 1, so sigma^max = 0 and every remaining mask is revealed. [MASK] is never
drawn as a value, categorical draws are float64 Gumbel-max after temperature / top-p (the paper uses
top_p = 0.9). With a denoiser that ignores t, a row that did not change since its last forward pass
reuses that output (`cache`), as in MDLM.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..core.errors import UserError
from ..processes.masked import MaskedDiffusion
from .base import (
    Frame,
    FrameRecorder,
    SampleResult,
    check_sampling_args,
    sample_categorical,
    select_from_logits,
    store_rows,
)
from .cfg import guided
from .first_hitting import time_at_alpha

SCHEDULES = ("cap", "rescale", "conf", "loop")
PAPER_ETA = {"cap": 0.008, "rescale": 0.015, "conf": 1.0, "loop": 0.02}  # the authors' OpenWebText scripts


@dataclass
class ReMDMConfig:
    steps: int = 128
    schedule: str = "cap"  # cap, rescale, conf or loop
    eta: float | None = None  # eta_cap / eta_rescale / conf's rescale factor / the loop's sigma; None: PAPER_ETA
    t_on: float = 0.55  # loop: the loop phase runs between t_on and t_off (as fractions of the steps)
    t_off: float = 0.05
    alpha_on: float | None = 0.9  # loop: alpha held during the loop (the paper's 0.9); None: alpha(t_on)
    temperature: float = 1.0
    top_p: float = 1.0
    cache: bool = True  # used only when the denoiser is not time-conditioned
    cfg_scale: float = 0.0  # LLaDA's classifier-free guidance on the fixed tokens (samplers/cfg.py); 0: none


@dataclass(frozen=True)
class ReMDMStep:
    """One reverse step from noise level t to t_next; sigma is sigma_t (conf: before the split by confidence)."""

    t: float  # the denoiser's time input
    t_next: float
    alpha_t: float
    alpha_s: float
    sigma: float


def sigma_max(alpha_t: float, alpha_s: float) -> float:
    """The largest remasking probability that keeps every probability in [0, 1]: min(1, (1 - alpha_s)/alpha_t).

    alpha_s = 1 (the last step) gives 0 even from alpha_t = 0; otherwise alpha_t = 0 gives 1 (no token is
    decoded then, so any sigma is harmless)."""
    if alpha_s >= 1:
        return 0.0
    if alpha_t <= 0:
        return 1.0
    return min(1.0, max(0.0, (1 - alpha_s) / alpha_t))


def check_config(cfg: ReMDMConfig) -> None:
    if cfg.schedule not in SCHEDULES:
        raise UserError(f"unknown ReMDM schedule {cfg.schedule!r}: choose one of {', '.join(SCHEDULES)}")
    check_sampling_args(cfg.steps, cfg.temperature, cfg.top_p)
    if cfg.eta is not None and not (isinstance(cfg.eta, int | float) and 0 <= cfg.eta <= 1):
        raise UserError(f"eta must be in [0, 1] (a remasking probability or a fraction of sigma_max), got {cfg.eta!r}")
    if not (
        isinstance(cfg.t_on, int | float) and isinstance(cfg.t_off, int | float) and 0 <= cfg.t_off < cfg.t_on <= 1
    ):
        raise UserError(f"the loop needs 0 <= t_off < t_on <= 1, got t_on={cfg.t_on!r}, t_off={cfg.t_off!r}")
    if cfg.alpha_on is not None and not (isinstance(cfg.alpha_on, int | float) and 0 < cfg.alpha_on < 1):
        raise UserError(f"alpha_on must be in (0, 1), got {cfg.alpha_on!r}")
    if cfg.schedule == "loop" and cfg.steps < 3:
        raise UserError(f"the loop schedule needs at least 3 steps (one per phase), got {cfg.steps}")


def loop_phase_steps(steps: int, t_on: float, t_off: float) -> tuple[int, int, int]:
    """Steps of the three loop phases: (1 - t_on), (t_on - t_off) and t_off of them, each at least one."""
    n3 = min(max(1, math.floor(steps * t_off + 0.5)), steps - 2)
    n1 = min(max(1, math.floor(steps * (1 - t_on) + 0.5)), steps - n3 - 1)
    return n1, steps - n1 - n3, n3


def remdm_plan(process: MaskedDiffusion, cfg: ReMDMConfig) -> list[ReMDMStep]:
    """The reverse steps: times, keep-probabilities alpha and sigma_t, checked against the config."""
    check_config(cfg)
    schedule = process.schedule
    eta = float(PAPER_ETA[cfg.schedule] if cfg.eta is None else cfg.eta)

    def alpha(ts: torch.Tensor) -> list[float]:
        return schedule.alpha(ts).double().tolist()

    if cfg.schedule != "loop":
        ts = torch.linspace(1.0, 0.0, cfg.steps + 1, dtype=torch.float64)
        a = alpha(ts)
        a[-1] = 1.0  # the last step reveals every remaining token, whatever the schedule's alpha(0)
        plan = []
        for k in range(cfg.steps):
            smax = sigma_max(a[k], a[k + 1])
            sigma = min(eta, smax) if cfg.schedule == "cap" else eta * smax
            plan.append(ReMDMStep(float(ts[k]), float(ts[k + 1]), a[k], a[k + 1], sigma))
        return plan

    n1, n2, n3 = loop_phase_steps(cfg.steps, cfg.t_on, cfg.t_off)
    if cfg.alpha_on is None:
        t_star = float(cfg.t_on)
        alpha_on = alpha(torch.tensor([t_star], dtype=torch.float64))[0]
    else:
        alpha_on = float(cfg.alpha_on)
        t_star = float(time_at_alpha(schedule, alpha_on))
    plan = []
    ts = torch.linspace(1.0, t_star, n1 + 1, dtype=torch.float64)  # phase 1: MDLM down to alpha_on
    a = alpha(ts)
    a[-1] = alpha_on
    plan += [ReMDMStep(float(ts[k]), float(ts[k + 1]), a[k], a[k + 1], 0.0) for k in range(n1)]
    loop_sigma = min(eta, sigma_max(alpha_on, alpha_on))  # phase 2: alpha constant, remask and reveal
    plan += [ReMDMStep(t_star, t_star, alpha_on, alpha_on, loop_sigma) for _ in range(n2)]
    ts = torch.linspace(t_star, 0.0, n3 + 1, dtype=torch.float64)  # phase 3: MDLM to clean data
    a = alpha(ts)
    a[0], a[-1] = alpha_on, 1.0
    plan += [ReMDMStep(float(ts[k]), float(ts[k + 1]), a[k], a[k + 1], 0.0) for k in range(n3)]
    return plan


def _unmask_prob(alpha_t: float, alpha_s: float, sigma: torch.Tensor) -> torch.Tensor:
    """P(a masked token is revealed) = (alpha_s - (1 - sigma) alpha_t) / (1 - alpha_t): keeps the marginal alpha_s."""
    if alpha_t >= 1:
        return torch.ones_like(sigma)
    return ((alpha_s - (1 - sigma) * alpha_t) / (1 - alpha_t)).clamp(0.0, 1.0)


def confidence_sigmas(
    sigma: float, x: torch.Tensor, generated: torch.Tensor, confidence: torch.Tensor, mask_id: int
) -> torch.Tensor:
    """ReMDM-conf: sigma^(l) = softmax(-psi)_l * sigma over the decoded generated tokens of a row, 0 elsewhere."""
    decoded = generated & (x != mask_id)
    weight = torch.where(decoded, torch.exp(-confidence.double()), 0.0)
    total = weight.sum(dim=1, keepdim=True)
    return torch.where(total > 0, weight / total.clamp_min(1e-300), 0.0) * sigma


def remdm_step(
    x: torch.Tensor,
    generated: torch.Tensor,
    logits: torch.Tensor | None,
    alpha_t: float,
    alpha_s: float,
    sigma: torch.Tensor | float,
    mask_id: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One ReMDM step from alpha_t to alpha_s with remasking probabilities `sigma` (a float or [B, L]).

    `logits` ([B, L, V], the denoiser's output for x_t) are read only at revealed positions. Returns
    (x_s, revealed, remasked, prob): prob holds, for the revealed positions in order, the probability
    the sampling distribution gave the drawn token (ReMDM-conf's confidence psi).
    """
    masked = x == mask_id
    sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).expand(x.shape)
    u = torch.rand(x.shape, dtype=torch.float64, device=x.device, generator=generator)  # one uniform per token
    reveal = masked & (u < _unmask_prob(alpha_t, alpha_s, sigma))
    remask = generated & ~masked & (u < sigma)
    x = x.clone()
    prob = torch.empty(0, dtype=torch.float64, device=x.device)
    if reveal.any():
        chosen = logits[reveal]
        chosen[:, mask_id] = float("-inf")  # [MASK] is never a value
        logp = select_from_logits(chosen, temperature, top_p)
        values = sample_categorical(logp, generator)
        prob = logp.gather(-1, values[:, None]).squeeze(-1).exp()
        x[reveal] = values
    x[remask] = mask_id
    return x, reveal, remask, prob


@torch.no_grad()
def remdm_sample(
    model: nn.Module,
    process: MaskedDiffusion,
    x: torch.Tensor,
    cfg: ReMDMConfig,
    generator: torch.Generator | None = None,
    record_frames: bool = False,
    on_step: Callable[[Frame], None] | None = None,
) -> SampleResult:
    """ReMDM remasking sampler (cap, rescale, conf or loop) for masked diffusion models."""
    if not isinstance(process, MaskedDiffusion):
        raise UserError(f"ReMDM samples masked diffusion (MDLM) models, not {type(process).__name__}")
    plan = remdm_plan(process, cfg)
    mask_id = process.mask_id
    model = guided(model, x, mask_id, cfg.cfg_scale)
    time_conditioned = bool(getattr(getattr(model, "cfg", None), "time_conditioning", True))
    use_cache = cfg.cache and not time_conditioned
    x = x.clone()
    generated = x == mask_id  # the only positions ever revealed or remasked
    confidence = torch.zeros(x.shape, dtype=torch.float64, device=x.device)  # psi of each decoded token
    recorder = FrameRecorder(record_frames, on_step)
    recorder(0, 1.0, x)
    batch = x.shape[0]
    logits: torch.Tensor | None = None  # the denoiser's last output for every row, [B, L, V]
    stale = torch.ones(batch, dtype=torch.bool, device=x.device)  # rows changed since their last pass
    nfe = 0
    for k, step in enumerate(plan):
        masked = x == mask_id
        if cfg.schedule == "conf":
            sigma: torch.Tensor | float = confidence_sigmas(step.sigma, x, generated, confidence, mask_id)
        else:
            sigma = step.sigma
        can_remask = step.sigma > 0 and bool((generated & ~masked).any())
        if not masked.any() and not can_remask:  # nothing to reveal or remask: no draws, no forward pass
            recorder(k + 1, step.t_next, x)
            continue
        # Rows with nothing masked need no forward pass (remasking does not look at the model); with
        # the cache, neither do rows unchanged since their last pass.
        need = masked.any(dim=1) & (stale if use_cache else torch.ones_like(stale))
        if need.any():
            t_rows = torch.full((int(need.sum()),), step.t, device=x.device)
            logits = store_rows(logits, need, model(x[need], t_rows).float(), batch)
            stale &= ~need
            nfe += 1
        x, revealed, remasked, prob = remdm_step(
            x, generated, logits, step.alpha_t, step.alpha_s, sigma, mask_id, cfg.temperature, cfg.top_p, generator
        )
        confidence[revealed] = prob
        stale |= (revealed | remasked).any(dim=1)
        recorder(k + 1, step.t_next, x)
    return SampleResult(ids=x, nfe=nfe, frames=recorder.frames)
