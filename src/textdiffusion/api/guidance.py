"""Guidance from plain settings (the `sample` command's flags): which controls, how strong, for which family.

A continuous (gaussian) model takes the `Guidance` as its sampler's `guidance` option: Adagrad steps on the
latents with fluency weight lambda. A masked model is wrapped in the Taylor-tilted denoiser of `discrete.py`
with strength gamma (`scale`), and every masked sampler runs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..core.errors import UserError
from ..guidance.attributes import verse_or_prose
from ..guidance.classifier import Attribute, AttributeClassifier
from ..guidance.controls import Contains, Control, Length
from ..guidance.discrete import tilted
from ..guidance.gradient import Guidance


@dataclass
class GuidanceSettings:
    contains: list[str] = field(default_factory=list)  # texts the sample must contain (each one control)
    ends_at: int | None = None  # [EOS] at this position, none before
    classifier: str | None = None  # folder of an attribute classifier (classifier.json)
    attribute: str | None = None  # the label asked of it (e.g. verse, prose)
    fluency: float | None = None  # gaussian: lambda (Guidance.fluency)
    steps: int | None = None  # gaussian: Adagrad steps per denoising step
    lr: float | None = None  # gaussian: Adagrad step size
    scale: float | None = None  # masked: gamma of the tilt

    def any(self) -> bool:
        return bool(self.contains) or self.ends_at is not None or self.classifier is not None


def build_controls(pipe, settings: GuidanceSettings) -> list[Control]:
    tok = pipe.tokenizer
    controls: list[Control] = []
    for text in settings.contains:
        ids = tok.encode(text)
        if not ids:
            raise UserError(f"--contains {text!r} encodes to no tokens: give a word or phrase")
        controls.append(Contains(ids))
    if settings.ends_at is not None:
        if not 0 <= settings.ends_at < pipe.seq_len:
            raise UserError(f"--ends-at must be in 0..{pipe.seq_len - 1} (the [EOS] position), got {settings.ends_at}")
        controls.append(Length(settings.ends_at, tok.eos_id))
    if (settings.classifier is None) != (settings.attribute is None):
        raise UserError("--classifier DIR and --attribute LABEL go together (e.g. --attribute prose)")
    if settings.classifier is not None:
        classifier = AttributeClassifier.load(settings.classifier).to(pipe.device)
        controls.append(Attribute(classifier, settings.attribute,
                                  lambda ids: tok.decode(ids, mask_char=None), verse_or_prose))
    return controls


def apply_guidance(pipe, settings: GuidanceSettings) -> tuple[object, dict]:
    """(the pipeline to sample with, extra sampler options) for these settings; unguided: (pipe, {})."""
    if not settings.any():
        for name in ("fluency", "steps", "lr", "scale"):
            if getattr(settings, name) is not None:
                raise UserError("--guidance-* flags need a control: --contains, --ends-at or --classifier/--attribute")
        return pipe, {}
    controls = build_controls(pipe, settings)
    family = pipe.process.name
    if family == "gaussian":
        if settings.scale is not None:
            raise UserError("--guidance-scale is the masked models' gamma; a gaussian model takes --guidance-lambda, "
                            "--guidance-steps and --guidance-lr")
        opts = {k: v for k, v in (("fluency", settings.fluency), ("steps", settings.steps), ("lr", settings.lr))
                if v is not None}
        return pipe, {"guidance": Guidance(controls, **opts)}
    if family == "masked":
        if any(getattr(settings, k) is not None for k in ("fluency", "steps", "lr")):
            raise UserError("a masked model takes --guidance-scale (gamma); --guidance-lambda/-steps/-lr are for "
                            "gaussian models")
        scale = 2.0 if settings.scale is None else settings.scale
        if not isinstance(scale, (int, float)) or not scale >= 0:
            raise UserError(f"--guidance-scale must be a number >= 0, got {scale!r}")
        from .pipeline import Pipeline

        model = tilted(pipe.model, Guidance(controls), pipe.process.mask_id, scale)
        return Pipeline(model, pipe.process, pipe.tokenizer, pipe.config, pipe.precision), {}
    raise UserError(f"guidance runs on gaussian (Diffusion-LM) and masked (MDLM) models, not {family!r} ones")
