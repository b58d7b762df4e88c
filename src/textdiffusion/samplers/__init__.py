"""Sampling strategies. Each is a config dataclass plus one function; the registry names them."""

from .autoregressive import ARConfig, ar_sample
from .base import Frame, SampleResult, check_config, sample_categorical, select_from_logits
from .block import BlockConfig, block_sample
from .confidence import ConfidenceConfig, ThresholdConfig, confidence_sample, threshold_sample
from .d3pm import D3PMConfig, d3pm_sample
from .edit import EditConfig, edit_sample
from .edit_flow import EditFlowConfig, edit_flow_sample
from .entropy_bound import EntropyBoundConfig, entropy_bound_sample
from .first_hitting import FirstHittingConfig, first_hitting_sample
from .gaussian import GaussianConfig, gaussian_sample
from .latent import LatentConfig, latent_sample
from .mdlm import AncestralConfig, ancestral_sample
from .remdm import ReMDMConfig, remdm_sample
from .sedd import SEDDAnalyticConfig, SEDDEulerConfig, sedd_analytic_sample, sedd_euler_sample
from .semi_ar import SemiARConfig, semi_ar_sample
from .spindle import SpindleConfig, spindle_sample

SAMPLERS = {"ancestral": (AncestralConfig, ancestral_sample), "ar": (ARConfig, ar_sample)}
SAMPLERS["d3pm"] = (D3PMConfig, d3pm_sample)
SAMPLERS["edit"] = (EditConfig, edit_sample)
SAMPLERS["edit_flow"] = (EditFlowConfig, edit_flow_sample)
SAMPLERS["entropy_bound"] = (EntropyBoundConfig, entropy_bound_sample)
SAMPLERS["gaussian"] = (GaussianConfig, gaussian_sample)
SAMPLERS.update(sedd=(SEDDEulerConfig, sedd_euler_sample), sedd_analytic=(SEDDAnalyticConfig, sedd_analytic_sample))
SAMPLERS.update(confidence=(ConfidenceConfig, confidence_sample), threshold=(ThresholdConfig, threshold_sample),
                block=(BlockConfig, block_sample), semi_ar=(SemiARConfig, semi_ar_sample),
                remdm=(ReMDMConfig, remdm_sample), first_hitting=(FirstHittingConfig, first_hitting_sample))
SAMPLERS["spindle"] = (SpindleConfig, spindle_sample)  # masked-spindle models (processes/spindle.py)
SAMPLERS["latent"] = (LatentConfig, latent_sample)  # latent diffusion models (processes/latent.py)

# Samplers that belong to one family: each runs only that process's models, and those models run only it.
# sampler -> (process name, the family's name in error messages)
FAMILY_SAMPLERS = {"block": ("block", "block diffusion"), "gaussian": ("gaussian", "continuous embedding (gaussian)"),
                   "edit": ("diffuser", "edit (diffuser)"), "edit_flow": ("edit_flow", "Edit Flows")}
FAMILY_SAMPLERS["latent"] = ("latent", "latent diffusion (LD4LG / PLANNER)")

# What `textdiffusion samplers` prints: one line for users (the functions' docstrings are for developers).
SUMMARIES = {
    "ancestral": "masked models' default: reveal masked tokens at random over `steps` reverse steps (MDLM)",
    "ar": "the autoregressive baseline's default: one token at a time, left to right",
    "d3pm": "D3PM models' default: denoise from the prior over the model's T steps, or `steps` of them",
    "sedd": "SEDD models' default: `steps` Euler steps, then a final denoising step",
    "sedd_analytic": "SEDD models: `steps` analytic (Tweedie tau-leaping) steps, then a final denoising step",
    "confidence": "masked models: each step keeps the most confident tokens, a fixed number per step (LLaDA); "
                  "remasking=dilated: a fixed order that never reveals two neighbours in one step",
    "threshold": "masked models: each step keeps every token more confident than `threshold` (Fast-dLLM)",
    "block": "block diffusion models' default (and only sampler): one block at a time, left to right; "
             "writes past the model's length",
    "semi_ar": "masked models: sliding windows of ancestral sampling, to write past the model's length",
    "remdm": "masked models: ancestral sampling that may re-mask decoded tokens to correct them (ReMDM)",
    "edit": "edit models' (diffuser) default (and only sampler): revision steps of tag (keep / delete / replace / "
            "insert) then generate, from nothing, random tokens or a given text; `beam`/`revisions`: 2-D beam search",
    "edit_flow": "Edit Flows models' default (and only sampler): Euler steps of the insert / delete / substitute "
                 "CTMC from the empty sequence (or the input) to t = 1",
    "first_hitting": "masked models: one exact continuous-time reveal per forward pass (first-hitting sampler)",
    "spindle": "masked-spindle models' default: ancestral steps with each token's own schedule (DiffusionBERT)",
    "gaussian": "continuous embedding (Diffusion-LM) models' default (and only sampler): Gaussian reverse steps, "
                "ancestral (eta=1) or DDIM (eta=0), clamping to embeddings, then rounding",
    "latent": "latent diffusion models' default (and only sampler): Gaussian reverse steps over the autoencoder's "
              "k latent vectors (ancestral or DDIM, guidance on a prompt), then the decoder writes the text",
    "entropy_bound": "uniform-state models: DiffusionGemma's entropy-bound canvas sampler (accept the lowest-entropy "
                     "tokens up to `entropy_bound` nats, renoise the rest)",
}

__all__ = ["FAMILY_SAMPLERS", "SAMPLERS", "SUMMARIES", "check_config", "ARConfig",
           "ar_sample", "AncestralConfig", "Frame", "SampleResult", "ancestral_sample",
           "sample_categorical", "select_from_logits"]
