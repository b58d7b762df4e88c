"""The front door of a sentence-concept model (Large Concept Model style, docs/latent.md): load a folder written by
`textdiffusion concept train` and continue a text sentence by sentence.

    model = ConceptModel.from_pretrained("runs/concept")
    model.continue_text("Good morrow, cousin. What news?", sentences=3, samples=2, seed=0)   # -> 2 strings

The prompt is cut into sentences as the training text was (data/sentences.py, at the model's max_chars), embedded
by the frozen encoder the folder names (models/sentence_encoder.py), and continued by samplers/concept.py: each new
sentence's vector is denoised from the vectors before it and written by the decoder.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch

from ..core.checks import check_int, check_seed, check_text, resolve_device
from ..core.errors import UserError
from ..data.sentences import split_sentences
from ..data.tokenizers import ByteTokenizer
from ..interop.concept_folder import ConceptParts, load_concept_folder, save_concept_folder
from ..models.sentence_encoder import sentence_encoder
from ..samplers.concept import ConceptSampleConfig, continue_sentences

Encoder = Callable[[list[str]], torch.Tensor]  # sentences -> their frozen-encoder vectors [n, E]


class ConceptModel:
    """A trained concept model (decoder, denoiser, scaler, process) with its frozen sentence encoder."""

    def __init__(self, parts: ConceptParts, encoder: Encoder | None = None, device: torch.device | None = None):
        self.parts = parts
        self.device = device if device is not None else next(parts.denoiser.parameters()).device
        self._encoder = encoder
        self.tokenizer = ByteTokenizer()

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device | None = "auto",
                        encoder: Encoder | None = None) -> ConceptModel:
        """Load a concept folder; `encoder` replaces the one the folder names (None: load that one on first use)."""
        device = resolve_device(device)
        return cls(load_concept_folder(path, device), encoder, device)

    def save_pretrained(self, path: str | Path, extra: Callable[[Path], None] | None = None) -> Path:
        """Write the folder atomically (interop/concept_folder.py); `extra(tmp)` may add files to it first."""
        return save_concept_folder(path, self.parts, extra)

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            self._encoder = sentence_encoder(self.parts.encoder, self.device)
        return self._encoder

    def prompt_sentences(self, prompt: str) -> list[str]:
        """The prompt's sentences, cut as the training text was (long ones at the model's max_chars)."""
        check_text("prompt", prompt)
        sentences = split_sentences(prompt, self.parts.max_chars)
        if not sentences:
            raise UserError("the prompt is empty: give at least one sentence to continue, e.g. \"Good morrow.\"")
        return sentences

    @torch.no_grad()
    def continue_sentences(self, prompt: str, sentences: int = 3, steps: int = 40, guidance: float = 2.0,
                           eta: float = 1.0, samples: int = 1, seed: int | None = 0,
                           temperature: float = 0.0) -> list[list[str]]:
        """`samples` continuations of `prompt`, each a list of `sentences` new sentences. `steps` reverse steps per
        sentence, classifier-free `guidance` (0 unconditional, 1 conditional, > 1 stronger), `eta` 1 ancestral / 0
        DDIM, the decoder's `temperature` (0 greedy); the same seed gives the same continuations."""
        check_int("sentences", sentences, 1)
        check_int("samples", samples, 1)
        check_int("steps", steps, 1)
        seed = check_seed(seed)
        for name, value in (("guidance", guidance), ("eta", eta), ("temperature", temperature)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise UserError(f"{name} must be a finite number, got {value!r}")
        cfg = ConceptSampleConfig(steps=steps, eta=float(eta), guidance=float(guidance),
                                  temperature=float(temperature))
        context = self.prompt_sentences(prompt)
        gen = torch.Generator(device=self.device)
        if seed is None:
            gen.seed()
        else:
            gen.manual_seed(seed)
        p = self.parts
        written, _ = continue_sentences([context] * samples, sentences, self.encoder, p.scaler, p.denoiser, p.decoder,
                                        self.tokenizer, p.process, cfg, gen)
        return written

    def continue_text(self, prompt: str, sentences: int = 3, steps: int = 40, guidance: float = 2.0,
                      eta: float = 1.0, samples: int = 1, seed: int | None = 0, temperature: float = 0.0) -> list[str]:
        """As continue_sentences, each continuation's sentences joined by spaces: one string per sample."""
        return [" ".join(row) for row in self.continue_sentences(prompt, sentences, steps, guidance, eta, samples,
                                                                 seed, temperature)]
