"""Next-sentence concept diffusion (Large Concept Model, LCM team 2024, its diffusion "Two-Tower" variant): Gaussian
diffusion over the embedding of the next sentence, given the clean embeddings of the sentences before it.

Sentences are embedded by a frozen encoder that generated nothing (all-MiniLM-L6-v2, eval/sentence_features.py; the
caller passes its vectors in) and standardised per coordinate with a mean and std fitted on the training embeddings
(`EmbeddingScaler`, LCM's normaliser: a unit vector of width 384 has coordinates near 0.05, far below unit noise):
x0 = (e - mean) / std. The forward process is gaussian_math.py's, as Diffusion-LM's (gaussian.py):
    q(x_t | x0) = N(sqrt(abar_t) x0, (1 - abar_t) I),  t ~ U{1..T},
and the denoiser (models/concept.py) predicts x0, LCM's objective: the loss of a sentence is the mean over its
coordinates of |x0_hat - x0|^2. A window of N sentences trains N predictions at once, each sentence the "next" one
of those before it (teacher forcing). With probability `cond_drop` a sentence's context is replaced by the learned
null vector, so one network is also the unconditional model of classifier-free guidance (Ho & Salimans 2022):
    x0_hat = x0_hat(null) + s (x0_hat(context) - x0_hat(null))       (`predict`; s = 1 the conditional model)
This is not a registered DiffusionProcess: it trains on sequences of sentence vectors, not token ids, so the trainer
does not run it; benchmarks/concept_train.py trains it with the decoder, samplers/concept.py samples it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.errors import UserError
from ..models.concept import ConceptDenoiser
from . import gaussian_math
from .base import LossOutput


class EmbeddingScaler:
    """x = (e - mean) / std per coordinate, fitted on training embeddings [n, E] (std floored at `min_std`)."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        if mean.shape != std.shape or mean.dim() != 1:
            raise UserError(f"a scaler needs a mean and a std of one width, got {tuple(mean.shape)} and "
                            f"{tuple(std.shape)}")
        self.mean, self.std = mean.float(), std.float()

    @classmethod
    def fit(cls, embeddings: torch.Tensor, min_std: float = 1e-4) -> EmbeddingScaler:
        if embeddings.dim() != 2 or embeddings.shape[0] < 2:
            raise UserError("fitting the embedding scaler needs at least 2 embeddings [n, E]")
        e = embeddings.double()
        return cls(e.mean(0), e.std(0).clamp_min(min_std))

    def __call__(self, e: torch.Tensor) -> torch.Tensor:
        return (e.float() - self.mean.to(e.device)) / self.std.to(e.device)

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() * self.std.to(x.device) + self.mean.to(x.device)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean, "std": self.std}


@dataclass
class ConceptNoise:
    t: torch.Tensor  # [B, N] levels in 1..T
    eps: torch.Tensor  # [B, N, E]
    drop: torch.Tensor  # [B, N] bool: the context replaced by the null vector


class ConceptDiffusion:
    name = "concept"

    def __init__(self, num_steps: int = 100, noise_schedule: str = "cosine", cond_drop: float = 0.15):
        if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
            raise UserError(f"num_steps must be a positive integer (T, the diffusion levels), got {num_steps!r}")
        if isinstance(cond_drop, bool) or not isinstance(cond_drop, (int, float)) or not 0 <= cond_drop < 1:
            raise UserError(f"cond_drop must be in [0, 1) (the chance a sentence trains the unconditional model), "
                            f"got {cond_drop!r}")
        self.num_steps, self.noise_schedule, self.cond_drop = num_steps, noise_schedule, float(cond_drop)
        self.abar = gaussian_math.signal_levels(noise_schedule, num_steps)  # float64 [T + 1]

    def config(self) -> dict:
        return {"num_steps": self.num_steps, "noise_schedule": self.noise_schedule, "cond_drop": self.cond_drop}

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        return t.float() / self.num_steps

    def sample_noise(self, x0: torch.Tensor, generator: torch.Generator | None = None) -> ConceptNoise:
        """The draws of one loss evaluation for a window x0 [B, N, E]."""
        b, n, _ = x0.shape
        dev = x0.device
        t = torch.randint(1, self.num_steps + 1, (b, n), device=dev, generator=generator)
        eps = torch.randn(x0.shape, device=dev, generator=generator)
        drop = torch.rand((b, n), device=dev, generator=generator) < self.cond_drop
        return ConceptNoise(t=t, eps=eps, drop=drop)

    def corrupt(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t [...] matching x0's leading dimensions."""
        abar = self.abar.to(x0.device)[t].float()[..., None]
        return abar.sqrt() * x0.float() + (1 - abar).sqrt() * eps.float()

    def loss(self, denoiser: ConceptDenoiser, x0: torch.Tensor, noise: ConceptNoise,
             valid: torch.Tensor | None = None) -> LossOutput:
        """Sum over the window's sentences (those `valid` [B, N], all when None) of the mean squared error of the
        x0 prediction per coordinate; n_tokens counts the sentences, so `.mean` is the per-sentence MSE."""
        xt = self.corrupt(x0, noise.t, noise.eps)
        x0_hat = denoiser(x0, xt, self.model_time(noise.t), noise.drop).float()
        per_sentence = (x0_hat - x0.float()).pow(2).mean(-1)
        if valid is None:
            return LossOutput(total=per_sentence.sum(), n_tokens=per_sentence.numel())
        return LossOutput(total=(per_sentence * valid.float()).sum(), n_tokens=int(valid.sum()))

    def predict(self, denoiser: ConceptDenoiser, h: torch.Tensor, xt: torch.Tensor, t: int,
                guidance: float = 1.0) -> torch.Tensor:
        """x0_hat [B, E] of the next sentence from context states h [B, d] (ConceptDenoiser.context_states' last)
        and x_t at level t, with classifier-free guidance of scale `guidance` (module notes): 0 is the unconditional
        model, 1 the conditional one; other scales cost two denoiser passes."""
        time = torch.full(xt.shape[:1], t / self.num_steps, device=xt.device)
        null = denoiser.null.to(h.dtype).expand_as(h)
        if guidance == 0:
            return denoiser.denoise(null, xt, time).float()
        cond = denoiser.denoise(h, xt, time).float()
        if guidance == 1:
            return cond
        uncond = denoiser.denoise(null, xt, time).float()
        return uncond + guidance * (cond - uncond)

    def reverse_step(self, x0_hat: torch.Tensor, xt: torch.Tensor, t: int, s: int, eta: float,
                     noise: torch.Tensor) -> torch.Tensor:
        """x_s from x_t given x0_hat (s < t): eta = 1 draws from q(x_s | x_t, x0 = x0_hat) (Ho et al. 2020, eq. 7),
        eta = 0 is deterministic DDIM (Song et al. 2021, eq. 12)."""
        if not 0 <= s < t <= self.num_steps:
            raise UserError(f"a reverse step needs 0 <= s < t <= {self.num_steps}, got t={t}, s={s}")
        return gaussian_math.ddim_step(self.abar, xt.float(), x0_hat.float(), t, s, eta, noise.float())
