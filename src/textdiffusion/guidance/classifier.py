"""A learned attribute classifier on noisy inputs, for guidance (Diffusion-LM, Li et al. 2022, section 5.2).

`AttributeClassifier` is the library's transformer (time-conditioned, bidirectional) read as a sequence
classifier: the mean over positions of per-position class logits. Two input kinds:
- "latent": the continuous latents x_t [B, L, d] of a Gaussian (Diffusion-LM) model, with t = level / T; trained
  on x_t = sqrt(abar_t) EMB(w) + sqrt(1 - abar_t) eps, t ~ U{0..T}, with that model's frozen embeddings, as
  Diffusion-LM trains its classifiers on noisy latents. The classifier reads each position through the Gaussian
  likelihood of every token, softmax_w(log N(x_t,l; sqrt(abar_t) e_w, (1 - abar_t) I)) (the posterior of w_l
  under a uniform prior; the generator's table and abar are frozen buffers), then its own learned embeddings:
  a plain projection of the 16-wide latents learned nothing in 600 steps (balanced accuracy 0.53 on clean
  latents), the likelihood read-out exposes the letters' case at once;
- "tokens": ids [B, L] or relaxed one-hot vectors [B, L, V] of a masked (MDLM) model's x_t, with t = the fraction
  of positions masked; trained on x_t with each token masked with probability t ~ U(0, 1). The one-hot input
  makes it differentiable in the tokens, which the discrete baseline's Taylor-approximated guidance needs.
`Attribute` turns a trained classifier into a control for either family's guidance.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..core.errors import UserError
from ..models import ModelConfig, Transformer
from .controls import Control

KINDS = ("latent", "tokens")


@dataclass
class ClassifierConfig:
    kind: str  # "latent" or "tokens"
    vocab_size: int  # the generator's vocabulary (its [MASK] id is mask_id)
    mask_id: int
    seq_len: int
    embed_dim: int = 16  # the classifier's own token embedding width
    latent_dim: int = 0  # latent: the generator's embedding width
    num_steps: int = 0  # latent: the generator's T
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    classes: int = 2
    labels: tuple[str, ...] = ("prose", "verse")  # names of the classes, in order

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UserError(f"classifier kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        self.labels = tuple(self.labels)
        if self.kind == "latent" and (self.latent_dim < 1 or self.num_steps < 1):
            raise UserError("a latent classifier needs the generator's latent_dim and num_steps (T)")
        if len(self.labels) != self.classes:
            raise UserError(f"the classifier has {self.classes} classes but {len(self.labels)} label names")


class AttributeClassifier(nn.Module):
    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        self.cfg = cfg
        self.body = Transformer(ModelConfig(vocab_size=cfg.classes, seq_len=cfg.seq_len, d_model=cfg.d_model,
                                            n_layers=cfg.n_layers, n_heads=cfg.n_heads, time_conditioning=True,
                                            embed_dim=cfg.embed_dim, embed_logits=True))
        self.tokens = nn.Embedding(cfg.vocab_size, cfg.embed_dim)
        if cfg.kind == "latent":  # the generator's frozen table and signal levels (set by `attach`)
            self.register_buffer("table", torch.zeros(cfg.vocab_size, cfg.latent_dim))
            self.register_buffer("abar", torch.zeros(cfg.num_steps + 1))

    def attach(self, process, table: torch.Tensor) -> AttributeClassifier:
        """Copy a Gaussian generator's embedding table [V, d] and abar into a latent classifier."""
        self.table.copy_(table.detach().float())
        self.abar.copy_(process.abar.float())
        return self

    def token_posterior(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """p(w_l | x_t,l) [B, L, V] under a uniform prior over tokens ([MASK] excluded)."""
        level = (t.float() * self.cfg.num_steps).round().long().clamp(0, self.cfg.num_steps)
        abar = self.abar[level][:, None, None]
        logits = (abar.sqrt() * x.float() @ self.table.T - 0.5 * abar * self.table.pow(2).sum(-1)) / (1 - abar)
        logits[..., self.cfg.mask_id] = float("-inf")
        return torch.softmax(logits, -1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Class logits [B, classes] of x (latents, ids or one-hot vectors; module notes) at noise time t [B]."""
        if self.cfg.kind == "latent":
            x = self.token_posterior(x, t)
        x = self.tokens(x) if not x.is_floating_point() else x @ self.tokens.weight
        return self.body(x.float(), t.float()).mean(1)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "classifier.json").write_text(json.dumps(asdict(self.cfg), indent=1))
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(path / "classifier.safetensors"))
        return path

    @classmethod
    def load(cls, path: str | Path) -> AttributeClassifier:
        path = Path(path)
        if not (path / "classifier.json").is_file():
            raise UserError(f"{path} holds no attribute classifier (classifier.json): train one with "
                            "benchmarks/continuous/classifier.py")
        model = cls(ClassifierConfig(**json.loads((path / "classifier.json").read_text())))
        model.load_state_dict(load_file(str(path / "classifier.safetensors")))
        return model.eval()


def noisy_latents(process, table: torch.Tensor, ids: torch.Tensor, gen: torch.Generator,
                  power: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, t / T) per row under a Gaussian process with embedding table [V, d]: t = floor((T + 1) u^power),
    u ~ U(0, 1), so power 1 is t ~ U{0..T} and a larger power favours low noise (power 3: 46% of draws below
    t = T / 10), where a label can be read at all."""
    u = torch.rand(ids.shape[0], generator=gen, dtype=torch.float64)
    levels = (u.pow(power) * (process.num_steps + 1)).floor().long().clamp(max=process.num_steps)
    abar = process.abar[levels].float()[:, None, None]
    eps = torch.randn(*ids.shape, table.shape[1], generator=gen)
    return abar.sqrt() * table[ids] + (1 - abar).sqrt() * eps, levels.float() / process.num_steps


def masked_tokens(mask_id: int, ids: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, t) for t ~ U(0, 1) per row: each token masked with probability t (log-linear MDLM's q(x_t | x0))."""
    t = torch.rand(ids.shape[0], generator=gen)
    masked = torch.rand(ids.shape, generator=gen) < t[:, None]
    return torch.where(masked, torch.full_like(ids, mask_id), ids), t


def train_classifier(model: AttributeClassifier, ids: torch.Tensor, labels: torch.Tensor,
                     noise: Callable[[torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]],
                     steps: int, batch_size: int = 32, lr: float = 1e-3, seed: int = 0,
                     log: Callable[[int, float], None] | None = None) -> AttributeClassifier:
    """Cross-entropy training on noisy inputs, batches balanced across the classes (each class drawn equally
    often, so the classifier's prior is uniform and its guidance pushes towards the attribute, not its base
    rate); AdamW with linear warm-up and cosine decay."""
    if ids.shape[0] != labels.shape[0] or ids.shape[0] == 0:
        raise UserError("train_classifier needs as many labels as windows, and at least one window")
    gen = torch.Generator().manual_seed(seed)
    by_class = [torch.nonzero(labels == c).flatten() for c in range(model.cfg.classes)]
    if any(len(rows) == 0 for rows in by_class):
        raise UserError("every class needs at least one training window")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warm = max(1, steps // 20)
    model.train()
    for step in range(steps):
        scale = min(1.0, (step + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        for group in opt.param_groups:
            group["lr"] = lr * scale
        cls = torch.arange(batch_size) % model.cfg.classes
        rows = torch.stack([by_class[c][torch.randint(len(by_class[c]), (), generator=gen)] for c in cls.tolist()])
        x, t = noise(ids[rows], gen)
        loss = nn.functional.cross_entropy(model(x, t), labels[rows])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if log is not None:
            log(step + 1, loss.item())
    return model.eval()


class Attribute(Control):
    """The classifier's log p(label | x_t) as a control. Continuous guidance calls `latent_log_prob` with the
    latents and the level; the discrete baseline calls `token_log_prob` with relaxed one-hot tokens. `satisfied`
    judges finished ids by `rule` (text -> class or None) through `decode` (ids -> text)."""

    latent = True

    def __init__(self, classifier: AttributeClassifier, label: str, decode: Callable[[list[int]], str],
                 rule: Callable[[str], int | None]):
        if label not in classifier.cfg.labels:
            raise UserError(f"the classifier knows the labels {', '.join(classifier.cfg.labels)}, not {label!r}")
        self.classifier, self.label = classifier, classifier.cfg.labels.index(label)
        self.decode, self.rule = decode, rule
        for p in classifier.parameters():
            p.requires_grad_(False)

    def latent_log_prob(self, latents: torch.Tensor, level: int, num_steps: int) -> torch.Tensor:
        if self.classifier.cfg.kind != "latent":
            raise UserError("this classifier reads masked tokens: use it with a masked model's guidance")
        t = torch.full((latents.shape[0],), level / num_steps, device=latents.device)
        return torch.log_softmax(self.classifier(latents, t), -1)[:, self.label]

    def token_log_prob(self, onehot: torch.Tensor, mask_id: int) -> torch.Tensor:
        if self.classifier.cfg.kind != "tokens":
            raise UserError("this classifier reads continuous latents: use it with a gaussian model's guidance")
        t = onehot[..., mask_id].detach().mean(1)
        return torch.log_softmax(self.classifier(onehot, t), -1)[:, self.label]

    def satisfied(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.tensor([self.rule(self.decode(row.tolist())) == self.label for row in ids.cpu()])
