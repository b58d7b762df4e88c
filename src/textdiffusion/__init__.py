"""textdiffusion: diffusion language models -- train, sample, infill, score and compare them."""

from .core.errors import UserError

__all__ = ["GenerationOutput", "Pipeline", "UserError"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # Pipeline loads torch (1-2 s): only on first use, so that `textdiffusion presets` or `--help` start at once
    if name in ("GenerationOutput", "Pipeline"):
        from .api import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'textdiffusion' has no attribute {name!r}")
