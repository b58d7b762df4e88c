"""An edit model end to end: trained by the trainer, loaded, `Pipeline.edit`, `textdiffusion edit`, filmstrips
that show insertions and deletions."""

from __future__ import annotations

import json
import re

import pytest
import torch

from textdiffusion.api.pipeline import Pipeline
from textdiffusion.cli import main
from textdiffusion.core.errors import UserError
from textdiffusion.processes.alignment import Op
from textdiffusion.render.filmstrip import export, render_html, render_terminal
from textdiffusion.samplers import Frame
from textdiffusion.train.trainer import train


@pytest.fixture(scope="module")
def edit_run(tmp_path_factory, tiny_config, write_corpus):
    root = tmp_path_factory.mktemp("edit")
    corpus = write_corpus(root / "corpus.jsonl", n_docs=40)
    cfg = tiny_config(root / "run", corpus, "process.name=diffuser", "process.num_steps=4", "process.max_insert=6",
                      "model.d_model=32", steps=3, every=3)
    train(cfg)
    return root / "run"


def test_trained_edit_model_loads_and_edits(edit_run, tmp_path):
    saved = json.loads((edit_run / "checkpoint" / "config.json").read_text())
    assert saved["process"]["name"] == "diffuser" and saved["model"]["edit_tags"] == 3 + 6 + 1
    metrics = [json.loads(line) for line in (edit_run / "metrics.jsonl").read_text().splitlines()]
    assert any("sample" in row for row in metrics) and all(row.get("loss", 1.0) > 0 for row in metrics)
    evals = [row for row in metrics if "val_stderr" in row]
    # DiffusER's loss bounds no likelihood: validation logs it as a loss, never as a NELBO or a perplexity bound
    assert evals and all("val_loss" in row and "val_nelbo" not in row and "val_ppl_bound" not in row for row in evals)
    pipe = Pipeline.from_pretrained(edit_run, device="cpu")
    out = pipe.edit("To be, or not to bee", steps=3, num_samples=2, seed=0, return_frames=True)
    again = pipe.edit("To be, or not to bee", steps=3, num_samples=2, seed=0)
    assert out.texts == again.texts and len(out.texts) == 2 and out.nfe == 6
    assert len(out.frames) == 4 and out.frames[1].edits is not None
    assert pipe.tokenizer.decode(out.frames[0].ids[0].tolist(), mask_char=None) == "To be, or not to bee"
    beam = pipe.edit("To be, or not to bee", steps=2, beam=2, revisions=2, seed=0)
    assert beam.nfe == 4 and isinstance(beam.texts[0], str)
    gen = pipe.generate(num_samples=1, length=8, steps=2, seed=0, return_frames=True)  # from 8 random tokens
    assert gen.nfe == 4 and (gen.frames[0].ids[0] != pipe.tokenizer.mask_id).sum() == 8
    # save_pretrained keeps both heads: the copy edits identically
    copy = Pipeline.from_pretrained(pipe.save_pretrained(tmp_path / "copy"), device="cpu")
    assert copy.edit("To be, or not to bee", steps=3, num_samples=2, seed=0).texts == out.texts
    with pytest.raises(UserError, match="sampler 'ancestral' cannot run a 'diffuser' model"):
        pipe.generate(sampler="ancestral", steps=2)
    with pytest.raises(UserError, match="revises 1 to 31"):
        pipe.edit("x" * 40)
    with pytest.raises(UserError, match="no likelihood bound"):
        pipe.score("To be")


def test_cli_edit_prints_revisions_and_a_filmstrip(edit_run, tmp_path, capsys):
    film = tmp_path / "edit.html"
    assert main(["edit", "--model", str(edit_run), "--steps", "3", "--seed", "1", "-n", "2", "--filmstrip", "3",
                 "--export", str(film), "--device", "cpu", "To be, or not to bee"]) == 0
    out = capsys.readouterr().out
    assert "--- edit 2 ---" in out and "step 3/3" in out and film.is_file()
    assert main(["edit", "--model", str(edit_run), "--option", "start=bogus", "hi"]) == 2
    assert "start must be one of" in capsys.readouterr().err


def test_filmstrip_shows_insertions_deletions_and_replacements(tmp_path):
    from textdiffusion.data.tokenizers import ByteTokenizer

    tok = ByteTokenizer()
    m = tok.mask_id

    def ids(*rows):
        width = max(len(r) for r in rows)
        return torch.tensor([list(r.encode()) + [m] * (width - len(r)) for r in rows])

    # "cat sat" -> "the cat sad" -> "the cat"
    step1 = [(Op.INSERT, c) for c in b"the "] + [(Op.KEEP, c) for c in b"cat sa"] + [(Op.REPLACE, ord("d"))]
    step2 = [(Op.KEEP, c) for c in b"the cat"] + [(Op.DELETE, c) for c in b" sad"]
    frames = [Frame(0, 1.0, ids("cat sat")), Frame(1, 0.5, ids("the cat sad"), edits=[step1]),
              Frame(2, 0.0, ids("the cat"), edits=[step2])]
    text = render_terminal(frames, tok, n=3)
    assert "{+the +}cat sa[-t-]{+d+}" in text and "the cat[- sad-]" in text
    assert "+4 -1 ~1 chars · 11 chars" in text
    page = render_html(frames, tok)
    assert '<span class="ins">the </span>' in page and '<span class="del"> sad</span>' in page
    assert '<span class="rep">d</span>' in page
    # frames that skip steps are shown by the minimal alignment between them
    skipped = render_terminal([frames[0], frames[2]], tok, n=2).split("\n")[4]
    assert re.sub(r"\[-.*?-\]", "", skipped).replace("{+", "").replace("+}", "") == "the cat"  # without deletions
    assert re.sub(r"\{\+.*?\+\}", "", skipped).replace("[-", "").replace("-]", "") == "cat sat"  # without insertions
    assert skipped.count("[-") + skipped.count("{+") >= 4  # the edit distance of "cat sat" -> "the cat"
    assert export(frames, tok, tmp_path / "edit.gif").stat().st_size > 0


def test_edit_flow_trains_loads_and_samples(tmp_path, tiny_config, write_corpus):
    corpus = write_corpus(tmp_path / "corpus.jsonl", n_docs=40)
    run = tmp_path / "flow"
    train(tiny_config(run, corpus, "process.name=edit_flow", "process.source=random", "model.d_model=32",
                      steps=2, every=2))
    pipe = Pipeline.from_pretrained(run, device="cpu")
    assert pipe.model.cfg.time_conditioning and pipe.model.cfg.edit_tags == 3 + pipe.tokenizer.vocab_size
    out = pipe.generate(num_samples=2, steps=4, seed=0, return_frames=True)
    assert out.nfe == 8 and len(out.frames) == 5 and out.texts == pipe.generate(num_samples=2, steps=4, seed=0).texts
    with pytest.raises(UserError, match="sampler 'edit' cannot run a 'edit_flow' model"):
        pipe.generate(sampler="edit", steps=2)
    # Pipeline.edit runs the Edit Flows CTMC from the given text (its default sampler), from t_start to 1
    edited = pipe.edit("To be, or not to bee", steps=4, num_samples=2, seed=0, return_frames=True)
    assert edited.nfe == 8 and len(edited.frames) == 5 and edited.frames[1].edits is not None
    assert pipe.tokenizer.decode(edited.frames[0].ids[0].tolist(), mask_char=None) == "To be, or not to bee"
    assert edited.texts == pipe.edit("To be, or not to bee", steps=4, num_samples=2, seed=0).texts
    assert pipe.edit("To be", steps=2, t_start=0.9, seed=0).nfe == 4
    with pytest.raises(UserError, match=r"t_start must be in \[0, 1\)"):
        pipe.edit("To be", steps=2, t_start=1.0)
    with pytest.raises(UserError, match="sampler 'edit' cannot run a 'edit_flow' model"):
        pipe.edit("To be", sampler="edit")


def test_cli_edit_runs_an_edit_flow_model(tmp_path, capsys, tiny_config, write_corpus):
    corpus = write_corpus(tmp_path / "corpus.jsonl", n_docs=20)
    run = tmp_path / "flow"
    train(tiny_config(run, corpus, "process.name=edit_flow", "model.d_model=16", steps=1, every=1))
    assert main(["edit", "--model", str(run), "--steps", "3", "--seed", "1", "-n", "2", "--option", "t_start=0.5",
                 "--filmstrip", "2", "--device", "cpu", "To be, or not to bee"]) == 0
    out = capsys.readouterr().out
    assert "--- edit 2 ---" in out and "step 3/3" in out
    masked = tmp_path / "masked"
    train(tiny_config(masked, corpus, "model.d_model=16", steps=1, every=1))
    with pytest.raises(UserError, match="edit needs an edit model \\(process 'diffuser' or 'edit_flow'\\)"):
        Pipeline.from_pretrained(masked, device="cpu").edit("To be")


def test_diffuser_training_resumes_exactly(tmp_path, tiny_config, write_corpus):
    """2 steps + save + resume + 2 steps gives the weights of 4 straight steps (the edit noise is drawn from the
    trainer's generator: each row's step and corruption seed)."""
    from textdiffusion.train.trainer import Trainer

    corpus = write_corpus(tmp_path / "corpus.jsonl", n_docs=40)
    extra = ("process.name=diffuser", "model.d_model=32", "run.eval_every=0")
    straight = Trainer(tiny_config(tmp_path / "a", corpus, *extra, steps=4, every=4))
    for _ in range(4):
        straight.train_step()
    first = Trainer(tiny_config(tmp_path / "b", corpus, *extra, steps=4, every=2))
    for _ in range(2):
        first.train_step()
    first.save()
    resumed = Trainer(tiny_config(tmp_path / "b", corpus, *extra, steps=4, every=2), resume=True)
    for _ in range(2):
        resumed.train_step()
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6
    init = Trainer(tiny_config(tmp_path / "c", corpus, *extra, steps=4, every=4)).model.state_dict()
    assert max(float((a[k] - init[k]).abs().max()) for k in a) > 1e-4  # the steps did train
