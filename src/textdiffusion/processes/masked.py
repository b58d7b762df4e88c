"""Masked (absorbing-state) diffusion in continuous time: MDLM (Sahoo et al., 2024).

Forward: each token is independently kept with probability alpha(t), else replaced by [MASK].
Denoiser: SUBS parameterisation -- [MASK] is never predicted (its logit is -inf) and unmasked
tokens are carried over unchanged.
Bound (`nelbo_per_sequence`): the NELBO's reconstruction + diffusion + prior split (MDLM's L_recons +
L_diffusion + L_prior), with the diffusion term in its continuous-time form on [t_min, 1] (eq. 10 restricted
to it):

    -log p_theta(x0) <= E_{x_{t_min}} [ sum_{l masked} -log p_theta(x0_l | x_{t_min}) ]                 (R)
                        + int_{t_min}^1 -alpha'(t)/(1-alpha(t)) E_{x_t} [ sum_{l masked} -log p_theta(x0_l | x_t) ] dt
                        + KL(q(x_1 | x0) || p(x_1)).                                                      (P)

This holds for any denoiser: p_theta is the reverse chain started at p(x_1), run over [t_min, 1] with the
SUBS unmasking rates, and ended by the factorised denoising step (R) at t_min. Without (R) the estimate
is not a bound (for the exact denoiser it falls below -log p_theta(x0) for some x0). One forward pass
estimates all of it without bias: s ~ U[0, 1]; for s >= t_min the integrand is evaluated at t = s (density 1
on [t_min, 1], so no 1/(1 - t_min) factor), for s < t_min (probability t_min) the model sees x_{t_min} and
the sample is (R)'s sum over the masked tokens divided by t_min. For loglinear this is exactly t = max(s, t_min)
(weight 1/t_min either way). (P) is 0 when alpha(1) = 0; otherwise a token survives to t = 1 with
probability alpha(1), which a point mass on [MASK] cannot explain, so the prior is (1 - alpha(1)) [MASK]
+ alpha(1) uniform over the V - 1 other tokens, and (P) = alpha(1) log(V - 1) per scored token (the
samplers start from all [MASK]: a difference of alpha(1) per token, 2e-9 for 'linear', 0 otherwise).
Training (`loss`) uses the same estimate: the reconstruction branch needs no extra forward pass.

Training-recipe ablations (`loss` only; `nelbo_per_sequence`, the bound that validation and `score` use, never
changes): loss_weighting="flat" weights each masked token's -log p_theta(x0_l | x_t) by 1 instead of
`bound_weight` (MaskGIT/BERT-style; not a bound), and ce_lambda adds lambda * sum_{l masked} -log p_theta(x0_l | x_t)
unweighted: D3PM's hybrid objective L_vb + lambda E[-log p_theta(x0 | x_t)] (Austin et al. 2021) written for MDLM.
complementary_masks=True (Fast-dLLM v2, Wu et al., 2025, Sec. 3.2) trains each sequence twice per step, with the
noise (s, u) and with (1 - s, 1 - u), and averages the two estimates: under the log-linear schedule (mask iff
u >= 1 - t) the second draw masks exactly the tokens the first keeps (for s in [t_min, 1 - t_min]), so every token
is predicted once per pair; each draw is a valid one, so the average is still an unbiased estimate.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..core.errors import UserError
from .base import DiffusionProcess, LossOutput, nonnegative_weight, register
from .schedules import get_schedule

LOSS_WEIGHTINGS = ("elbo", "flat")


@register
class MaskedDiffusion(DiffusionProcess):
    name = "masked"

    def __init__(self, vocab_size: int, mask_id: int, schedule: str = "loglinear", t_min: float = 1e-3,
                 antithetic: bool = True, logit_shift: bool = False, loss_weighting: str = "elbo",
                 ce_lambda: float = 0.0, complementary_masks: bool = False):
        if complementary_masks and schedule != "loglinear":
            raise UserError("complementary_masks pairs each mask with its complement under schedule 'loglinear' "
                            "(mask rate = t): use that schedule")
        self.complementary_masks = bool(complementary_masks)
        if loss_weighting not in LOSS_WEIGHTINGS:
            raise UserError(f"unknown loss_weighting {loss_weighting!r}: choose one of {', '.join(LOSS_WEIGHTINGS)}")
        self.loss_weighting = loss_weighting
        self.ce_lambda = nonnegative_weight("ce_lambda", ce_lambda, "the weight of the extra cross-entropy term; 0 "
                                            "disables it")
        self.vocab_size, self.mask_id = vocab_size, mask_id
        # AR -> diffusion adaptation (train/adapt.py): the backbone reads [START] x_t, position l predicts x0_l
        self.logit_shift = logit_shift
        self.train_attention: torch.Tensor | None = None  # set per step while annealing the causal mask
        self.schedule_name, self.t_min, self.antithetic = schedule, t_min, antithetic
        self.schedule = get_schedule(schedule)
        alpha_end = max(float(self.schedule.alpha(torch.tensor(1.0, dtype=torch.float64))), 0.0)
        # (P) per scored token: KL(alpha(1) x0 + (1 - alpha(1)) [MASK] || alpha(1) uniform + (1 - alpha(1)) [MASK])
        self.prior_nats = alpha_end * math.log(vocab_size - 1) if alpha_end > 0 else 0.0

    def config(self) -> dict:
        out = {"schedule": self.schedule_name, "t_min": self.t_min, "antithetic": self.antithetic}
        if self.logit_shift:
            out["logit_shift"] = True
        # recipe options only when set, so the configs of runs trained before they existed stay identical
        if self.loss_weighting != "elbo":
            out["loss_weighting"] = self.loss_weighting
        if self.ce_lambda != 0:
            out["ce_lambda"] = self.ce_lambda
        if self.complementary_masks:
            out["complementary_masks"] = True
        return out

    def denoiser(self, model: nn.Module) -> nn.Module:
        """What samplers and the bound call: the backbone itself, or its logit-shifted view (models/shifted.py)."""
        if not self.logit_shift:
            return model
        from ..models.shifted import ShiftedDenoiser

        return ShiftedDenoiser(model, self.mask_id, self.train_attention)

    def sample_t(self, batch: int, device, generator: torch.Generator | None = None) -> torch.Tensor:
        """s ~ U[0, 1], stratified across the batch (MDLM's low-discrepancy sampler). s < t_min selects the
        reconstruction term (see the module notes); `noise_level` maps s to the time the model sees."""
        u = torch.rand(batch, device=device, generator=generator)
        if self.antithetic:
            u = (u + torch.arange(batch, device=device)) / batch
        return u

    def noise_level(self, s: torch.Tensor) -> torch.Tensor:
        """The time x_t is drawn at and the model sees for a sample s: max(s, t_min)."""
        return s.clamp_min(self.t_min)

    def bound_weight(self, s: torch.Tensor) -> torch.Tensor:
        """The weight of the masked tokens' -log p_theta for a sample s ~ U[0, 1]: -alpha'(s)/(1-alpha(s)) for
        s >= t_min (the diffusion integral), 1/t_min below (the reconstruction term over its probability t_min)."""
        weight = self.schedule.nelbo_weight(self.noise_level(s))
        if self.t_min > 0:
            weight = torch.where(s < self.t_min, torch.full_like(weight, 1.0 / self.t_min), weight)
        return weight

    def sample_noise(self, x0, generator=None):
        return {"t": self.sample_t(x0.shape[0], x0.device, generator),
                "u": torch.rand(x0.shape, device=x0.device, generator=generator)}

    def corrupt(self, x0: torch.Tensor, t: torch.Tensor, u: torch.Tensor,
                scored: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x_t ~ q(x_t | x0) given uniforms u: token l is masked iff u_l >= alpha(t).

        Positions outside `scored` (when given) are context and stay clean. Returns (x_t, masked)."""
        masked = u >= self.schedule.alpha(t)[:, None]
        if scored is not None:
            masked &= scored
        return torch.where(masked, torch.full_like(x0, self.mask_id), x0), masked

    def log_probs(self, model: nn.Module, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """log p_theta(x0 | x_t) in float32 with the SUBS rules applied, [B, L, V]."""
        return subs_log_probs(self.denoiser(model)(xt, t).float(), xt, self.mask_id)

    def nelbo_per_sequence(self, model: nn.Module, x0: torch.Tensor, noise: dict[str, torch.Tensor],
                           loss_mask: torch.Tensor | None = None) -> torch.Tensor:
        """One-sample unbiased estimate of each sequence's NELBO (R + diffusion + P, module notes), [B], nats.

        The sample s = noise["t"] ~ U[0, 1]: x_t is drawn at t = max(s, t_min) and weighted by `bound_weight`.
        """
        s, nll = self._masked_nll(model, x0, noise, loss_mask)
        return self._nelbo(s, nll, x0, loss_mask)

    def _masked_nll(self, model: nn.Module, x0: torch.Tensor, noise: dict[str, torch.Tensor],
                    loss_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(s [B], -log p_theta(x0_l | x_t) at the masked positions and 0 elsewhere [B, L]) for one noise draw."""
        s = noise["t"]
        t = self.noise_level(s)
        xt, masked = self.corrupt(x0, t, noise["u"], loss_mask)
        return s, masked_nll(self.denoiser(model)(xt, t), x0, masked, self.mask_id)

    def _nelbo(self, s: torch.Tensor, nll: torch.Tensor, x0: torch.Tensor,
               loss_mask: torch.Tensor | None) -> torch.Tensor:
        n_scored = x0.shape[1] if loss_mask is None else loss_mask.sum(1)
        # -log p(x0) <= (R) + int_{t_min}^1 w(t) E[sum_masked -log p] dt + (P): s < t_min samples (R) / t_min
        return self.bound_weight(s) * nll.sum(dim=1) + self.prior_nats * n_scored

    def loss(self, model: nn.Module, x0: torch.Tensor, noise: dict[str, torch.Tensor],
             loss_mask: torch.Tensor | None = None) -> LossOutput:
        """The training objective: the NELBO (default), or the recipe the options choose (module notes).

        flat: E_s[sum_{l masked} -log p_theta(x0_l | x_t)] with the same t = max(s, t_min); ce_lambda adds lambda
        times that flat sum to either weighting. complementary_masks: the mean over the draw and its mirror."""
        if self.complementary_masks:
            pairs = self._loss(model, *complement_pairs(x0, noise, loss_mask))
            return LossOutput(total=pairs.total / 2, n_tokens=pairs.n_tokens // 2)
        return self._loss(model, x0, noise, loss_mask)

    def _loss(self, model: nn.Module, x0: torch.Tensor, noise: dict[str, torch.Tensor],
              loss_mask: torch.Tensor | None) -> LossOutput:
        if self.loss_weighting == "elbo" and self.ce_lambda == 0:
            return super().loss(model, x0, noise, loss_mask)  # the bound itself, bit for bit
        bound, flat = self.bound_and_flat(model, x0, noise, loss_mask)
        per_seq = bound if self.loss_weighting == "elbo" else flat
        if self.ce_lambda:
            per_seq = per_seq + self.ce_lambda * flat
        n_tokens = x0.numel() if loss_mask is None else int(loss_mask.sum())
        return LossOutput(total=per_seq.sum(), n_tokens=n_tokens)

    def bound_and_flat(self, model: nn.Module, x0: torch.Tensor, noise: dict[str, torch.Tensor],
                       loss_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """From one forward pass: (`nelbo_per_sequence`, sum_{l masked} -log p_theta(x0_l | x_t)), each [B]."""
        if type(self).nelbo_per_sequence is not MaskedDiffusion.nelbo_per_sequence:
            raise UserError(f"process {self.name!r} does not support loss_weighting/ce_lambda")  # its own estimate
        s, nll = self._masked_nll(model, x0, noise, loss_mask)
        return self._nelbo(s, nll, x0, loss_mask), nll.sum(dim=1)


def complement_pairs(x0: torch.Tensor, noise: dict[str, torch.Tensor], loss_mask: torch.Tensor | None):
    """Each sequence twice: with its noise, then with the mirrored noise 1 - v (every entry is a uniform)."""
    mirrored = {k: torch.cat([v, 1 - v]) for k, v in noise.items()}
    return torch.cat([x0, x0]), mirrored, None if loss_mask is None else torch.cat([loss_mask, loss_mask])


def masked_nll(logits: torch.Tensor, x0: torch.Tensor, masked: torch.Tensor, mask_id: int) -> torch.Tensor:
    """-log p_theta(x0_l | x_t) at the masked positions, 0 elsewhere, [B, L]; [MASK] is never a prediction.
    float32 (float64 if the model computes in float64)."""
    logits = logits.double() if logits.dtype == torch.float64 else logits.float()
    logits[..., mask_id] = float("-inf")
    nll = -torch.log_softmax(logits, dim=-1).gather(-1, x0[..., None]).squeeze(-1)
    return torch.where(masked, nll, torch.zeros_like(nll))


def subs_log_probs(logits: torch.Tensor, xt: torch.Tensor, mask_id: int) -> torch.Tensor:
    """SUBS: forbid [MASK] as a prediction, and put all mass on x_t where it is not masked."""
    logits = logits.clone()
    logits[..., mask_id] = float("-inf")
    logp = torch.log_softmax(logits, dim=-1)
    unmasked = xt != mask_id
    carry = torch.full_like(logp, float("-inf")).scatter_(-1, xt[..., None], 0.0)
    return torch.where(unmasked[..., None], carry, logp)
