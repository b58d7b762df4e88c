"""MAUVE (Pillutla et al., 2021): how close the distribution of generated texts is to that of human texts.

Both sets of texts are embedded by a language model (here SmolLM2's last hidden state of the last token,
computed offline: `HFJudge.features`), the pooled features are L2-normalised, reduced by PCA to the
components explaining 90% of their variance, and quantised by k-means into k = max(2, round(n / 10))
clusters (n: the smaller set). With P, Q the two cluster histograms and R_w = w P + (1 - w) Q, the divergence
frontier is the curve (exp(-c KL(Q || R_w)), exp(-c KL(P || R_w))) over w in (0, 1), with c = 5; MAUVE is the
area under it (paper, eq. 1-2), taken by trapezoids along x and along y and averaged, with the defaults of the
reference implementation `mauve-text` 0.4 (25 mixture weights, scaling 5, 90% explained variance, 5 k-means
restarts of up to 500 iterations). Equal histograms give 1; disjoint ones 1/252 (the curve is ((1-w)^5, w^5)).

This is an own implementation (numpy-free, in torch) so that no extra package (faiss, scikit-learn) is needed;
its k-means differs from faiss's, so values agree with `mauve-text` only up to the quantisation's noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..core.errors import UserError

Featurizer = Callable[[Sequence[str]], torch.Tensor]


@dataclass
class MauveResult:
    mauve: float
    clusters: int
    frontier: list[tuple[float, float]]  # (exp(-c KL(Q||R)), exp(-c KL(P||R))) points, sorted by the first
    p_hist: list[float]
    q_hist: list[float]


def _kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """KL(a || b) of histograms, 0 log 0 = 0 (b > 0 wherever a > 0 for the mixtures used here)."""
    return torch.where(a > 0, a * (a.clamp_min(1e-300).log() - b.clamp_min(1e-300).log()), torch.zeros_like(a)).sum()


def divergence_frontier(p: torch.Tensor, q: torch.Tensor, scaling: float = 5.0,
                        points: int = 25) -> list[tuple[float, float]]:
    """The frontier of histograms p and q with its two end points (0, 1) and (1, 0), sorted by x."""
    p, q = p.double() / p.sum(), q.double() / q.sum()
    curve = [(0.0, 1.0), (1.0, 0.0)]
    for w in torch.linspace(1e-6, 1 - 1e-6, points, dtype=torch.float64):
        r = w * p + (1 - w) * q
        curve.append((math.exp(-scaling * float(_kl(q, r))), math.exp(-scaling * float(_kl(p, r)))))
    return sorted(curve)


def frontier_area(curve: list[tuple[float, float]]) -> float:
    """Area under the frontier: the mean of the trapezoid rule along x (points sorted by x) and along y."""
    def trapezoids(points: list[tuple[float, float]]) -> float:
        points = sorted(points)
        return sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in zip(points, points[1:]))

    return 0.5 * (trapezoids(curve) + trapezoids([(y, x) for x, y in curve]))


def _pca(x: torch.Tensor, explained: float) -> torch.Tensor:
    """x projected on the fewest principal components explaining `explained` of its variance."""
    centred = x - x.mean(0)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    share = (s**2).cumsum(0) / (s**2).sum().clamp_min(1e-300)
    keep = int((share < explained).sum()) + 1
    return centred @ vh[:keep].T


def kmeans(x: torch.Tensor, k: int, restarts: int = 5, iters: int = 500, seed: int = 0) -> torch.Tensor:
    """Lloyd's k-means with k-means++ seeding, best of `restarts` by inertia; returns each row's cluster."""
    gen = torch.Generator().manual_seed(seed)
    best, best_inertia = None, math.inf
    for _ in range(restarts):
        centres = x[torch.randint(len(x), (1,), generator=gen)]
        for _ in range(1, k):  # k-means++: the next centre with probability proportional to squared distance
            d2 = torch.cdist(x, centres).min(1).values ** 2
            pick = torch.multinomial(d2 / d2.sum(), 1, generator=gen) if d2.sum() > 0 else \
                torch.randint(len(x), (1,), generator=gen)
            centres = torch.cat([centres, x[pick]])
        labels = torch.cdist(x, centres).argmin(1)
        for _ in range(iters):
            for j in range(k):
                if (labels == j).any():
                    centres[j] = x[labels == j].mean(0)
            new = torch.cdist(x, centres).argmin(1)
            if torch.equal(new, labels):
                break
            labels = new
        inertia = float(((x - centres[labels]) ** 2).sum())
        if inertia < best_inertia:
            best, best_inertia = labels, inertia
    return best


def mauve_from_features(p_features: torch.Tensor, q_features: torch.Tensor, clusters: int | None = None,
                        explained_variance: float = 0.9, scaling: float = 5.0, seed: int = 0) -> MauveResult:
    """MAUVE of q (e.g. generated) against p (e.g. human) texts' features, [n, d] and [m, d]."""
    if p_features.ndim != 2 or q_features.ndim != 2 or p_features.shape[1] != q_features.shape[1]:
        raise UserError(f"MAUVE needs two [n, d] feature matrices of equal width, got {tuple(p_features.shape)} "
                        f"and {tuple(q_features.shape)}")
    n, m = len(p_features), len(q_features)
    if min(n, m) < 2:
        raise UserError(f"MAUVE needs at least 2 texts on each side, got {n} and {m}")
    k = clusters or max(2, round(min(n, m) / 10))
    x = torch.cat([p_features, q_features]).double()
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    labels = kmeans(_pca(x, explained_variance), min(k, n + m), seed=seed)
    p_hist = torch.bincount(labels[:n], minlength=k).double() / n
    q_hist = torch.bincount(labels[n:], minlength=k).double() / m
    curve = divergence_frontier(p_hist, q_hist, scaling)
    return MauveResult(frontier_area(curve), k, curve, p_hist.tolist(), q_hist.tolist())


def mauve(p_texts: Sequence[str], q_texts: Sequence[str], featurize: Featurizer, **options) -> MauveResult:
    """MAUVE of `q_texts` against `p_texts`, both embedded by `featurize` (texts -> [n, d] tensor)."""
    return mauve_from_features(featurize(list(p_texts)), featurize(list(q_texts)), **options)


def byte_histogram_features(texts: Sequence[str]) -> torch.Tensor:
    """A crude, model-free featurizer: each text's byte frequencies, [n, 256]. For tests and smoke runs only;
    real measurements use a language model's hidden states."""
    rows = []
    for text in texts:
        counts = torch.bincount(torch.tensor(list(text.encode("utf-8")), dtype=torch.long), minlength=256)
        rows.append(counts.double() / max(int(counts.sum()), 1))
    return torch.stack(rows) if rows else torch.zeros(0, 256, dtype=torch.float64)
