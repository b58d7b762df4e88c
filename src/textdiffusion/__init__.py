"""textdiffusion: diffusion language models -- train, sample, infill, score and compare them."""

from .errors import UserError
from .pipeline import GenerationOutput, Pipeline

__all__ = ["GenerationOutput", "Pipeline", "UserError"]
__version__ = "0.1.0"
