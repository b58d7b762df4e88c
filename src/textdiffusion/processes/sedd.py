"""SEDD: score entropy discrete diffusion (Lou, Meng & Ermon, 2024).

Forward: a continuous-time Markov chain per token, dp_t/dt = sigma(t) Q p_t, so that
p_{t|0} = exp(sigmabar(t) Q) with sigmabar the total noise (`noise`: loglinear or geometric, see
`sedd_noise.py`) and Q the graph (`graph`: absorb or uniform, over the N = V - 1 tokens other than
[MASK], see `sedd_graphs.py`). Everything is closed form per token; nothing V x V is formed, so
V = 50k is fine.

Model: the network estimates the concrete score s(x_t)_{l,y} = p_t(x_t with y at l) / p_t(x_t) for the
y the reverse chain can move to (those with a forward rate y -> x_t^l). Its raw output f becomes
  absorb   log s_y = f_y - log N - log(e^sigmabar - 1), at [MASK] positions only (the paper's
           `scale_by_sigma`; a model with f = 0 then has sum_y s_y = 1/(e^sigmabar - 1), the true sum).
           The true score is p_0(y | unmasked tokens) / (e^sigmabar - 1): g = f - log N estimates
           log p_0(y | unmasked), which does not depend on t, so no time conditioning is needed.
  uniform  log s_y = f_y. The true score depends on t: the model must be time-conditioned.
The score of the current token is 1 (log 0) by definition, and [MASK]'s entry is never used. We call
g the parameterised output (f - log N for absorb, the log score itself for uniform).

Loss: the diffusion-weighted denoising score entropy (eq. 11; Thm 3.6), per scored position l,
  sigma(t) sum_{y != x_t^l} Q(y -> x_t^l) [ s_y - r_y log s_y + K(r_y) ],  r_y = p_{t|0}(y|x0) / p_{t|0}(x_t^l|x0),
with K(a) = a (log a - 1), so each term is a h(log(s/a)) >= 0, h(u) = e^u - u - 1, zero iff s = a.
Absorb: only [MASK] positions count and the term is sigma/(e^sigmabar - 1) [sum_y e^{g_y} - g_{x0} - 1].
Uniform: the ratios take two values, so the sum over y reduces to a logsumexp, a sum and a gather.

Likelihood bound (`nelbo_per_sequence`), t ~ U[t_min, 1] (stratified over the batch):
  -log p_theta(x0) <= (1 - t_min) DWDSE(t) + KL(p_{1|0}(.|x0) || p_base) + E[-log p_theta(x0 | x_{t_min})].
The last (reconstruction) term is the analytic denoising step from t_min to clean data that the samplers
also end with; it is zero (and skipped) when sigmabar(t_min) = 0 (loglinear with t_min = 0) and costs one
more forward pass otherwise. `loss` (the training objective) is the same bound without it: its gradient is
O(t_min) and it would double the cost of a training step.
Base distribution: uniform over the N tokens for uniform; for absorb, [MASK] -- exact when sigmabar(1) is
infinite (loglinear with eps = 0, the default for absorb). With sigmabar(1) finite a token survives to
t = 1 with probability a = e^-sigmabar(1), which a point mass on [MASK] cannot explain (KL = inf), so the
base is then (1 - a) [MASK] + a uniform (KL = a log N per token), and the samplers start from it too.

Training recipe (`loss` only, absorb only): ce_lambda adds lambda sum_{l masked} -log softmax(g_l)_{x0_l}, the
cross-entropy of the clean-token law the absorbing score implies (g estimates log p_0(y | unmasked), so softmax(g)
is that law at the optimum): D3PM's hybrid term, as MDLM's `ce_lambda` (train/recipes.py). The bound is unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.errors import UserError
from .base import DiffusionProcess, LossOutput, nonnegative_weight, register
from .sedd_graphs import AbsorbGraph, UniformGraph, _f64
from .sedd_noise import GeometricNoise, LogLinearNoise

GRAPHS = ("absorb", "uniform")
NOISES = ("loglinear", "geometric")
T_FLOOR = 1e-12  # t = 0 exactly (probability 2^-53) would give 0 * inf in the weights


@register
class SEDD(DiffusionProcess):
    name = "sedd"
    default_sampler = "sedd"

    def __init__(
        self,
        vocab_size: int,
        mask_id: int,
        graph: str = "absorb",
        noise: str = "loglinear",
        eps: float | None = None,
        sigma_min: float = 1e-4,
        sigma_max: float = 20.0,
        t_min: float = 1e-3,
        antithetic: bool = True,
        ce_lambda: float = 0.0,
    ):
        if graph not in GRAPHS:
            raise UserError(f"unknown SEDD graph {graph!r}: choose one of {', '.join(GRAPHS)}")
        if noise not in NOISES:
            raise UserError(f"unknown SEDD noise {noise!r}: choose one of {', '.join(NOISES)}")
        if not 0 <= mask_id < vocab_size or vocab_size < 3:
            raise UserError(
                f"need 0 <= mask_id < vocab_size and at least 2 other tokens, got mask_id={mask_id}, "
                f"vocab_size={vocab_size}"
            )
        if not 0 <= t_min < 1:
            raise UserError(f"t_min must be in [0, 1), got {t_min}")
        ce_lambda = nonnegative_weight("ce_lambda", ce_lambda, "0 disables the cross-entropy term")
        if ce_lambda and graph != "absorb":
            raise UserError("ce_lambda is the cross-entropy of the clean-token law the absorbing graph's score "
                            "implies; the uniform graph's score implies none: drop process.ce_lambda")
        self.ce_lambda = float(ce_lambda)
        if eps is None:  # absorb: exact absorption at t = 1; uniform: the paper's 1e-3 (sigma(1) stays finite)
            eps = 0.0 if graph == "absorb" else 1e-3
        if graph == "uniform" and noise == "loglinear" and eps <= 0:
            raise UserError("the uniform graph needs eps > 0 (sigmabar(1) = -log eps must be finite); e.g. eps=1e-3")
        self.vocab_size, self.mask_id = vocab_size, mask_id
        self.graph_name, self.noise_name, self.eps = graph, noise, float(eps)
        self.sigma_min, self.sigma_max, self.t_min, self.antithetic = sigma_min, sigma_max, float(t_min), antithetic
        self.graph = AbsorbGraph(vocab_size, mask_id) if graph == "absorb" else UniformGraph(vocab_size, mask_id)
        self.noise = LogLinearNoise(eps) if noise == "loglinear" else GeometricNoise(sigma_min, sigma_max)
        self.sigma_end = float(self.noise.total(_f64(1.0)))  # sigmabar(1), inf for loglinear with eps = 0
        self.sigma_low = float(self.noise.total(_f64(self.t_min)))  # > 0: the bound needs a reconstruction term

    def config(self) -> dict:
        return {
            "graph": self.graph_name,
            "noise": self.noise_name,
            "eps": self.eps,
            "sigma_min": self.sigma_min,
            "sigma_max": self.sigma_max,
            "t_min": self.t_min,
            "antithetic": self.antithetic,
            **({"ce_lambda": self.ce_lambda} if self.ce_lambda else {}),
        }

    @property
    def needs_time_conditioning(self) -> bool:
        """The uniform graph's score depends on t; the absorbing one's (after the shift) does not."""
        return self.graph_name == "uniform"

    # ---- forward process ------------------------------------------------------------------
    def sample_t(self, batch: int, device, generator: torch.Generator | None = None) -> torch.Tensor:
        """t ~ U[t_min, 1), float64, stratified across the batch when antithetic."""
        u = torch.rand(batch, device=device, generator=generator, dtype=torch.float64)
        if self.antithetic:
            u = (u + torch.arange(batch, device=device)) / batch
        return (self.t_min + (1 - self.t_min) * u).clamp(T_FLOOR, 1 - 2**-52)

    def sample_noise(self, x0, generator=None):
        shape, dev = x0.shape, x0.device
        noise = {
            "t": self.sample_t(shape[0], dev, generator),
            "u": torch.rand(shape, device=dev, generator=generator, dtype=torch.float64),
            "v": torch.rand(shape, device=dev, generator=generator, dtype=torch.float64),
        }
        if self.sigma_low > 0:  # the reconstruction term's own x_{t_min}
            noise["u0"] = torch.rand(shape, device=dev, generator=generator, dtype=torch.float64)
            noise["v0"] = torch.rand(shape, device=dev, generator=generator, dtype=torch.float64)
        return noise

    def corrupt(
        self, x0: torch.Tensor, t: torch.Tensor, u: torch.Tensor, v: torch.Tensor, scored: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x_t ~ p_{t|0}(. | x0) from uniforms u, v: kept iff u < e^-sigmabar(t); context stays clean."""
        keep = u < torch.exp(-self.noise.total(t.double()))[:, None]
        if scored is not None:
            keep |= ~scored
        return torch.where(keep, x0, self.graph.replacement(x0, v))

    def sample_base(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """n draws from the base distribution p_base (see the module notes)."""
        return self.graph.sample_base(n, self.sigma_end, generator, device)

    def moves(self, xt: torch.Tensor) -> torch.Tensor:
        """Positions whose token the reverse chain can change: [MASK] (absorb) or all (uniform)."""
        return self.graph.moves(xt)

    # ---- model ----------------------------------------------------------------------------
    def model_output(self, model: nn.Module, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The parameterised output g [B, L, V] (float32, or the model's float64): see the module notes."""
        f = model(xt, t)
        if f.dtype in (torch.float16, torch.bfloat16):
            f = f.float()
        return self.graph.parameterise(f, xt)

    def log_score(self, model: nn.Module, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Estimated log p_t(x_t with y at l) / p_t(x_t), [B, L, V], for the y the reverse chain can move to.

        0 at the current token; -inf for ratios that are never used (rate 0: [MASK] for uniform, every
        other token at an unmasked absorb position). At t = 1 with sigmabar(1) = inf (absorb, eps = 0) the
        scores are 0 (log -inf), as they truly are; samplers use the finite g and the schedule's ratios."""
        t = _f64(t, xt.device).expand(xt.shape[0])
        return self.graph.log_score(self.model_output(model, xt, t), xt, self.noise.log_expm1_total(t))

    def reverse_log_probs(
        self, g: torch.Tensor, xt: torch.Tensor, t: float, s: float | None, method: str = "analytic"
    ) -> torch.Tensor:
        """log p_theta(x_s | x_t) of one reverse step for rows of positions (g [n, V], xt [n]), float64.

        method "euler" or "analytic" (Tweedie tau-leaping, eq. 19); s None is the final denoising step to
        clean data (analytic, [MASK] projected out)."""
        if method not in ("euler", "analytic"):
            raise UserError(f"unknown SEDD step {method!r}: choose euler or analytic")
        return self.graph.reverse_log_probs(g, xt, self.noise, t, s, method)

    # ---- loss -----------------------------------------------------------------------------
    def score_entropy(
        self, g: torch.Tensor, xt: torch.Tensor, x0: torch.Tensor, t: torch.Tensor, scored: torch.Tensor | None = None
    ) -> torch.Tensor:
        """sigma(t)-weighted denoising score entropy per position, [B, L] float64 (0 where nothing is scored)."""
        active = self.graph.moves(xt)
        if scored is not None:
            active = active & scored
        out = torch.zeros(xt.shape, dtype=torch.float64, device=xt.device)
        tt = t.double()[:, None].expand(xt.shape)[active]
        terms = self.graph.score_entropy(g[active], xt[active], x0[active], self.noise, tt)
        return out.index_put((active,), terms)

    def reconstruction(
        self, model: nn.Module, x0: torch.Tensor, u0: torch.Tensor, v0: torch.Tensor, scored: torch.Tensor | None = None
    ) -> torch.Tensor:
        """-log p_theta(x0 | x_{t_min}) of the final analytic denoising step, x_{t_min} ~ p_{t_min|0}, [B]."""
        t = torch.full((x0.shape[0],), self.t_min, dtype=torch.float64, device=x0.device)
        xt = self.corrupt(x0, t, u0, v0, scored)
        active = self.graph.moves(xt) if scored is None else self.graph.moves(xt) & scored
        g = self.model_output(model, xt, t)
        logp = self.reverse_log_probs(g[active], xt[active], self.t_min, None)
        nll = -logp.gather(-1, x0[active][:, None])[:, 0]
        return torch.zeros(x0.shape, dtype=torch.float64, device=x0.device).index_put((active,), nll).sum(1)

    def _bound(self, model, x0, noise, loss_mask, reconstruction: bool, ce_lambda: float = 0.0) -> torch.Tensor:
        t = noise["t"].double()
        xt = self.corrupt(x0, t, noise["u"], noise["v"], loss_mask)
        g = self.model_output(model, xt, t)
        dwdse = self.score_entropy(g, xt, x0, t, loss_mask).sum(1)
        n_scored = torch.full_like(dwdse, x0.shape[1]) if loss_mask is None else loss_mask.sum(1).double()
        total = (1 - self.t_min) * dwdse + self.graph.prior_kl(self.sigma_end) * n_scored
        if ce_lambda:  # the recipe's term (module notes): -log softmax(g)_{x0} at the scored [MASK] positions
            active = self.graph.moves(xt) if loss_mask is None else self.graph.moves(xt) & loss_mask
            ce = torch.logsumexp(g, -1) - g.gather(-1, x0[..., None])[..., 0]
            total = total + ce_lambda * torch.where(active, ce, torch.zeros_like(ce)).sum(1).double()
        if reconstruction and self.sigma_low > 0:
            total = total + self.reconstruction(model, x0, noise["u0"], noise["v0"], loss_mask)
        return total.to(g.dtype)

    def nelbo_per_sequence(
        self, model: nn.Module, x0: torch.Tensor, noise: dict[str, torch.Tensor], loss_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One-t Monte Carlo estimate of each sequence's likelihood bound, [B] nats (see the module notes)."""
        return self._bound(model, x0, noise, loss_mask, reconstruction=True)

    def loss(
        self, model: nn.Module, x0: torch.Tensor, noise: dict[str, torch.Tensor], loss_mask: torch.Tensor | None = None
    ) -> LossOutput:
        """The training objective: the bound without the reconstruction term (one forward pass), plus the recipe's
        cross-entropy term when ce_lambda > 0."""
        per_seq = self._bound(model, x0, noise, loss_mask, reconstruction=False, ce_lambda=self.ce_lambda)
        n_tokens = x0.numel() if loss_mask is None else int(loss_mask.sum())
        return LossOutput(total=per_seq.sum(), n_tokens=n_tokens)

