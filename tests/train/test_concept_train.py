"""Training a sentence-concept model (train/concept.py) and its folder (interop/concept_folder.py): the folder reloads
to the very weights trained and continues a prompt as the trained model does; saving is atomic; the MiniLM cache is
reused only for the same sentences; a damaged folder is a one-line UserError."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from textdiffusion.api.concept import ConceptModel
from textdiffusion.core.errors import UserError
from textdiffusion.interop import concept_folder
from textdiffusion.samplers.concept import ConceptSampleConfig, continue_sentences
from textdiffusion.train.concept import read_cache, train_concept
from textdiffusion.train.concept_config import ConceptTrainConfig


def states(model: ConceptModel) -> dict[str, torch.Tensor]:
    p = model.parts
    return {**{f"decoder.{k}": v for k, v in p.decoder.state_dict().items()},
            **{f"denoiser.{k}": v for k, v in p.denoiser.state_dict().items()},
            **{f"scaler.{k}": v for k, v in p.scaler.state_dict().items()}}


def test_the_folder_reloads_to_the_trained_weights_and_continues_alike(concept_run):
    trained = concept_run.model
    loaded = ConceptModel.from_pretrained(concept_run.out, device="cpu")
    want, got = states(trained), states(loaded)
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(want[key].cpu(), got[key]), key
    assert loaded.parts.process.config() == trained.parts.process.config()
    assert loaded.parts.max_chars == trained.parts.max_chars == 60
    # the same draws give the same vectors (ancestral steps, guidance 2), not only the same decoded text
    cfg, prompt = ConceptSampleConfig(steps=4, eta=1.0, guidance=2.0), [["The king rode.", "The queen sang!"]] * 2
    vectors = [continue_sentences(prompt, 2, m.encoder, m.parts.scaler, m.parts.denoiser, m.parts.decoder,
                                  m.tokenizer, m.parts.process, cfg, torch.Generator().manual_seed(7))[1]
               for m in (trained, loaded)]
    assert torch.equal(vectors[0], vectors[1])
    kwargs = dict(sentences=2, steps=4, samples=2, seed=7)
    assert loaded.continue_text("The king rode. The queen sang!", **kwargs) == \
        trained.continue_text("The king rode. The queen sang!", **kwargs)


def test_an_interrupted_save_leaves_the_old_folder_or_none(concept_run, tmp_path, monkeypatch):
    parts, real_save = concept_run.model.parts, concept_folder.save_weights
    calls = []

    def dies_on_the_second_file(state, path):
        calls.append(path.name)
        real_save(state, path)  # the first file is complete on disk when the "power fails"
        if len(calls) == 2:
            raise KeyboardInterrupt

    out = tmp_path / "model"
    monkeypatch.setattr(concept_folder, "save_weights", dies_on_the_second_file)
    with pytest.raises(KeyboardInterrupt):
        concept_folder.save_concept_folder(out, parts)
    assert list(tmp_path.iterdir()) == []  # no OUT, no temporary sibling
    monkeypatch.setattr(concept_folder, "save_weights", real_save)
    concept_folder.save_concept_folder(out, parts)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    calls.clear()
    monkeypatch.setattr(concept_folder, "save_weights", dies_on_the_second_file)
    with pytest.raises(KeyboardInterrupt):
        concept_folder.save_concept_folder(out, parts)
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the old folder, whole


def test_training_the_same_folder_again_reuses_the_cached_vectors(concept_run, concept_corpus, tmp_path):
    flat = [s for d in concept_run.train_docs for s in d]
    cached = read_cache(concept_run.out, "train", flat)
    assert cached is not None and cached.shape == (len(flat), 384)
    assert read_cache(concept_run.out, "train", [*flat[:-1], "Another one."]) is None  # other sentences: embedded
    out = tmp_path / "again"
    shutil.copytree(concept_run.out, out)
    logged: list[str] = []
    cfg = ConceptTrainConfig(**concept_run.model.parts.training)
    again = train_concept(cfg, out, "cpu", log=logged.append)
    assert not any(line.startswith("embedded") for line in logged) and any("denoiser step" in x for x in logged)
    for key, value in states(concept_run.model).items():  # same cached vectors, same seed: the same model
        assert torch.equal(value, states(again.model)[key]), key


def damage(folder, how: str) -> None:
    config = json.loads((folder / "config.json").read_text())
    if how == "no denoiser":
        (folder / "denoiser.safetensors").unlink()
    elif how == "truncated decoder":
        data = (folder / "decoder.safetensors").read_bytes()
        (folder / "decoder.safetensors").write_bytes(data[: len(data) // 2])
    elif how == "bad json":
        (folder / "config.json").write_text("{\"family\": \"concept\",")
    elif how == "wider decoder":
        config["decoder"]["d_model"] *= 2
    elif how == "unknown key":
        config["denoiser"]["colour"] = "blue"
    elif how == "no process":
        del config["process"]
    elif how == "scaler of another width":
        (folder / "scaler.safetensors").write_bytes((folder / "decoder.safetensors").read_bytes())
    if how in ("wider decoder", "unknown key", "no process"):
        (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("how", ["no denoiser", "truncated decoder", "bad json", "wider decoder", "unknown key",
                                 "no process", "scaler of another width"])
def test_a_damaged_folder_is_one_line_error(concept_run, tmp_path, how):
    folder = tmp_path / "model"
    shutil.copytree(concept_run.out, folder)
    damage(folder, how)
    with pytest.raises(UserError) as err:
        ConceptModel.from_pretrained(folder, device="cpu")
    assert "\n" not in str(err.value) and str(folder) in str(err.value)


def test_missing_and_foreign_folders_are_one_line_errors(tmp_path, tiny_pipeline):
    with pytest.raises(UserError, match="does not exist: train one"):
        ConceptModel.from_pretrained(tmp_path / "nowhere", device="cpu")
    with pytest.raises(UserError, match="holds no config.json"):
        ConceptModel.from_pretrained(tmp_path, device="cpu")
    tiny_pipeline.save_pretrained(tmp_path / "tokens")
    with pytest.raises(UserError, match="not a sentence-concept model"):
        ConceptModel.from_pretrained(tmp_path / "tokens", device="cpu")


@pytest.mark.parametrize("bad, match", [(dict(batch=0), "batch must be positive"),
                                        (dict(window=1), "window must be >= 2"),
                                        (dict(d_model=15, heads=2), "multiple of heads"),
                                        (dict(cond_drop=1.0), "cond-drop"),
                                        (dict(lr="fast"), "lr must be a float"),
                                        (dict(train_sentences=1), "train-sentences must be >= 2")])
def test_bad_settings_are_refused_before_any_work(bad, match):
    with pytest.raises(UserError, match=match):
        ConceptTrainConfig(**bad)


def never(sentences: list[str]) -> torch.Tensor:
    raise AssertionError("the run is refused before anything is embedded")


def test_training_never_replaces_a_folder_of_another_kind(concept_corpus, tmp_path, tiny_pipeline):
    tiny_pipeline.save_pretrained(tmp_path / "tokens")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    cfg = ConceptTrainConfig(source=str(concept_corpus), decoder_steps=1, denoiser_steps=1, d_model=8, heads=2)
    for folder in ("tokens", "notes"):
        with pytest.raises(UserError, match="holds something other than a concept model"):
            train_concept(cfg, tmp_path / folder, "cpu", encoder=never, log=lambda _: None)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_a_corpus_without_a_next_sentence_is_refused(tmp_path):
    corpus = tmp_path / "docs"  # a folder: each file one document, each of one sentence
    corpus.mkdir()
    for i, text in enumerate(["Alone here.", "And here.", "Here too.", "Me too."]):
        (corpus / f"{i}.txt").write_text(text, encoding="utf-8")
    cfg = ConceptTrainConfig(source=str(corpus), train_sentences=10, decoder_steps=1, denoiser_steps=1, d_model=8,
                             heads=2, decoder_layers=1, prefix=1, context_layers=1, denoiser_layers=1, window=2)

    with pytest.raises(UserError, match="no document of two sentences"):
        train_concept(cfg, tmp_path / "out", "cpu", encoder=never, log=lambda _: None)
    assert not (tmp_path / "out").exists()


def test_a_training_stopped_after_embedding_keeps_the_vectors(concept_corpus, tmp_path, monkeypatch):
    """The vectors are cached in OUT as soon as they are made: a run stopped in its training loops (or killed)
    leaves them, and the next run into OUT trains without embedding again."""
    from textdiffusion.train import concept as training

    cfg = ConceptTrainConfig(source=str(concept_corpus), decoder_steps=1, denoiser_steps=1, d_model=8, heads=2)
    out = tmp_path / "run"
    real_loop = training.train_loop

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "train_loop", stopped)
    with pytest.raises(KeyboardInterrupt):
        train_concept(cfg, out, "cpu", log=lambda _: None)
    assert [p.name for p in out.iterdir()] == ["embeddings-train.safetensors"]
    monkeypatch.setattr(training, "train_loop", real_loop)
    logged: list[str] = []
    train_concept(cfg, out, "cpu", log=logged.append)
    assert not any(line.startswith("embedded") for line in logged)
    assert ConceptModel.from_pretrained(out, device="cpu").parts.decoder is not None
