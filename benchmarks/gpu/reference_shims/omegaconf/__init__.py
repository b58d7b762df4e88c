"""OmegaConf.create as attribute access over nested dicts: all the reference DiT asks of omegaconf."""
from __future__ import annotations

from types import SimpleNamespace


class OmegaConf:
    @staticmethod
    def create(value: object) -> object:
        if isinstance(value, dict):
            return SimpleNamespace(**{k: OmegaConf.create(v) for k, v in value.items()})
        return value
