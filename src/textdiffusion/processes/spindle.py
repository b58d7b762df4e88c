"""DiffusionBERT's spindle noise schedule (He et al., 2023, Sec. 4.2): masked diffusion in which the tokens that
carry more information are masked earlier in the forward process (so the reverse process writes the easy,
frequent tokens first).

The paper's schedule for token i of a sentence x0 of n tokens (its eqs. for alpha-bar, S(t) and H~):

    alpha_i(t) = 1 - t - S(t) H~(x0_i),   S(t) = lambda sin(pi t),   H~(x0_i) = 1 - sum_j H(x0_j) / (n H(x0_i)),

with H(w) the information of token w from the training corpus's token counts. Here H(w) = -log p(w), p the
corpus unigram law with add-one smoothing, and two changes make the process exact and the model self-contained:

* **The sentence mean is replaced by its corpus expectation** Hbar = sum_w f(w) H(w) (f: the empirical token
  frequencies), so alpha_i depends on x0_i alone: H~(w) = 1 - Hbar / H(w). With the sentence mean, token i's
  schedule would depend on every other (unknown) token of x0, and neither the reverse process nor its bound
  would be tractable. Per-token-value schedules are the state-dependent class of GenMD4 (Shi et al., 2024, Sec. 6).
* **The amplitude a(w) = lambda H~(w) is clipped to [-1/pi, 1/pi].** Then alpha_w(t) = 1 - t - a(w) sin(pi t)
  decreases strictly from alpha_w(0) = 1 to alpha_w(1) = 0 for every token (alpha' = -1 - a pi cos(pi t) <= 0),
  which a forward masking process needs. The reference code clips alpha itself to [0, 1) instead; a token held
  at alpha = 1 up to some t* > 0 would make the bound below infinite (its reverse rate ~ 1/(t - t*) is not
  integrable against a model that gives it mass there). H~ < 1 always, so for lambda <= 1/pi only very frequent
  tokens (H~ < -1/(pi lambda)) are clipped; `clipped` counts them.

lambda = 0 is MDLM with the log-linear schedule alpha(t) = 1 - t. The counts travel in the process config
(`token_counts`), so a reloaded model rebuilds the same schedule.

**Bound.** With per-token hazards h_w(t) = -alpha_w'(t) / (1 - alpha_w(t)), the true reverse process unmasks a
position whose clean token is w at rate h_w(t); the model, not knowing w, unmasks it to j at rate
h_j(t) mu_theta(j | x_t). The KL between the two path laws gives (GenMD4's continuous-time ELBO, Shi et al. 2024,
Sec. 6, eq. 13, written per token):

    -log p(x0) <= (R) + int_{t_min}^1 E_{x_t ~ q_t(. | x0)} sum_{i masked}
                  [ h_{x0_i}(t) (-log mu_i(x0_i)) + sum_j (h_j(t) - h_{x0_i}(t)) mu_i(j) ] dt,

the second sum being sum_j h_j mu_i(j) - h_{x0_i} (sum_j mu_i(j) = 1): it vanishes when all tokens share one
schedule, leaving MDLM's bound. (R) is the factorised denoising step at t_min, estimated exactly as in masked.py
(s ~ U[0, 1]; s < t_min samples (R) with weight 1/t_min); alpha_w(1) = 0, so there is no prior term.

**Sampling** (samplers/spindle.py): from t to s < t a masked position becomes j with probability
mu(j) (alpha_j(s) - alpha_j(t)) / (1 - alpha_j(t)) and stays masked otherwise, i.e. draw x0_hat ~ mu and keep it
with its own token's probability: for the true posterior mu this is exactly the reverse law q(x_s^i | x_t) of each
position (GenMD4's and DiffusionBERT's sampler). The other samplers assume one shared schedule and are refused.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..core.errors import UserError
from .base import nonnegative_weight, register
from .masked import MaskedDiffusion

AMPLITUDE_LIMIT = 1 / math.pi  # |a(w)| <= 1/pi keeps every alpha_w monotone (module notes)


def spindle_amplitudes(counts: torch.Tensor, spindle_lambda: float, mask_id: int) -> tuple[torch.Tensor, int]:
    """(a(w) for every token id [V] float64, how many were clipped) from corpus token counts [V].

    H(w) = -log p(w) with p add-one smoothed over the V - 1 real tokens; Hbar = the corpus mean of H over token
    occurrences; a(w) = clip(lambda (1 - Hbar / H(w)), -1/pi, 1/pi); a([MASK]) = 0 ([MASK] is never clean data)."""
    counts = counts.double().clone()
    counts[mask_id] = 0
    total = float(counts.sum())
    if total <= 0:
        raise UserError("the spindle schedule needs the training corpus's token counts, and none were counted: "
                        "train on a non-empty corpus")
    real = torch.ones_like(counts, dtype=torch.bool)
    real[mask_id] = False
    smoothed = (counts + 1) / (total + int(real.sum()))
    info = -torch.log(smoothed)  # > 0: every smoothed probability is < 1
    mean_info = float((counts / total * info).sum())
    raw = spindle_lambda * (1 - mean_info / info)
    amp = raw.clamp(-AMPLITUDE_LIMIT, AMPLITUDE_LIMIT)
    amp[mask_id] = 0.0
    clipped = int(((raw.abs() > AMPLITUDE_LIMIT) & real).sum())
    return amp, clipped


def spindle_alpha(amp: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """alpha_w(t) = 1 - t - a(w) sin(pi t), broadcasting amplitudes `amp` against times `t` (float64)."""
    return (1 - t - amp * torch.sin(math.pi * t)).clamp(0.0, 1.0)


def spindle_masked_prob(amp: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """1 - alpha_w(t) = t + a(w) sin(pi t), written without the 1 - (1 - x) cancellation (float64)."""
    return (t + amp * torch.sin(math.pi * t)).clamp(0.0, 1.0)


def spindle_rate(amp: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """h_w(t) = -alpha_w'(t) / (1 - alpha_w(t)) = (1 + a pi cos(pi t)) / (t + a sin(pi t)), for t > 0 (float64)."""
    return (1 + amp * math.pi * torch.cos(math.pi * t)).clamp_min(0.0) / spindle_masked_prob(amp, t).clamp_min(1e-300)


class _NoSharedSchedule:
    """What `process.schedule` is for a spindle model: code written for one shared alpha(t) is refused."""

    name = "spindle"

    def __getattr__(self, attr: str):
        if attr.startswith("__"):  # copy, pickle and hasattr probes
            raise AttributeError(attr)
        raise UserError("a masked-spindle model has one schedule per token, not a shared alpha(t): use its "
                        "sampler 'spindle' (or 'confidence' / 'threshold', which use no schedule)")


@register
class SpindleMaskedDiffusion(MaskedDiffusion):
    name = "masked-spindle"
    default_sampler = "spindle"

    def __init__(self, vocab_size: int, mask_id: int, spindle_lambda: float = 0.3,
                 token_counts: Sequence[int] | None = None, schedule: str = "loglinear", t_min: float = 1e-3,
                 antithetic: bool = True):
        if schedule != "loglinear":
            raise UserError(f"the spindle schedule perturbs the log-linear one (alpha = 1 - t - S(t) H~); "
                            f"process.schedule={schedule!r} does not apply: drop it")
        spindle_lambda = nonnegative_weight("spindle_lambda", spindle_lambda, "0 is MDLM")
        if not 0 < t_min < 1:
            raise UserError(f"the spindle bound needs 0 < t_min < 1 (its weight ~ 1/t), got {t_min!r}")
        super().__init__(vocab_size, mask_id, "loglinear", t_min, antithetic)
        self.schedule = _NoSharedSchedule()
        self.spindle_lambda = float(spindle_lambda)
        self.counts: torch.Tensor | None = None
        self.amp = torch.zeros(vocab_size, dtype=torch.float64)
        self.clipped = 0
        if token_counts is not None:
            self.fit_counts(torch.as_tensor(list(token_counts), dtype=torch.long))

    # ---- the token statistic --------------------------------------------------------------
    def fit_counts(self, counts: torch.Tensor) -> None:
        """Set the schedule from the training corpus's token counts [V] (module notes)."""
        counts = torch.as_tensor(counts).long().flatten().cpu()
        if counts.numel() != self.vocab_size or bool((counts < 0).any()):
            raise UserError(f"token_counts must be {self.vocab_size} counts >= 0 (one per token id), got "
                            f"{counts.numel()} values")
        self.counts = counts
        self.amp, self.clipped = spindle_amplitudes(counts, self.spindle_lambda, self.mask_id)

    @property
    def uniform(self) -> bool:
        """Every token on the same schedule (lambda = 0): MDLM's bound and sampler exactly."""
        return not bool(self.amp.any())

    def _amp(self, device) -> torch.Tensor:
        if self.counts is None:
            raise UserError("this masked-spindle process has no token counts: a run fits them from its training "
                            "corpus (textdiffusion adapt --from <masked LM> process.name=masked-spindle); a saved "
                            "model carries them in its config.json")
        return self.amp.to(device)

    def config(self) -> dict:
        return {"schedule": "loglinear", "t_min": self.t_min, "antithetic": self.antithetic,
                "spindle_lambda": self.spindle_lambda,
                "token_counts": None if self.counts is None else self.counts.tolist()}

    # ---- the forward process --------------------------------------------------------------
    def token_alpha(self, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """alpha_{x0_l}(t_b) for every position, [B, L] float64."""
        return spindle_alpha(self._amp(x0.device)[x0], t.double()[:, None])

    def rate_table(self, t: torch.Tensor) -> torch.Tensor:
        """h_w(t_b) for every time and token id, [B, V] float64."""
        return spindle_rate(self._amp(t.device)[None, :], t.double()[:, None])

    def corrupt(self, x0: torch.Tensor, t: torch.Tensor, u: torch.Tensor,
                scored: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x_t ~ q(x_t | x0): token l is masked iff u_l >= alpha_{x0_l}(t) (compared in t's precision, as
        masked.py does, so lambda = 0 draws MDLM's masks exactly). Returns (x_t, masked)."""
        masked = u >= self.token_alpha(x0, t).to(t.dtype)
        if scored is not None:
            masked &= scored
        return torch.where(masked, torch.full_like(x0, self.mask_id), x0), masked

    # ---- the bound ------------------------------------------------------------------------
    def nelbo_per_sequence(self, model: nn.Module, x0: torch.Tensor, noise: dict[str, torch.Tensor],
                           loss_mask: torch.Tensor | None = None) -> torch.Tensor:
        """One-sample unbiased estimate of each sequence's NELBO (module notes), [B], nats."""
        s = noise["t"]
        t = self.noise_level(s)
        xt, masked = self.corrupt(x0, t, noise["u"], loss_mask)
        logits = self.denoiser(model)(xt, t)
        logits = logits.double() if logits.dtype == torch.float64 else logits.float()
        logits[..., self.mask_id] = float("-inf")  # SUBS: [MASK] is never a prediction
        logp = torch.log_softmax(logits, dim=-1)
        nll = -logp.gather(-1, x0[..., None]).squeeze(-1)
        zero = torch.zeros_like(nll)
        rates = self.rate_table(t).to(logp.dtype)  # [B, V]
        h_x0 = rates.gather(1, x0)  # [B, L]
        integrand = h_x0 * nll
        if not self.uniform:  # + sum_j h_j mu(j) - h_{x0} (sum_j mu(j) = 1): 0 when every token has the same rate
            integrand = integrand + torch.bmm(logp.exp(), rates[:, :, None]).squeeze(-1) - h_x0
        diffusion = torch.where(masked, integrand, zero).sum(1)
        reconstruction = torch.where(masked, nll, zero).sum(1) / self.t_min  # (R) over its probability t_min
        return torch.where(s < self.t_min, reconstruction, diffusion)

    # ---- the reverse step -----------------------------------------------------------------
    def keep_probs(self, t: float, s: float, device=None) -> torch.Tensor:
        """(alpha_w(s) - alpha_w(t)) / (1 - alpha_w(t)) for every token id, [V] float64: the probability that a
        position masked at t, whose clean token is w, is unmasked at s < t."""
        if not 0 <= s < t <= 1:
            raise UserError(f"a reverse step goes from t to s with 0 <= s < t <= 1, got t={t}, s={s}")
        amp = self._amp(device)
        t_, s_ = (torch.tensor(v, dtype=torch.float64, device=device) for v in (t, s))
        gone = spindle_masked_prob(amp, t_)
        return ((gone - spindle_masked_prob(amp, s_)) / gone.clamp_min(1e-300)).clamp(0.0, 1.0)

    def reverse_probs(self, logp: torch.Tensor, xt: torch.Tensor, t: float, s: float) -> torch.Tensor:
        """The model's law of x_s given x_t, per position, [B, L, V] float64 (the [MASK] column: staying masked),
        from the denoiser's log-probabilities `logp` over x0 ([MASK] excluded)."""
        keep = self.keep_probs(t, s, xt.device)
        probs = logp.double().exp()
        probs[..., self.mask_id] = 0.0
        out = probs * keep
        out[..., self.mask_id] = 1 - out.sum(-1)
        clean = torch.nn.functional.one_hot(xt, probs.shape[-1]).double()
        return torch.where((xt == self.mask_id)[..., None], out, clean)
