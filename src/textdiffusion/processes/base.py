"""The interface every forward process implements, and the registry that names them."""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import torch
from torch import nn

from ..core.errors import UserError


@dataclass
class LossOutput:
    total: torch.Tensor  # scalar: NELBO (or NLL) summed over the batch, in nats
    n_tokens: int  # tokens it covers; total / n_tokens is the per-token loss

    @property
    def mean(self) -> torch.Tensor:
        return self.total / max(self.n_tokens, 1)


class DiffusionProcess:
    """A forward (noising) process and its training objective.

    `name` keys the registry; `config()` is stored in a model's config.json and passed back as
    keyword arguments to rebuild the process.
    """

    name: str
    causal: bool = False  # the backbone it trains: causal attention (autoregressive) or bidirectional
    default_sampler: str = "ancestral"  # the sampler Pipeline.generate uses when none is named
    exact_likelihood: bool = False  # nelbo_per_sequence is the exact NLL, with no randomness
    bound: bool = True  # nelbo_per_sequence bounds -log p(x0); False: a training loss only (score refuses it)

    @property
    def needs_time_conditioning(self) -> bool:
        """True when x_t alone does not reveal the noise level (uniform noise): the model must see t."""
        return False

    def config(self) -> dict:
        raise NotImplementedError

    def model_fields(self) -> dict:
        """ModelConfig fields this process sets on the backbone it trains (e.g. the embedding width of a
        continuous-embedding process); none by default."""
        return {}

    def training_state(self) -> dict:
        """What the process learns while training besides the model's weights (JSON-able; saved with the trainer's
        state so a resume is exact): nothing by default."""
        return {}

    def load_training_state(self, state: dict) -> None:
        """Restore `training_state()` from a checkpoint."""

    def denoiser(self, model: nn.Module) -> nn.Module:
        """The network samplers call: the model itself, unless the process reads it another way (a masked model
        adapted from an AR one reads [START] x_t: processes/masked.py, train/adapt.py)."""
        return model

    def sample_noise(self, x0: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """All randomness of one loss evaluation, as tensors with the batch as first dimension.

        Drawing it apart from `loss` lets a trainer draw it once for a global batch and slice it
        across processes and micro-batches, so the result does not depend on how work is split.
        """
        raise NotImplementedError

    def train_noise(self, x0: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """The noise the trainer draws: `sample_noise` unless a process trains on a restricted range
        (block diffusion's clipped schedule); evaluation always uses `sample_noise`."""
        return self.sample_noise(x0, generator)

    def nelbo_per_sequence(self, model: nn.Module, x0: torch.Tensor, noise: dict[str, torch.Tensor],
                           loss_mask: torch.Tensor | None = None) -> torch.Tensor:
        """One-sample estimate of each sequence's negative ELBO (or exact NLL), [B], in nats.

        `loss_mask` [B, L] (bool) names the positions being scored; every other position is clean
        context, never corrupted, so the result bounds -log p(x0[loss_mask] | x0[~loss_mask]).
        None scores every position.
        """
        raise NotImplementedError

    def loss(self, model: nn.Module, x0: torch.Tensor, noise: dict[str, torch.Tensor],
             loss_mask: torch.Tensor | None = None) -> LossOutput:
        per_seq = self.nelbo_per_sequence(model, x0, noise, loss_mask)
        n_tokens = x0.numel() if loss_mask is None else int(loss_mask.sum())
        return LossOutput(total=per_seq.sum(), n_tokens=n_tokens)

    def sampled_loss(self, model: nn.Module, x0: torch.Tensor, generator: torch.Generator | None = None,
                     loss_mask: torch.Tensor | None = None) -> LossOutput:
        return self.loss(model, x0, self.sample_noise(x0, generator), loss_mask)


def nonnegative_weight(name: str, value, meaning: str) -> float:
    """A finite option value >= 0 as a float, or a UserError naming it and what it means. YAML 1.1 reads an
    override like ce_lambda=1e-3 (no dot) as a string, so numeric strings are accepted."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise UserError(f"{name} must be a finite number >= 0 ({meaning}), got {value!r}")
    return float(value)


PROCESSES: dict[str, type[DiffusionProcess]] = {}


def register(cls: type[DiffusionProcess]) -> type[DiffusionProcess]:
    PROCESSES[cls.name] = cls
    return cls


def build_process(name: str, /, vocab_size: int, mask_id: int, required: tuple[str, ...] = (),
                  **options) -> DiffusionProcess:
    """Make process `name`; options it does not take (other families' settings) are ignored,
    except those named in `required` (options the user set for this process explicitly)."""
    if name not in PROCESSES:
        raise UserError(f"unknown process {name!r}: choose one of {', '.join(sorted(PROCESSES))}")
    cls = PROCESSES[name]
    accepted = inspect.signature(cls.__init__).parameters
    unknown = [k for k in required if k not in accepted]
    if unknown:
        known = [k for k in accepted if k not in ("self", "vocab_size", "mask_id")]
        raise UserError(f"process {name!r} has no option {', '.join(unknown)}; its options are "
                        f"{', '.join(known) or 'none'}")
    kwargs = {k: v for k, v in options.items() if k in accepted and k != "name"}
    return cls(vocab_size=vocab_size, mask_id=mask_id, **kwargs)
