"""SEDD's graphs Q: the closed forms each one needs, on rows [n, V] of positions.

Two graphs (`graph`), over the N = V - 1 tokens other than [MASK]:
  absorb   Q(y -> [MASK]) = 1: a token is kept with probability e^-sigmabar, else it is [MASK].
  uniform  Q = (1/N) 1 1^T - I: a token is kept with probability e^-sigmabar, else drawn uniformly from
           the N tokens (possibly itself). [MASK] is outside this graph: never produced, never scored.
Everything is closed form per token; nothing V x V is formed, so V = 50k is fine.
Each graph gives what the process and the samplers need of it (see `sedd.py` for the formulas): the
forward replacement, the positions the reverse chain moves, the model's parameterisation and log score,
the score entropy, one reverse step (Euler or analytic), the prior KL and the base distribution.
"""

from __future__ import annotations

import math

import torch


def _f64(t, device=None) -> torch.Tensor:
    return torch.as_tensor(t, dtype=torch.float64, device=device)


def _with_stay(jump: torch.Tensor, stay: torch.Tensor) -> torch.Tensor:
    """Log-probabilities from the log-masses of leaving for each token (-inf at `stay`, the current one).

    Staying gets 1 - total; a total above 1 (too large a step) is renormalised and staying gets 0,
    i.e. negative probabilities are clipped as the reference implementation's sampler effectively does."""
    total = torch.logsumexp(jump, -1, keepdim=True)
    over = total > 0
    jump = torch.where(over, jump - total, jump)
    log_stay = torch.where(over, torch.full_like(total, float("-inf")), torch.log(-torch.expm1(total.clamp_max(0.0))))
    return jump.scatter(-1, stay[:, None], log_stay)


def _real_token(idx: torch.Tensor, mask_id: int) -> torch.Tensor:
    """The idx-th token that is not [MASK] (idx in [0, N))."""
    return idx + (idx >= mask_id).long()


class AbsorbGraph:
    name = "absorb"

    def __init__(self, vocab_size: int, mask_id: int):
        self.vocab_size, self.mask_id, self.n = vocab_size, mask_id, vocab_size - 1

    def replacement(self, x0: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x0, self.mask_id)

    def moves(self, xt: torch.Tensor) -> torch.Tensor:
        """Positions the reverse chain can change (and the loss scores): [MASK] ones; a token never leaves."""
        return xt == self.mask_id

    def parameterise(self, f: torch.Tensor, xt: torch.Tensor) -> torch.Tensor:
        """g = f - log N (the log score plus log(e^sigmabar - 1)); [MASK] is never a target."""
        return (f - math.log(self.n)).index_fill(-1, torch.tensor([self.mask_id], device=f.device), float("-inf"))

    def log_score(self, g: torch.Tensor, xt: torch.Tensor, log_expm1: torch.Tensor) -> torch.Tensor:
        ls = g - log_expm1.to(g.dtype)[:, None, None]
        ls = ls.index_fill(-1, torch.tensor([self.mask_id], device=g.device), 0.0)  # the current token, [MASK]
        fixed = torch.full_like(ls, float("-inf")).scatter(-1, xt[..., None], 0.0)  # unmasked: never moves
        return torch.where(self.moves(xt)[..., None], ls, fixed)

    def score_entropy(
        self, g: torch.Tensor, xt: torch.Tensor, x0: torch.Tensor, noise, t: torch.Tensor
    ) -> torch.Tensor:
        """Rows at [MASK] positions: sigma/(e^sigmabar - 1) (sum_y e^{g_y} - g_{x0} - 1), float64 [n].

        With s_y = e^{g_y} / (e^sigmabar - 1), r_y = [y = x0] / (e^sigmabar - 1) and Q(y -> [MASK]) = 1 this
        is exactly sigma sum_y (s_y - r_y log s_y + K(r_y)); written this way it has no cancellation."""
        lse = torch.logsumexp(g, -1).double()
        g_x0 = g.gather(-1, x0[:, None])[:, 0].double()
        return noise.log_rate_over_expm1(t).exp() * (lse.exp() - g_x0 - 1)

    def reverse_log_probs(
        self, g: torch.Tensor, xt: torch.Tensor, noise, t: float, s: float | None, method: str
    ) -> torch.Tensor:
        """log p(x_s | x_t) per row, float64 [n, V]; s None: the final step to clean data ([MASK] projected out).

        At a [MASK] position, leaving for y has probability c e^{g_y}, c = dt sigma(t) / (e^sigmabar_t - 1)
        (Euler) or (e^(sigmabar_t - sigmabar_s) - 1) / (e^sigmabar_t - 1) (analytic, eq. 19: p(y) =
        [e^{-dsigma Q} s]_y e^{dsigma Q}(x_t, y)). For loglinear both are (t - s)/t: the two samplers agree.
        """
        g = g.double()
        tt = _f64(t, g.device)
        if s is None:
            logp = torch.log_softmax(g, -1)  # drop "stay [MASK]" and renormalise: every token is revealed
        else:
            ss = _f64(s, g.device)
            if method == "euler":
                scale = torch.log(tt - ss) + noise.log_rate_over_expm1(tt)
            else:
                scale = noise.log_expm1_ratio(tt, ss)
            logp = _with_stay(g + scale, torch.full_like(xt, self.mask_id))
        keep = torch.full_like(logp, float("-inf")).scatter(-1, xt[:, None], 0.0)
        return torch.where(self.moves(xt)[:, None], logp, keep)

    def prior_kl(self, sigma_end: float) -> float:
        """KL(p_{1|0} || base) per token: a log N with a = e^-sigmabar(1) (0 when sigmabar(1) = inf)."""
        return math.exp(-sigma_end) * math.log(self.n)

    def sample_base(self, n: int, sigma_end: float, generator, device) -> torch.Tensor:
        ids = torch.full((n,), self.mask_id, dtype=torch.long, device=device)
        a = math.exp(-sigma_end)
        if a > 0:  # a token survives to t = 1 with probability a (only when sigmabar(1) is finite)
            u = torch.rand(n, dtype=torch.float64, device=device, generator=generator)
            tok = _real_token(torch.randint(0, self.n, (n,), device=device, generator=generator), self.mask_id)
            ids = torch.where(u < a, tok, ids)
        return ids


class UniformGraph:
    name = "uniform"

    def __init__(self, vocab_size: int, mask_id: int):
        self.vocab_size, self.mask_id, self.n = vocab_size, mask_id, vocab_size - 1

    def replacement(self, x0: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return _real_token((v * self.n).long().clamp_max(self.n - 1), self.mask_id)

    def moves(self, xt: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(xt, dtype=torch.bool)

    def parameterise(self, f: torch.Tensor, xt: torch.Tensor) -> torch.Tensor:
        """The log score itself, with [MASK] (outside the graph) at -inf and the current token at 0."""
        g = f.index_fill(-1, torch.tensor([self.mask_id], device=f.device), float("-inf"))
        return g.scatter(-1, xt[..., None], 0.0)

    def log_score(self, g: torch.Tensor, xt: torch.Tensor, log_expm1: torch.Tensor) -> torch.Tensor:
        return g

    def score_entropy(
        self, ls: torch.Tensor, xt: torch.Tensor, x0: torch.Tensor, noise, t: torch.Tensor
    ) -> torch.Tensor:
        """sigma/N sum_{y != x_t} [s_y - r_y log s_y + K(r_y)] per row, float64 [n].

        p_{t|0}(y|x0) = e^-sigmabar [y = x0] + (1 - e^-sigmabar)/N, so with E = e^sigmabar - 1:
          x_t = x0:  r_y = rho = E / (N + E) for every y != x_t;
          x_t != x0: r_y = 1, except r_{x0} = R = 1 + N/E = 1/rho.
        The sums over y are S = sum e^{ls_y} and Lam = sum ls_y over y in the graph other than x_t."""
        n = self.n
        used = torch.ones_like(ls, dtype=torch.bool).index_fill(
            -1, torch.tensor([self.mask_id], device=ls.device), False
        )
        used = used.scatter(-1, xt[:, None], False)
        big_s = torch.logsumexp(ls.masked_fill(~used, float("-inf")), -1).double().exp()
        lam = ls.masked_fill(~used, 0.0).sum(-1, dtype=torch.float64)
        ls_x0 = ls.gather(-1, x0[:, None])[:, 0].double()
        log_e = noise.log_expm1_total(t)
        log_rho = log_e - torch.logaddexp(torch.full_like(log_e, math.log(n)), log_e)
        rho = log_rho.exp()
        same = big_s - rho * lam + (n - 1) * rho * (log_rho - 1)
        r_minus_1 = torch.exp(math.log(n) - log_e)  # R - 1 = N / E
        moved = big_s - lam - r_minus_1 * ls_x0 - (n - 2) + (1 + r_minus_1) * (-log_rho - 1)
        return noise.rate(t) / n * torch.where(xt == x0, same, moved)

    def reverse_log_probs(
        self, ls: torch.Tensor, xt: torch.Tensor, noise, t: float, s: float | None, method: str
    ) -> torch.Tensor:
        """log p(x_s | x_t) per row, float64 [n, V].

        Euler: leave for y != x_t with probability dt sigma(t) s_y / N.
        Analytic (eq. 19): p(y) ∝ [e^{-D Q} s]_y e^{D Q}(x_t, y), D = sigmabar_t - sigmabar_s, with
          e^{-D Q} s = e^D (s - c sum(s)) and e^{D Q}(x, y) = e^-D [y = x] + c, c = (1 - e^-D)/N;
        negative entries (imperfect scores) are clipped to 0. s None is the final step to clean data."""
        ls = ls.double()
        tt = _f64(t, ls.device)
        if method == "euler" and s is not None:
            scale = torch.log(tt - _f64(s, ls.device)) + torch.log(noise.rate(tt)) - math.log(self.n)
            return _with_stay((ls + scale).scatter(-1, xt[:, None], float("-inf")), xt)
        d = noise.delta(tt, None if s is None else _f64(s, ls.device))
        c = -torch.expm1(-d) / self.n
        sc = torch.exp(ls - ls.max(-1, keepdim=True).values)  # the common factor cancels on normalising
        a = (sc - c * sc.sum(-1, keepdim=True)).clamp_min(0.0)
        b = torch.full_like(a, float(c)).scatter(-1, xt[:, None], float(torch.exp(-d) + c))
        p = a * b
        return torch.log(p) - torch.log(p.sum(-1, keepdim=True))

    def prior_kl(self, sigma_end: float) -> float:
        """KL(e^-sigmabar(1) delta_x0 + (1 - e^-sigmabar(1)) uniform || uniform) per token."""
        a, n = math.exp(-sigma_end), self.n
        p1 = a + (1 - a) / n
        return p1 * math.log1p(a * (n - 1)) + (1 - p1) * math.log1p(-a)

    def sample_base(self, n: int, sigma_end: float, generator, device) -> torch.Tensor:
        return _real_token(torch.randint(0, self.n, (n,), device=device, generator=generator), self.mask_id)
