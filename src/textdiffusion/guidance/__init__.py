"""Controllable generation: gradient guidance on continuous latents (Diffusion-LM) and Taylor-tilted guidance of
masked models (the discrete baseline), with rule-based controls and a learned attribute classifier.

    from textdiffusion.guidance import Contains, Guidance
    ids = pipe.tokenizer.encode(" love")
    out = pipe.generate(num_samples=4, guidance=Guidance([Contains(ids)]))    # a gaussian model
    out = Pipeline(tilted(mdlm.model, Guidance([Contains(ids)]), mdlm.process.mask_id, 2.0),
                   mdlm.process, mdlm.tokenizer).generate(num_samples=4)    # a masked model
"""

from .attributes import verse_or_prose
from .classifier import Attribute, AttributeClassifier, ClassifierConfig
from .controls import Contains, Control, Length, TokensAt
from .discrete import TiltedDenoiser, tilted
from .gradient import Guidance, token_log_probs

__all__ = ["Attribute", "AttributeClassifier", "ClassifierConfig", "Contains", "Control", "Guidance",
           "Length", "TiltedDenoiser", "TokensAt", "tilted", "token_log_probs",
           "verse_or_prose"]
