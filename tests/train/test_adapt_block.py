"""AR -> block diffusion (`textdiffusion adapt --block-size B`): the BD3-LM run starts from exactly the AR
weights, and with those weights its block denoiser at B = 1 reads what the AR model reads (the clean tokens
before each position), so only the input at the predicted position differs ([MASK] instead of the previous
token); and the run trains, saves and samples block by block."""

from __future__ import annotations

import json

import torch

from textdiffusion.api.pipeline import Pipeline
from textdiffusion.cli import main
from textdiffusion.models import ModelConfig, Transformer
from textdiffusion.processes import BlockDiffusion
from textdiffusion.train import checkpoint as ckpt
from textdiffusion.train.recipes import LATEST as LATEST_RECIPE


def test_block_denoiser_at_block_size_1_attends_like_the_ar_model():
    torch.manual_seed(0)
    shape = dict(vocab_size=12, seq_len=8, d_model=16, n_layers=2, n_heads=2)
    ar = Transformer(ModelConfig(causal=True, **shape)).eval()
    block = Transformer(ModelConfig(causal=False, **shape)).eval()
    block.load_state_dict(ar.state_dict())  # what adaptation does
    x0 = torch.randint(0, 11, (2, 8))
    process = BlockDiffusion(vocab_size=12, mask_id=11, block_size=1)
    with torch.no_grad():
        got = process.denoiser_logits(block, torch.full_like(x0, 11), x0)
        # the AR network on x0 with the token at each position l replaced by [MASK]: position l sees x0_<l and
        # [MASK] at l, exactly the BD3-LM B = 1 noisy token's view
        for pos in range(8):
            probe = x0.clone()
            probe[:, pos] = 11
            assert torch.allclose(got[:, pos], ar(probe)[:, pos], atol=1e-5)


def test_adapt_to_block_diffusion_from_the_ar_weights(tmp_path, capsys, tiny_overrides, write_corpus):
    corpus = write_corpus(tmp_path / "c.jsonl", n_docs=60)
    ar_dir, out = tmp_path / "ar", tmp_path / "bd3"
    assert main(["train", "--config", "tiny", "--out", str(ar_dir), "process.name=autoregressive",
                 *tiny_overrides(corpus, steps=2, every=2)]) == 0
    # an AR run saved before training recipes existed: its config reads as recipe 1 (LEGACY_DEFAULTS)
    config_file = ar_dir / "checkpoint" / ckpt.CONFIG_FILE
    stored = json.loads(config_file.read_text())
    del stored["train_config"]["process"]["recipe"]
    config_file.write_text(json.dumps(stored))
    assert main(["adapt", "--from", str(ar_dir), "--out", str(out), "--block-size", "4", "train.steps=2",
                 "train.lr=1e-12", "train.ema_decay=0"]) == 0
    saved = ckpt.read_config(out / "checkpoint")
    assert saved["process"]["name"] == "block" and saved["process"]["block_size"] == 4
    # the adapted run is a new process: it trains today's recipe (D3PM's cross-entropy term), not the legacy one
    assert saved["train_config"]["process"]["recipe"] == LATEST_RECIPE and saved["process"]["ce_lambda"] == 10.0
    assert saved["model"]["causal"] is False
    ar_weights = ckpt.load_weights(ar_dir / "checkpoint" / ckpt.EMA_FILE)
    adapted = ckpt.load_weights(out / "checkpoint" / ckpt.WEIGHTS_FILE)
    assert all(torch.allclose(adapted[k], ar_weights[k], atol=1e-6) for k in ar_weights)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("val_nelbo" in r for r in rows)
    pipe = Pipeline.from_pretrained(out, device="cpu")
    assert isinstance(pipe.process, BlockDiffusion)
    assert not (pipe.generate(length=16, steps=2, seed=0).ids == pipe.tokenizer.mask_id).any()
    capsys.readouterr()
    assert main(["adapt", "--from", str(ar_dir), "--out", str(tmp_path / "x"), "--block-size", "4",
                 "--anneal-steps", "3"]) == 2
    assert "drop --anneal-steps" in capsys.readouterr().err
    assert main(["adapt", "--from", str(ar_dir), "--out", str(tmp_path / "y"), "--ar"]) == 2  # AR already
    assert "--ar keeps a pretrained causal LM" in capsys.readouterr().err
