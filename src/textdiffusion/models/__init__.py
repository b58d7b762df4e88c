from .kv_cache import KVCache
from .transformer import ModelConfig, Transformer

__all__ = ["KVCache", "ModelConfig", "Transformer"]
