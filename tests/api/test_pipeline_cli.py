import pytest
import torch

from textdiffusion.api.infill import parse_gaps
from textdiffusion.api.pipeline import Pipeline
from textdiffusion.cli import main
from textdiffusion.core.errors import UserError
from textdiffusion.models import ModelConfig, Transformer
from textdiffusion.processes import MaskedDiffusion


def test_generate_shapes_prompt_and_frames(tiny_pipeline):
    out = tiny_pipeline.generate(num_samples=2, length=20, prompt="To be", steps=10, seed=0, return_frames=True)
    assert out.ids.shape == (2, 20)
    assert (out.ids[:, :5] == torch.tensor(list(b"To be"))).all()
    assert not (out.ids == tiny_pipeline.tokenizer.mask_id).any()
    assert out.frames[0].step == 0 and out.frames[-1].step == 10
    assert (out.frames[0].ids[:, 5:] == tiny_pipeline.tokenizer.mask_id).all()
    assert all(t.startswith("To be") for t in out.texts)
    # masks only ever disappear, and a revealed token never changes afterwards
    for a, b in zip(out.frames, out.frames[1:]):
        revealed = a.ids != tiny_pipeline.tokenizer.mask_id
        assert torch.equal(a.ids[revealed], b.ids[revealed])


def test_same_seed_same_samples_and_cache_saves_forward_passes(tiny_pipeline):
    a = tiny_pipeline.generate(num_samples=2, steps=200, seed=3)
    b = tiny_pipeline.generate(num_samples=2, steps=200, seed=3, cache=False)
    assert torch.equal(a.ids, b.ids)  # the cache changes cost, not results
    assert a.nfe < b.nfe <= 200  # no cache: one pass per step until every token is revealed
    c = tiny_pipeline.generate(num_samples=2, steps=200, seed=4)
    assert not torch.equal(a.ids, c.ids)


def test_infill_keeps_context_and_fills_every_gap(tiny_pipeline):
    text = "The [MASK]x5 of the [MASK] night"
    out = tiny_pipeline.infill(text, num_samples=3, steps=8, seed=1)
    ids, spans = tiny_pipeline.encode_gapped(text)
    assert spans == [(4, 9), (17, 18)]
    fixed = ids != tiny_pipeline.tokenizer.mask_id
    assert (out.ids[:, fixed] == ids[fixed]).all()
    assert len(out.fills) == 3 and all(len(f) == 2 for f in out.fills)
    assert all(t.startswith("The ") and t.endswith(" night") for t in out.texts)


def test_score_is_positive_and_reproducible(tiny_pipeline):
    a = tiny_pipeline.score(["some text", "x" * 100], t_samples=4)
    b = tiny_pipeline.score(["some text", "x" * 100], t_samples=4)
    assert a[0].nats_per_token > 0 and a[0].n_tokens == 9
    assert a[1].n_tokens == 100  # longer than the model: scored in windows
    assert a[0].nats_per_token == b[0].nats_per_token


def test_save_and_load_pretrained_roundtrip(tiny_pipeline, tmp_path):
    tiny_pipeline.save_pretrained(tmp_path / "m")
    again = Pipeline.from_pretrained(tmp_path / "m", device="cpu")
    x = tiny_pipeline.generate(num_samples=1, steps=5, seed=9).ids
    y = again.generate(num_samples=1, steps=5, seed=9).ids
    assert torch.equal(x, y)
    tiny_pipeline.save_pretrained(tmp_path / "half", dtype=torch.bfloat16)
    half = Pipeline.from_pretrained(tmp_path / "half", device="cpu")
    assert half.model.embed.weight.dtype == torch.float32
    size = lambda name: (tmp_path / name / "model.safetensors").stat().st_size  # noqa: E731
    assert size("half") < size("m")


@pytest.mark.parametrize("call, message", [
    (lambda p: p.generate(steps=0), "steps must be a positive"),
    (lambda p: p.generate(steps=-3), "steps must be a positive"),
    (lambda p: p.generate(temperature=-0.5), "temperature"),
    (lambda p: p.generate(top_p=0.0), "top_p"),
    (lambda p: p.generate(length=49), "length"),
    (lambda p: p.generate(prompt="x" * 48), "prompt is 48 tokens"),
    (lambda p: p.generate(prompt=""), "prompt is empty"),
    (lambda p: p.generate(num_samples=0), "num_samples"),
    (lambda p: p.generate(sampler="magic"), "unknown sampler"),
    (lambda p: p.generate(beam=3), "has no option beam"),
    (lambda p: p.infill("[MASK]x40 and then some more words"), "more than the model's 48"),
    (lambda p: p.infill(""), "empty"),
    (lambda p: p.infill("no gaps here"), "no gap"),
    (lambda p: p.infill("bad [MASK]x gap"), "malformed"),
    (lambda p: p.score([""]), "empty"),
])
def test_bad_input_gets_a_clear_error(tiny_pipeline, call, message):
    with pytest.raises(UserError, match=message):
        call(tiny_pipeline)


def test_parse_gaps():
    assert parse_gaps("[MASK]a[MASK]x3b") == [1, "a", 3, "b"]
    with pytest.raises(UserError, match="malformed"):
        parse_gaps("a [MASK b")
    with pytest.raises(UserError, match="length from 1"):
        parse_gaps("a [MASK]x0")


def test_missing_and_corrupt_model_folders(tiny_pipeline, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        Pipeline.from_pretrained(tmp_path / "nothing")
    folder = tiny_pipeline.save_pretrained(tmp_path / "m")
    (folder / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(UserError, match="corrupt"):
        Pipeline.from_pretrained(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="corrupt"):
        Pipeline.from_pretrained(folder)


def test_cli_user_errors_are_one_line_and_exit_2(tiny_pipeline, tmp_path, capsys):
    model = str(tiny_pipeline.save_pretrained(tmp_path / "m"))
    cases = [
        ["sample", "--model", model, "--steps", "-1"],
        ["sample", "--model", model, "--temperature", "-1"],
        ["sample", "--model", str(tmp_path / "missing")],
        ["infill", "--model", model, "no gap here"],
        ["infill", "--model", model, ""],
        ["score", "--model", model],
        ["score", "--model", model, "--file", str(tmp_path / "none.txt")],
        ["train", "--config", "no-such-preset"],
        ["train", "--config", "tiny", "train.steps=abc"],
        ["train", "--config", "tiny", "nonsense"],
    ]
    for argv in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("textdiffusion: error:") and err.count("\n") == 1 and "Traceback" not in err


def test_cli_sample_infill_score_run(tiny_pipeline, tmp_path, capsys):
    model = str(tiny_pipeline.save_pretrained(tmp_path / "m"))
    assert main(["sample", "--model", model, "-n", "2", "--steps", "4", "--seed", "0", "--length", "16"]) == 0
    out = capsys.readouterr().out
    assert "--- sample 2 ---" in out and "forward passes" in out
    assert main(["infill", "--model", model, "--steps", "4", "ab[MASK]x3cd"]) == 0
    assert "--- fill 1:" in capsys.readouterr().out
    assert main(["score", "--model", model, "hello"]) == 0
    assert "nats/token" in capsys.readouterr().out


def test_cli_demo_and_filmstrip_export(byte_tok, tmp_path, capsys):
    torch.manual_seed(0)
    net = Transformer(ModelConfig(vocab_size=byte_tok.vocab_size, seq_len=96, d_model=32, n_layers=1, n_heads=2))
    pipe = Pipeline(net, MaskedDiffusion(vocab_size=byte_tok.vocab_size, mask_id=byte_tok.mask_id), byte_tok)
    model = str(pipe.save_pretrained(tmp_path / "m"))
    assert main(["demo", "--model", model, "--steps", "6", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count("--- sample") == 3 and "== infill" in out and "== filmstrip" in out
    assert "step 0/6" in out and "step 6/6" in out and "▒" in out
    html = tmp_path / "film.html"
    assert main(["sample", "--model", model, "--steps", "5", "--length", "12", "--filmstrip", "3",
                 "--export", str(html)]) == 0
    assert "step 5/5" in capsys.readouterr().out
    assert html.is_file() and "<html" in html.read_text().lower()
    assert main(["sample", "--model", model, "--steps", "5", "--export", str(tmp_path / "film.pdf")]) == 2
