"""Continuous diffusion on learned token embeddings: Diffusion-LM (Li et al., 2022).

Latents. Each token w has a learned embedding z = EMB(w) in R^d (the model's `embed` table, d =
`embed_dim`). Levels t = 0..T have signal fractions abar_0 > abar_1 > ... > abar_T (the `noise_schedule`),
and the forward chain z -> x_0 -> x_1 -> ... -> x_T is Gaussian and Markov with marginals
    q(x_t | w) = N(sqrt(abar_t) z, (1 - abar_t) I),
so x_0 is Diffusion-LM's embedding step q(x_0 | w) (a small noise, 1 - abar_0 > 0) and x_T ~ N(0, I) nearly.
The generative model: x_T ~ N(0, I); p(x_{t-1} | x_t) = q(x_{t-1} | x_t, z = zhat(x_t, t)) for t = T..1 (the
x0-parameterisation: the network predicts the clean embedding, with the posterior's fixed variance); then
rounding w ~ p(w | x_0) = prod_l softmax_w(-|x_0,l - sqrt(abar_0) e_w|^2 / (2 (1 - abar_0))), [MASK] excluded
(the exact posterior of w given x_0 under a uniform prior over tokens).

Bound (`nelbo_per_sequence`). For that model, for any network,
    -log p(w) <= KL(q(x_T | w) || N(0, I))                                                  (prior)
                 + sum_{t=1}^T E_q KL(q(x_{t-1} | x_t, z) || p(x_{t-1} | x_t))                 (diffusion)
                 + E_{q(x_0 | w)} [-log p(w | x_0)],                                           (rounding)
where p(w) is the probability that the ancestral sampler with `rounding="sample"`, all T steps, eta = 1 and
no clamping writes w. Both KLs have closed forms: the diffusion term is w_t |z - zhat|^2 with
w_t = (SNR(t-1) - SNR(t)) / 2, SNR = abar / (1 - abar) (equal variances; Kingma et al. 2021, eq. 13), and
the prior term is (abar_T |z|^2 - d abar_T - d log(1 - abar_T)) / 2 per token. One forward pass estimates the
sum without bias: t ~ pi(t) (stratified over the batch), w_t |z - zhat(x_t, t)|^2 / pi(t). The proposal is the
defensive mixture pi(t) = (1/T + w_t / sum_k w_k) / 2: a trained network's error stays of one size at low noise,
where w_t is largest (w_1 is about a third of sum_k w_k for sqrt at T = 2000), so t ~ U{1..T} alone rarely
visits the terms that make the bound (on a tiny byte model: spread 85 nats/token, mean 17 against the 25 that
the mixture finds with spread 25); the uniform half keeps 1 / pi(t) <= 2T for an exact predictor, whose
low-noise errors vanish.
The clamping trick, DDIM steps and argmax rounding sample other distributions, which this number does not bound.

Training (`loss`): objective="simple" is Diffusion-LM's end-to-end objective L_e2e_simple (their eq. 2 with
the x0-parameterisation of section 4.2): |zhat(x_t, t) - z|^2 averaged over the d dimensions with t ~ U{1..T}
(`train_noise`), plus the rounding cross-entropy, plus the prior term; gradients reach the embeddings
through the targets, through x_t and through the rounding. objective="nelbo" trains on the bound itself.
Positions outside `loss_mask` are clean context: the network sees their embedding z itself, and they are
not scored, so the bound is on -log p(w[loss_mask] | w[~loss_mask]).

Score interpolation (CDCD, Dieleman et al., 2022): prediction="tokens" makes the network output token logits
F [B, L, V] and zhat = sum_w p(w_l | x_t) e_w, the posterior mean, with
    log p(w_l | x_t) = F_w + log N(x_t,l; sqrt(abar_t) e_w, (1 - abar_t) I) + const
(Bayes: x_t,l depends on the tokens only through w_l, so p(w_l | x_t) ∝ p(x_t,l | w_l) p(w_l | x_t,-l); F plays
log p(w_l | x_t,-l), and the exact posterior mean is reachable). At low noise the likelihood term alone decodes the
token, where an embedding-predicting network leaves an error that the bound's largest weights multiply.
objective="ce" trains CDCD's cross-entropy -log p(w_l | x_t) (with the rounding and prior terms) instead of the
MSE, on embeddings scaled to norm sqrt(d) as CDCD does (the cross-entropy alone would grow them without end);
time_warp=True (objective "ce" only) draws the training levels from CDCD's time warping (`time_warp.py`): a
monotone curve fitted online to the cross-entropy over t, sampled through its inverse, so t concentrates where the
loss changes fastest; without it t is uniform. The loss is not reweighted (the warp is CDCD's choice of weighting
over t; `t_weight` = 1 / pi(t) is returned for a caller that wants the uniform-t expectation).

DiffuSeq (Gong et al., 2022): `source_len` = S > 0 makes the first S positions of every sequence a clean source
in training and in the bound (partial noising: only the target positions S..L-1 are noised and scored, their
eq. 3-4), so the model learns p(target | source); sample it with the source as the prompt. Per-token figures
of such a model should divide by the target tokens: pass loss_mask = positions >= S to `Pipeline.likelihood`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..core.errors import UserError
from .base import DiffusionProcess, LossOutput, register
from .gaussian_math import NOISE_SCHEDULES as NOISE_SCHEDULES, posterior, sampling_times, signal_levels
from .time_warp import TimeWarp

OBJECTIVES = ("simple", "nelbo", "ce")
PREDICTIONS = ("embedding", "tokens")


def backbone(model: nn.Module) -> nn.Module:
    """The model inside DDP / torch.compile wrappers (the process reads its token table)."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def nearest_tokens(vectors: torch.Tensor, table: torch.Tensor, mask_id: int | None = None) -> torch.Tensor:
    """The id of the row of `table` [V, d] nearest (L2) to each vector [..., d]; `mask_id` is never chosen."""
    flat = vectors.reshape(-1, vectors.shape[-1]).float()
    table = table.float()
    # |v - e|^2 = |v|^2 - 2 v.e + |e|^2; the first term is the same for every token
    dist = table.pow(2).sum(-1)[None] - 2 * flat @ table.T
    if mask_id is not None:
        dist[:, mask_id] = float("inf")
    return dist.argmin(-1).view(vectors.shape[:-1])


@register
class GaussianDiffusion(DiffusionProcess):
    name = "gaussian"
    default_sampler = "gaussian"

    def __init__(self, vocab_size: int, mask_id: int, noise_schedule: str = "sqrt", num_steps: int = 2000,
                 embed_dim: int = 16, objective: str = "simple", antithetic: bool = True, source_len: int = 0,
                 prediction: str = "embedding", time_warp: bool = False):
        if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
            raise UserError(f"num_steps (T) must be a positive integer, got {num_steps!r}")
        if not isinstance(embed_dim, int) or isinstance(embed_dim, bool) or embed_dim < 1:
            raise UserError(f"embed_dim must be a positive integer (Diffusion-LM uses 16 to 128), got {embed_dim!r}")
        if not isinstance(source_len, int) or isinstance(source_len, bool) or source_len < 0:
            raise UserError(f"source_len must be an integer >= 0 (0: noise every position), got {source_len!r}")
        if objective not in OBJECTIVES:
            raise UserError(f"unknown objective {objective!r}: choose one of {', '.join(OBJECTIVES)}")
        if prediction not in PREDICTIONS:
            raise UserError(f"unknown prediction {prediction!r}: choose one of {', '.join(PREDICTIONS)}")
        if objective == "ce" and prediction != "tokens":
            raise UserError("objective 'ce' (CDCD) needs prediction='tokens': set process.prediction=tokens")
        if not isinstance(time_warp, bool):
            raise UserError(f"time_warp must be true or false, got {time_warp!r}")
        if time_warp and objective != "ce":
            raise UserError("time_warp (CDCD) fits the cross-entropy over t: set process.objective=ce "
                            "process.prediction=tokens")
        if not 0 <= mask_id < vocab_size or vocab_size < 2:
            raise UserError(f"need 0 <= mask_id < vocab_size and another token, got mask_id={mask_id}, "
                            f"vocab_size={vocab_size}")
        self.vocab_size, self.mask_id = vocab_size, mask_id
        self.noise_schedule, self.num_steps, self.embed_dim = noise_schedule, num_steps, embed_dim
        self.objective, self.antithetic, self.source_len = objective, antithetic, source_len
        self.prediction = prediction
        self.warp = TimeWarp(num_steps, bins=min(32, num_steps)) if time_warp else None
        self.abar = signal_levels(noise_schedule, num_steps)  # float64 [T + 1]
        snr = self.abar / (1 - self.abar)
        self.kl_weight = torch.cat([torch.zeros(1, dtype=torch.float64), 0.5 * (snr[:-1] - snr[1:])])  # w_t, t>=1
        uniform = torch.cat([torch.zeros(1, dtype=torch.float64), torch.full((num_steps,), 1.0 / num_steps,
                                                                             dtype=torch.float64)])
        self.proposal = 0.5 * (uniform + self.kl_weight / self.kl_weight.sum())  # pi(t) for the bound (pi(0) = 0)

    def config(self) -> dict:
        return {"noise_schedule": self.noise_schedule, "num_steps": self.num_steps, "embed_dim": self.embed_dim,
                "objective": self.objective, "antithetic": self.antithetic, "source_len": self.source_len,
                "prediction": self.prediction, **({"time_warp": True} if self.warp is not None else {})}

    def model_fields(self) -> dict:
        return {"embed_dim": self.embed_dim, "embed_logits": self.prediction == "tokens"}

    def training_state(self) -> dict:
        return {"time_warp": self.warp.state()} if self.warp is not None else {}

    def load_training_state(self, state: dict) -> None:
        if self.warp is not None and "time_warp" in state:
            self.warp.load_state(state["time_warp"])

    @property
    def needs_time_conditioning(self) -> bool:
        return True

    # ---- the pieces samplers and tests use -------------------------------------------------
    def embedding_table(self, model: nn.Module) -> torch.Tensor:
        """The model's token embeddings [V, embed_dim] (with their gradient); norm sqrt(d) each for objective="ce"."""
        table = backbone(model).embed.weight
        if table.dim() != 2 or table.shape != (self.vocab_size, self.embed_dim):
            raise UserError(f"this model's token table is {tuple(table.shape)} but the gaussian process needs "
                            f"({self.vocab_size}, {self.embed_dim}): load the model with its own process")
        if self.objective == "ce":
            table = math.sqrt(self.embed_dim) * torch.nn.functional.normalize(table, dim=-1)
        return table

    def model_time(self, t: torch.Tensor | int, batch: int, device) -> torch.Tensor:
        """The noise level the network sees for level t: t / T, [batch]."""
        return torch.full((batch,), float(t) / self.num_steps, device=device) if isinstance(t, int) \
            else t.float() / self.num_steps

    def predict(self, model: nn.Module, xt: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """zhat(x_t, t): the network's prediction of the clean embeddings, float32 [B, L, d]."""
        return self.predict_with_tokens(model, xt, t)[0]

    def predict_with_tokens(self, model: nn.Module, xt: torch.Tensor,
                            t: torch.Tensor | int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(zhat, log p(w_l | x_t) [B, L, V] for prediction="tokens", else None); see the module notes."""
        out = model(xt, self.model_time(t, xt.shape[0], xt.device)).float()
        if self.prediction == "embedding":
            return out, None
        table = self.embedding_table(model).float()
        abar = self.abar.to(xt.device)[t].float()
        abar = abar.view(-1, 1, 1) if abar.dim() else abar
        # log N(x_t,l; sqrt(abar) e_w, (1 - abar) I) up to terms constant in w
        loglik = (abar.sqrt() * xt.float() @ table.T - 0.5 * abar * table.pow(2).sum(-1)) / (1 - abar)
        logits = out + loglik
        logits[..., self.mask_id] = float("-inf")
        logp = torch.log_softmax(logits, dim=-1)
        return logp.exp() @ table, logp

    def posterior(self, s: int | torch.Tensor, t: int | torch.Tensor) -> tuple[torch.Tensor, ...]:
        """q(x_s | x_t, z) = N(a z + b x_t, v I) for 0 <= s < t: (a, b, v), float64.

        With abar_{t|s} = abar_t / abar_s: a = sqrt(abar_s) (1 - abar_{t|s}) / (1 - abar_t),
        b = sqrt(abar_{t|s}) (1 - abar_s) / (1 - abar_t), v = (1 - abar_{t|s}) (1 - abar_s) / (1 - abar_t)
        (Ho et al. 2020, eq. 7, over several steps)."""
        return posterior(self.abar, s, t)

    def rounding_logits(self, x0: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """log p(w | x_0) up to a constant, [..., V]: -|x_0 - sqrt(abar_0) e_w|^2 / (2 (1 - abar_0)), [MASK] -inf."""
        abar0 = float(self.abar[0])
        x0, table = x0.float(), table.float()
        # the |x_0|^2 part of the distance is the same for every w: drop it
        logits = (math.sqrt(abar0) * x0 @ table.T - 0.5 * abar0 * table.pow(2).sum(-1)) / (1 - abar0)
        logits[..., self.mask_id] = float("-inf")
        return logits

    def prior_kl(self, z: torch.Tensor) -> torch.Tensor:
        """KL(q(x_T | w) || N(0, I)) per position, [...]: (abar_T |z|^2 - d abar_T - d log(1 - abar_T)) / 2."""
        abar_t = float(self.abar[-1])
        d = z.shape[-1]
        return 0.5 * (abar_t * z.float().pow(2).sum(-1) - d * abar_t - d * math.log1p(-abar_t))

    def sampling_times(self, steps: int | None = None) -> list[int]:
        """T = t_0 > t_1 > ... > t_n = 0: every level (None) or `steps` evenly strided ones (at most T)."""
        return sampling_times(self.num_steps, steps)

    # ---- forward process ---------------------------------------------------------------------
    def sample_t(self, batch: int, device, generator: torch.Generator | None = None,
                 proposal: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(t, 1 / pi(t)), t ~ pi on 1..T (None: uniform), stratified across the batch when antithetic
        (each stratum's draw is still distributed as pi)."""
        u = torch.rand(batch, device=device, generator=generator, dtype=torch.float64)
        if self.antithetic:
            u = (u + torch.arange(batch, device=device)) / batch
        if proposal is None:
            t = (u * self.num_steps).long().clamp(0, self.num_steps - 1) + 1
            return t, torch.full((batch,), float(self.num_steps), dtype=torch.float64, device=device)
        cdf = proposal.to(device).cumsum(0)
        t = torch.searchsorted(cdf, (u * cdf[-1]).contiguous(), right=True).clamp(1, self.num_steps)
        return t, 1.0 / proposal.to(device)[t]

    def _noise(self, x0: torch.Tensor, generator: torch.Generator | None, proposal: torch.Tensor | None) -> dict:
        shape = (*x0.shape, self.embed_dim)
        t, weight = self.sample_t(x0.shape[0], x0.device, generator, proposal)
        return {"t": t, "t_weight": weight, "eps": torch.randn(shape, device=x0.device, generator=generator),
                "eps0": torch.randn(shape, device=x0.device, generator=generator)}

    def sample_noise(self, x0, generator=None):
        """The bound's draws: t from the proposal pi (module notes), the x_t and x_0 noises."""
        return self._noise(x0, generator, self.proposal)

    def train_noise(self, x0, generator=None):
        """objective="simple" samples t uniformly, as Diffusion-LM; "nelbo" trains on the bound's draws; "ce"
        uniformly, or from the time warp's proposal (module notes)."""
        if self.warp is not None:
            return self._noise(x0, generator, self.warp.proposal())
        return self._noise(x0, generator, None if self.objective != "nelbo" else self.proposal)

    def corrupt(self, z: torch.Tensor, t: torch.Tensor, eps: torch.Tensor,
                scored: torch.Tensor | None = None) -> torch.Tensor:
        """x_t = sqrt(abar_t) z + sqrt(1 - abar_t) eps at the scored positions, z itself elsewhere (context)."""
        abar = self.abar.to(z.device)[t].float()[:, None, None]
        xt = abar.sqrt() * z + (1 - abar).sqrt() * eps.to(z.dtype)
        if scored is not None:
            xt = torch.where(scored[..., None], xt, z)
        return xt

    # ---- the bound and the loss ----------------------------------------------------------------
    def scored(self, x0: torch.Tensor, loss_mask: torch.Tensor | None) -> torch.Tensor | None:
        """The positions noised and scored: `loss_mask` (None: all), minus the DiffuSeq source."""
        if not self.source_len:
            return loss_mask
        if self.source_len >= x0.shape[1]:
            raise UserError(f"source_len {self.source_len} leaves no target in sequences of {x0.shape[1]} tokens")
        target = (torch.arange(x0.shape[1], device=x0.device) >= self.source_len).expand_as(x0)
        return target if loss_mask is None else target & loss_mask

    def terms(self, model: nn.Module, x0: torch.Tensor, noise: dict[str, torch.Tensor],
              loss_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Per-position pieces of the objectives, each [B, L] float32, 0 outside `loss_mask`:
        `mse` |zhat - z|^2 (summed over d), `diffusion` w_t |zhat - z|^2 / pi(t) (the one-sample estimate of the
        diffusion term; noise["t_weight"] = 1 / pi(t)), `prior` and `rounding` (-log p(w | x_0), x_0 ~ q(x_0 | w))."""
        loss_mask = self.scored(x0, loss_mask)
        table = self.embedding_table(model)
        z = table[x0]
        t = noise["t"]
        xt = self.corrupt(z, t, noise["eps"], loss_mask)
        zhat, token_logp = self.predict_with_tokens(model, xt, t)
        mse = (zhat - z.float()).pow(2).sum(-1)
        weight = self.kl_weight.to(x0.device)[t] * noise["t_weight"].to(x0.device).double()
        diffusion = weight.float()[:, None] * mse
        abar0 = float(self.abar[0])
        x_0 = math.sqrt(abar0) * z.float() + math.sqrt(1 - abar0) * noise["eps0"].float()
        logp = torch.log_softmax(self.rounding_logits(x_0, table), dim=-1)
        rounding = -logp.gather(-1, x0[..., None]).squeeze(-1)
        out = {"mse": mse, "diffusion": diffusion, "prior": self.prior_kl(z), "rounding": rounding}
        if token_logp is not None:  # CDCD's cross-entropy -log p(w_l | x_t)
            out["ce"] = -token_logp.gather(-1, x0[..., None]).squeeze(-1)
        if loss_mask is not None:
            out = {k: torch.where(loss_mask, v, torch.zeros_like(v)) for k, v in out.items()}
        return out

    def nelbo_per_sequence(self, model: nn.Module, x0: torch.Tensor, noise: dict[str, torch.Tensor],
                           loss_mask: torch.Tensor | None = None) -> torch.Tensor:
        """One-sample unbiased estimate of each sequence's bound (prior + diffusion + rounding), [B], nats."""
        parts = self.terms(model, x0, noise, loss_mask)
        return (parts["diffusion"] + parts["prior"] + parts["rounding"]).sum(dim=1)

    def loss(self, model: nn.Module, x0: torch.Tensor, noise: dict[str, torch.Tensor],
             loss_mask: torch.Tensor | None = None) -> LossOutput:
        """objective="simple": sum over tokens of |zhat - z|^2 / d + rounding CE + prior (Diffusion-LM's
        L_e2e_simple); "nelbo": the bound; "ce": -log p(w_l | x_t) + rounding CE + prior (CDCD)."""
        parts = self.terms(model, x0, noise, loss_mask)
        first = {"simple": lambda: parts["mse"] / self.embed_dim, "nelbo": lambda: parts["diffusion"],
                 "ce": lambda: parts["ce"]}[self.objective]()
        total = (first + parts["prior"] + parts["rounding"]).sum()
        scored = self.scored(x0, loss_mask)
        n_tokens = x0.numel() if scored is None else int(scored.sum())
        if self.warp is not None and torch.is_grad_enabled():  # training: fit the warp to this batch's CE(t)
            per_row = x0.shape[1] if scored is None else scored.sum(1).clamp_min(1)
            self.warp.update(noise["t"], parts["ce"].detach().sum(1) / per_row)
        return LossOutput(total=total, n_tokens=n_tokens)
