"""Latent diffusion for text (LD4LG, Lovelace et al. 2023; PLANNER, Zhang et al. 2023): Gaussian diffusion over
the k x d latents of an autoencoder (models/latent_autoencoder.py), decoded to text by its autoregressive decoder.

Two training stages in one run, switched by the process's own count of training batches (`ae_steps`):
1. autoencoder: the encoder's normalised latents mu(w), perturbed as LD4LG / PLANNER do for a decoder robust to
   imperfect generated latents (z = mu + `latent_noise` * eps, then each latent vector zeroed with probability
   `latent_dropout`), decoded by teacher forcing; the loss is the decoder's cross-entropy per token. With
   `word_dropout` each token the decoder reads (not the one it predicts) is replaced by [MASK] with that
   probability (Bowman et al. 2016): an AR decoder that can guess the next token from the ones before it otherwise
   learns slowly to read the latents.
2. diffusion: the autoencoder frozen, latents z ~ q(z | w) = N(mu(w), sigma^2 I) (sigma = `latent_noise`) are
   noised to x_t = sqrt(abar_t) z + sqrt(1 - abar_t) eps, t ~ U{1..T}, and the denoiser predicts z ("x0"), eps
   ("eps") or v = sqrt(abar_t) eps - sqrt(1 - abar_t) z ("v", Salimans & Ho 2022), trained by the mean squared
   error of its own target. Each row is conditioned on the latents of its first c tokens (PLANNER's prefix), c ~
   U{1..L-1}, or with probability `cond_drop` on nothing (the null condition) so that one network is both the
   conditional and the unconditional model of classifier-free guidance (Ho & Salimans 2022). With
   `self_condition`, half the rows first predict z with no gradient and feed that back (Chen et al. 2022).
The schedule, posterior and reverse step are gaussian_math.py's, shared with Diffusion-LM (gaussian.py).

Bound (`nelbo_per_sequence`, with latent_noise > 0). The model: z ~ p(z) (the unconditional reverse chain, every
level, ancestral: p(x_{t-1} | x_t) = q(x_{t-1} | x_t, zhat(x_t, t)), then z ~ p(z | x_0) = N(x_0 / sqrt(abar_0),
(1 - abar_0) / abar_0 I)) and w ~ p_dec(w | z) (the decoder at temperature 1). For any q(z | w),
    -log p(w) <= E_q [-log p_dec(w | z)] + E_q [-log p(z)] - H(q(z | w))          (the VAE bound; LSGM, Vahdat 2021)
and -log p(z) is bounded as gaussian.py bounds its latents: KL(q(x_T | z) || N(0, I)) + sum_t w_t E|z - zhat|^2 +
E_{q(x_0 | z)} [-log p(z | x_0)], the last in closed form (k d / 2) (log(2 pi (1 - abar_0) / abar_0) + 1), with
H(q) = (k d / 2) log(2 pi e sigma^2). One forward pass estimates it without bias (t from the same proposal as
gaussian.py's bound). The sampler never writes [MASK] (it renormalises without it, which only raises the
probability of [MASK]-free text, so the bound holds there too) and keeps the mean of p(z | x_0); self-conditioning,
strided steps, DDIM, guidance and greedy decoding sample other laws, which it does not bound. With latent_noise = 0
there is no density q and the process bounds nothing (`score` refuses).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..core.errors import UserError
from ..models.latent_autoencoder import LatentModel
from ..models.transformer import ModelConfig
from . import gaussian_math
from .base import DiffusionProcess, LossOutput, nonnegative_weight, register

PREDICTIONS = ("x0", "eps", "v")


def _positive_int(name: str, value, meaning: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UserError(f"{name} must be a positive integer ({meaning}), got {value!r}")
    return value


def _fraction(name: str, value, meaning: str) -> float:
    value = nonnegative_weight(name, value, meaning)
    if value >= 1:
        raise UserError(f"{name} must be in [0, 1) ({meaning}), got {value!r}")
    return value


def backbone(model: nn.Module) -> LatentModel:
    """The LatentModel inside a wrapper (torch.compile, the server's batcher), for its attributes; a one-line
    refusal for any other network. The losses make several calls per step (encode, decode, denoise), which DDP's
    gradient reduction and FSDP's gathering of shards do not follow, so those wrappers are refused too."""
    if isinstance(model, DistributedDataParallel) or hasattr(model, "reshard"):  # DDP, or FSDP2's fully_shard
        raise UserError("latent models train in one process (their losses call the encoder, decoder and denoiser "
                        "in turn, which DDP and FSDP do not follow): train without torchrun")
    while not isinstance(model, LatentModel):
        inner = next((m for m in (getattr(model, name, None) for name in ("module", "_orig_mod", "inner"))
                      if isinstance(m, nn.Module)), None)
        if inner is None:
            raise UserError(f"the latent process needs a latent model (autoencoder and denoiser), got a "
                            f"{type(model).__name__}: load the model with its own process")
        model = inner
    return model


def encode(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The model's latents of `ids` (LatentModel.encode), called through the model's forward: a wrapper that only
    sees forward calls (torch.compile, the server's batcher) sees this one."""
    backbone(model)
    return model(ids, part="encode", mask=mask)


def decode_logits(model: nn.Module, ids: torch.Tensor, latents: torch.Tensor, cache=None) -> torch.Tensor:
    """LatentModel.decode_logits through the model's forward (see `encode`); `cache` from `backbone(model).new_cache()`
    computes only the positions past those it holds."""
    backbone(model)
    return model(ids, part="decode", latents=latents, cache=cache)


def denoise(model: nn.Module, xt: torch.Tensor, time: torch.Tensor, cond: torch.Tensor | None = None,
            has_cond: torch.Tensor | None = None, previous: torch.Tensor | None = None) -> torch.Tensor:
    """LatentModel.denoise through the model's forward (see `encode`)."""
    backbone(model)
    return model(xt, time, part="denoise", cond=cond, has_cond=has_cond, previous=previous)


@register
class LatentDiffusion(DiffusionProcess):
    name = "latent"
    default_sampler = "latent"

    def __init__(self, vocab_size: int, mask_id: int, num_latents: int = 16, latent_dim: int = 32,
                 encoder_layers: int = 2, decoder_layers: int = 2, resampler_layers: int = 2, ae_steps: int = 1000,
                 latent_noise: float = 0.1, latent_dropout: float = 0.1, noise_schedule: str = "cosine",
                 num_steps: int = 1000, prediction: str = "v", self_condition: bool = False,
                 cond_drop: float = 0.1, antithetic: bool = True, word_dropout: float = 0.0):
        self.num_latents = _positive_int("num_latents", num_latents, "k, the latent vectors per passage")
        self.latent_dim = _positive_int("latent_dim", latent_dim, "d, the width of each latent vector")
        self.encoder_layers = _positive_int("encoder_layers", encoder_layers, "the encoder's transformer blocks")
        self.decoder_layers = _positive_int("decoder_layers", decoder_layers, "the decoder's transformer blocks")
        self.resampler_layers = _positive_int("resampler_layers", resampler_layers, "the resampler's layers")
        self.num_steps = _positive_int("num_steps", num_steps, "T, the diffusion levels")
        if not isinstance(ae_steps, int) or isinstance(ae_steps, bool) or ae_steps < 0:
            raise UserError(f"ae_steps must be an integer >= 0 (training steps of the autoencoder before the "
                            f"diffusion stage), got {ae_steps!r}")
        if prediction not in PREDICTIONS:
            raise UserError(f"unknown prediction {prediction!r}: choose one of {', '.join(PREDICTIONS)}")
        for flag, value in (("self_condition", self_condition), ("antithetic", antithetic)):
            if not isinstance(value, bool):
                raise UserError(f"{flag} must be true or false, got {value!r}")
        self.latent_noise = nonnegative_weight("latent_noise", latent_noise, "the std of the latents' noise")
        self.latent_dropout = _fraction("latent_dropout", latent_dropout, "the chance a latent vector is zeroed")
        self.cond_drop = _fraction("cond_drop", cond_drop, "the chance a row trains the unconditional model")
        self.word_dropout = _fraction("word_dropout", word_dropout, "the chance the decoder reads [MASK] for a token")
        self.vocab_size, self.mask_id, self.ae_steps = vocab_size, mask_id, ae_steps
        self.noise_schedule, self.prediction = noise_schedule, prediction
        self.self_condition, self.antithetic = self_condition, antithetic
        self.abar = gaussian_math.signal_levels(noise_schedule, num_steps)  # float64 [T + 1]
        snr = self.abar / (1 - self.abar)
        self.kl_weight = torch.cat([torch.zeros(1, dtype=torch.float64), 0.5 * (snr[:-1] - snr[1:])])  # w_t
        uniform = torch.full((num_steps + 1,), 1.0 / num_steps, dtype=torch.float64)
        uniform[0] = 0.0
        self.proposal = 0.5 * (uniform + self.kl_weight / self.kl_weight.sum())  # gaussian.py's defensive mixture
        self.bound = self.latent_noise > 0  # q(z | w) needs a density (module notes)
        self.batches_drawn = 0  # training batches so far: which stage the next one trains

    def config(self) -> dict:
        return {"num_latents": self.num_latents, "latent_dim": self.latent_dim,
                "encoder_layers": self.encoder_layers, "decoder_layers": self.decoder_layers,
                "resampler_layers": self.resampler_layers, "ae_steps": self.ae_steps,
                "latent_noise": self.latent_noise, "latent_dropout": self.latent_dropout,
                "noise_schedule": self.noise_schedule, "num_steps": self.num_steps, "prediction": self.prediction,
                "self_condition": self.self_condition, "cond_drop": self.cond_drop, "antithetic": self.antithetic,
                "word_dropout": self.word_dropout}

    def build_network(self, cfg: ModelConfig) -> LatentModel:
        """The network this process trains and samples: autoencoder and denoiser (models/latent_autoencoder.py)."""
        return LatentModel(cfg, self.num_latents, self.latent_dim, self.encoder_layers, self.decoder_layers,
                           self.resampler_layers, self.self_condition)

    def training_state(self) -> dict:
        return {"batches_drawn": self.batches_drawn}

    def load_training_state(self, state: dict) -> None:
        self.batches_drawn = int(state.get("batches_drawn", 0))

    # ---- the pieces samplers and tests use -------------------------------------------------
    def model_time(self, t: torch.Tensor | int, batch: int, device) -> torch.Tensor:
        if isinstance(t, int):
            return torch.full((batch,), t / self.num_steps, device=device)
        return t.float() / self.num_steps

    def to_clean(self, out: torch.Tensor, xt: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """zhat from the network's output in its parameterisation (x0, eps or v) at level t."""
        abar = self.abar.to(xt.device)[t].float()
        abar = abar.view(-1, 1, 1) if abar.dim() else abar
        if self.prediction == "x0":
            return out
        if self.prediction == "eps":  # x_t = sqrt(abar) z + sqrt(1 - abar) eps
            return (xt - (1 - abar).sqrt() * out) / abar.sqrt()
        return abar.sqrt() * xt - (1 - abar).sqrt() * out  # v: z = sqrt(abar) x_t - sqrt(1 - abar) v

    def target(self, z: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the network learns to output for x_t = corrupt(z, t, eps): z, eps or v (to_clean inverts it)."""
        if self.prediction == "x0":
            return z
        if self.prediction == "eps":
            return eps
        abar = self.abar.to(z.device)[t].float()[:, None, None]
        return abar.sqrt() * eps - (1 - abar).sqrt() * z  # v (Salimans & Ho 2022, section 4)

    def predict(self, model: nn.Module, xt: torch.Tensor, t: torch.Tensor | int, cond: torch.Tensor | None = None,
                has_cond: torch.Tensor | None = None, previous: torch.Tensor | None = None,
                guidance: float = 1.0) -> torch.Tensor:
        """zhat(x_t, t) [B, k, d], float32. With a condition and guidance s != 1, classifier-free guidance:
        out = out_uncond + s (out_cond - out_uncond) on the network's output (linear in it, so the same on zhat);
        s = 0 is the unconditional model, s = 1 the conditional one."""
        time = self.model_time(t, xt.shape[0], xt.device)
        if cond is None or guidance == 0:
            out = denoise(model, xt, time, previous=previous).float()
        else:
            out = denoise(model, xt, time, cond, has_cond, previous).float()
            if guidance != 1:
                uncond = denoise(model, xt, time, previous=previous).float()
                out = uncond + guidance * (out - uncond)
        return self.to_clean(out, xt.float(), t)

    def corrupt(self, z: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        abar = self.abar.to(z.device)[t].float()[:, None, None]
        return abar.sqrt() * z + (1 - abar).sqrt() * eps.to(z.dtype)

    def prefix_latents(self, model: nn.Module, x0: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(latents of each row's first `lengths` tokens [B, k, d], rows with a prefix [B] bool)."""
        has = lengths > 0
        mask = torch.arange(x0.shape[1], device=x0.device)[None] < lengths[:, None]
        mask = mask | ~has[:, None]  # an empty prefix reads the whole row, and its latents are never used
        return encode(model, x0, mask), has

    # ---- noise --------------------------------------------------------------------------------
    def _noise(self, x0: torch.Tensor, generator: torch.Generator | None, proposal: torch.Tensor | None) -> dict:
        b, dev = x0.shape[0], x0.device
        shape = (b, self.num_latents, self.latent_dim)
        u = torch.rand(b, device=dev, generator=generator, dtype=torch.float64)
        if self.antithetic:
            u = (u + torch.arange(b, device=dev)) / b
        if proposal is None:
            t = (u * self.num_steps).long().clamp(0, self.num_steps - 1) + 1
            weight = torch.full((b,), float(self.num_steps), dtype=torch.float64, device=dev)
        else:
            cdf = proposal.to(dev).cumsum(0)
            t = torch.searchsorted(cdf, (u * cdf[-1]).contiguous(), right=True).clamp(1, self.num_steps)
            weight = 1.0 / proposal.to(dev)[t]
        split = torch.randint(1, max(x0.shape[1], 2), (b,), device=dev, generator=generator)
        uncond = torch.rand(b, device=dev, generator=generator) < self.cond_drop
        return {"t": t, "t_weight": weight, "eps": torch.randn(shape, device=dev, generator=generator),
                "enc_eps": torch.randn(shape, device=dev, generator=generator),
                "keep": torch.rand(shape[:2], device=dev, generator=generator) >= self.latent_dropout,
                "read": torch.rand(x0.shape, device=dev, generator=generator) >= self.word_dropout,
                "prefix": torch.where(uncond, 0, split),
                "self_cond": torch.rand(b, device=dev, generator=generator) < 0.5,
                "stage": torch.zeros(b, dtype=torch.long, device=dev)}

    def sample_noise(self, x0, generator=None):
        """The bound's draws (t from the proposal pi); evaluation's stage is the whole model."""
        return self._noise(x0, generator, self.proposal)

    def train_noise(self, x0, generator=None):
        """One call per training step: the first `ae_steps` train the autoencoder, the rest the denoiser."""
        noise = self._noise(x0, generator, None)
        noise["stage"].fill_(0 if self.batches_drawn < self.ae_steps else 1)
        self.batches_drawn += 1
        return noise

    def stage(self, noise: dict) -> str:
        return "autoencoder" if int(noise["stage"][0]) == 0 else "diffusion"

    # ---- losses and the bound ------------------------------------------------------------------
    def reconstruction_nll(self, model: nn.Module, x0: torch.Tensor, z: torch.Tensor,
                           inputs: torch.Tensor | None = None) -> torch.Tensor:
        """-log p_dec(w | z) of each row, [B], nats; `inputs`: what the decoder reads instead of x0 (word dropout)."""
        logits = decode_logits(model, x0 if inputs is None else inputs, z).float()
        return F.cross_entropy(logits.transpose(1, 2), x0, reduction="none").sum(1)

    def diffusion_terms(self, zhat_fn, z: torch.Tensor, noise: dict) -> torch.Tensor:
        """The unbiased one-sample bound on -log p(z) of each row [B] (module notes), for a denoiser
        zhat_fn(x_t, t) -> zhat; noise["t"] ~ pi, noise["t_weight"] = 1 / pi(t)."""
        t = noise["t"]
        zhat = zhat_fn(self.corrupt(z, t, noise["eps"]), t)
        mse = (zhat.float() - z.float()).pow(2).sum((1, 2))
        diffusion = (self.kl_weight.to(z.device)[t] * noise["t_weight"].to(z.device).double()).float() * mse
        abar_t, abar_0 = float(self.abar[-1]), float(self.abar[0])
        n = z.shape[1] * z.shape[2]
        prior = 0.5 * (abar_t * z.float().pow(2).sum((1, 2)) - n * abar_t - n * math.log1p(-abar_t))
        final = 0.5 * n * (math.log(2 * math.pi * (1 - abar_0) / abar_0) + 1)  # E[-log p(z | x_0)], closed form
        return diffusion + prior + final

    def nelbo_per_sequence(self, model: nn.Module, x0: torch.Tensor, noise: dict[str, torch.Tensor],
                           loss_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The bound on -log p(w) of each row [B] (module notes); with latent_noise = 0 (no bound), the decoder's
        reconstruction NLL from the encoder's latents, which the trainer logs as val_loss."""
        if loss_mask is not None and not bool(loss_mask.all()):
            raise UserError("a latent model scores whole passages only (its latents encode every token): "
                            "score without a loss mask")
        z = encode(model, x0) + self.latent_noise * noise["enc_eps"].to(x0.device)
        recon = self.reconstruction_nll(model, x0, z)
        if not self.bound:
            return recon
        n = z.shape[1] * z.shape[2]
        entropy = 0.5 * n * math.log(2 * math.pi * math.e * self.latent_noise ** 2)  # H(q(z | w))
        return recon + self.diffusion_terms(lambda xt, t: self.predict(model, xt, t), z, noise) - entropy

    def loss(self, model: nn.Module, x0: torch.Tensor, noise: dict[str, torch.Tensor],
             loss_mask: torch.Tensor | None = None) -> LossOutput:
        """The stage's loss (module notes): the decoder's cross-entropy, or the denoiser's mean squared error
        per latent coordinate (scaled by the row's tokens so that the trainer's per-token mean is that MSE)."""
        if loss_mask is not None:
            raise UserError("latent models train on whole passages: they have no loss mask (SFT) training")
        if self.stage(noise) == "autoencoder":
            z = encode(model, x0) + self.latent_noise * noise["enc_eps"]
            z = z * noise["keep"][..., None].to(z.dtype)  # latent dropout: whole vectors
            inputs = torch.where(noise["read"], x0, self.mask_id)  # word dropout (module notes)
            return LossOutput(total=self.reconstruction_nll(model, x0, z, inputs).sum(), n_tokens=x0.numel())
        with torch.no_grad():  # the autoencoder is frozen in this stage
            z = (encode(model, x0) + self.latent_noise * noise["enc_eps"]).float()
            cond, has = self.prefix_latents(model, x0, noise["prefix"])
        t, eps = noise["t"], noise["eps"].float()
        xt = self.corrupt(z, t, eps)
        time = self.model_time(t, x0.shape[0], x0.device)
        previous = None
        if self.self_condition:
            with torch.no_grad():
                first = self.to_clean(denoise(model, xt, time, cond, has).float(), xt, t)
            previous = torch.where(noise["self_cond"][:, None, None], first, torch.zeros_like(first))
        out = denoise(model, xt, time, cond, has, previous).float()
        mse = (out - self.target(z, eps, t)).pow(2).mean((1, 2))
        return LossOutput(total=(mse * x0.shape[1]).sum(), n_tokens=x0.numel())
