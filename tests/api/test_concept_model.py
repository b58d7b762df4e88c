"""The concept family's front door (api/concept.py): Pipeline refuses a concept folder in one line naming the concept
command, and ConceptModel checks what it is handed before it samples."""

from __future__ import annotations

import pytest

from textdiffusion import Pipeline
from textdiffusion.api.concept import ConceptModel
from textdiffusion.core.errors import UserError


def test_pipeline_refuses_a_concept_folder_in_one_line(concept_run):
    with pytest.raises(UserError) as err:
        Pipeline.from_pretrained(concept_run.out, device="cpu")
    message = str(err.value)
    assert "\n" not in message and "sentence-concept model" in message
    assert f"textdiffusion concept continue {concept_run.out}" in message


@pytest.fixture(scope="module")
def model(concept_run) -> ConceptModel:
    return ConceptModel.from_pretrained(concept_run.out, device="cpu")


@pytest.mark.parametrize("kwargs, match", [
    (dict(prompt=b"The king."), "prompt must be a str"),
    (dict(prompt="\n \n"), "the prompt is empty"),
    (dict(sentences=0), "sentences must be positive"),
    (dict(samples=2.5), "samples must be an integer"),
    (dict(steps=True), "steps must be an integer"),
    (dict(seed="zero"), "seed must be an integer"),
    (dict(guidance="strong"), "guidance must be a finite number"),
    (dict(eta=float("nan")), "eta must be a finite number"),
    (dict(temperature=-1.0), "temperature must be >= 0"),
])
def test_bad_requests_are_one_line_errors(model, kwargs, match):
    request = dict(prompt="The king rode.", sentences=1, steps=2) | kwargs
    with pytest.raises(UserError, match=match) as err:
        model.continue_text(request.pop("prompt"), **request)
    assert "\n" not in str(err.value)


def test_the_prompt_is_cut_as_the_training_text_was(model):
    long = "word " * 30  # 150 characters, no end mark: pieces of at most the model's max_chars (60)
    pieces = model.prompt_sentences(f"First line\nof one sentence. {long}")
    assert pieces[0] == "First line of one sentence." and len(pieces) > 2
    assert all(len(p) <= model.parts.max_chars for p in pieces)


def test_continuations_have_the_asked_shape_and_a_seed_repeats_them(model):
    rows = model.continue_sentences("The king rode. The queen sang.", sentences=3, steps=2, samples=2, seed=4,
                                    temperature=1.0)
    assert len(rows) == 2 and all(len(r) == 3 for r in rows)
    assert model.continue_sentences("The king rode. The queen sang.", sentences=3, steps=2, samples=2, seed=4,
                                    temperature=1.0) == rows
    assert len(model.continue_text("The king rode.", sentences=1, steps=2, seed=None)) == 1  # a fresh seed
