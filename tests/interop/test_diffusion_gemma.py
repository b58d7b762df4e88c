"""DiffusionGemma through transformers' native class: the denoiser's split into prompt (encoder) and canvas
(decoder, self-conditioned) equals a direct call of DiffusionGemmaForBlockDiffusion; the pipeline runs it
with the entropy-bound sampler and refuses what does not apply in one line."""

from __future__ import annotations

import pytest
import torch

from textdiffusion.api.pipeline import Pipeline
from textdiffusion.core.errors import UserError


@pytest.fixture(scope="module")
def gemma(tmp_path_factory, write_diffusion_gemma):
    return write_diffusion_gemma(tmp_path_factory.mktemp("dgemma"))


def test_logits_match_native_class(gemma):
    folder, reference, ids = gemma
    pipe = Pipeline.from_pretrained(folder, device="cpu")
    assert pipe.config["format"] == "diffusion_gemma" and pipe.process.default_sampler == "entropy_bound"
    tok = pipe.tokenizer
    assert (tok.mask_id, tok.bos_id, tok.eos_id, tok.vocab_size) == (4, 2, 1, ids["__size__"])
    v, rows = tok.vocab_size, reference.config.text_config.vocab_size
    x = torch.randint(5, v, (2, 11), generator=torch.Generator().manual_seed(0))
    sc = torch.randn(2, 11, v, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = pipe.model(x, None, canvas_start=3, self_conditioning=sc)
        ours_first = pipe.model(x, None, canvas_start=3)
        prompt = torch.cat([torch.full((2, 1), 2), x[:, :3]], dim=1)  # <bos> + the prompt
        padded = torch.cat([sc[:, 3:], torch.full((2, 8, rows - v), float("-inf"))], dim=-1)
        expected = reference(input_ids=prompt, decoder_input_ids=x[:, 3:], self_conditioning_logits=padded).logits
        expected_first = reference(input_ids=prompt, decoder_input_ids=x[:, 3:]).logits
    torch.testing.assert_close(ours[:, 3:], expected[..., :v], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(ours_first[:, 3:], expected_first[..., :v], atol=2e-5, rtol=1e-4)
    assert not torch.allclose(expected, expected_first)  # self-conditioning reaches the logits
    assert torch.equal(ours[:, :3].argmax(-1), x[:, :3])  # prompt positions predict themselves


def test_pipeline_generates_with_entropy_bound_and_refuses_the_rest(gemma):
    pipe = Pipeline.from_pretrained(gemma[0], device="cpu")
    out = pipe.generate(num_samples=2, length=20, prompt="To be, or", seed=0, steps=3, return_frames=True)
    n = len(pipe.tokenizer.encode("To be, or"))
    assert out.ids.shape == (2, 20) and out.nfe == 3 * 2  # ceil((20 - n) / canvas_length 8) = 2 canvases
    assert (20 - n + 7) // 8 == 2 and not (out.ids == pipe.tokenizer.mask_id).any() and len(out.frames) > 3
    fill = pipe.infill("To be[MASK]x3 not to be", seed=0, steps=2)
    assert len(fill.fills[0]) == 1 and not (fill.ids == pipe.tokenizer.mask_id).any()
    with pytest.raises(UserError, match="no likelihood bound"):
        pipe.score("To be, or not to be", t_samples=2)
    with pytest.raises(UserError, match="entropy_bound"):
        pipe.generate(length=8, sampler="ancestral", steps=2)


def test_bench_measure_cli_and_filmstrip_run(gemma, capsys):
    from textdiffusion.bench.measure import MeasureRequest, measure
    from textdiffusion.cli import main

    result = measure(MeasureRequest(model=str(gemma[0]), sampler="entropy_bound",
                                    options={"steps": 2, "length": 12}, num_samples=2, batch=2))
    assert len(result.texts) == 2 and all(len(row) == 12 for row in result.ids) and result.nfe == 2 * 2
    main(["sample", "--model", str(gemma[0]), "--length", "12", "--steps", "2", "--seed", "0", "--filmstrip", "3"])
    printed = capsys.readouterr()
    assert "--- sample 1 ---" in printed.out and "loaded diffusion_gemma" in printed.err


def _damaged(gemma, tmp_path, how: str):
    """A copy of the tiny folder with its weights cut short or a tensor's byte span wrong, or a config.json whose
    sizes do not fit them."""
    import json
    import shutil

    folder = shutil.copytree(gemma[0], tmp_path / how)
    weights = folder / "model.safetensors"
    if how == "cut":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size * 2 // 3])
    elif how == "offsets":  # a tensor's byte span shorter than its shape: only safetensors' own reader sees it
        data = weights.read_bytes()
        size = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + size])
        name = next(k for k, v in header.items() if k != "__metadata__" and v["dtype"] == "F32")
        header[name]["data_offsets"][1] -= 4
        text = json.dumps(header, separators=(",", ":")).encode()
        weights.write_bytes(data[:8] + text.ljust(size) + data[8 + size :])
    else:
        config = json.loads((folder / "config.json").read_text())
        text = config["text_config"]
        if how == "hidden":
            text["hidden_size"] = 48
        elif how == "fewer":  # one layer fewer than the weights hold (transformers would drop the other)
            text["num_hidden_layers"], text["layer_types"] = 1, ["sliding_attention"]
        else:  # one layer more than the weights hold (transformers would fill it with random values)
            text["num_hidden_layers"], text["layer_types"] = 3, ["sliding_attention"] + ["full_attention"] * 2
        (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("how, words", [
    ("cut", ["model.safetensors is truncated", "fetch the file again"]),
    ("hidden", ["tensors do not fit the config.json", "[32, 16] in the weights", "[48, 16]", "restore"]),
    ("layers", ["lack 42 of the model's tensors", "layers.2.", "restore the folder"]),
    ("offsets", ["transformers cannot load the weights", "invalid shape, data type, or offset", "restore the folder"]),
    ("fewer", ["tensors the config.json has no place for", "layers.", "restore the config.json"]),
])
def test_damaged_folders_are_one_line_errors(gemma, tmp_path, capfd, how, words):
    from textdiffusion.cli import main

    folder = _damaged(gemma, tmp_path, how)
    with pytest.raises(UserError) as caught:
        Pipeline.from_pretrained(folder, device="cpu")
    assert "\n" not in str(caught.value) and all(w in str(caught.value) for w in words), caught.value
    capfd.readouterr()
    assert main(["sample", "--model", str(folder), "--length", "12", "--steps", "2"]) == 2
    err = capfd.readouterr().err
    assert "Traceback" not in err and "LOAD REPORT" not in err, err
    if how not in ("layers", "fewer", "offsets"):  # found before transformers' loader runs: nothing but the one line
        assert err.startswith("textdiffusion: error:") and err.count("\n") == 1, err
    else:  # found by transformers' loader: the one line follows its progress bar
        assert err.splitlines()[-1].startswith("textdiffusion: error:"), err
    assert all(w in err for w in words), err
