"""Training the suite's models: one run folder per (tokenization, family), resumed if interrupted."""

from __future__ import annotations

import json
from pathlib import Path

from ..core.errors import UserError
from ..train import checkpoint as ckpt
from ..train.config import Config, _apply_overrides, upgrade_saved_config
from .suites import Family, Suite, Tokenization

# keys that may differ between the stored and the requested config without retraining
_COSMETIC = {("run", "progress"), ("run", "out_dir"), ("train", "device")}


def run_dir(root: Path, suite: Suite, tok: Tokenization, fam: Family) -> Path:
    return Path(root) / suite.name / tok.name / fam.name


def run_config(suite: Suite, tok: Tokenization, fam: Family, root: Path,
               overrides: list[str] | None = None) -> Config:
    """The suite's shared sections, then the tokenization's and family's, then the user's overrides."""
    raw: dict = {section: dict(values) for section, values in suite.base.items()}
    for section, values in (("data", tok.data), ("train", tok.train), ("model", fam.model),
                            ("process", fam.process)):
        raw[section] = {**raw.get(section, {}), **values}
    raw.setdefault("run", {})["out_dir"] = str(run_dir(root, suite, tok, fam))
    return _apply_overrides(Config.from_dict(raw), overrides)


def judge_config(suite: Suite, tok: Tokenization, root: Path, overrides: list[str] | None = None) -> Config:
    """The suite's AR judge: the AR baseline's config with another seed and `judge_budget` times the steps,
    in its own folder (root/suite/tokenization/judge). It is trained to score texts and generates none."""
    cfg = run_config(suite, tok, suite.family("ar"), root, overrides)
    cfg.train.steps = max(1, round(cfg.train.steps * suite.judge_budget))
    cfg.train.seed = suite.judge_seed
    cfg.run.out_dir = str(Path(root) / suite.name / tok.name / "judge")
    return cfg


def _same_objective(stored: dict, wanted: dict) -> bool:
    """Whether two process sections build the same process: a recipe that changes nothing for this
    family (AR, D3PM, ...) is no reason to retrain it."""
    a, b = (Config.from_dict({"process": section}).process for section in (stored, wanted))
    return a.name == b.name and a.options() == b.options()


def _differences(stored: dict, wanted: dict) -> list[str]:
    out = []
    for section, values in wanted.items():
        for key, value in values.items():
            old = stored.get(section, {}).get(key)
            if (section, key) in _COSMETIC or old == value:
                continue
            if (section, key) == ("process", "recipe") and _same_objective(stored["process"], values):
                continue
            out.append(f"{section}.{key}: {old!r} -> {value!r}")
    return out


def ensure_trained(cfg: Config, log=print) -> Path:
    """Train `cfg` unless its run folder already holds the finished run; resume a partial one.

    Returns the checkpoint folder. A folder trained with a different config is an error, not
    silently reused."""
    from ..train.trainer import Trainer

    folder = Path(cfg.run.out_dir) / "checkpoint"
    ckpt.clean_interrupted_save(folder)  # a kill between the save's renames leaves the run in .checkpoint.old
    config_file = folder / "config.json"
    resume = False
    if config_file.is_file():
        stored = json.loads(config_file.read_text())
        diff = _differences(upgrade_saved_config(stored.get("train_config", {})), cfg.to_dict())
        if diff:
            raise UserError(f"{cfg.run.out_dir} was trained with a different config ({'; '.join(diff)}): "
                            "delete it or pass another --out")
        done = stored.get("trained", {}).get("steps", 0)
        if done >= cfg.train.steps:
            log(f"  trained already: {folder} ({done} steps)")
            return folder
        log(f"  resuming {folder} at step {done} of {cfg.train.steps}")
        resume = True
    else:
        log(f"  training {cfg.run.out_dir}: {cfg.train.steps} steps of "
            f"{cfg.train.batch_size} x {cfg.data.seq_len} tokens")
    return Trainer(cfg, resume=resume).run()
