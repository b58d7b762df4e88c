"""Sampling strategies. Each is a config dataclass plus one function; the registry names them."""

from .autoregressive import ARConfig, ar_sample
from .base import Frame, SampleResult, sample_categorical, select_from_logits
from .block import BlockConfig, block_sample
from .confidence import ConfidenceConfig, ThresholdConfig, confidence_sample, threshold_sample
from .d3pm import D3PMConfig, d3pm_sample
from .first_hitting import FirstHittingConfig, first_hitting_sample
from .mdlm import AncestralConfig, ancestral_sample
from .remdm import ReMDMConfig, remdm_sample
from .sedd import SEDDAnalyticConfig, SEDDEulerConfig, sedd_analytic_sample, sedd_euler_sample
from .semi_ar import SemiARConfig, semi_ar_sample

SAMPLERS = {"ancestral": (AncestralConfig, ancestral_sample), "ar": (ARConfig, ar_sample)}
SAMPLERS["d3pm"] = (D3PMConfig, d3pm_sample)
SAMPLERS.update(sedd=(SEDDEulerConfig, sedd_euler_sample), sedd_analytic=(SEDDAnalyticConfig, sedd_analytic_sample))
SAMPLERS.update(confidence=(ConfidenceConfig, confidence_sample), threshold=(ThresholdConfig, threshold_sample),
                block=(BlockConfig, block_sample), semi_ar=(SemiARConfig, semi_ar_sample),
                remdm=(ReMDMConfig, remdm_sample), first_hitting=(FirstHittingConfig, first_hitting_sample))

__all__ = ["SAMPLERS", "ARConfig", "ar_sample", "AncestralConfig", "Frame", "SampleResult", "ancestral_sample",
           "sample_categorical", "select_from_logits"]
