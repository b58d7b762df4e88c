"""CDCD's time warping (Dieleman et al., 2022, section 3.3): learn where in t training should look.

CDCD fits a monotone, unnormalised CDF F~(t) to the cross-entropy loss L(t) of the token-predicting model (the
loss rises with the noise level: from 0 near t = 0 to the data's entropy at t = T), normalises it,
F(t) = (F~(t) - F~(0)) / (F~(T) - F~(0)), and draws training levels t = F^-1(u), u ~ U(0, 1). The density of t is
then proportional to dL/dt: training visits the levels where the loss changes fastest, and the warped time runs
through the entropy at a uniform rate.

Here F~ is fitted online without gradients: K bins split the levels 1..T evenly; each keeps an exponential
moving average m_k of the per-sequence cross-entropy of the samples drawn in it; the pool-adjacent-violators
algorithm makes the averages non-decreasing (the least-squares monotone fit, `isotonic`), and F~ is the
piecewise-linear curve through (bin centre_k, m_k), flat outside the first and last centres. The level
probabilities are its increments, pi_warp(t) = (F~(t) - F~(t - 1)) / (F~(T) - F~(0)), mixed with a uniform floor
(`floor`): every level stays visited, so every bin's average stays current, and 1 / pi(t) <= T / floor bounds the
importance weights. Until every bin has seen a loss, the proposal is uniform. Under DDP every process folds in
the losses of all processes, so all draw from one curve; the fit is saved with the trainer's state, so a resume
continues it exactly.
"""

from __future__ import annotations

import torch

from ..core.errors import UserError


def isotonic(values: torch.Tensor) -> torch.Tensor:
    """The non-decreasing sequence nearest to `values` [K] in least squares (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [sum, count] of each pooled block
    for v in values.tolist():
        blocks.append([v, 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            s, c = blocks.pop()
            blocks[-1][0] += s
            blocks[-1][1] += c
    out = [s / c for s, c in blocks for _ in range(int(c))]
    return torch.tensor(out, dtype=torch.float64)


class TimeWarp:
    """The online fit of F~ over levels 1..T and the warped proposal pi(t) (module notes)."""

    def __init__(self, num_steps: int, bins: int = 32, decay: float = 0.98, floor: float = 0.1):
        if not isinstance(bins, int) or not 2 <= bins <= num_steps:
            raise UserError(f"time warping needs 2 <= bins <= T = {num_steps}, got {bins!r}")
        if not 0 < decay < 1 or not 0 < floor <= 1:
            raise UserError(f"time warping needs 0 < decay < 1 and 0 < floor <= 1, got {decay!r}, {floor!r}")
        self.num_steps, self.bins, self.decay, self.floor = num_steps, bins, decay, floor
        # bin k holds the levels (edges[k], edges[k + 1]]
        self.edges = torch.linspace(0, num_steps, bins + 1, dtype=torch.float64).round().long()
        self.centres = (self.edges[:-1] + 1 + self.edges[1:]).double() / 2
        self.means = torch.zeros(bins, dtype=torch.float64)
        self.seen = torch.zeros(bins, dtype=torch.long)

    def bin_of(self, t: torch.Tensor) -> torch.Tensor:
        """The bin of each level t in 1..T."""
        return (torch.searchsorted(self.edges, t.cpu().long(), right=False) - 1).clamp(0, self.bins - 1)

    @torch.no_grad()
    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Fold the losses [B] of the samples drawn at levels t [B] into their bins' moving averages: n samples in
        a bin this step move it as n one-sample updates by their mean would."""
        t, losses = _gathered(t.detach(), losses.detach().double())  # every process fits the same curve
        k = self.bin_of(t)
        losses = losses.cpu()
        count = torch.bincount(k, minlength=self.bins)
        total = torch.bincount(k, weights=losses, minlength=self.bins)
        hit = count > 0
        batch_mean = total[hit] / count[hit]
        keep = self.decay ** count[hit].double()
        fresh = self.seen[hit] == 0  # the first visit sets the average
        self.means[hit] = torch.where(fresh, batch_mean, keep * self.means[hit] + (1 - keep) * batch_mean)
        self.seen += count

    def cdf(self) -> torch.Tensor | None:
        """F~ at levels 0..T (float64 [T + 1]) from the monotone fit, or None before every bin has a loss."""
        if not bool((self.seen > 0).all()):
            return None
        fitted = isotonic(self.means)
        levels = torch.arange(self.num_steps + 1, dtype=torch.float64)
        # piecewise-linear interpolation through (centre_k, fitted_k), constant beyond the ends
        right = torch.searchsorted(self.centres, levels).clamp(1, self.bins - 1)
        x0, x1 = self.centres[right - 1], self.centres[right]
        y0, y1 = fitted[right - 1], fitted[right]
        frac = ((levels - x0) / (x1 - x0)).clamp(0, 1)
        return y0 + frac * (y1 - y0)

    def proposal(self) -> torch.Tensor:
        """pi(t) over levels 0..T (pi(0) = 0), float64 [T + 1]: the warped density mixed with the uniform floor."""
        uniform = torch.full((self.num_steps + 1,), 1.0 / self.num_steps, dtype=torch.float64)
        uniform[0] = 0.0
        curve = self.cdf()
        if curve is None or float(curve[-1] - curve[0]) <= 0:
            return uniform
        warped = torch.cat([torch.zeros(1, dtype=torch.float64), curve[1:] - curve[:-1]])
        return (1 - self.floor) * warped / warped.sum() + self.floor * uniform

    def state(self) -> dict:
        """The fit as plain numbers: logs, and the trainer's checkpoint (a resume continues the same fit)."""
        return {"means": self.means.tolist(), "seen": self.seen.tolist()}

    def load_state(self, state: dict) -> None:
        means, seen = state.get("means"), state.get("seen")
        if not (isinstance(means, list) and isinstance(seen, list) and len(means) == len(seen) == self.bins):
            raise UserError(f"the checkpoint's time-warp fit does not have {self.bins} bins: it was saved by another "
                            "process.num_steps; resume with the run's own config")
        self.means = torch.tensor(means, dtype=torch.float64)
        self.seen = torch.tensor(seen, dtype=torch.long)


def _gathered(t: torch.Tensor, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Under torch.distributed, the levels and losses of every process's micro-batch (each process calls the loss
    equally often); else the inputs."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t, losses
    pairs = torch.stack([t.to(losses.dtype), losses])
    parts = [torch.empty_like(pairs) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, pairs)
    joined = torch.cat(parts, dim=1)
    return joined[0].round().long(), joined[1]
