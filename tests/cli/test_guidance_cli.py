"""`sample` with guidance flags: a gaussian model takes --contains / --ends-at / --classifier with the Adagrad
settings, a masked model the Taylor tilt's --guidance-scale; every misuse is one line and exit status 2."""

from __future__ import annotations

import re

import pytest
import torch

from textdiffusion.cli import main
from textdiffusion.guidance import AttributeClassifier, ClassifierConfig


def _ok(argv, capsys) -> str:
    assert main(argv) == 0, capsys.readouterr().err
    return capsys.readouterr().out


@pytest.fixture
def gaussian_dir(tmp_path, gaussian_pipeline) -> str:
    return str(gaussian_pipeline().save_pretrained(tmp_path / "dlm"))


def test_gaussian_sample_with_guidance_flags(gaussian_dir, tmp_path, capsys):
    base = ["sample", "--model", gaussian_dir, "--steps", "3", "--seed", "0", "-n", "2", "--length", "16"]
    out = _ok([*base, "--contains", "ab", "--ends-at", "12", "--guidance-steps", "2", "--guidance-lambda", "0.1",
               "--guidance-lr", "0.05"], capsys)
    assert out.count("--- sample") == 2 and "9 forward passes" in out  # 3 steps x (1 + 2 Adagrad passes)
    unguided = _ok(base, capsys)
    assert "3 forward passes" in unguided and unguided != out
    torch.manual_seed(0)
    cls = AttributeClassifier(ClassifierConfig("latent", vocab_size=260, mask_id=256, seq_len=32, embed_dim=8,
                                               d_model=16, n_layers=1, n_heads=2, latent_dim=8, num_steps=100))
    cls.save(tmp_path / "cls")
    out = _ok([*base, "--classifier", str(tmp_path / "cls"), "--attribute", "prose"], capsys)
    assert "3 forward passes" in out  # the classifier reads the latents, not the denoiser


def test_masked_sample_with_the_taylor_tilt(tiny_pipeline, tmp_path, capsys):
    folder = str(tiny_pipeline.save_pretrained(tmp_path / "mdlm"))
    out = _ok(["sample", "--model", folder, "--steps", "4", "--seed", "0", "-n", "3", "--length", "8",
               "--contains", "e", "--guidance-scale", "60"], capsys)
    samples = re.findall(r"--- sample \d+ ---\n(.*)", out)
    assert len(samples) == 3 and all("e" in s for s in samples), samples


@pytest.mark.parametrize("extra, message", [
    (["--guidance-lambda", "0.1"], "need a control"),
    (["--contains", "a", "--guidance-scale", "2"], "masked models' gamma"),
    (["--classifier", "/nonexistent"], "go together"),
    (["--classifier", "/nonexistent", "--attribute", "prose"], "no attribute classifier"),
    (["--ends-at", "99"], "--ends-at must be in"),
    (["--contains", ""], "encodes to no tokens"),
])
def test_guidance_misuse_is_one_line(gaussian_dir, capsys, extra, message):
    assert main(["sample", "--model", gaussian_dir, "--steps", "2", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("textdiffusion: error:") and err.count("\n") == 1 and message in err, err


def test_a_masked_model_refuses_the_gaussian_settings(tiny_pipeline, tmp_path, capsys):
    folder = str(tiny_pipeline.save_pretrained(tmp_path / "mdlm"))
    assert main(["sample", "--model", folder, "--steps", "2", "--contains", "a", "--guidance-steps", "2"]) == 2
    assert "--guidance-scale" in capsys.readouterr().err
