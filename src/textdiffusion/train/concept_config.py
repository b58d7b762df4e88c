"""The settings of a sentence-concept training run (train/concept.py), each with the help line its
`textdiffusion concept train` option shows. No torch here: the command line builds its parser from these fields and
`--help` must start at once."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from ..core.errors import UserError


def _opt(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class ConceptTrainConfig:
    source: str = _opt("shakespeare", "the corpus: shakespeare, a text file or a folder of them (data/corpus.py)")
    max_chars: int = _opt(100, "longer sentences are cut at a clause mark into pieces of at most this many chars")
    train_sentences: int = _opt(20000, "about this many training sentences, runs of them from every document alike")
    decoder_steps: int = _opt(2000, "training steps of the decoder (embedding -> sentence)")
    denoiser_steps: int = _opt(2000, "training steps of the denoiser (next sentence's embedding)")
    batch: int = _opt(64, "sentences (decoder) or windows of sentences (denoiser) per step")
    lr: float = _opt(1e-3, "peak learning rate of both (AdamW, warm-up then cosine decay)")
    d_model: int = _opt(256, "width of both networks")
    heads: int = _opt(4, "attention heads of both networks")
    decoder_layers: int = _opt(4, "decoder blocks")
    prefix: int = _opt(4, "vectors the decoder reads the embedding as")
    context_layers: int = _opt(2, "blocks of the context tower (reads the sentences so far)")
    denoiser_layers: int = _opt(4, "blocks of the denoiser")
    window: int = _opt(16, "consecutive sentences per denoiser training window (the most context it reads + 1)")
    num_steps: int = _opt(100, "diffusion levels T")
    cond_drop: float = _opt(0.15, "chance a sentence trains the unconditional model (classifier-free guidance)")
    decoder_noise: float = _opt(0.1, "std of the noise on the decoder's input embeddings (standardised units)")
    log_every: int = _opt(100, "print the loss every this many steps")
    seed: int = _opt(0, "random seed of the sentence picks, the initial weights and the noise")

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            kind = type(f.default)
            if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else kind):
                raise UserError(f"{f.name} must be a{'n integer' if kind is int else ' ' + kind.__name__}, "
                                f"got {value!r}")
        positive = ("max_chars", "train_sentences", "decoder_steps", "denoiser_steps", "batch", "d_model", "heads",
                    "decoder_layers", "prefix", "context_layers", "denoiser_layers", "num_steps", "log_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise UserError(f"{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.max_chars < 2:
            raise UserError(f"max-chars must be >= 2, got {self.max_chars}")
        if self.train_sentences < 2:
            raise UserError(f"train-sentences must be >= 2 (the scaler fits a mean and a std), got "
                            f"{self.train_sentences}")
        if self.window < 2:
            raise UserError(f"window must be >= 2 (a sentence and the next one), got {self.window}")
        if self.d_model % self.heads:
            raise UserError(f"d-model ({self.d_model}) must be a multiple of heads ({self.heads})")
        if (self.d_model // self.heads) % 2:
            raise UserError(f"d-model / heads ({self.d_model // self.heads}) must be even (rotary positions)")
        if not self.lr > 0:
            raise UserError(f"lr must be positive, got {self.lr}")
        if self.decoder_noise < 0:
            raise UserError(f"decoder-noise must be >= 0, got {self.decoder_noise}")
        if not 0 <= self.cond_drop < 1:
            raise UserError(f"cond-drop must be in [0, 1), got {self.cond_drop}")

    def to_dict(self) -> dict:
        return asdict(self)
