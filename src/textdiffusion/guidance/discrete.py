"""The discrete baseline of the control table: classifier guidance for masked diffusion (MDLM).

Guidance asks for p(x_s | x_t, c) ∝ p(x_s | x_t) p(c | x_s)^gamma. In a masked model a position changes only from
[MASK] to a token, and the factorised sampler draws that token from p_theta(x0_l | x_t); `TiltedDenoiser` tilts
that draw, for every masked position l and token w, by exp(gamma * Delta_lw), the first-order (Taylor) estimate
of log p(c | x_t with x_l = w) - log p(c | x_t), as in Taylor-approximated guidance (Nisonoff et al. 2024;
Vignac et al. 2023). The unmasking times keep the schedule's; only which token a position takes is guided.

Two kinds of control, the same as the continuous family's:
- token controls (`Contains`, `Length`, `TokensAt`) score the model's token beliefs: p_theta(x0_l | x_t) at
  masked positions, the fixed token at the others. Delta_lw is the gradient of the score in the masked position's
  log-belief log p_theta(x0_l = w | x_t): how much the control gains per nat that w gains there (bounded: 0..1 for
  `Contains`, which is the expected share of the control's matches that use w at l). The network is not
  differentiated (one forward pass per step, as unguided).
- `classifier.Attribute` with a "tokens" classifier reads x_t as one-hot vectors; Delta_lw =
  d log p(c | x) / d x_lw - d log p(c | x) / d x_l[MASK] (the Taylor step from [MASK] to w).
gamma = 0 is the model itself. Wrap a denoiser with `tilted(model, guidance, mask_id)`; its forward has the
model's signature, so every masked sampler runs it (the ancestral sampler's logit cache stays exact: the tilt
depends only on x_t).
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.errors import UserError
from .gradient import Guidance


class TiltedDenoiser(nn.Module):
    """A masked denoiser whose logits are tilted towards the controls (module notes); called like the model."""

    def __init__(self, model: nn.Module, guidance: Guidance, mask_id: int, scale: float):
        super().__init__()
        self.model, self.guidance, self.mask_id, self.scale = model, guidance, mask_id, scale
        self.cfg = getattr(model, "cfg", None)

    def tilt(self, ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Delta [B, L, V] at masked positions, 0 elsewhere."""
        vocab = logits.shape[-1]
        masked = (ids == self.mask_id)[..., None]
        with torch.enable_grad():
            logp = torch.log_softmax(logits.float().detach().index_fill(-1, torch.tensor([self.mask_id],
                                     device=logits.device), float("-inf")), -1).requires_grad_(True)
            onehot = nn.functional.one_hot(ids, vocab).float().requires_grad_(True)
            certain = torch.log(onehot.detach().clamp_min(1e-30))
            beliefs = torch.where(masked, logp, certain)
            score = torch.zeros(ids.shape[0], device=ids.device)
            for w, c in zip(self.guidance.weights, self.guidance.controls, strict=True):
                score = score + w * (c.token_log_prob(onehot, self.mask_id) if c.latent else c.log_prob(beliefs))
            g_logp, g_onehot = torch.autograd.grad(score.sum(), [logp, onehot], allow_unused=True)
        delta = torch.zeros_like(logp)
        if g_logp is not None:
            delta = delta + torch.nan_to_num(g_logp, nan=0.0, posinf=0.0, neginf=0.0)
        if g_onehot is not None:
            delta = delta + g_onehot - g_onehot[..., self.mask_id : self.mask_id + 1]
        return torch.where(masked, delta, torch.zeros_like(delta))

    def forward(self, ids: torch.Tensor, t: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        logits = self.model(ids, t, **kwargs)
        if logits.shape[:2] != ids.shape:
            raise UserError("guidance of a masked model needs the logits of every position (no partial outputs)")
        return logits.float() + self.scale * self.tilt(ids, logits)


def tilted(model: nn.Module, guidance: Guidance | None, mask_id: int, scale: float) -> nn.Module:
    """`model` itself without guidance or for scale 0, else its tilted wrapper."""
    if guidance is None or scale == 0:
        return model
    if not isinstance(guidance, Guidance):
        raise UserError(f"guidance must be a textdiffusion.guidance.Guidance, got {type(guidance).__name__}")
    if not scale > 0:
        raise UserError(f"the guidance scale gamma must be >= 0, got {scale!r}")
    return TiltedDenoiser(model, guidance, mask_id, float(scale))
