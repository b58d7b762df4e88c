"""`textdiffusion concept train` and `textdiffusion concept continue` (cli/concept.py): the command trains the model
the library trains for the same settings, prints what the Python API writes, and answers bad input with one line and
exit status 2; the token commands refuse a concept folder in one line that names the concept command."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from textdiffusion.api.concept import ConceptModel
from textdiffusion.cli import main

PROMPT = "The king rode to the castle. The queen sang!"


def test_cli_training_writes_the_librarys_model(concept_run, concept_tiny_args, tmp_path, capsys):
    out = tmp_path / "cli-model"
    assert main(["concept", "train", str(out), *concept_tiny_args]) == 0
    captured = capsys.readouterr()
    assert f"concept model: {out}" in captured.out and "embedded 40 train sentences" in captured.err
    for name in ("decoder", "denoiser", "scaler"):  # the options reached the config: the same seed, the same model
        ours, library = (load_file(str(folder / f"{name}.safetensors")) for folder in (out, concept_run.out))
        assert ours.keys() == library.keys()
        assert all(torch.equal(ours[k], library[k]) for k in ours), name


def test_cli_continuation_equals_the_api_and_follows_the_seed(concept_run, capsys):
    args = ["concept", "continue", str(concept_run.out), PROMPT, "--sentences", "2", "--steps", "4", "--samples", "3",
            "--guidance", "1.5", "--eta", "0.5", "--temperature", "1", "--device", "cpu"]
    assert main([*args, "--seed", "11"]) == 0
    printed = capsys.readouterr().out.splitlines()
    model = ConceptModel.from_pretrained(concept_run.out, device="cpu")
    kwargs = dict(sentences=2, steps=4, samples=3, guidance=1.5, eta=0.5, temperature=1.0)
    expected = model.continue_text(PROMPT, seed=11, **kwargs)
    assert printed == [" ".join(text.split()) for text in expected] and len(printed) == 3
    assert model.continue_text(PROMPT, seed=12, **kwargs) != expected  # so the seed is what made them equal


@pytest.mark.parametrize("extra, match", [
    (["--samples", "0"], "samples must be positive"),
    (["--sentences", "-1"], "sentences must be positive"),
    (["--steps", "0"], "steps must be positive"),
    (["--guidance", "-1"], "guidance must be >= 0"),
    (["--eta", "2"], "eta must be in"),
    (["--device", "tpu"], "unknown device"),
])
def test_bad_continue_options_exit_2_in_one_line(concept_run, capsys, extra, match):
    assert main(["concept", "continue", str(concept_run.out), PROMPT, *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("textdiffusion: error:") and match in err


@pytest.mark.parametrize("prompt", ["", "   \n\n  \t"])
def test_a_prompt_without_a_sentence_exits_2(concept_run, capsys, prompt):
    assert main(["concept", "continue", str(concept_run.out), prompt, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the prompt is empty" in err


def test_a_missing_model_and_bad_training_options_exit_2(tmp_path, capsys):
    assert main(["concept", "continue", str(tmp_path / "none"), PROMPT]) == 2
    assert "does not exist: train one with `textdiffusion concept train" in capsys.readouterr().err
    for bad, match in ((["--batch", "0"], "batch must be positive"), (["--d-model", "15"], "multiple of heads"),
                       (["--source", str(tmp_path / "no-corpus")], "not found")):
        assert main(["concept", "train", str(tmp_path / "out"), *bad]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and match in err
    assert not (tmp_path / "out").exists()


def test_token_commands_refuse_a_concept_folder_naming_the_concept_command(concept_run, capsys):
    assert main(["sample", "--model", str(concept_run.out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sentence-concept model" in err
    assert f"textdiffusion concept continue {concept_run.out}" in err


def test_help_lists_the_concept_group(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "concept " in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["concept", "--help"])
    listed = capsys.readouterr().out
    assert "train " in listed and "continue " in listed
