"""AR -> diffusion adaptation (train/adapt.py): with the causal mask the logit-shifted denoiser *is* the AR model,
the annealed mask opens from causal to full, and `textdiffusion adapt` starts from the AR weights."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from textdiffusion.api.pipeline import Pipeline
from textdiffusion.cli import main
from textdiffusion.core.errors import UserError
from textdiffusion.models import ModelConfig, Transformer
from textdiffusion.models.shifted import ShiftedDenoiser
from textdiffusion.processes import Autoregressive, MaskedDiffusion
from textdiffusion.train import checkpoint as ckpt
from textdiffusion.train.adapt import annealed_mask


def test_with_the_causal_mask_the_shifted_denoiser_is_the_ar_model():
    torch.manual_seed(0)
    shape = dict(vocab_size=12, seq_len=10, d_model=16, n_layers=2, n_heads=2)
    ar = Transformer(ModelConfig(causal=True, **shape)).eval()
    bidirectional = Transformer(ModelConfig(causal=False, **shape)).eval()
    bidirectional.load_state_dict(ar.state_dict())
    x0 = torch.randint(0, 11, (3, 10))
    with torch.no_grad():
        expected = Autoregressive(vocab_size=12, mask_id=11).log_probs(ar, x0)  # log p(x_l | x_<l)
        shifted = ShiftedDenoiser(bidirectional, 11, annealed_mask(11, 0.0))(x0).float()
        logits = shifted.clone()
        logits[..., 11] = float("-inf")
        got = torch.log_softmax(logits, -1).gather(-1, x0[..., None])[..., 0]
        assert torch.allclose(got, expected, atol=1e-5)
        # without the mask the last token is seen too: position 0 now depends on the whole sequence
        assert not torch.allclose(ShiftedDenoiser(bidirectional, 11)(x0)[:, 0], shifted[:, 0], atol=1e-4)


def test_the_annealed_mask_opens_from_causal_to_full():
    causal = torch.ones(40, 40, dtype=torch.bool).tril()
    assert torch.equal(annealed_mask(40, 0.0), causal)
    assert annealed_mask(40, 1.0) is None
    half = annealed_mask(40, 0.5, torch.Generator().manual_seed(0))
    assert bool(half[causal].all())
    future = int(half[~causal].sum())
    n = int((~causal).sum())
    assert abs(future - n / 2) < 5 * math.sqrt(n / 4)  # binomial(n, 1/2), 5 standard deviations


def test_adapt_command_starts_from_the_ar_weights(tmp_path, capsys, tiny_overrides, write_corpus):
    corpus = write_corpus(tmp_path / "c.jsonl", n_docs=60)
    ar_dir, out = tmp_path / "ar", tmp_path / "adapted"
    assert main(["train", "--config", "tiny", "--out", str(ar_dir), "process.name=autoregressive",
                 *tiny_overrides(corpus, steps=2, every=2)]) == 0
    assert main(["adapt", "--from", str(ar_dir), "--out", str(out), "--anneal-steps", "2", "train.steps=2",
                 "train.lr=1e-12", "train.ema_decay=0"]) == 0
    saved = ckpt.read_config(out / "checkpoint")
    assert saved["process"]["name"] == "masked" and saved["process"]["logit_shift"] is True
    assert saved["model"]["causal"] is False
    ar_weights = ckpt.load_weights(ar_dir / "checkpoint" / ckpt.EMA_FILE)
    adapted = ckpt.load_weights(out / "checkpoint" / ckpt.WEIGHTS_FILE)
    assert all(torch.allclose(adapted[k], ar_weights[k], atol=1e-6) for k in ar_weights)  # lr ~ 0: still AR
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["started_from"].endswith("checkpoint") and any("val_nelbo" in r for r in rows)
    pipe = Pipeline.from_pretrained(out, device="cpu")
    assert isinstance(pipe.process, MaskedDiffusion) and pipe.process.logit_shift
    text = pipe.generate(length=16, steps=4, seed=0, prompt="The ")
    assert text.texts[0].startswith("The ") and not (text.ids == pipe.tokenizer.mask_id).any()
    with pytest.raises(UserError, match="no KV cache for the shifted frame"):
        pipe.generate(length=16, sampler="confidence", steps=4, cache="prefix")
    capsys.readouterr()
    assert main(["adapt", "--from", str(out), "--out", str(tmp_path / "again")]) == 2  # not an AR model
    assert "is not an autoregressive model" in capsys.readouterr().err
    # SFT of the adapted model: its weights, tokenizer and logit-shifted process, trained on conversations
    chats = tmp_path / "chat.jsonl"
    chats.write_text("".join(json.dumps([{"role": "user", "content": f"{i}+1"},
                                         {"role": "assistant", "content": str(i + 1)}]) + "\n" for i in range(20)))
    sft = tmp_path / "sft"
    assert main(["sft", "--from", str(out), "--data", str(chats), "--out", str(sft), "train.steps=1",
                 "train.lr=1e-12", "data.val_fraction=0.2"]) == 0
    tuned = ckpt.read_config(sft / "checkpoint")
    assert tuned["train_config"]["data"]["packing"] == "chat" and tuned["process"]["logit_shift"] is True
    weights = ckpt.load_weights(sft / "checkpoint" / ckpt.WEIGHTS_FILE)
    assert all(torch.allclose(weights[k], adapted[k], atol=1e-6) for k in adapted)
    assert Pipeline.from_pretrained(sft, device="cpu").chat([{"role": "user", "content": "3+1"}], steps=2).replies
    # runs that load another model's whole weights refuse FSDP, in one line, before any work
    for command in (["adapt", "--from", str(ar_dir), "--out", str(tmp_path / "sharded-adapt")],
                    ["sft", "--from", str(out), "--data", str(chats), "--out", str(tmp_path / "sharded-sft")]):
        capsys.readouterr()
        assert main([*command, "train.parallel=fsdp"]) == 2
        err = capsys.readouterr().err
        assert "train.parallel=fsdp cannot take" in err and len(err.strip().splitlines()) == 1
        assert not (Path(command[command.index("--out") + 1]) / "checkpoint").exists()
