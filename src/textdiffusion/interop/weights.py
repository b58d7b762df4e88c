"""Large models on small machines: stream safetensors weights, tensor by tensor, into a model built empty.

* `build_empty(factory)` builds a model whose parameters live on the meta device (no memory), buffers real;
* `WeightIndex(folder)` reads only the safetensors headers (one file, or the shards named by
  model.safetensors.index.json): every tensor's name, shape, dtype and file;
* `check_fits` compares the bytes those tensors take in the target dtype with the device's free memory
  (MemAvailable from /proc/meminfo, or torch.cuda.mem_get_info) and refuses in one line before any load;
* `stream_into` reads one tensor at a time, casts it and puts it in place of the empty parameter, so the
  weights are never held twice (no state dict in memory, no device_map);
* `MemoryMeter` reports the load's peak memory: the process's resident high-water mark (VmHWM, reset at the
  start via /proc/self/clear_refs) on the CPU, torch's peak allocation on CUDA.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..core.errors import UserError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
          "fp32": torch.float32, "float32": torch.float32}
_SAFETENSORS_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                       "U8": torch.uint8, "BOOL": torch.bool}
HEADROOM = 1.05  # weights plus 5% for buffers, activations of the first pass and allocator slack


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise UserError(f"dtype must be one of {', '.join(DTYPES)} or a torch dtype, got {dtype!r}")


def build_empty(factory: Callable[[], nn.Module]) -> nn.Module:
    """factory() with its parameters on the meta device (buffers such as rotary tables stay real)."""
    try:
        from accelerate import init_empty_weights
    except ImportError as exc:
        raise UserError("loading outside model formats needs accelerate: pip install 'textdiffusion[interop]'") \
            from exc
    with init_empty_weights(include_buffers=False):
        return factory()


@dataclass
class TensorInfo:
    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


class WeightIndex:
    """Every tensor of a folder's safetensors weights, from the headers alone."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.files = self._files()
        self.tensors: dict[str, TensorInfo] = {}
        for path in self.files:
            for name, info in _read_header(path).items():
                self.tensors[name] = info

    def _files(self) -> list[Path]:
        index = self.folder / INDEX_FILE
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
                names = sorted(set(weight_map.values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                raise UserError(f"{index} is unreadable or corrupt ({' '.join(str(exc).split())}): restore it") \
                    from exc
            files = []
            for name in names:
                path = self.folder / str(name)
                # a shard must be a plain file of this folder: an index must not point elsewhere
                if Path(str(name)).name != str(name) or not path.is_file():
                    raise UserError(f"{index} names shard {name!r}, which is not a file in {self.folder}: "
                                    "the download is incomplete; fetch the missing shards")
                files.append(path)
            return files
        if (self.folder / SINGLE_FILE).is_file():
            return [self.folder / SINGLE_FILE]
        raise UserError(f"{self.folder} holds neither {SINGLE_FILE} nor {INDEX_FILE}: pass a folder with "
                        "safetensors weights (.bin / pickle weights are not read, as loading them can run code)")

    def nbytes(self, dtype: torch.dtype | None = None, names: set[str] | None = None) -> int:
        """The bytes the tensors (all, or `names`) take once floating ones are cast to `dtype`."""
        total = 0
        for name, info in self.tensors.items():
            if names is not None and name not in names:
                continue
            target = dtype if dtype is not None and info.dtype.is_floating_point else info.dtype
            total += info.numel * torch.empty((), dtype=target).element_size()
        return total

    def stored_dtype(self) -> torch.dtype:
        """The dtype most of the floating weights are stored in."""
        counts: dict[torch.dtype, int] = {}
        for info in self.tensors.values():
            if info.dtype.is_floating_point:
                counts[info.dtype] = counts.get(info.dtype, 0) + info.numel
        return max(counts, key=counts.get) if counts else torch.float32


def _read_header(path: Path) -> dict[str, TensorInfo]:
    """safetensors layout: 8 bytes little-endian header length, then the JSON header; no tensor is read."""
    try:
        with path.open("rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            if not 0 < size <= 100_000_000:
                raise ValueError(f"implausible header length {size}")
            header = json.loads(fh.read(size))
        out, end = {}, 0
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            out[name] = TensorInfo(path, _SAFETENSORS_DTYPES[meta["dtype"]], tuple(int(d) for d in meta["shape"]))
            end = max(end, int(meta["data_offsets"][1]))
        have = path.stat().st_size
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        raise UserError(f"weights file {path} is corrupt ({' '.join(str(exc).split())}): restore it") from exc
    if have < 8 + size + end:  # the header names more bytes than the file holds: a download cut short
        raise UserError(f"weights file {path} is truncated ({have:,} bytes, its header describes {8 + size + end:,}): "
                        "the download is incomplete; fetch the file again")
    return out


def check_shapes(index: WeightIndex, expected: dict[str, tuple[int, ...]]) -> None:
    """A one-line UserError when a tensor the files and the model both name has another shape in the files
    (a config.json whose sizes do not describe these weights), before anything is read."""
    wrong = [(name, index.tensors[name].shape, shape) for name, shape in expected.items()
             if name in index.tensors and tuple(index.tensors[name].shape) != tuple(shape)]
    if wrong:
        name, stored, implied = wrong[0]
        raise UserError(f"{index.folder}: {len(wrong)} tensors do not fit the config.json (e.g. {name} is "
                        f"{list(stored)} in the weights but the config implies {list(implied)}): the config.json "
                        "does not describe these weights; restore the one that came with them")


def available_memory(device: torch.device) -> int | None:
    """Free bytes on `device`: MemAvailable on the CPU, the free memory of a CUDA device; None when unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type == "cpu":
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            return None
    return None


def check_fits(index: WeightIndex, device: torch.device, dtype: torch.dtype | None) -> int:
    """The weights' bytes in `dtype`; a one-line UserError when they cannot fit `device`'s free memory."""
    need = index.nbytes(dtype)
    free = available_memory(device)
    if free is not None and need * HEADROOM > free:
        hint = "" if dtype in (torch.bfloat16, torch.float16) else "; load it in bf16 (--dtype bf16) to halve it"
        what = "" if dtype is None else " in " + str(dtype).replace("torch.", "")
        raise UserError(f"{index.folder} needs {need / 2**30:.2f} GiB for its weights{what} but {device} has "
                        f"{free / 2**30:.2f} GiB free: use a machine or GPU with more memory{hint}")
    return need


def _set_tensor(model: nn.Module, name: str, value: torch.Tensor) -> None:
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    if attr in module._parameters:
        module._parameters[attr] = nn.Parameter(value, requires_grad=False)
    elif attr in module._buffers:
        module._buffers[attr] = value
    else:
        raise KeyError(name)


def stream_into(model: nn.Module, index: WeightIndex, rename: Callable[[str], str | None], device: torch.device,
                dtype: torch.dtype | None, skip_unknown: bool = False) -> int:
    """Read every tensor of `index` once, cast floating ones to `dtype`, move it to `device` and put it at
    `rename(name)` in `model` (None: a tensor the model does not use). Returns the bytes placed.

    Raises a UserError for a tensor whose shape differs from the model's or that the model lacks, and for
    any parameter left on the meta device (missing from the files). `skip_unknown`: tensors the model has
    no place for are passed over (a masked LM's checkpoint may carry a pooler it does not use)."""
    from safetensors import SafetensorError, safe_open

    shapes = {k: tuple(v.shape) for k, v in [*model.named_parameters(), *model.named_buffers()]}
    placed = 0
    by_file: dict[Path, list[str]] = {}
    for name, info in index.tensors.items():
        by_file.setdefault(info.file, []).append(name)
    for path, names in by_file.items():
        try:
            with safe_open(str(path), framework="pt", device="cpu") as fh:
                for name in names:
                    target = rename(name)
                    if target is None or (skip_unknown and target not in shapes):
                        continue
                    if target not in shapes:
                        raise UserError(f"{path} holds {name}, which this model has no place for: the config.json "
                                        "does not describe these weights; restore it")
                    shape = tuple(index.tensors[name].shape)
                    if shape != shapes[target]:
                        raise UserError(f"{path}: {name} has shape {list(shape)} but the config.json implies "
                                        f"{list(shapes[target])}: the config does not describe these weights")
                    tensor = fh.get_tensor(name)
                    if dtype is not None and tensor.is_floating_point():
                        tensor = tensor.to(dtype)
                    tensor = tensor.to(device)
                    _set_tensor(model, target, tensor)
                    placed += tensor.numel() * tensor.element_size()
                    del tensor
        except (SafetensorError, OSError) as exc:
            raise UserError(f"weights file {path} is corrupt ({' '.join(str(exc).split())}): restore it") from exc
    return placed


def check_complete(model: nn.Module, folder: Path) -> None:
    missing = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if missing:
        raise UserError(f"the weights in {folder} lack {len(missing)} of the model's tensors (e.g. {missing[0]}): "
                        "the download is incomplete or the config.json belongs to another model")


def _read_status(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


class MemoryMeter:
    """The peak memory of a block of work on `device` (bytes), and how long it took."""

    def __init__(self, device: torch.device):
        self.device = device
        self.stats: dict = {}

    @contextlib.contextmanager
    def measure(self) -> Iterator[dict]:
        start = time.perf_counter()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            before = torch.cuda.memory_allocated(self.device)
        else:
            with contextlib.suppress(OSError):  # "5" resets the peak resident size (Linux >= 4.0)
                Path("/proc/self/clear_refs").write_text("5")
            before = _read_status("VmRSS")
        yield self.stats
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
            self.stats.update(peak_bytes=int(peak), added_bytes=int(peak - before), measured="cuda allocator")
        else:
            peak = _read_status("VmHWM")
            if peak is not None and before is not None:
                self.stats.update(peak_bytes=peak, added_bytes=max(peak - before, 0),
                                  measured="process resident set (VmHWM)")
        self.stats["seconds"] = round(time.perf_counter() - start, 3)


def describe(stats: dict) -> str:
    """One line for the CLI: what a load took."""
    parts = [f"loaded {stats.get('format', 'model')} in {stats.get('seconds', 0):.1f}s"]
    if "weights_bytes" in stats:
        parts.append(f"weights {stats['weights_bytes'] / 2**20:,.1f} MiB ({stats.get('dtype', '?')})")
    if "peak_bytes" in stats:
        parts.append(f"peak memory {stats['peak_bytes'] / 2**20:,.1f} MiB "
                     f"(+{stats['added_bytes'] / 2**20:,.1f} MiB during the load, {stats['measured']})")
    return ", ".join(parts)


def load_weights(model_factory: Callable[[], nn.Module], folder: Path, device: torch.device,
                 dtype: torch.dtype | None, rename: Callable[[str], str | None],
                 after: Callable[[nn.Module], None] | None = None,
                 skip_unknown: bool = False) -> tuple[nn.Module, dict]:
    """Build the model empty, check it fits, stream the weights in; returns (model, load stats).

    `after(model)` runs once the files are read (e.g. to tie an output head to the embedding)."""
    index = WeightIndex(folder)
    dtype = dtype or index.stored_dtype()
    need = check_fits(index, device, dtype)
    meter = MemoryMeter(device)
    with meter.measure() as stats:
        model = build_empty(model_factory)
        placed = stream_into(model, index, rename, device, dtype, skip_unknown)
        if after is not None:
            after(model)
        check_complete(model, folder)
        model = model.to(device).eval()  # moves only the buffers: the parameters are already there
    stats.update(weights_bytes=placed, estimated_bytes=need, dtype=str(dtype).replace("torch.", ""),
                 shards=len(index.files))
    return model, stats
