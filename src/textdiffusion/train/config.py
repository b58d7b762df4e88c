"""Training configuration: dataclasses, presets (configs/*.yaml), YAML files and key=value overrides."""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from ..core.checks import text_error
from ..core.errors import UserError
from .recipes import LATEST as LATEST_RECIPE, RECIPES, recipe_defaults

PRESETS_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass
class DataConfig:
    source: str = "shakespeare"
    tokenizer: str = "byte"  # byte | bpe | gpt2 | path to a HF tokenizer folder
    vocab_size: int = 4096  # for a trained bpe
    seq_len: int = 128
    packing: str = "wrap"  # wrap | pad | chat (SFT on a .jsonl of conversations: train/sft.py)
    val_fraction: float = 0.05
    split_seed: int = 0
    text_field: str = "text"
    hf_split: str = "train"
    streaming: bool = False  # read the source as a stream instead of packing it in memory (hf: always)
    num_workers: int = 0  # processes that tokenise a streamed source (data/workers.py); 0: the trainer's own


@dataclass
class ModelSection:
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    time_conditioning: bool = False


@dataclass
class ProcessConfig:
    name: str = "masked"
    schedule: str = "loglinear"
    t_min: float = 1e-3
    antithetic: bool = True
    # the versioned defaults this run trains with on top of the process's own (train/recipes.py); a config saved
    # before recipes existed is recipe 1 (LEGACY_DEFAULTS)
    recipe: int = LATEST_RECIPE
    # any other option of the chosen process (e.g. transition: uniform for d3pm); a key written
    # directly under `process:` that is not a field above lands here
    extra: dict = field(default_factory=dict)

    def options(self) -> dict:
        """Keyword arguments for build_process: the fields above, the recipe's defaults, then the extra ones."""
        out = {k: v for k, v in asdict(self).items() if k not in ("name", "extra", "recipe")}
        return {**out, **recipe_defaults(self.recipe, self.name, self.extra), **self.extra}


@dataclass
class OptimConfig:
    steps: int = 1000
    batch_size: int = 32  # global, across processes and accumulation
    micro_batch_size: int = 0  # per process; 0 means no accumulation
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.98
    grad_clip: float = 1.0
    ema_decay: float = 0.999  # 0 disables EMA
    precision: str = "auto"  # auto (bf16 where the device has it natively, else fp32) | bf16 | fp32
    compile: bool = False
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    parallel: str = "ddp"  # ddp (a replica per process) | fsdp (FSDP2: sharded weights/optimiser, train/fsdp.py)
    activation_checkpointing: bool = False  # recompute each block's activations in backward (less memory)


@dataclass
class RunConfig:
    out_dir: str = "runs/default"
    log_every: int = 10
    eval_every: int = 200
    eval_batches: int = 8
    save_every: int = 200
    sample_every: int = 0  # 0: only at the end
    sample_steps: int = 64
    progress: bool = True


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelSection = field(default_factory=ModelSection)
    process: ProcessConfig = field(default_factory=ProcessConfig)
    train: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> Config:
        """Check every value against its allowed range before any work starts (a zero seq_len, for one,
        would otherwise cut the corpus into empty chunks forever); a bad one is a UserError naming the key,
        the value and the range."""
        for section, key, ok, allowed in _rules():
            value = getattr(getattr(self, section), key)
            try:
                good = ok(value)
            except TypeError:  # a wrong type set from Python, e.g. a str where a number belongs
                good = False
            if not good:
                raise UserError(f"{section}.{key} must be {allowed}, got {value!r}")
        from ..models.transformer import splits_into_heads  # here, not at the top: `presets` needs no torch

        m = self.model
        if not splits_into_heads(m.d_model, m.n_heads):
            raise UserError(f"model.n_heads must divide model.d_model ({m.d_model}) into heads of even width, "
                            f"got {m.n_heads}: e.g. {_heads_hint(m.d_model, m.n_heads)}")
        if int(m.mlp_ratio * m.d_model) < 1:
            raise UserError(f"model.mlp_ratio must give an MLP of at least 1 unit (mlp_ratio * d_model >= 1), "
                            f"got {m.mlp_ratio!r}")
        t = self.train
        if t.micro_batch_size and t.batch_size % t.micro_batch_size:
            raise UserError(f"train.micro_batch_size must be 0 (no accumulation) or divide train.batch_size "
                            f"({t.batch_size}), got {t.micro_batch_size}")
        self._validate_process()
        self._validate_workers()
        return self

    def _validate_workers(self) -> None:
        d = self.data
        if not d.num_workers:
            return
        held = ("conversations for SFT (data.packing=chat):" if d.packing == "chat" else
                "already tokenised (prepared:):" if d.source.startswith("prepared:") else
                "packed in memory: stream it with data.streaming=true, or" if not (d.streaming or
                                                                                d.source.startswith("hf:")) else None)
        if held:
            raise UserError(f"data.num_workers={d.num_workers} tokenises a streamed source in worker processes, but "
                            f"this run's data is {held} set data.num_workers=0")

    def _validate_process(self) -> None:
        from ..processes import PROCESSES

        p = self.process
        if p.name not in PROCESSES:
            raise UserError(f"process.name must be one of {', '.join(sorted(PROCESSES))}, got {p.name!r}")
        # SEDD's bound has a closed form down to t = 0; the other processes' loss weights diverge there
        low_ok = p.name == "sedd"
        if not (_number(p.t_min) and (0 <= p.t_min < 1 if low_ok else 0 < p.t_min < 1)):
            raise UserError(f"process.t_min must be a number in {'[0, 1)' if low_ok else '(0, 1)'} for process "
                            f"{p.name!r}, got {p.t_min!r}")
        accepted = inspect.signature(PROCESSES[p.name].__init__).parameters
        unknown = [k for k in p.extra if k not in accepted or k in ("self", "vocab_size", "mask_id")]
        if unknown:
            known = [k for k in accepted if k not in ("self", "vocab_size", "mask_id")]
            raise UserError(f"process {p.name!r} has no option {', '.join(unknown)}; its options are "
                            f"{', '.join(known) or 'none'}")
        for key, value in p.extra.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise UserError(f"process.{key} must be a finite number, got {value!r}")

    @classmethod
    def from_dict(cls, raw: dict) -> Config:
        cfg = cls()
        for section, values in (raw or {}).items():
            if section not in {f.name for f in dataclasses.fields(cls)}:
                raise UserError(f"unknown config section {section!r}: use data, model, process, train, run")
            target = getattr(cfg, section)
            for key, value in (values or {}).items():
                _set_field(target, section, key, value)
        return cfg


def _set_field(target, section: str, key: str, value) -> None:
    fields = {f.name: f for f in dataclasses.fields(target)}
    if isinstance(target, ProcessConfig) and key not in fields:
        target.extra[key] = value  # checked against the process's own options when it is built
        return
    if key not in fields:
        raise UserError(f"unknown config key {section}.{key}: known keys are {', '.join(fields)}")
    current = getattr(target, key)
    if isinstance(current, dict):
        ok = isinstance(value, dict)
    elif isinstance(current, bool):
        ok = isinstance(value, bool)
    elif isinstance(current, float):
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(current, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, str)
        value = str(value) if value is not None else value
    if not ok:
        kind = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}
        raise UserError(f"{section}.{key} must be {kind.get(type(current).__name__, type(current).__name__)}, "
                        f"got {value!r}")
    setattr(target, key, value)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _integer(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _text(v) -> bool:
    return isinstance(v, str) and v.strip() != ""


def _folder(v) -> bool:
    """A path that is, or can become, a folder: neither it nor a folder above it is a file."""
    return _text(v) and not any(p.exists() and not p.is_dir() for p in (Path(v), *Path(v).parents))


def _source(v) -> bool:
    from ..data.corpus import BUNDLED

    if _text(v) and v.startswith("prepared:"):  # a folder written by `textdiffusion prepare`
        return (Path(v[len("prepared:"):]) / "index.json").is_file()
    return _text(v) and (v in BUNDLED or v.startswith("hf:") or Path(v).exists())


def _heads_hint(d_model: int, n_heads: int) -> str:
    """The two head counts nearest to `n_heads` that split `d_model` into heads of even width."""
    from ..models.transformer import splits_into_heads

    fits = [h for h in range(1, d_model + 1) if splits_into_heads(d_model, h)]
    near = sorted(sorted(fits, key=lambda h: (abs(h - n_heads), h))[:2])
    return " or ".join(f"model.n_heads={h}" for h in near) if near else "an even model.d_model"


MAX_SEQ_LEN = 2**20  # positional tables and batches of more than a million tokens per row do not fit anyway
MAX_VOCAB = 2**20  # a trained BPE of more tokens aborts in the tokenizers library; the largest real ones hold ~256k
MAX_SEED = 2**32 - 1  # ChunkBatches derives epoch seeds as seed * 1_000_003 + epoch, which must fit in 64 bits
DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def _rules() -> list[tuple[str, str, Callable[[object], bool], str]]:
    from ..core.precision import PRECISIONS
    from ..data.tokenizers import SPECIALS
    from ..processes.schedules import SCHEDULES

    min_vocab = 256 + len(SPECIALS) + 1  # a byte-level BPE's alphabet, its specials and one merge
    return [
        ("data", "source", _source, "an existing file or folder, 'shakespeare', hf:DATASET or prepared:DIR"),
        ("data", "tokenizer", lambda v: v in ("byte", "bpe", "gpt2") or (_text(v) and Path(v).is_dir()),
         "byte, bpe, gpt2 or a folder holding a Hugging Face tokenizer.json"),
        ("data", "vocab_size", lambda v: _integer(v) and min_vocab <= v <= MAX_VOCAB,
         f"an integer in [{min_vocab}, {MAX_VOCAB}] (the largest vocabulary trained here)"),
        ("data", "seq_len", lambda v: _integer(v) and 2 <= v <= MAX_SEQ_LEN, f"an integer in [2, {MAX_SEQ_LEN}]"),
        ("data", "packing", lambda v: v in ("wrap", "pad", "chat"),
         "wrap or pad (or chat: SFT on a .jsonl of conversations)"),
        ("data", "val_fraction", lambda v: _number(v) and 0 < v < 1, "a number in (0, 1)"),
        ("data", "split_seed", _integer, "an integer"),
        ("data", "text_field", _text, "a field name"),
        ("data", "hf_split", _text, "a split name, e.g. train"),
        ("data", "streaming", lambda v: isinstance(v, bool), "true or false"),
        ("data", "num_workers", lambda v: _integer(v) and v >= 0,
         "an integer >= 0 (0: tokenise in the training process)"),
        ("model", "d_model", lambda v: _integer(v) and v >= 2, "an integer >= 2"),
        ("model", "n_layers", lambda v: _integer(v) and v >= 1, "an integer >= 1"),
        ("model", "n_heads", lambda v: _integer(v) and v >= 1, "an integer >= 1"),
        ("model", "mlp_ratio", lambda v: _number(v) and v > 0, "a number > 0"),
        ("model", "dropout", lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
        ("model", "time_conditioning", lambda v: isinstance(v, bool), "true or false"),
        ("process", "schedule", lambda v: v in SCHEDULES, f"one of {', '.join(SCHEDULES)}"),
        ("process", "antithetic", lambda v: isinstance(v, bool), "true or false"),
        ("process", "recipe", lambda v: v in RECIPES, f"one of {', '.join(map(str, RECIPES))} (train/recipes.py)"),
        ("train", "steps", lambda v: _integer(v) and v >= 1, "an integer >= 1"),
        ("train", "batch_size", lambda v: _integer(v) and v >= 1, "an integer >= 1"),
        ("train", "micro_batch_size", lambda v: _integer(v) and v >= 0, "an integer >= 0 (0: no accumulation)"),
        ("train", "lr", lambda v: _number(v) and v > 0, "a finite number > 0"),
        ("train", "min_lr_ratio", lambda v: _number(v) and 0 <= v <= 1, "a number in [0, 1]"),
        ("train", "warmup_steps", lambda v: _integer(v) and v >= 0, "an integer >= 0"),
        ("train", "weight_decay", lambda v: _number(v) and v >= 0, "a finite number >= 0"),
        ("train", "beta1", lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
        ("train", "beta2", lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
        ("train", "grad_clip", lambda v: _number(v) and v >= 0, "a finite number >= 0 (0: no clipping)"),
        ("train", "ema_decay", lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1) (0: no EMA)"),
        ("train", "precision", lambda v: v in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
        ("train", "compile", lambda v: isinstance(v, bool), "true or false"),
        ("train", "seed", lambda v: _integer(v) and 0 <= v <= MAX_SEED, f"an integer in [0, {MAX_SEED}]"),
        ("train", "device", lambda v: isinstance(v, str) and DEVICE.fullmatch(v) is not None,
         "auto, cpu, cuda, cuda:N or mps"),
        ("train", "parallel", lambda v: v in ("ddp", "fsdp"), "ddp or fsdp"),
        ("train", "activation_checkpointing", lambda v: isinstance(v, bool), "true or false"),
        ("run", "out_dir", _folder, "a folder path, not a file's (choose another --out)"),
        ("run", "log_every", lambda v: _integer(v) and v >= 1, "an integer >= 1"),
        ("run", "eval_every", lambda v: _integer(v) and v >= 0, "an integer >= 0 (0: never)"),
        ("run", "eval_batches", lambda v: _integer(v) and v >= 1, "an integer >= 1"),
        ("run", "save_every", lambda v: _integer(v) and v >= 1, "an integer >= 1"),
        ("run", "sample_every", lambda v: _integer(v) and v >= 0, "an integer >= 0 (0: only at the end)"),
        ("run", "sample_steps", lambda v: _integer(v) and v >= 1, "an integer >= 1"),
        ("run", "progress", lambda v: isinstance(v, bool), "true or false"),
    ]


def presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


# keys a saved train_config may lack because it was written before they existed, with the value that run
# trained with: without this a resumed run would silently take the new default
LEGACY_DEFAULTS = {("process", "recipe"): 1, ("data", "num_workers"): 0, ("train", "parallel"): "ddp",
                   ("train", "activation_checkpointing"): False}


def upgrade_saved_config(raw: dict) -> dict:
    """A saved train_config (a mapping of sections) with the keys it predates filled in (LEGACY_DEFAULTS)."""
    out = {section: dict(values) if isinstance(values, dict) else values for section, values in raw.items()}
    for (section, key), value in LEGACY_DEFAULTS.items():
        values = out.setdefault(section, {})
        if isinstance(values, dict):
            values.setdefault(key, value)
    return out


def load_run_config(out_dir: str | Path, overrides: list[str] | None = None) -> Config:
    """The config a run folder's checkpoint was trained with, then overrides."""
    import json

    from .checkpoint import CONFIG_FILE, old_copy

    folder = Path(out_dir) / "checkpoint"
    # a save killed between its two renames left the checkpoint in .checkpoint.old (resuming puts it back)
    path = next((d / CONFIG_FILE for d in (folder, old_copy(folder)) if (d / CONFIG_FILE).is_file()), None)
    if path is None:
        raise UserError(f"nothing to resume in {out_dir}: it has no checkpoint/config.json")
    try:
        raw = json.loads(path.read_text())["train_config"]
    except (ValueError, KeyError, TypeError) as exc:  # ValueError covers bad JSON and bad UTF-8
        raise UserError(f"{path} is corrupt or not a training checkpoint ({exc})") from exc
    if not isinstance(raw, dict) or not all(isinstance(v, dict | None) for v in raw.values()):
        raise UserError(f"{path} is corrupt: its train_config is not a mapping of config sections")
    return _apply_overrides(Config.from_dict(upgrade_saved_config(raw)), overrides)


def load_config(name_or_path: str | None = None, overrides: list[str] | None = None) -> Config:
    """A preset name or a YAML path, then `section.key=value` overrides (values parsed as YAML)."""
    raw: dict = {}
    if name_or_path:
        path = Path(name_or_path)
        if not path.is_file():
            path = PRESETS_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise UserError(f"no config file or preset {name_or_path!r}: presets are {', '.join(presets())}")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as exc:
            raise UserError(f"{path} is not a YAML config: byte 0x{exc.object[exc.start]:02x} at offset "
                            f"{exc.start} is not UTF-8 text") from None
        except yaml.YAMLError as exc:
            raise UserError(f"{path} is not valid YAML: {exc}") from exc
    return _apply_overrides(Config.from_dict(raw), overrides)


def _apply_overrides(cfg: Config, overrides: list[str] | None) -> Config:
    for item in overrides or []:
        key, sep, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot:
            raise UserError(f"override {item!r} must look like section.key=value, e.g. train.steps=500")
        if not hasattr(cfg, section):
            raise UserError(f"unknown config section {section!r} in {item!r}")
        error = text_error(value, f"the value of {key}")
        if error is not None:  # e.g. a file name in a legacy encoding: its bytes are not UTF-8
            raise error
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise UserError(f"cannot read the value of {key} ({' '.join(str(exc).split())})") from None
        _set_field(getattr(cfg, section), section, name, value)
    return cfg.validate()
