from .transformer import ModelConfig, Transformer

__all__ = ["ModelConfig", "Transformer"]
