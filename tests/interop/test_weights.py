"""Streaming loads: sharded equals unsharded, a model too big for the free memory is refused before loading,
the load's memory is reported, and format detection names the known formats."""

from __future__ import annotations

import json

import pytest
import torch

from textdiffusion.api.pipeline import Pipeline
from textdiffusion.core.errors import UserError
from textdiffusion.interop import FORMATS, find_format, weights


def test_sharded_checkpoint_loads_equal_to_unsharded(tmp_path, write_llada):
    one, _, _ = write_llada(tmp_path / "one")
    three, _, _ = write_llada(tmp_path / "three", shards=3)
    assert len(list(three.glob("model-*.safetensors"))) == 3 and not (three / "model.safetensors").exists()
    a = Pipeline.from_pretrained(one, device="cpu").model.state_dict()
    b = Pipeline.from_pretrained(three, device="cpu").model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not any(v.device.type == "meta" for v in b.values())


def test_weights_too_big_for_free_memory_fail_before_loading(tmp_path, monkeypatch, write_llada):
    folder, _, _ = write_llada(tmp_path / "m", dtype=torch.bfloat16)
    index = weights.WeightIndex(folder)
    need_fp32 = index.nbytes(torch.float32)
    assert need_fp32 == 2 * index.nbytes(None)  # stored bf16: the header alone gives the sizes
    monkeypatch.setattr(weights, "available_memory", lambda device: need_fp32 // 2)

    def no_load(*args, **kwargs):
        raise AssertionError("the weights were read before the memory check")

    monkeypatch.setattr(weights, "stream_into", no_load)
    with pytest.raises(UserError, match=r"needs .* GiB .* but cpu has .* GiB free.*bf16") as info:
        Pipeline.from_pretrained(folder, device="cpu", dtype="fp32")
    assert "\n" not in str(info.value)


def test_load_reports_memory_and_keeps_stored_dtype(tmp_path, write_llada):
    folder, _, _ = write_llada(tmp_path / "m", dtype=torch.bfloat16)
    pipe = Pipeline.from_pretrained(folder, device="cpu")  # no dtype: as stored
    stats = pipe.config["load"]
    assert stats["dtype"] == "bfloat16" and next(pipe.model.parameters()).dtype == torch.bfloat16
    assert stats["weights_bytes"] == stats["estimated_bytes"] == weights.WeightIndex(folder).nbytes(None)
    assert stats["peak_bytes"] > 0 and stats["added_bytes"] >= 0
    assert "peak memory" in weights.describe(stats)


def test_incomplete_or_foreign_folders_are_one_line_errors(tmp_path, write_llada):
    folder, _, _ = write_llada(tmp_path / "m", shards=2)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["weight_map"]["extra"] = "../elsewhere.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(UserError, match="not a file in"):
        Pipeline.from_pretrained(folder, device="cpu")
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "made_up"}))
    with pytest.raises(UserError, match="known formats") as info:
        find_format(other)
    assert all(name in str(info.value) for name in ("llada", "dream", "masked_lm"))
    assert FORMATS[-1] == "masked_lm"
    with pytest.raises(UserError, match="dtype must be"):
        Pipeline.from_pretrained(folder, device="cpu", dtype="int3")


def test_tokenizer_must_fit_the_model_and_name_its_mask(tmp_path, write_llada):
    folder, _, ids = write_llada(tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    small = dict(config, embedding_size=ids["__size__"] - 1, vocab_size=ids["__size__"] - 1)
    (folder / "config.json").write_text(json.dumps(small))
    with pytest.raises(UserError, match="has only .* embeddings: the tokenizer files belong to another model"):
        Pipeline.from_pretrained(folder, device="cpu")
    (folder / "config.json").write_text(json.dumps(dict(config, mask_token_id=ids["__size__"] + 3)))
    with pytest.raises(UserError, match="names mask id .* which its tokenizer.json lacks"):
        Pipeline.from_pretrained(folder, device="cpu")
