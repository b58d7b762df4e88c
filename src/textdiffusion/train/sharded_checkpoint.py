"""Checkpoints of train.parallel=fsdp runs: the optimiser state, weights and EMA sharded with
torch.distributed.checkpoint (DCP), so that a run resumes on any number of processes (2 -> 1, 1 -> 2, ...).

The checkpoint folder is still a normal model folder: rank 0 also writes the whole weights (model.safetensors,
ema.safetensors), config.json, the tokenizer and the trainer state, so `sample`, `score` and
`Pipeline.from_pretrained` read an FSDP run like any other. The shards live in its `sharded/` subfolder.
Every rank writes its shard into the same temporary folder (named after rank 0's pid), and rank 0 renames it
into place once all are done: a crash leaves the old checkpoint or the new one, as train/checkpoint.py does.

Trust: DCP writes its index (`.metadata`) with pickle. It is read here with an unpickler that builds only
DCP's own metadata records, torch sizes and dtypes and paths, and refuses every other object, and the
checkpoint may hold tensors only (DCP loads tensor data with torch's weights-only loader; a non-tensor entry,
which DCP would unpickle freely, is refused before anything is read). So reading a sharded checkpoint from
someone else cannot run code through these files, like the rest of a checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from ..core.errors import UserError
from . import checkpoint as ckpt, sft
from .distributed import barrier
from .fsdp import full_state

SHARDED_DIR = "sharded"
# the only classes a DCP index may name (module, name); torch dtypes are checked separately
_ALLOWED = {
    ("torch.distributed.checkpoint.metadata", "Metadata"),
    ("torch.distributed.checkpoint.metadata", "TensorStorageMetadata"),
    ("torch.distributed.checkpoint.metadata", "TensorProperties"),
    ("torch.distributed.checkpoint.metadata", "ChunkStorageMetadata"),
    ("torch.distributed.checkpoint.metadata", "MetadataIndex"),
    ("torch.distributed.checkpoint.metadata", "StorageMeta"),
    ("torch.distributed.checkpoint.metadata", "_MEM_FORMAT_ENCODING"),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch.serialization", "_get_layout"),  # maps a layout's name to the layout
    ("torch", "Size"),
    ("pathlib", "PosixPath"),
    ("pathlib", "WindowsPath"),
    ("pathlib", "PurePosixPath"),
    ("pathlib", "PureWindowsPath"),
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint index")


class SafeReader(FileSystemReader):
    """DCP's file reader, with the index read by the allow-list unpickler and non-tensor entries refused."""

    def read_metadata(self, *args, **kwargs) -> Metadata:
        path = Path(self.path) / ".metadata"
        try:
            with open(path, "rb") as fh:
                metadata = _MetadataUnpickler(fh).load()
        except (OSError, EOFError, pickle.UnpicklingError, AttributeError, TypeError, ValueError) as exc:
            raise UserError(f"sharded checkpoint index {path} is missing, corrupt or holds objects other than "
                            f"the index ({exc}): resume from an earlier copy") from exc
        if not isinstance(metadata, Metadata):
            raise UserError(f"{path} is not a sharded checkpoint index: resume from an earlier copy")
        odd = [k for k, v in metadata.state_dict_metadata.items() if not isinstance(v, TensorStorageMetadata)]
        if odd:
            raise UserError(f"{path} holds non-tensor entries ({', '.join(odd[:3])}), which would be unpickled: "
                            "refusing to load it")
        return self._finish(metadata)

    def _finish(self, metadata: Metadata) -> Metadata:
        from torch.distributed.checkpoint.metadata import StorageMeta

        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


def _sharded_state(trainer) -> tuple[dict, list]:
    """The tensors DCP saves or loads in place (model, optimiser moments, EMA), and the optimiser's param
    groups (numbers and parameter names, kept in the JSON trainer state: DCP would pickle them)."""
    optim = get_optimizer_state_dict(trainer.model, trainer.optimizer)  # creates AdamW's state if still empty
    state = {"model": get_model_state_dict(trainer.model), "optim": optim["state"]}
    if trainer.ema is not None:
        state["ema"] = trainer.ema.shadow
    return state, optim["param_groups"]


@contextlib.contextmanager
def _quiet():
    """DCP warns that it saves in a single process when there is one: that is the intent here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _rank0_pid(trainer) -> int:
    pid = torch.tensor([os.getpid()], dtype=torch.int64, device=trainer.device)
    if trainer.info.enabled:
        dist.broadcast(pid, src=0)
    return int(pid.item())


def save(trainer) -> None:
    """Every rank calls this: all write their shards, rank 0 the rest, then rank 0 swaps the folder in."""
    info, final = trainer.info, trainer.ckpt_dir
    sharded, groups = _sharded_state(trainer)
    weights = full_state(trainer.model.state_dict())  # collectives: every rank gathers, rank 0 writes
    ema = full_state(trainer.ema.shadow) if trainer.ema is not None else None
    state = trainer_state(trainer, {"param_groups": groups})  # on every rank: a sharded stream gathers positions
    tmp = ckpt.tmp_folder(final, _rank0_pid(trainer))
    if info.is_main:
        ckpt.clean_interrupted_save(final)
        tmp.mkdir(parents=True)
    barrier(info)
    try:
        with _quiet():
            dcp.save(sharded, storage_writer=FileSystemWriter(tmp / SHARDED_DIR), no_dist=not info.enabled)
        if info.is_main:
            ckpt.write_config(tmp, trainer.config_dict())
            ckpt.save_weights(weights, tmp / ckpt.WEIGHTS_FILE)
            if ema is not None:
                ckpt.save_weights(ema, tmp / ckpt.EMA_FILE)
            trainer.tok.save(tmp)
            sft.save_chat_template(trainer.cfg, tmp)  # the tokenizer folder's template, if it has one
            ckpt.save_trainer_state(state, tmp)
            ckpt.swap_into_place(tmp, final)
    except BaseException:
        if info.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    barrier(info)


def trainer_state(trainer, optimizer: dict) -> dict:
    """What resuming needs besides the shards (the same keys as the DDP trainer state)."""
    ema = trainer.ema
    return {"step": trainer.step, "tokens_seen": trainer.tokens_seen, "elapsed": trainer.elapsed,
            "optimizer": optimizer, "data": trainer.batches.state_dict(),
            "noise_gen": trainer.noise_gen.get_state(), "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(trainer.device) if trainer.device.type == "cuda" else None,
            "ema": None if ema is None else {"decay": ema.decay, "updates": ema.updates},
            "process": trainer.process.training_state(), "parallel": "fsdp", "world_size": trainer.info.world_size}


def is_sharded_checkpoint(folder: Path) -> bool:
    return (Path(folder) / SHARDED_DIR).is_dir()


def load(trainer, folder: Path, state: dict) -> None:
    """Load the shards of `folder` into this run's model, optimiser and EMA, whatever world size wrote them."""
    if not is_sharded_checkpoint(folder):
        raise UserError(f"{folder} was saved by a train.parallel=ddp run: resume it with train.parallel=ddp")
    if trainer.cfg.train.parallel != "fsdp":
        raise UserError(f"{folder} was saved by a train.parallel=fsdp run: resume it with train.parallel=fsdp")
    groups = state["optimizer"].get("param_groups")
    if not isinstance(groups, list):
        raise UserError(f"training state in {folder} has no optimiser param groups: resume from an earlier copy")
    target, _ = _sharded_state(trainer)
    if trainer.ema is not None and state["ema"] is None:
        del target["ema"]  # the run that saved had no EMA: start it from these weights
    try:
        with _quiet():
            dcp.load(target, storage_reader=SafeReader(folder / SHARDED_DIR), no_dist=not trainer.info.enabled)
    except UserError:
        raise
    except (RuntimeError, KeyError, ValueError) as exc:
        raise UserError(f"sharded checkpoint {folder / SHARDED_DIR} does not match this run or is corrupt "
                        f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}): resume with the "
                        "same model, process and EMA settings") from exc
    set_model_state_dict(trainer.model, target["model"])
    set_optimizer_state_dict(trainer.model, trainer.optimizer, {"state": target["optim"], "param_groups": groups})
    if "ema" in target:
        trainer.ema.load_state_dict({**state["ema"], "shadow": target["ema"]})
