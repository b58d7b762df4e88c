"""D3PM: discrete-time diffusion with structured transition matrices (Austin et al., 2021).

Forward: q(x_t | x_{t-1}) = Cat(x_{t-1} Q_t), t = 1..T, independently per token, so that
q(x_t | x0) = Cat(x0 Qbar_t) with Qbar_t = Q_1 ... Q_t. The transitions (`transition`: absorbing, uniform,
embedding), their closed forms and the schedules (`beta_schedule`) are in `d3pm_transitions.py`. Every
schedule ends exactly at the stationary law, so q(x_T | x0) is the prior and the prior term L_T is exactly 0
(checked for every transition and schedule in tests/processes/test_nelbo_bound.py).

Reverse (x0-parameterisation): the network gives p~(x0 | x_t) (the model sees the noise level t/T), and
    p(x_s | x_t) = sum_x0 q(x_s | x_t, x0) p~(x0 | x_t)
                 ∝ Q_{s->t}[x_s, x_t] * sum_x0 Qbar_s[x0, x_s] p~(x0 | x_t) / Qbar_t[x0, x_t].
The paper's eq. 4 omits the 1 / Qbar_t[x0, x_t] weight. Both agree for absorbing (the weight is constant
in x0 when x_t = [MASK]); for uniform and embedding, eq. 4 is the exact reverse only if the network learns
p~ ∝ q(x0 | x_t) / q(x_t | x0), which the auxiliary cross-entropy pulls away from. With the weight, the
true posterior q(x0 | x_t) gives the exact reverse marginals, and L_vb and the CE term share one optimum.
x0 values with q(x_t | x0) = 0 get weight 0 (for absorbing: an unmasked token is carried over).

Loss: for t ~ U{1..T} (stratified over the batch),
    L_{t-1} = KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)), which for t = 1 is -log p(x0 | x1),
    NELBO estimate = T * L_{t-1} + L_T (L_T = 0)                                   -> nelbo_per_sequence
    training loss  = T * (L_{t-1} + lambda * CE) + L_T, CE = -log p~(x0 | x_t)     -> loss
i.e. L_{t-1} + lambda * CE per sampled step, the weighting of the paper's hybrid loss (eq. 5) as the
authors' code applies it, with lambda = 0.01 as in their text experiments; scaled by T so that
lambda = 0 gives the NELBO. Positions outside `loss_mask` are clean context: never corrupted, never scored.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from ..core.errors import UserError
from .base import DiffusionProcess, LossOutput, register
from .d3pm_transitions import (
    EMBEDDING_MAX_VOCAB,
    NEG,
    _Kernel,
    _RankOneKernel,
    _safe_log,
    _SpectralKernel,
    byte_embedding as byte_embedding,  # re-exported: the public API stays here
    cosine_alpha_bar,
    knn_rate_matrix,
    linear_alpha_bar,
    load_embedding,
    spectral_mutual_info_exponents,
    uniform_mutual_info_alpha_bar,
)

TRANSITIONS = ("absorbing", "uniform", "embedding")
SCHEDULES = ("auto", "mutual_info", "cosine", "linear")
DENSE_MAX_VOCAB = 4096  # transition_matrix / cumulative_matrix (tests, inspection) are dense V x V


def log_normalize(x: torch.Tensor) -> torch.Tensor:
    """log_softmax over the last dimension. torch.log_softmax in float32 on CPU accumulates its sum
    sequentially and is off by ~2e-4 at V = 50k when one entry dominates; logsumexp is not."""
    return x - torch.logsumexp(x, dim=-1, keepdim=True)


@register
class D3PM(DiffusionProcess):
    name = "d3pm"
    default_sampler = "d3pm"

    def __init__(
        self,
        vocab_size: int,
        mask_id: int,
        transition: str = "absorbing",
        num_steps: int = 1000,
        beta_schedule: str = "auto",
        hybrid_lambda: float = 0.01,
        knn: int = 16,
        embedding: str | list | torch.Tensor = "bytes",
        uniform_rate: float = 1e-3,
        antithetic: bool = True,
    ):
        if transition not in TRANSITIONS:
            raise UserError(f"unknown D3PM transition {transition!r}: choose one of {', '.join(TRANSITIONS)}")
        if beta_schedule not in SCHEDULES:
            raise UserError(f"unknown D3PM beta_schedule {beta_schedule!r}: choose one of {', '.join(SCHEDULES)}")
        if not isinstance(num_steps, int) or num_steps < 1:
            raise UserError(f"num_steps (T) must be a positive integer, got {num_steps!r}")
        if hybrid_lambda < 0:
            raise UserError(f"hybrid_lambda must be >= 0, got {hybrid_lambda}")
        if not 0 <= mask_id < vocab_size or vocab_size < 3:
            raise UserError(
                f"need 0 <= mask_id < vocab_size and at least 2 other tokens, got mask_id={mask_id}, "
                f"vocab_size={vocab_size}"
            )
        self.vocab_size, self.mask_id = vocab_size, mask_id
        self.transition, self.num_steps, self.hybrid_lambda = transition, num_steps, float(hybrid_lambda)
        self.beta_schedule, self.knn, self.uniform_rate, self.antithetic = beta_schedule, knn, uniform_rate, antithetic
        self.embedding = embedding
        self.real = torch.tensor([i for i in range(vocab_size) if i != mask_id], dtype=torch.long)
        schedule = beta_schedule
        if schedule == "auto":
            schedule = "cosine" if transition == "uniform" else "mutual_info"
        self.resolved_schedule = schedule
        self.kernel = self._build_kernel(schedule)

    # ---- construction ---------------------------------------------------------------------
    def _build_kernel(self, schedule: str) -> _Kernel:
        v, k, t_steps = self.vocab_size, self.vocab_size - 1, self.num_steps
        if self.transition in ("absorbing", "uniform"):
            if schedule == "cosine":
                abar = cosine_alpha_bar(t_steps)
            elif schedule == "linear" or self.transition == "absorbing":  # MI for absorbing is linear
                abar = linear_alpha_bar(t_steps)
            else:
                abar = uniform_mutual_info_alpha_bar(t_steps, k)
            m = torch.zeros(v, dtype=torch.float64)
            if self.transition == "absorbing":
                m[self.mask_id] = 1.0
            else:
                m[self.real] = 1.0 / k
            return _RankOneKernel(abar, m)
        uses_bytes = isinstance(self.embedding, str) and self.embedding == "bytes"  # too big: load_embedding says so
        if v > EMBEDDING_MAX_VOCAB and not uses_bytes:
            raise UserError(
                f"transition='embedding' supports vocabularies of at most {EMBEDDING_MAX_VOCAB} tokens "
                f"(it keeps a dense K x K eigenbasis); this one has {v}. Use 'uniform' or 'absorbing'."
            )
        if not isinstance(self.knn, int) or self.knn < 1:
            raise UserError(f"knn must be a positive integer, got {self.knn!r}")
        if not self.uniform_rate > 0:
            raise UserError(f"uniform_rate must be > 0 (it keeps the chain irreducible), got {self.uniform_rate}")
        table = load_embedding(self.embedding, v)[self.real]
        rate = knn_rate_matrix(table, min(self.knn, k - 1), self.uniform_rate)
        kernel = _SpectralKernel(rate, torch.zeros(t_steps + 1, dtype=torch.float64), self.real, v)
        if schedule == "mutual_info":
            kernel.c = spectral_mutual_info_exponents(kernel, t_steps)
        else:
            abar = cosine_alpha_bar(t_steps) if schedule == "cosine" else linear_alpha_bar(t_steps)
            kernel.c = -_safe_log(abar)
            kernel.c[0], kernel.c[-1] = 0.0, math.inf
        return kernel

    def config(self) -> dict:
        emb = self.embedding
        if isinstance(emb, torch.Tensor):
            emb = emb.tolist()
        elif isinstance(emb, Path):
            emb = str(emb)
        return {
            "transition": self.transition,
            "num_steps": self.num_steps,
            "beta_schedule": self.beta_schedule,
            "hybrid_lambda": self.hybrid_lambda,
            "knn": self.knn,
            "embedding": emb,
            "uniform_rate": self.uniform_rate,
            "antithetic": self.antithetic,
        }

    @property
    def needs_time_conditioning(self) -> bool:
        """p(x0 | x_t) depends on t except for absorbing (where x_t alone says which tokens are noise)."""
        return self.transition != "absorbing"

    # ---- forward process ------------------------------------------------------------------
    def transition_matrix(self, t: int) -> torch.Tensor:
        """Q_t, dense [V, V] float64, built on its own (for checks on small vocabularies)."""
        self._check_dense(t)
        return self.kernel.step(t)

    def cumulative_matrix(self, t: int, s: int = 0) -> torch.Tensor:
        """Q_{s->t} = Q_{s+1} ... Q_t (s = 0: Qbar_t) from the closed form, dense [V, V] float64."""
        self._check_dense(t)
        if t == s:
            return torch.eye(self.vocab_size, dtype=torch.float64)
        return self.kernel.dense(s, t)

    def _check_dense(self, t: int) -> None:
        if self.vocab_size > DENSE_MAX_VOCAB:
            raise UserError(f"dense transition matrices are for vocabularies of at most {DENSE_MAX_VOCAB} tokens")
        if not 0 <= t <= self.num_steps:
            raise UserError(f"t must be in 0..{self.num_steps}, got {t}")

    def sample_t(self, batch: int, device, generator: torch.Generator | None = None) -> torch.Tensor:
        """t ~ U{1..T}, stratified across the batch when antithetic (each stratum is still uniform)."""
        u = torch.rand(batch, device=device, generator=generator)
        if self.antithetic:
            u = (u + torch.arange(batch, device=device)) / batch
        return (u * self.num_steps).long().clamp(0, self.num_steps - 1) + 1

    def sample_noise(self, x0, generator=None):
        return {
            "t": self.sample_t(x0.shape[0], x0.device, generator),
            "u": torch.rand(x0.shape, device=x0.device, generator=generator, dtype=torch.float64),
            "v": torch.rand(x0.shape, device=x0.device, generator=generator, dtype=torch.float64),
        }

    def corrupt(
        self, x0: torch.Tensor, t: torch.Tensor, u: torch.Tensor, v: torch.Tensor, scored: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x_t ~ q(x_t | x0) = Cat(x0 Qbar_t) from uniforms u, v ([B, L]); context (not scored) stays clean."""
        self.kernel.to(x0.device)
        real = self.real.to(x0.device)
        if isinstance(self.kernel, _RankOneKernel):
            keep = u < self.kernel.alpha_bar[t][:, None]
            if self.transition == "absorbing":
                noise = torch.full_like(x0, self.mask_id)
            else:
                noise = real[(v * len(real)).long().clamp_max(len(real) - 1)]
            xt = torch.where(keep, x0, noise)
        else:  # inverse-CDF draw from the dense row Qbar_t[x0, :]
            tt = t[:, None].expand_as(x0).reshape(-1)
            probs = self.kernel.log_row(tt, x0.reshape(-1), torch.float64).exp()[:, real]
            cdf = probs.cumsum(-1)
            idx = torch.searchsorted(cdf, (v.reshape(-1, 1) * cdf[:, -1:]).contiguous()).clamp_max(len(real) - 1)
            xt = real[idx[:, 0]].view_as(x0)
        if scored is not None:
            xt = torch.where(scored, xt, x0)
        return xt

    def sample_prior(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """n draws from the stationary law p(x_T): [MASK] for absorbing, uniform over the K tokens otherwise."""
        if self.transition == "absorbing":
            return torch.full((n,), self.mask_id, dtype=torch.long, device=device)
        idx = torch.randint(0, len(self.real), (n,), generator=generator, device=device)
        return self.real.to(device)[idx]

    # ---- reverse process ------------------------------------------------------------------
    def model_log_probs(self, model: nn.Module, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """log p~(x0 | x_t) in float32 (float64 for a float64 model), [B, L, V]; [MASK] is never a prediction.
        The model sees t/T."""
        logits = model(xt, t.float() / self.num_steps)
        logits = logits.double() if logits.dtype == torch.float64 else logits.float()
        logits[..., self.mask_id] = NEG
        return log_normalize(logits)

    def reverse_logits(self, log_x0: torch.Tensor, xt: torch.Tensor, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Unnormalised log p(x_s | x_t) = log sum_x0 q(x_s | x_t, x0) p(x0), rows [N]; s < t.

        log_x0 [N, V] (a one-hot gives the true posterior q(x_s | x_t, x0)); x0 values that cannot
        produce x_t get weight 0.
        """
        self.kernel.to(xt.device)
        dtype = log_x0.dtype
        like = self.kernel.log_col(torch.zeros_like(t), t, xt, dtype)  # log q(x_t | x0 = .)
        lw = torch.where(like > NEG / 2, log_x0.clamp_min(NEG) - like, torch.full_like(like, NEG))
        return self.kernel.log_col(s, t, xt, dtype) + self.kernel.log_mix(s, lw)

    def reverse_log_probs(self, log_x0: torch.Tensor, xt: torch.Tensor, s: torch.Tensor, t: torch.Tensor):
        return log_normalize(self.reverse_logits(log_x0, xt, s, t))

    def sampling_times(self, steps: int | None = None) -> list[int]:
        """T = t_0 > t_1 > ... > t_n = 0: every step (None) or `steps` evenly strided ones (at most T)."""
        n = self.num_steps if steps is None else min(steps, self.num_steps)
        return [int(x) for x in torch.linspace(self.num_steps, 0, n + 1, dtype=torch.float64).round()]

    # ---- loss -----------------------------------------------------------------------------
    def elbo_terms(
        self, model: nn.Module, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor, scored: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-position L_{t-1} (KL; -log p(x0 | x1) at t = 1) and CE = -log p~(x0 | x_t), each [B, L].

        Zero outside `scored`, and (absorbing) wherever x_t is not [MASK]: both are exactly 0 there.
        """
        log_x0 = self.model_log_probs(model, xt, t)
        active = torch.ones_like(x0, dtype=torch.bool) if scored is None else scored.clone()
        if self.transition == "absorbing":
            active &= xt == self.mask_id
        vb = torch.zeros(x0.shape, dtype=log_x0.dtype, device=x0.device)
        ce = torch.zeros_like(vb)
        if not active.any():
            return vb + 0 * log_x0.sum(), ce  # keep the graph connected for backward
        tt = t[:, None].expand_as(x0)[active]
        x0a, xta, lpa = x0[active], xt[active], log_x0[active]
        kernel, s = self.kernel.to(x0.device), tt - 1
        like = kernel.log_col(torch.zeros_like(tt), tt, xta, lpa.dtype)  # log q(x_t | x0 = .), shared
        col = kernel.log_col(s, tt, xta, lpa.dtype)  # log Q_{t-1 -> t}[., x_t]
        consistent = like > NEG / 2
        with torch.no_grad():  # q(x_{t-1} | x_t, x0): the same formula with a one-hot x0
            onehot = torch.full_like(lpa, NEG).scatter_(1, x0a[:, None], 0.0)
            log_q = log_normalize(col + kernel.log_mix(s, torch.where(consistent, onehot - like, NEG)))
        lp0 = log_normalize(torch.where(consistent, lpa.clamp_min(NEG), NEG))
        log_p = log_normalize(col + kernel.log_mix(s, torch.where(consistent, lp0 - like, NEG)))
        kl = (log_q.exp() * (log_q - log_p)).sum(-1).clamp_min(0.0)
        nll = -lp0.gather(1, x0a[:, None])[:, 0]
        return vb.index_put((active,), kl), ce.index_put((active,), nll)

    def nelbo_per_sequence(
        self, model: nn.Module, x0: torch.Tensor, noise: dict[str, torch.Tensor], loss_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One-t Monte Carlo estimate of each sequence's NELBO, [B] nats: T * L_{t-1} (+ L_T = 0)."""
        t = noise["t"]
        xt = self.corrupt(x0, t, noise["u"], noise["v"], loss_mask)
        vb, _ = self.elbo_terms(model, x0, xt, t, loss_mask)
        return self.num_steps * vb.sum(dim=1)

    def loss(
        self, model: nn.Module, x0: torch.Tensor, noise: dict[str, torch.Tensor], loss_mask: torch.Tensor | None = None
    ) -> LossOutput:
        """The hybrid objective T * (L_{t-1} + lambda * CE) summed over the batch (see the module notes)."""
        t = noise["t"]
        xt = self.corrupt(x0, t, noise["u"], noise["v"], loss_mask)
        vb, ce = self.elbo_terms(model, x0, xt, t, loss_mask)
        total = self.num_steps * (vb.sum() + self.hybrid_lambda * ce.sum())
        n_tokens = x0.numel() if loss_mask is None else int(loss_mask.sum())
        return LossOutput(total=total, n_tokens=n_tokens)
