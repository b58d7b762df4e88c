"""Export to the Hugging Face format: transformers loads the folder with AutoModelForMaskedLM (registered model
type, no remote code) and gives our logits; Pipeline.from_pretrained loads the same folder back unchanged."""

from __future__ import annotations

import json

import pytest
import torch

from textdiffusion.api.pipeline import Pipeline
from textdiffusion.core.errors import UserError
from textdiffusion.data.tokenizers import ByteTokenizer, train_bpe
from textdiffusion.interop.hf_export import export_hf
from textdiffusion.models import ModelConfig, Transformer
from textdiffusion.processes import Autoregressive, MaskedDiffusion


def random_pipeline(tok, causal: bool = False, time_conditioning: bool = False) -> Pipeline:
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, seq_len=24, d_model=32, n_layers=2, n_heads=2,
                                    causal=causal, time_conditioning=time_conditioning))
    for p in model.parameters():  # non-zero adaLN too, so the time conditioning matters
        torch.nn.init.normal_(p, std=0.1)
    process = (Autoregressive if causal else MaskedDiffusion)(vocab_size=tok.vocab_size, mask_id=tok.mask_id)
    return Pipeline(model, process, tok, {"note": "kept"})


def test_transformers_loads_the_export_and_gives_our_logits(tmp_path):
    from transformers import AutoConfig, AutoModelForMaskedLM

    import textdiffusion.interop.hf_model  # noqa: F401  registers the model type

    pipe = random_pipeline(ByteTokenizer(), time_conditioning=True)
    export_hf(pipe, tmp_path / "hf")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cfg["model_type"] == "textdiffusion" and "auto_map" not in cfg  # no remote code
    assert AutoConfig.from_pretrained(tmp_path / "hf").model_type == "textdiffusion"
    hf = AutoModelForMaskedLM.from_pretrained(tmp_path / "hf").eval()
    ids = torch.randint(0, 260, (2, 24), generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.2, 0.7])
    with torch.no_grad():
        ours = pipe.model(ids, t)
        theirs = hf(input_ids=ids, timesteps=t).logits
        assert not torch.equal(ours, pipe.model(ids, torch.tensor([0.9, 0.1])))  # t reaches the model
    assert torch.equal(theirs, ours)


def test_causal_export_with_padding_mask_and_tokenizer(tmp_path):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    import textdiffusion.interop.hf_model  # noqa: F401

    tok = train_bpe(["to be or not to be, that is the question"] * 20, vocab_size=300)
    pipe = random_pipeline(tok, causal=True)
    export_hf(pipe, tmp_path / "ar", dtype=torch.float32)
    hf = AutoModelForMaskedLM.from_pretrained(tmp_path / "ar").eval()
    ids = torch.randint(0, tok.vocab_size, (2, 10), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(hf(ids).logits, pipe.model(ids))
        # right padding: a causal model's real positions never see the pad keys, so their logits are unchanged
        padded = hf(ids, attention_mask=torch.tensor([[1] * 10, [1] * 6 + [0] * 4])).logits
    assert torch.allclose(padded[1, :6], pipe.model(ids)[1, :6], atol=1e-6)
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "ar")
    text = "that is the question"
    assert hf_tok(text, add_special_tokens=False)["input_ids"] == tok.encode(text)
    assert hf_tok.mask_token_id == tok.mask_id


def test_pipeline_loads_the_export_back_identical(tmp_path):
    pipe = random_pipeline(ByteTokenizer())
    pipe.save_pretrained(tmp_path / "hf", format="hf")  # the public door to export_hf
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "textdiffusion"
    back = Pipeline.from_pretrained(tmp_path / "hf", device="cpu")
    state = back.model.state_dict()
    assert state.keys() == pipe.model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in pipe.model.state_dict().items())
    assert back.process.name == "masked" and back.config["note"] == "kept"
    again, first = (p.generate(num_samples=2, steps=8, seed=5).ids for p in (back, pipe))
    assert torch.equal(again, first)


def test_outside_models_are_refused(tmp_path):
    from textdiffusion.models.dit import KuleshovDiT, KuleshovDiTConfig

    tok = ByteTokenizer()
    dit = KuleshovDiT(KuleshovDiTConfig(vocab_size=tok.vocab_size, seq_len=8, d_model=8, n_layers=1, n_heads=2))
    pipe = Pipeline(dit, MaskedDiffusion(tok.vocab_size, tok.mask_id), tok, {"format": "kuleshov"})
    with pytest.raises(UserError, match="own models"):
        export_hf(pipe, tmp_path / "x")
    for fmt in ("textdiffusion", "hf"):  # a native save would write a folder nothing can read back
        with pytest.raises(UserError, match="own models"):
            pipe.save_pretrained(tmp_path / "y", format=fmt)
    assert not (tmp_path / "y").exists()
    with pytest.raises(UserError, match="format must be"):
        random_pipeline(tok).save_pretrained(tmp_path / "z", format="gguf")
