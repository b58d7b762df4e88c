"""textdiffusion: diffusion language models -- train, sample, infill, score and compare them."""

from .api.pipeline import GenerationOutput, Pipeline
from .core.errors import UserError

__all__ = ["GenerationOutput", "Pipeline", "UserError"]
__version__ = "0.1.0"
