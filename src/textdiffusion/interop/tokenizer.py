"""The tokenizer of a Hugging Face model folder, made to agree with the model's vocabulary.

Models often pad their embedding beyond the tokenizer (LLaDA 126464 rows, Dream 152064); adapters cut
the logits to `tokenizer.vocab_size`, so ids the tokenizer lacks are never sampled. Nothing is added to
the tokenizer: every special role ([PAD], [BOS], [EOS], [MASK]) is mapped onto a token the model knows.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..core.errors import UserError
from ..data.tokenizers import HFTokenizer

ROLES = ("pad", "bos", "eos", "mask")


def _named_specials(folder: Path) -> dict[str, str]:
    """The special tokens a folder names in tokenizer_config.json / special_tokens_map.json."""
    out: dict[str, str] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = folder / name
        if not path.is_file():
            continue
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UserError(f"{path} is unreadable or corrupt ({' '.join(str(exc).split())}): restore it") from exc
        # BERT-style folders name [CLS] / [SEP] where others name a bos / eos
        for role, key in (*((r, f"{r}_token") for r in ROLES), ("bos", "cls_token"), ("eos", "sep_token")):
            value = cfg.get(key) if isinstance(cfg, dict) else None
            if isinstance(value, dict):
                value = value.get("content")
            if isinstance(value, str) and value and (key == f"{role}_token" or role not in out):
                out[role] = value
    return out


def folder_tokenizer(folder: Path, model_vocab: int, ids: dict[str, int | None] | None = None) -> HFTokenizer:
    """The folder's tokenizer.json with its special roles taken, in order, from `ids` (e.g. the model
    config's mask_token_id), the folder's tokenizer config, and the stand-ins pad -> eos, bos -> eos."""
    from tokenizers import Tokenizer as HFTok

    path = folder / "tokenizer.json"
    if not path.is_file():
        raise UserError(f"no tokenizer.json in {folder}: copy the model's tokenizer files into the folder")
    try:
        tok = HFTok.from_file(str(path))
    except Exception as exc:  # the Rust library raises a bare Exception for every parse error
        raise UserError(f"{path} is corrupt or not a tokenizers file ({' '.join(str(exc).split())}): "
                        "restore it") from exc
    # sentence-embedding checkpoints save truncation and padding to 128 in tokenizer.json: scoring would cut every
    # text to 128 tokens and pad short ones with [PAD]
    tok.no_truncation()
    tok.no_padding()
    names = _named_specials(folder)
    for role, token_id in (ids or {}).items():
        if token_id is None:
            continue
        token = tok.id_to_token(int(token_id))
        if token is None:
            raise UserError(f"config.json of {folder} names {role} id {token_id}, which its tokenizer.json lacks: "
                            "the tokenizer files belong to another model")
        names[role] = token
    names = {role: tok for role, tok in names.items() if tok is not None}
    names.setdefault("pad", names.get("eos"))
    names.setdefault("bos", names.get("eos"))
    names.setdefault("eos", names.get("pad"))
    absent = [role for role in ROLES if names.get(role) is None or tok.token_to_id(names[role]) is None]
    if absent:
        raise UserError(f"the tokenizer in {folder} has no {' or '.join(absent)} token that this model knows: "
                        "name it in tokenizer_config.json")
    wrapped = HFTokenizer(tok, kind="hf", specials=names)
    # ids, not the token count, bound what the model sees (a vocabulary may skip ids)
    wrapped.vocab_size = max(tok.get_vocab(with_added_tokens=True).values()) + 1
    if wrapped.vocab_size > model_vocab:
        raise UserError(f"the tokenizer in {folder} has ids up to {wrapped.vocab_size - 1} but the model has only "
                        f"{model_vocab} embeddings: the tokenizer files belong to another model")
    return wrapped
