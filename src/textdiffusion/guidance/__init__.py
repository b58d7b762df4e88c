"""Controllable generation for continuous embedding diffusion: gradient guidance on the latents (Diffusion-LM).

    from textdiffusion.guidance import Contains, Guidance
    ids = pipe.tokenizer.encode(" love")
    out = pipe.generate(num_samples=4, guidance=Guidance([Contains(ids)]))
"""

from .controls import Contains, Control, Length, TokensAt
from .gradient import Guidance, token_log_probs

__all__ = ["Contains", "Control", "Guidance", "Length", "TokensAt", "token_log_probs"]
