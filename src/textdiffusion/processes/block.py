"""Block diffusion: BD3-LM (Arriola et al., 2025) -- autoregressive over blocks, masked diffusion within.

A sequence of L tokens is cut into blocks of `block_size` B. The likelihood factorises over blocks,
log p(x) = sum_b log p(x^b | x^{<b}), and each factor gets MDLM's bound (`masked.py`: reconstruction at
t_min + diffusion integral over [t_min, 1] + prior) with its own noise sample s_b ~ U[0, 1] (BD3-LM eq. 5-6,
completed with the t < t_min term):

    NELBO = sum_b E_{s_b} [ w(s_b) * sum_{l in b, masked at max(s_b, t_min)} -log p(x0_l | x_t^b, x^{<b}) ] + P,

w(s) = -alpha'(s)/(1-alpha(s)) for s >= t_min and 1/t_min below (the reconstruction term), P = alpha(1)
log(V - 1) per token (0 for alpha(1) = 0).

Training evaluates every block in one forward pass over the 2L-token input [x_t ; x0] with the
vectorised block-causal mask of the paper (Sec. 3.2, Fig. 2): a noisy token attends to its own
noisy block and to the clean blocks before it; a clean token attends to clean blocks up to its own.
Both halves use positions 0..L-1. B = L is MDLM; B = 1 is an autoregressive model whose input at
position l is [MASK] (at t = 1 every token is masked and the weight is 1: the exact AR NLL).

Infilling and conditional scores see the left context and the span's own block only: text to the
right of that block is invisible to a block model (as to AR), so its infill numbers are left-context
ones.

The clipped schedule (Sec. 5.2) draws the training mask rate from U[mask_rate_min, mask_rate_max]
instead of U[0, 1] (and drops the reconstruction term): it lowers the gradient variance; evaluation
always uses the full range, so the reported numbers stay a bound. Unclipped, training uses the bound.

`logit_shift=True` (a block model adapted from an AR one, processes/block_shift.py) reads both halves shifted
right by one, so output l predicts x0_l from the token before it, as the AR model did; `train_attention` (set
per step while annealing, train/adapt.py) limits which tokens of a block (noisy or clean) see each other.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..core.errors import UserError
from .base import register
from .masked import MaskedDiffusion, masked_nll


def block_ids(length: int, block_size: int, device=None) -> torch.Tensor:
    return torch.arange(length, device=device) // block_size


def block_causal_mask(length: int, block_size: int, device=None) -> torch.Tensor:
    """[L, L] bool, True where query i may attend key j: block(j) <= block(i)."""
    b = block_ids(length, block_size, device)
    return b[None, :] <= b[:, None]


def training_mask(length: int, block_size: int, device=None) -> torch.Tensor:
    """[2L, 2L] bool mask for the input [x_t ; x0] (True = attend)."""
    b = block_ids(length, block_size, device)
    same = b[:, None] == b[None, :]  # x_t -> x_t: its own block, bidirectionally
    earlier = b[None, :] < b[:, None]  # x_t -> x0: the clean blocks before it
    causal = b[None, :] <= b[:, None]  # x0 -> x0: block-causal
    top = torch.cat([same, earlier], dim=1)
    bottom = torch.cat([torch.zeros_like(same), causal], dim=1)  # x0 never sees noisy tokens
    return torch.cat([top, bottom], dim=0)


@register
class BlockDiffusion(MaskedDiffusion):
    name = "block"
    default_sampler = "block"

    def __init__(self, vocab_size: int, mask_id: int, block_size: int = 4, schedule: str = "loglinear",
                 t_min: float = 1e-3, antithetic: bool = True, mask_rate_min: float = 0.0,
                 mask_rate_max: float = 1.0, logit_shift: bool = False, loss_weighting: str = "elbo",
                 ce_lambda: float = 0.0, complementary_masks: bool = False):
        super().__init__(vocab_size, mask_id, schedule, t_min, antithetic, loss_weighting=loss_weighting,
                         ce_lambda=ce_lambda, complementary_masks=complementary_masks)
        self.logit_shift = bool(logit_shift)  # AR-adapted: the shifted frame of processes/block_shift.py
        if not isinstance(block_size, int) or block_size < 1:
            raise UserError(f"block_size must be a positive integer, got {block_size!r}")
        if not 0.0 <= mask_rate_min <= mask_rate_max <= 1.0:
            raise UserError("the clipped schedule needs 0 <= mask_rate_min <= mask_rate_max <= 1, got "
                            f"{mask_rate_min} and {mask_rate_max}")
        clipped = (mask_rate_min, mask_rate_max) != (0.0, 1.0)
        if complementary_masks and not math.isclose(mask_rate_min, 1.0 - mask_rate_max):
            raise UserError("complementary_masks mirrors each block's mask rate t to 1 - t: the clipped range needs "
                            f"mask_rate_min = 1 - mask_rate_max, got {mask_rate_min} and {mask_rate_max}")
        if clipped and schedule != "loglinear":
            raise UserError("the clipped schedule is defined for schedule 'loglinear' (mask rate = t)")
        self.block_size, self.mask_rate_min, self.mask_rate_max = block_size, mask_rate_min, mask_rate_max

    def config(self) -> dict:
        return {**super().config(), "block_size": self.block_size, "mask_rate_min": self.mask_rate_min,
                "mask_rate_max": self.mask_rate_max}

    def denoiser(self, model: nn.Module) -> nn.Module:
        """What the block sampler calls: the backbone, or its shifted view (processes/block_shift.py)."""
        if not self.logit_shift:
            return model
        from .block_shift import ShiftedBlockDenoiser

        return ShiftedBlockDenoiser(model, self.mask_id)

    def num_blocks(self, length: int) -> int:
        return -(-length // self.block_size)

    def _block_t(self, x0: torch.Tensor, low: float, high: float, generator) -> torch.Tensor:
        """One noise level per block, [B, n_blocks], stratified over all blocks of the batch."""
        shape = (x0.shape[0], self.num_blocks(x0.shape[1]))
        n = shape[0] * shape[1]
        u = torch.rand(n, device=x0.device, generator=generator)
        if self.antithetic:
            u = (u + torch.arange(n, device=x0.device)) / n
            u = u[torch.randperm(n, device=x0.device, generator=generator)]  # strata spread over blocks
        return (low + (high - low) * u).view(shape)

    def sample_noise(self, x0, generator=None):
        return {"t": self._block_t(x0, 0.0, 1.0, generator),  # s_b ~ U[0, 1]: below t_min, reconstruction
                "u": torch.rand(x0.shape, device=x0.device, generator=generator)}

    def train_noise(self, x0, generator=None):
        if (self.mask_rate_min, self.mask_rate_max) == (0.0, 1.0):
            return self.sample_noise(x0, generator)
        low = max(self.t_min, self.mask_rate_min)
        high = max(low, self.mask_rate_max)
        return {"t": self._block_t(x0, low, high, generator),
                "u": torch.rand(x0.shape, device=x0.device, generator=generator)}

    def token_t(self, t_blocks: torch.Tensor, length: int) -> torch.Tensor:
        """Per-block noise levels [B, n_blocks] -> per-token [B, L]."""
        return t_blocks.repeat_interleave(self.block_size, dim=1)[:, :length]

    def denoiser_logits(self, model: nn.Module, xt: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """Logits for every noisy block given the clean blocks before it, [B, L, V], in one pass."""
        if getattr(getattr(model, "cfg", None), "time_conditioning", False):
            raise UserError("block diffusion draws one noise level per block; use a model without time conditioning")
        length = xt.shape[1]
        if self.block_size > length:
            raise UserError(f"block_size {self.block_size} is longer than the {length}-token sequences: use at most "
                            f"{length} (block_size = length is MDLM)")
        positions = torch.arange(length, device=xt.device).repeat(2)
        mask = training_mask(length, self.block_size, xt.device)
        if self.train_attention is not None:  # annealing: inside a block, a token sees what it allows (both halves)
            allowed = self.train_attention[:length, :length].to(mask.device)  # causal, plus random future keys
            mask[:length, :length] &= allowed
            mask[length:, length:] &= allowed
        if self.logit_shift:
            from .block_shift import shifted_block_inputs

            xt, x0 = shifted_block_inputs(xt, x0, self.block_size, self.mask_id)
        return model(torch.cat([xt, x0], dim=1), attn_mask=mask, positions=positions, outputs=slice(0, length))

    def log_probs(self, model: nn.Module, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        raise UserError("a block diffusion model predicts a block given the clean blocks before it, not x0 from "
                        "x_t alone: use denoiser_logits(model, xt, x0) or sampler 'block'")

    def nelbo_per_sequence(self, model: nn.Module, x0: torch.Tensor, noise: dict[str, torch.Tensor],
                           loss_mask: torch.Tensor | None = None) -> torch.Tensor:
        """One-sample unbiased estimate of each sequence's NELBO (the module notes), [B], in nats."""
        return self.bound_and_flat(model, x0, noise, loss_mask)[0]

    def bound_and_flat(self, model: nn.Module, x0: torch.Tensor, noise: dict[str, torch.Tensor],
                       loss_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(the NELBO estimate, the masked tokens' summed -log p_theta, unweighted), each [B], one forward pass."""
        s = self.token_t(noise["t"], x0.shape[1])
        masked = noise["u"] >= self.schedule.alpha(self.noise_level(s))
        if loss_mask is not None:
            masked &= loss_mask
        xt = torch.where(masked, torch.full_like(x0, self.mask_id), x0)
        nll = masked_nll(self.denoiser_logits(model, xt, x0), x0, masked, self.mask_id)
        n_scored = x0.shape[1] if loss_mask is None else loss_mask.sum(1)
        # per block: -log p(x^b | x^{<b}) <= (R) + int_{t_min}^1 w(t) E[sum_masked -log p] dt + (P) (masked.py)
        return (self.bound_weight(s) * nll).sum(dim=1) + self.prior_nats * n_scored, nll.sum(dim=1)
