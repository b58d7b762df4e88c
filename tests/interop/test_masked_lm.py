"""Hugging Face masked LMs (BERT, RoBERTa, ModernBERT) as masked denoisers: logits equal transformers' own
loader and forward, and the pipeline and CLI run on them."""

from __future__ import annotations

import pytest
import torch
import transformers

from textdiffusion.api.pipeline import Pipeline
from textdiffusion.cli import main

CLASSES = {"bert": "BertForMaskedLM", "roberta": "RobertaForMaskedLM", "modernbert": "ModernBertForMaskedLM"}


@pytest.mark.parametrize("kind", list(CLASSES))
def test_logits_match_transformers(kind, tmp_path, masked_lm_specials, write_masked_lm):
    folder, ids = write_masked_lm(tmp_path / kind, kind)
    pipe = Pipeline.from_pretrained(folder, device="cpu")
    assert pipe.config["format"] == "masked_lm" and pipe.config["model"]["model_type"] == kind
    tok = pipe.tokenizer
    assert tok.mask_id == ids[masked_lm_specials[kind][-1]] and tok.vocab_size == ids["__size__"]
    reference = getattr(transformers, CLASSES[kind]).from_pretrained(str(folder)).eval()  # transformers' loader
    x = torch.randint(len(masked_lm_specials[kind]), tok.vocab_size, (2, 10),
                      generator=torch.Generator().manual_seed(0))
    x[:, 4:7] = tok.mask_id
    with torch.no_grad():
        expected = reference(input_ids=x).logits[..., : tok.vocab_size]
        ours = pipe.model(x, None)
    torch.testing.assert_close(ours, expected, atol=2e-5, rtol=1e-4)
    out = pipe.generate(num_samples=2, length=8, steps=4, seed=0, sampler="confidence")
    assert out.ids.shape == (2, 8) and not (out.ids == tok.mask_id).any() and int(out.ids.max()) < tok.vocab_size


def test_pipeline_and_cli_run_on_bert(tmp_path, capsys, write_masked_lm):
    folder, _ = write_masked_lm(tmp_path / "bert", "bert")
    pipe = Pipeline.from_pretrained(folder, device="cpu")
    fill = pipe.infill("To be, or[MASK]x2 to be", seed=0, steps=2)
    assert len(fill.fills[0]) == 1 and not (fill.ids == pipe.tokenizer.mask_id).any()
    [score] = pipe.score("To be, or not to be", t_samples=2)
    assert score.n_tokens > 0 and score.nats_per_token > 0
    main(["sample", "--model", str(folder), "--length", "8", "--steps", "4", "--seed", "0", "--filmstrip", "2"])
    printed = capsys.readouterr()
    assert "--- sample 1 ---" in printed.out and "forward passes" in printed.out
    assert "loaded masked_lm" in printed.err and "peak memory" in printed.err  # the load's line, on stderr
