"""The scale-out recipes (MDLM's OpenWebText small model and LM1B) parse, validate and keep MDLM's numbers.

Nothing is downloaded: load_config only checks that an hf: source is named, it does not open it."""
from __future__ import annotations

import pytest

from textdiffusion.cli import main
from textdiffusion.train.config import load_config, presets

# MDLM (Sahoo et al. 2024), small model: the numbers the presets promise
MDLM_SMALL = {"d_model": 768, "n_layers": 12, "n_heads": 12}
MDLM_OPTIM = {"batch_size": 512, "lr": 3e-4, "warmup_steps": 2500, "ema_decay": 0.9999, "min_lr_ratio": 1.0,
              "weight_decay": 0.0, "beta2": 0.999}


@pytest.mark.parametrize(("name", "source", "seq_len"),
                         [("owt-small", "hf:Skylion007/openwebtext", 1024), ("lm1b", "hf:lm1b", 128)])
def test_recipe_matches_mdlm(name: str, source: str, seq_len: int) -> None:
    cfg = load_config(name)  # load_config validates
    assert (cfg.data.source, cfg.data.seq_len, cfg.data.tokenizer, cfg.data.streaming) == (source, seq_len, "gpt2",
                                                                                         True)
    assert {k: getattr(cfg.model, k) for k in MDLM_SMALL} == MDLM_SMALL
    assert {k: getattr(cfg.train, k) for k in MDLM_OPTIM} == MDLM_OPTIM
    assert cfg.process.name == "masked" and cfg.train.precision == "bf16"
    assert cfg.process.recipe == 1  # MDLM's objective: the NELBO alone
    # the global batch splits evenly over 1, 2, 4 and 8 processes per node at this micro batch
    for world in (1, 2, 4, 8):
        assert cfg.train.batch_size % (cfg.train.micro_batch_size * world) == 0


def test_recipes_listed_and_overridable(capsys) -> None:
    assert {"owt-small", "lm1b"} <= set(presets())
    main(["presets"])
    out = capsys.readouterr().out
    assert "owt-small" in out and "OpenWebText" in out and "lm1b" in out
    small = load_config("owt-small", ["train.micro_batch_size=8", "run.out_dir=/tmp/x"])
    assert small.train.micro_batch_size == 8 and small.train.batch_size == 512
