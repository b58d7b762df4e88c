"""Gradient guidance on the continuous latents (Diffusion-LM, Li et al. 2022, section 5.2).

After each reverse step proposes x_s (from N(mean, v) with the step's mean and posterior variance v), the
sampler runs `steps` Adagrad updates on x_s at the generated positions, descending
    lambda * |x_s - mean|^2 / (2 v)  -  sum_c weight_c * log p(c | x_s),
i.e. ascending lambda * log p(x_s | x_t) + log p(c | x_s) (their eq. 5's objective with the fluency weight
lambda). log p(c | x_s) comes from the denoiser: zhat(x_s, s) turned into token beliefs
log p(w_l | x_s) = log_softmax_w(-|zhat_l - e_w|^2 / tau) ([MASK] excluded), then each control's score
(`controls.py`); gradients flow through the network. A learned classifier on the noisy latents
(`classifier.Attribute`) gives log p(c | x_s) directly, as in the paper. This is a heuristic, as in the paper: it
does not sample p(w | c) exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..core.errors import UserError
from .controls import Control


def token_log_probs(process, model: nn.Module, xs: torch.Tensor, level: int, table: torch.Tensor,
                    tau: float) -> torch.Tensor:
    """log p(w_l | x_s) [B, L, V] from the denoiser's prediction at level `level` (differentiable in xs)."""
    zhat = process.predict(model, xs, level)
    dist = zhat.pow(2).sum(-1, keepdim=True) - 2 * zhat @ table.T + table.pow(2).sum(-1)
    logits = -dist / tau
    logits[..., process.mask_id] = float("-inf")
    return torch.log_softmax(logits, dim=-1)


@dataclass
class Guidance:
    controls: Sequence[Control]
    weights: Sequence[float] = field(default_factory=tuple)  # one per control (default 1 each)
    fluency: float = 0.01  # lambda: the weight of log p(x_s | x_t)
    steps: int = 3  # Adagrad updates per denoising step
    lr: float = 0.1  # Adagrad step size
    tau: float = 1.0  # temperature of the token beliefs, in squared embedding distance

    def __post_init__(self) -> None:
        if not self.controls or not all(isinstance(c, Control) for c in self.controls):
            raise UserError("Guidance needs a list of controls (textdiffusion.guidance.TokensAt, Contains, Length)")
        self.weights = tuple(self.weights) or (1.0,) * len(self.controls)
        if len(self.weights) != len(self.controls):
            raise UserError(f"Guidance has {len(self.controls)} controls but {len(self.weights)} weights")
        if not isinstance(self.steps, int) or self.steps < 1 or not self.lr > 0 or not self.tau > 0 \
                or not self.fluency >= 0:
            raise UserError("Guidance needs steps >= 1, lr > 0, tau > 0 and fluency >= 0")

    def score(self, token_logp: torch.Tensor | None, latents: torch.Tensor | None = None, level: int = 0,
              num_steps: int = 1) -> torch.Tensor:
        """sum_c weight_c log p(c | x_s), [B]: token controls read token_logp, latent ones the latents at `level`."""
        return sum(w * (c.latent_log_prob(latents, level, num_steps) if c.latent else c.log_prob(token_logp))
                   for w, c in zip(self.weights, self.controls, strict=True))

    def refine(self, process, model: nn.Module, xs: torch.Tensor, mean: torch.Tensor, var: float, level: int,
               free: torch.Tensor, context: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """`steps` Adagrad updates of xs [B, L, d] at the positions `free` [B, L, 1] (module notes); the
        network sees `context` at the other positions."""
        x = xs.detach().clone()
        accum = torch.zeros_like(x)
        var = max(var, 1e-12)
        with torch.enable_grad():
            for _ in range(self.steps):
                x.requires_grad_(True)
                seen = torch.where(free, x, context)
                logp = None if all(c.latent for c in self.controls) else token_log_probs(
                    process, model, seen, level, table, self.tau)
                score = self.score(logp, seen, level, process.num_steps)
                objective = self.fluency * (x - mean).pow(2).sum((1, 2)) / (2 * var) - score
                (grad,) = torch.autograd.grad(objective.sum(), x)
                grad = torch.where(free, grad, torch.zeros_like(grad))
                accum += grad.pow(2)
                x = (x - self.lr * grad / (accum.sqrt() + 1e-10)).detach()
        return x
