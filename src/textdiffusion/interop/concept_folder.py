"""A sentence-concept model's folder (Large Concept Model style: models/concept.py, processes/concept.py), written
atomically like our other folders (folder.py's atomic_folder):

    config.json            {"format": "textdiffusion-concept", "family": "concept", "encoder": ..., "tokenizer":
                            "byte", "max_chars": ..., "decoder": DecoderConfig, "denoiser": ConceptNetConfig,
                            "process": ConceptDiffusion.config(), "training": what trained it}
    decoder.safetensors    the SentenceDecoder (embedding -> sentence)
    denoiser.safetensors   the ConceptDenoiser (next sentence's embedding)
    scaler.safetensors     the EmbeddingScaler's mean and std

Its format is not our token models' "textdiffusion", so nothing reads it as one; `refusal` is the one line that
`Pipeline.from_pretrained` (interop.load_folder) answers it with. Nothing here is a pickle.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..core.checks import state_mismatch
from ..core.errors import UserError
from ..models.concept import ConceptDenoiser, ConceptNetConfig, DecoderConfig, SentenceDecoder
from ..processes.concept import ConceptDiffusion, EmbeddingScaler
from .folder import CONFIG_FILE, atomic_folder, load_weights, read_folder_config, save_weights

FORMAT = "textdiffusion-concept"
FAMILY = "concept"
DECODER_FILE, DENOISER_FILE, SCALER_FILE = "decoder.safetensors", "denoiser.safetensors", "scaler.safetensors"
TOKENIZER = "byte"  # the decoder writes bytes (data/tokenizers.py's ByteTokenizer)
CONTINUE_COMMAND = "textdiffusion concept continue"


@dataclass
class ConceptParts:
    """What a concept folder holds, ready to sample (samplers/concept.py)."""

    decoder: SentenceDecoder
    denoiser: ConceptDenoiser
    scaler: EmbeddingScaler
    process: ConceptDiffusion
    encoder: str  # the frozen sentence encoder's name (models/sentence_encoder.py)
    max_chars: int  # the longest sentence piece it was trained on (data/sentences.py cuts prompts alike)
    training: dict = field(default_factory=dict)  # the settings that trained it, for the record

    def config(self) -> dict:
        return {"format": FORMAT, "family": FAMILY, "encoder": self.encoder, "tokenizer": TOKENIZER,
                "max_chars": self.max_chars, "decoder": self.decoder.cfg.to_dict(),
                "denoiser": self.denoiser.cfg.to_dict(), "process": self.process.config(), "training": self.training}


def is_concept(config: dict) -> bool:
    return config.get("family") == FAMILY or config.get("format") == FORMAT


def refusal(folder: Path) -> UserError:
    """Why a token-model loader does not read `folder`, and what does."""
    return UserError(f"{folder} holds a sentence-concept model (family concept), which Pipeline and the token "
                     f"commands do not run: continue text with `{CONTINUE_COMMAND} {folder} \"PROMPT\"` "
                     "(Python: textdiffusion.api.concept.ConceptModel.from_pretrained)")


def save_concept_folder(path: str | Path, parts: ConceptParts,
                        extra: Callable[[Path], None] | None = None) -> Path:
    """Write `parts` to `path` atomically (a crash leaves the old folder or the new one); `extra(tmp)` may add files
    to the new folder before it is swapped in (training's embedding caches)."""

    def write(tmp: Path) -> None:
        (tmp / CONFIG_FILE).write_text(json.dumps(parts.config(), indent=1), encoding="utf-8")
        save_weights(parts.decoder.state_dict(), tmp / DECODER_FILE)
        save_weights(parts.denoiser.state_dict(), tmp / DENOISER_FILE)
        save_weights(parts.scaler.state_dict(), tmp / SCALER_FILE)
        if extra is not None:
            extra(tmp)

    atomic_folder(Path(path), write)
    return Path(path)


def _section(config: dict, key: str, path: Path) -> dict:
    value = config.get(key)
    if not isinstance(value, dict):
        raise UserError(f"{path} lacks its {key!r} section: restore the folder or re-train it with "
                        "`textdiffusion concept train`")
    return value


def _build(kind: Callable, section: dict, key: str, path: Path):
    try:
        return kind(**section)
    except (TypeError, ValueError) as exc:  # unknown or missing keys, values of the wrong type
        raise UserError(f"{path}'s {key!r} section is not this version's ({' '.join(str(exc).split())}): "
                        "re-train the model with `textdiffusion concept train`") from exc


def _load_into(module: torch.nn.Module, file: Path) -> None:
    state = load_weights(file)
    mismatch = state_mismatch(module.state_dict(), state)
    if mismatch:
        raise UserError(f"{file} does not match the model its folder's config.json describes: {mismatch}; "
                        "restore the folder or re-train it")
    module.load_state_dict({k: v.float() for k, v in state.items()})


def load_concept_folder(path: str | Path, device: torch.device | str = "cpu") -> ConceptParts:
    """The parts saved by save_concept_folder, on `device`, in eval mode. Every way a folder can be missing, corrupt
    or of another kind is a one-line UserError."""
    folder = Path(path)
    if not folder.is_dir():
        raise UserError(f"concept model folder {folder} does not exist: train one with `textdiffusion concept train "
                        f"{folder}`")
    if not (folder / CONFIG_FILE).is_file():
        raise UserError(f"{folder} holds no {CONFIG_FILE}: pass a folder written by `textdiffusion concept train`")
    config = read_folder_config(folder)
    cfg_path = folder / CONFIG_FILE
    if not is_concept(config):
        raise UserError(f"{cfg_path} is not a sentence-concept model (its format is {config.get('format')!r}): "
                        "load token models with Pipeline.from_pretrained or `textdiffusion sample --model`")
    if config.get("tokenizer", TOKENIZER) != TOKENIZER:
        raise UserError(f"{cfg_path} names the tokenizer {config.get('tokenizer')!r}; this version's concept "
                        f"decoder writes {TOKENIZER!r} tokens only: re-train the model")
    decoder = SentenceDecoder(_build(DecoderConfig, _section(config, "decoder", cfg_path), "decoder", cfg_path))
    denoiser = ConceptDenoiser(_build(ConceptNetConfig, _section(config, "denoiser", cfg_path), "denoiser", cfg_path))
    process = _build(ConceptDiffusion, _section(config, "process", cfg_path), "process", cfg_path)
    _load_into(decoder, folder / DECODER_FILE)
    _load_into(denoiser, folder / DENOISER_FILE)
    scaler_state = load_weights(folder / SCALER_FILE)
    if set(scaler_state) != {"mean", "std"}:
        raise UserError(f"{folder / SCALER_FILE} holds {sorted(scaler_state)}, not the scaler's mean and std: "
                        "restore the folder or re-train it")
    scaler = EmbeddingScaler(scaler_state["mean"], scaler_state["std"])
    if scaler.mean.shape[0] != decoder.cfg.embed_dim or denoiser.cfg.embed_dim != decoder.cfg.embed_dim:
        raise UserError(f"{folder}: the scaler, decoder and denoiser disagree on the embedding width: restore the "
                        "folder or re-train it")
    encoder, max_chars = config.get("encoder"), config.get("max_chars")
    if not isinstance(encoder, str) or not isinstance(max_chars, int) or isinstance(max_chars, bool):
        raise UserError(f"{cfg_path} lacks the encoder's name or max_chars: restore the folder or re-train it")
    training = config.get("training") if isinstance(config.get("training"), dict) else {}
    return ConceptParts(decoder=decoder.to(device).eval(), denoiser=denoiser.to(device).eval(), scaler=scaler,
                        process=process, encoder=encoder, max_chars=max_chars, training=training)
