"""Data parallelism for the trainer: DDP (a full replica per process) or FSDP2 (`fully_shard`: parameters,
gradients and optimiser state sharded over processes), plus optional activation checkpointing.

FSDP2 shards every transformer block and then the root (embedding, final norm, head), as torchtitan does.
With train.precision=bf16 the all-gathered parameters are bf16 for compute while the sharded master weights,
the optimiser state and the gradient reduce-scatter stay fp32 (MixedPrecisionPolicy). With one process there
is nothing to shard: the model stays a plain module, but its checkpoints use the same sharded format
(train/sharded_checkpoint.py), so a run can move between 1 and N processes.
"""

from __future__ import annotations

import contextlib
import copy
import functools

import torch
from torch import nn
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.checkpoint import checkpoint

from ..core.errors import UserError
from .distributed import DistInfo

PARALLEL = ("ddp", "fsdp")
# processes that read a weight outside the model's forward (Diffusion-LM's rounding reads the embedding
# table): under FSDP that weight is a shard outside forward, so they train with DDP only
FSDP_UNSUPPORTED = ("gaussian",)


def _checkpointed_forward(forward, *args, **kwargs):
    if torch.is_grad_enabled() and kwargs.get("kv") is None:  # training: recompute in backward
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return forward(*args, **kwargs)  # evaluation, sampling, KV caching: nothing to save memory on


def checkpoint_blocks(model: nn.Module) -> None:
    """Recompute each block's activations in the backward pass instead of keeping them (less memory, about
    one more forward of compute). The block's parameters and state-dict keys are unchanged."""
    for block in model.blocks:
        block.forward = functools.partial(_checkpointed_forward, block.forward)


def check_supported(parallel: str, process_name: str) -> None:
    if parallel == "fsdp" and process_name in FSDP_UNSUPPORTED:
        raise UserError(f"process {process_name!r} reads its embedding table outside the model's forward, which "
                        "FSDP shards: train it with train.parallel=ddp")


def shard_model(model: nn.Module, precision: str, device: torch.device, world_size: int) -> nn.Module:
    """fully_shard each block, then the root, over all processes (a 1-D mesh)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (world_size,))
    if precision == "bf16":  # bf16 compute, fp32 gradient reduction (and fp32 sharded master weights)
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    else:
        policy = MixedPrecisionPolicy()
    for block in model.blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def prepare_model(model: nn.Module, train, process_name: str, precision: str, device: torch.device,
                  info: DistInfo) -> nn.Module:
    """The model as training uses it (`train`: the config's train section): blocks checkpointed if asked,
    sharded for FSDP over more than one process."""
    check_supported(train.parallel, process_name)
    if train.activation_checkpointing:
        checkpoint_blocks(model)
    if train.parallel == "fsdp" and info.enabled:
        shard_model(model, precision, device, info.world_size)
    return model


def data_parallel(model: nn.Module, parallel: str, info: DistInfo) -> nn.Module:
    """What the loss calls: DDP around the model, or the (already sharded) model itself."""
    if info.enabled and parallel == "ddp":
        return DDP(model)
    return model


@contextlib.contextmanager
def _fsdp_no_sync(model: nn.Module):
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def no_sync(wrapped: nn.Module):
    """A context in which backward accumulates local gradients without the cross-process reduction."""
    if isinstance(wrapped, DDP):
        return wrapped.no_sync()
    if is_sharded(wrapped):
        return _fsdp_no_sync(wrapped)
    return contextlib.nullcontext()


def is_sharded(model: nn.Module) -> bool:
    return any(isinstance(p, DTensor) for p in model.parameters())


def full_tensor(value: torch.Tensor) -> torch.Tensor:
    """The whole tensor on every process (a collective for a DTensor shard), on the CPU."""
    return (value.full_tensor() if isinstance(value, DTensor) else value).detach().cpu()


def full_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Gather a (possibly sharded) state dict whole; every process must call it, in the same order."""
    return {k: full_tensor(v) for k, v in state.items()}


def inference_copy(model: nn.Module, ema_shadow: dict[str, torch.Tensor] | None,
                   device: torch.device) -> nn.Module:
    """A plain, unsharded copy of a sharded model holding the EMA weights (else the raw ones), on `device`.
    A collective: every process must call it."""
    weights = full_state(ema_shadow if ema_shadow is not None else model.state_dict())
    plain = _plain_like(model)
    plain.load_state_dict(weights)
    return plain.to(device).eval()


def _plain_like(model: nn.Module) -> nn.Module:
    """A fresh unsharded module of the sharded `model`'s class and config (fully_shard subclasses it)."""
    cls = next(c for c in type(model).__mro__ if not c.__name__.startswith("FSDP"))
    return cls(copy.deepcopy(model.cfg))  # built on the CPU: its non-persistent buffers (rotary tables) are set
