"""D3PM's transition matrices and their schedules (Austin et al., 2021): what `d3pm.py` needs of Q.

Forward: q(x_t | x_{t-1}) = Cat(x_{t-1} Q_t), t = 1..T, independently per token, so that
q(x_t | x0) = Cat(x0 Qbar_t) with Qbar_t = Q_1 ... Q_t. Three transitions (`transition`):

  absorbing  Q_t = (1 - beta_t) I + beta_t 1 e_mask^T: a token turns into [MASK] and stays there.
  uniform    Q_t = (1 - beta_t) I + beta_t 1 m^T, m uniform over the K = V - 1 tokens other than
             [MASK]. [MASK] is outside the support: it is never produced and never predicted (its
             own row is a valid but unreachable state that leaves towards m).
  embedding  the paper's nearest-neighbour transition: Q_t = exp((c_t - c_{t-1}) R) with R a symmetric
             rate matrix over the K non-mask tokens, built from the k-nearest-neighbour graph of a token
             embedding table (cosine similarity): A'_ij = 1 if j is among i's k neighbours,
             A = (A' + A'^T) / (2k), R = A - diag(A 1) + eps (1 1^T / K - I). The eps term (`uniform_rate`)
             keeps the chain irreducible when the graph is not connected. R is symmetric with zero row
             sums, so every Q_t is symmetric and doubly stochastic and the stationary law is uniform.
             [MASK] is an isolated, unreachable state (identity row).

For absorbing and uniform, Qbar_t = abar_t I + (1 - abar_t) 1 m^T (abar_t = prod_s (1 - beta_s)), and
Q_{s->t} = Q_{s+1} ... Q_t has the same form with abar_t / abar_s: nothing V x V is ever formed, so
V = 50k is fine. For embedding, R = U diag(lam) U^T is diagonalised once (float64) and
Q_{s->t} = U diag(exp((c_t - c_s) lam)) U^T is applied as [N, K] x [K, K] products; this keeps a dense
K x K basis, so the embedding transition is limited to vocabularies of at most 4096 tokens.

Schedules (`beta_schedule`):
  mutual_info  I(x0; x_t), x0 uniform over the K tokens, falls linearly from log K to 0 (the paper's
               mutual-information schedule). Absorbing: beta_t = 1/(T - t + 1), i.e. abar_t = 1 - t/T.
               Uniform: abar_t solved from the closed form. Embedding: c_t interpolated on a grid of c.
  cosine       abar_t = f(t)/f(0), f(t) = cos^2((t/T + s)/(1 + s) * pi/2), s = 0.008 (Nichol & Dhariwal;
               Hoogeboom et al.). Embedding: c_t = -log abar_t (the uniform chain's exponent).
  linear       abar_t = 1 - t/T (embedding: c_t = -log(1 - t/T)).
  auto         the paper's choices: mutual_info for absorbing and embedding, cosine for uniform.
Every schedule ends exactly at the stationary law (abar_T = 0; for embedding the last step is the
projection onto the uniform law), so q(x_T | x0) is the prior and the prior term L_T is exactly 0.

Here: the schedules (abar_t, or c_t for embedding), the kernels that apply Q_{s->t} in log space
(`_RankOneKernel`, `_SpectralKernel`), the kNN rate matrix, and the embedding tables.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..core.errors import UserError

NEG = -1.0e4  # stands for log 0: exp() of it is exactly 0, yet sums and gradients stay finite
EMBEDDING_MAX_VOCAB = 4096  # the embedding transition keeps a dense K x K eigenbasis


def _log(x: torch.Tensor) -> torch.Tensor:
    """log with log 0 = NEG."""
    return torch.where(x > 0, x.clamp_min(torch.finfo(x.dtype).tiny).log(), torch.full_like(x, NEG))


# ---------------------------------------------------------------------------------------------
# schedules


def cosine_alpha_bar(num_steps: int, s: float = 0.008) -> torch.Tensor:
    """abar_t, t = 0..T, of the cosine schedule, float64; abar_0 = 1 and abar_T = 0 exactly."""
    t = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    abar = (f / f[0]).clamp(0.0, 1.0)
    abar[0], abar[-1] = 1.0, 0.0
    return abar


def linear_alpha_bar(num_steps: int) -> torch.Tensor:
    """abar_t = 1 - t/T: for absorbing, the mutual-information schedule beta_t = 1/(T - t + 1)."""
    return 1 - torch.arange(num_steps + 1, dtype=torch.float64) / num_steps


def _entropy_of_uniform_mix(abar: torch.Tensor, k: int) -> torch.Tensor:
    """Entropy of the row abar e_i + (1 - abar)/K (uniform kernel over K tokens)."""
    a, b = abar + (1 - abar) / k, (1 - abar) / k
    return -(a * _safe_log(a)) - (k - 1) * b * _safe_log(b)


def _safe_log(x: torch.Tensor) -> torch.Tensor:
    return torch.log(x.clamp_min(1e-300))


def uniform_mutual_info_alpha_bar(num_steps: int, k: int) -> torch.Tensor:
    """abar_t with I(x0; x_t) = (1 - t/T) log K for the uniform kernel, by bisection (MI rises with abar)."""
    target = (1 - torch.arange(num_steps + 1, dtype=torch.float64) / num_steps) * math.log(k)
    lo, hi = torch.zeros_like(target), torch.ones_like(target)
    for _ in range(80):
        mid = (lo + hi) / 2
        above = math.log(k) - _entropy_of_uniform_mix(mid, k) > target
        hi, lo = torch.where(above, mid, hi), torch.where(above, lo, mid)
    abar = (lo + hi) / 2
    abar[0], abar[-1] = 1.0, 0.0
    return torch.cummin(abar, 0).values  # guard monotonicity against rounding


# ---------------------------------------------------------------------------------------------
# transition kernels: what the process needs of Q, without dense V x V matrices


class _Kernel:
    """Q_{s->t} for 0 <= s < t <= T over the full vocabulary (V), in log space.

    log_col(s, t, k)  [N, V]: log Q_{s->t}[:, k_n] (s = 0: log q(x_t = k_n | x0 = .))
    log_row(t, i)     [N, V]: log Qbar_t[i_n, :]   (q(x_t = . | x0 = i_n))
    log_mix(s, lw)    [N, V]: log (w Qbar_s) for w = exp(lw)
    """

    vocab_size: int

    def log_col(self, s: torch.Tensor, t: torch.Tensor, k: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        raise NotImplementedError

    def log_row(self, t: torch.Tensor, i: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        raise NotImplementedError

    def log_mix(self, s: torch.Tensor, lw: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def dense(self, s: int, t: int) -> torch.Tensor:
        """Q_{s->t} as a dense [V, V] float64 matrix (small vocabularies only)."""
        raise NotImplementedError

    def step(self, t: int) -> torch.Tensor:
        """Q_t built on its own (not from the cumulative closed form), dense [V, V] float64."""
        raise NotImplementedError

    def to(self, device: torch.device) -> _Kernel:
        raise NotImplementedError


class _RankOneKernel(_Kernel):
    """Q_{s->t} = r I + (1 - r) 1 m^T, r = abar_t / abar_s: absorbing (m = e_mask) and uniform."""

    def __init__(self, alpha_bar: torch.Tensor, m: torch.Tensor):
        self.alpha_bar, self.m = alpha_bar.double(), m.double()
        self.log_m = _log(self.m)
        self.vocab_size = len(m)

    def to(self, device):
        if self.m.device != torch.device(device):
            self.alpha_bar, self.m, self.log_m = (x.to(device) for x in (self.alpha_bar, self.m, self.log_m))
        return self

    def _ratio(self, s, t):
        return self.alpha_bar[t] / self.alpha_bar[s]  # abar_s > 0 for every s < T

    def log_col(self, s, t, k, dtype):
        r, mk = self._ratio(s, t), self.m[k]
        off, diag = _log((1 - r) * mk), _log(r + (1 - r) * mk)
        col = off[:, None].to(dtype).expand(len(k), self.vocab_size).clone()
        return col.scatter_(1, k[:, None], diag[:, None].to(dtype))

    def log_row(self, t, i, dtype):
        a = self.alpha_bar[t][:, None]
        row = _log((1 - a) * self.m[None, :]).to(dtype)
        return row.scatter_(1, i[:, None], _log(a[:, 0] + (1 - a[:, 0]) * self.m[i])[:, None].to(dtype))

    def log_mix(self, s, lw):
        a = self.alpha_bar[s]
        keep = lw + _log(a)[:, None].to(lw.dtype)
        spread = (_log(1 - a)[:, None].to(lw.dtype) + torch.logsumexp(lw, -1, keepdim=True)) + self.log_m.to(lw.dtype)
        return torch.logaddexp(keep, spread)

    def dense(self, s, t):
        r = float(self.alpha_bar[t] / self.alpha_bar[s])
        eye = torch.eye(self.vocab_size, dtype=torch.float64, device=self.m.device)
        return r * eye + (1 - r) * self.m[None, :].expand_as(eye)

    def step(self, t):
        beta = 1 - float(self.alpha_bar[t] / self.alpha_bar[t - 1])
        eye = torch.eye(self.vocab_size, dtype=torch.float64, device=self.m.device)
        return (1 - beta) * eye + beta * torch.ones_like(eye) * self.m[None, :]


class _SpectralKernel(_Kernel):
    """Q_{s->t} = U diag(exp((c_t - c_s) lam)) U^T on the K real tokens; [MASK] is isolated."""

    def __init__(self, rate: torch.Tensor, exponents: torch.Tensor, real: torch.Tensor, vocab_size: int):
        self.rate = rate.double()  # [K, K], symmetric, zero row sums
        lam, self.U = torch.linalg.eigh(self.rate)
        stationary = int(lam.argmax())
        lam = lam.clamp_max(0.0)
        lam[stationary] = 0.0  # exactly: exp(c * 0) = 1 even where c = inf
        self.lam, self.stationary = lam, stationary
        self.c = exponents.double()  # c_0 = 0 < c_1 <= ... <= c_T = inf
        self.real, self.vocab_size = real, vocab_size
        self.pos = torch.zeros(vocab_size, dtype=torch.long)
        self.pos[real] = torch.arange(len(real))

    def to(self, device):
        if self.U.device != torch.device(device):
            for name in ("rate", "U", "lam", "c", "real", "pos"):
                setattr(self, name, getattr(self, name).to(device))
        return self

    def _decay(self, s, t):
        dc = (self.c[t] - self.c[s])[:, None]
        return torch.where(self.lam == 0, torch.ones_like(dc), torch.exp(dc * self.lam))  # [N, K]

    def _embed(self, vals: torch.Tensor, dtype) -> torch.Tensor:
        out = torch.full((vals.shape[0], self.vocab_size), NEG, dtype=dtype, device=vals.device)
        return out.index_copy(1, self.real, vals.to(dtype))

    def log_col(self, s, t, k, dtype):
        cols = (self.U[self.pos[k]] * self._decay(s, t)) @ self.U.T
        return self._embed(_log(cols.clamp_min(0.0)), dtype)

    def log_row(self, t, i, dtype):
        return self.log_col(torch.zeros_like(t), t, i, dtype)  # Qbar_t is symmetric

    def log_mix(self, s, lw):
        top = lw.max(-1, keepdim=True).values
        w = torch.exp(lw - top)[:, self.real].double()
        mix = ((w @ self.U) * self._decay(torch.zeros_like(s), s)) @ self.U.T
        return lw.index_copy(1, self.real, (_log(mix.clamp_min(0.0)) + top.double()).to(lw.dtype))  # [MASK] stays

    def _full(self, block: torch.Tensor) -> torch.Tensor:
        out = torch.eye(self.vocab_size, dtype=torch.float64, device=block.device)
        idx = self.real
        out[idx[:, None], idx[None, :]] = block
        return out

    def dense(self, s, t):
        dec = self._decay(torch.tensor([s], device=self.U.device), torch.tensor([t], device=self.U.device))[0]
        return self._full((self.U * dec) @ self.U.T)

    def step(self, t):
        dc = float(self.c[t] - self.c[t - 1])
        k = self.rate.shape[0]
        if math.isinf(dc):  # the last step: projection onto the stationary (uniform) law
            return self._full(torch.full((k, k), 1.0 / k, dtype=torch.float64, device=self.rate.device))
        return self._full(torch.linalg.matrix_exp(dc * self.rate))

    def mutual_info(self, c: float, rows: torch.Tensor) -> float:
        """I(x0; x_t) for x0 uniform, estimated on a fixed subset of rows of exp(c R)."""
        dec = torch.where(self.lam == 0, torch.ones_like(self.lam), torch.exp(c * self.lam))
        q = ((self.U[rows] * dec) @ self.U.T).clamp_min(0.0)
        q = q / q.sum(-1, keepdim=True)
        h = -(q * _safe_log(q)).sum(-1).mean()
        return max(math.log(len(self.lam)) - float(h), 0.0)


def knn_rate_matrix(embeddings: torch.Tensor, k: int, uniform_rate: float) -> torch.Tensor:
    """The symmetric rate matrix of the cosine k-nearest-neighbour graph (plus a uniform rate), [K, K]."""
    e = torch.nn.functional.normalize(embeddings.double(), dim=-1)
    sim = e @ e.T
    sim.fill_diagonal_(float("-inf"))
    n = e.shape[0]
    nbrs = sim.topk(k, dim=-1).indices  # [K, k]
    adj = torch.zeros(n, n, dtype=torch.float64)
    adj[torch.arange(n)[:, None], nbrs] = 1.0
    a = (adj + adj.T) / (2 * k)
    rate = a - torch.diag(a.sum(1))
    rate = rate + uniform_rate * (torch.full((n, n), 1.0 / n, dtype=torch.float64) - torch.eye(n, dtype=torch.float64))
    return (rate + rate.T) / 2  # exactly symmetric


def spectral_mutual_info_exponents(
    kernel: _SpectralKernel, num_steps: int, grid_points: int = 64, max_rows: int = 256
) -> torch.Tensor:
    """c_t with I(x0; x_t) = (1 - t/T) log K, interpolated in log c on a log-spaced grid; c_T = inf."""
    k = len(kernel.lam)
    rows = torch.linspace(0, k - 1, min(k, max_rows)).round().long()
    grid = torch.logspace(-8, 6, grid_points, dtype=torch.float64)
    mi = torch.tensor([kernel.mutual_info(float(c), rows) for c in grid], dtype=torch.float64)
    mi = torch.cummin(mi, 0).values  # MI cannot rise along a Markov chain; remove rounding wiggles
    target = (1 - torch.arange(1, num_steps, dtype=torch.float64) / num_steps) * math.log(k)
    # np.interp-style: log c as a piecewise-linear function of MI (MI decreasing in c)
    x, y = mi.flip(0), grid.log().flip(0)
    idx = torch.searchsorted(x, target).clamp(1, len(x) - 1)
    x0, x1, y0, y1 = x[idx - 1], x[idx], y[idx - 1], y[idx]
    frac = ((target - x0) / (x1 - x0).clamp_min(1e-300)).clamp(0.0, 1.0)
    c = torch.exp(y0 + frac * (y1 - y0))
    c = torch.cummax(c, 0).values
    return torch.cat([torch.zeros(1, dtype=torch.float64), c, torch.full((1,), math.inf, dtype=torch.float64)])


# ---------------------------------------------------------------------------------------------
# embedding tables


def byte_embedding(vocab_size: int) -> torch.Tensor:
    """A fixed embedding for byte-level vocabularies (ids < 256 are bytes, higher ids are specials).

    Features: character class (control, whitespace, digit, lower, upper, punctuation, UTF-8
    continuation, UTF-8 lead), the case-folded letter (so 'a' is near 'A'), and the byte value on a
    circle (so neighbours within a class are close in code point). Specials join the control class
    with one dimension each. Derived from nothing but the byte values: no download, deterministic.
    """
    n_special = vocab_size - 256
    dims = 8 + 26 + 2 + max(n_special, 0)
    table = torch.zeros(vocab_size, dims, dtype=torch.float64)
    for b in range(min(vocab_size, 256)):
        ch = chr(b)
        if b >= 192:
            cls = 7
        elif b >= 128:
            cls = 6
        elif ch in " \t\n\r\x0b\x0c":
            cls = 1
        elif b < 32 or b == 127:
            cls = 0
        elif ch.isdigit():
            cls = 2
        elif ch.islower():
            cls = 3
        elif ch.isupper():
            cls = 4
        else:
            cls = 5
        table[b, cls] = 1.0
        if ch.isascii() and ch.isalpha():
            table[b, 8 + ord(ch.lower()) - ord("a")] = 1.5  # above the class: "A" is nearer "a" than "b" is
        angle = 2 * math.pi * b / 256
        table[b, 34], table[b, 35] = 0.5 * math.cos(angle), 0.5 * math.sin(angle)
    for j in range(max(n_special, 0)):
        table[256 + j, 0] = 1.0
        table[256 + j, 36 + j] = 1.0
    return table


def load_embedding(source, vocab_size: int) -> torch.Tensor:
    """The [V, d] table: 'bytes', a nested list / tensor, or a path to a .pt or .npy file."""
    if isinstance(source, str) and source == "bytes":
        if vocab_size > 512:
            raise UserError(
                f"embedding='bytes' is for byte-level tokenizers, but the vocabulary has {vocab_size} "
                "tokens: pass embedding=<path to a [vocab_size, d] .pt or .npy table>"
            )
        return byte_embedding(vocab_size)
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise UserError(
                f"embedding file {path} does not exist: give a .pt or .npy file holding a "
                "[vocab_size, d] tensor, or embedding='bytes' for a byte tokenizer"
            )
        if path.suffix == ".npy":
            import numpy as np

            table = torch.from_numpy(np.load(path))
        else:
            table = torch.load(path, map_location="cpu", weights_only=True)
    else:
        table = torch.as_tensor(source)
    if not isinstance(table, torch.Tensor) or table.dim() != 2 or table.shape[0] != vocab_size:
        shape = tuple(table.shape) if isinstance(table, torch.Tensor) else type(table).__name__
        raise UserError(f"the embedding table must be a [vocab_size={vocab_size}, d] tensor, got {shape}")
    if not torch.isfinite(table).all():
        raise UserError("the embedding table holds NaN or inf values")
    return table.double()
